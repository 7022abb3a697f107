"""Visitor context from request headers and cookies only (never the body, never the raw IP).

Every function here is pure and cheap; the user agent is parsed with ua-parser and cached.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import ua_parser

__all__ = [
    "DeviceInfo",
    "campaign_of",
    "classify_referrer",
    "country_code",
    "gpc_opt_out",
    "header_map",
    "local_time",
    "parse_device",
    "primary_language",
    "utm_params",
    "visitor_zone",
]

MAX_UA = 512  # characters of a user agent we parse
MAX_TEXT = 64  # characters of a query or header value we keep as a feature
UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")

# Registrable-domain labels, matched against the end of the referrer's host.
SEARCH = ("google", "bing.com", "duckduckgo.com", "yahoo", "baidu.com", "yandex", "ecosia.org",
          "search.brave.com", "qwant.com", "startpage.com", "naver.com", "seznam.cz")
SOCIAL = ("facebook.com", "fb.me", "instagram.com", "t.co", "twitter.com", "x.com",
          "linkedin.com", "lnkd.in", "reddit.com", "pinterest.com", "youtube.com", "tiktok.com",
          "threads.net", "bsky.app", "mastodon.social", "news.ycombinator.com", "whatsapp.com",
          "telegram.org", "t.me", "snapchat.com", "vk.com", "weibo.com")
EMAIL = ("mail.google.com", "outlook.live.com", "outlook.office.com", "outlook.office365.com",
         "mail.yahoo.com", "mail.proton.me", "mail.aol.com", "mail.yandex.ru", "webmail",
         "fastmail.com", "icloud.com")
EMAIL_MEDIUMS = ("email", "e-mail", "newsletter")
SOCIAL_MEDIUMS = ("social", "social-network", "social-media", "sm")
SEARCH_MEDIUMS = ("cpc", "ppc", "paidsearch", "organic")


def header_map(scope: Mapping[str, Any]) -> dict[str, str]:
    """Request headers by lower-case name: the first value, except cookies, joined."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "cookie" and name in headers:
            headers[name] += "; " + value
        else:
            headers.setdefault(name, value)
    return headers


def gpc_opt_out(headers: Mapping[str, str], honor_gpc: bool) -> bool:
    """Global Privacy Control (``Sec-GPC: 1``) when the middleware honours it: the pages and
    the reward route treat such a visitor as untracked."""
    return honor_gpc and headers.get("sec-gpc", "").strip() == "1"


@dataclass(frozen=True)
class DeviceInfo:
    """What the user agent says: device type, browser and OS families, bot flag."""

    device: str  # mobile, tablet, desktop or bot
    browser: str
    os: str
    bot: bool


def parse_device(user_agent: str) -> DeviceInfo:
    """Classify a user agent with ua-parser (results cached per distinct string).

    ua-parser's default parser caches too (2,000 agents) and resolves a miss with the
    ua-parser-rs engine of its ``regex`` extra (28 us here; 1.3 ms with Python's ``re``).
    This cache also keeps the classification below; it holds the first :data:`MAX_UA`
    characters of each agent, all that is parsed.

    A crawler (ua-parser's ``Spider`` device), a client whose ua-parser family is one of the
    HTTP libraries, tools and headless browsers of :data:`AUTOMATED`, one in which ua-parser
    finds neither a browser nor an OS and that does not start with ``Mozilla/``
    (``python-httpx``, ``node-fetch``), one whose user agent
    holds a token of :data:`SELF_DECLARED`, or an empty user agent is a bot.
    Tablets are iPads, Kindles, ua-parser's generic Android tablets and Android browsers
    without a mobile family.
    """
    return _classify(user_agent[:MAX_UA])


# Browser families that ua-parser gives to HTTP libraries, command-line tools and headless
# browsers (uptime checks, scripts, scrapers and pre-renderers: not visitors). Crawlers that
# announce themselves are ua-parser's "Spider" device already.
AUTOMATED = frozenset({
    "Apache-HttpClient", "axios", "curl", "Go-http-client", "HeadlessChrome", "HTTPie",
    "libwww-perl", "okhttp", "PhantomJS", "PostmanRuntime", "Python aiohttp",
    "Python Requests", "Python-urllib", "Wget",
})
# Lower-cased tokens by which automated clients that ua-parser misses name themselves
# (Bytespider, Chrome-Lighthouse, "+https://..." crawlers): a browser never puts a URL in its
# user agent. Not "bot" alone: it is in the phone brand Cubot's user agents.
SELF_DECLARED = ("spider", "crawler", "lighthouse", "http://", "https://")


@functools.lru_cache(maxsize=4096)
def _classify(user_agent: str) -> DeviceInfo:
    if not user_agent.strip():
        return DeviceInfo("bot", "Other", "Other", True)
    result = ua_parser.parse(user_agent)
    browser = result.user_agent.family if result.user_agent else "Other"
    os_family = result.os.family if result.os else "Other"
    device = result.device
    family = device.family if device else "Other"
    brand = (device.brand or "") if device else ""
    lowered_agent = user_agent.lower()
    # Neither browser nor OS found marks a library only without the "Mozilla/" every
    # browser sends: a Nintendo Switch's applets and a PS4 have neither for ua-parser
    # (a review of 2026-12-05).
    unknown = browser == os_family == "Other" and not user_agent.startswith("Mozilla/")
    if (family == "Spider" or browser in AUTOMATED or unknown
            or any(token in lowered_agent for token in SELF_DECLARED)):
        return DeviceInfo("bot", browser, os_family, True)
    lowered = f"{family} {brand}".lower()
    if family == "iPad" or "tablet" in lowered or "kindle" in lowered:
        kind = "tablet"
    elif os_family == "Android":  # Android tablets' browsers leave out the "Mobile" token
        mobile = "mobile" in browser.lower() or "Mobile" in user_agent
        kind = "mobile" if mobile else "tablet"
    elif os_family in ("iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS") or (
        "mobile" in browser.lower()
    ):
        kind = "mobile"
    else:
        kind = "desktop"
    return DeviceInfo(kind, browser, os_family, False)


def _host_of(url: str) -> str:
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return ""
    return (host or "")[:253]


def _matches(host: str, domains: tuple[str, ...]) -> bool:
    for domain in domains:
        if "." not in domain:  # a bare label: google, yahoo, yandex, webmail
            if domain in host.split("."):
                return True
        elif host == domain or host.endswith("." + domain):
            return True
    return False


def classify_referrer(
    referer: str | None, host: str | None, utm_medium: str | None = None
) -> tuple[str, str]:
    """Class and host of the referrer.

    Returns
    -------
    tuple of str
        ``(class, host)``: class is one of ``search``, ``social``, ``email``, ``internal``,
        ``direct``, ``other``; host is the referrer's host name ("" when there is none).
    """
    medium = (utm_medium or "").lower()
    ref_host = _host_of(referer) if referer else ""
    own = (host or "").split(":")[0].lower()
    if ref_host and own and ref_host == own:
        return "internal", ref_host
    if medium in EMAIL_MEDIUMS:
        return "email", ref_host
    if not ref_host:
        if medium in SOCIAL_MEDIUMS:
            return "social", ""
        if medium in SEARCH_MEDIUMS:
            return "search", ""
        return "direct", ""
    if _matches(ref_host, EMAIL):
        return "email", ref_host
    if _matches(ref_host, SEARCH):
        return "search", ref_host
    if _matches(ref_host, SOCIAL):
        return "social", ref_host
    return "other", ref_host


def primary_language(accept_language: str | None) -> str | None:
    """The primary subtag of the preferred language (``"fr-CA;q=0.9, en"`` -> ``"fr"``)."""
    if not accept_language:
        return None
    return _primary_language(accept_language[:256])


@functools.lru_cache(maxsize=1024)  # browsers send a handful of distinct headers
def _primary_language(accept_language: str) -> str | None:
    best, best_q = None, -1.0
    for item in accept_language.split(","):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip()
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.split("-")[0].lower()
        if not primary.isascii() or not primary.isalpha() or not 2 <= len(primary) <= 8:
            continue
        if quality > best_q and quality > 0:  # ties: the first listed wins
            best, best_q = primary, quality
    return best


@functools.lru_cache(maxsize=512)
def visitor_zone(name: str | None) -> ZoneInfo | None:
    """The visitor's time zone from the ``ef_tz`` cookie, if it is a valid IANA name."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        return None
    if not all(c.isascii() and (c.isalnum() or c in "/_+-") for c in name):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def local_time(now: float, zone: ZoneInfo | None) -> tuple[float, int]:
    """``(hour, weekday)``: fractional hour 0-24 and weekday 0 (Monday) to 6 at ``now``.

    Uses the visitor's zone when known, else the server's local time. Seconds do not count,
    so the answer is computed once per minute and zone.
    """
    return _minute_time(int(now // 60), zone)


@functools.lru_cache(maxsize=256)
def _minute_time(minute: int, zone: ZoneInfo | None) -> tuple[float, int]:
    now = minute * 60
    moment = dt.datetime.fromtimestamp(now, tz=zone) if zone else dt.datetime.fromtimestamp(now)
    hour = moment.hour + moment.minute / 60.0
    return round(hour, 2), moment.weekday()


def _clean(value: str) -> str:
    return "".join(c for c in value.strip()[:MAX_TEXT] if c.isprintable())


def utm_params(query_string: bytes) -> dict[str, str]:
    """UTM parameters of the query string (first value of each, trimmed)."""
    if b"utm_" not in query_string:
        return {}
    found: dict[str, str] = {}
    text = query_string.decode("latin-1")[:2048]
    for key, value in parse_qsl(text, keep_blank_values=False):
        if key in UTM_KEYS and key not in found:
            cleaned = _clean(value)
            if cleaned:
                found[key] = cleaned
    return found


def campaign_of(utm: Mapping[str, str]) -> str:
    """The campaign a landing belongs to ("" when untagged); a new one starts a new visit."""
    if not utm:
        return ""
    return "|".join(utm.get(k, "") for k in ("utm_source", "utm_medium", "utm_campaign"))[:96]


def country_code(value: str | None) -> str | None:
    """A two-letter country code from a CDN header (``XX``/``T1`` and junk become ``None``)."""
    if not value:
        return None
    code = value.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha() or code in ("XX", "T1"):
        return None
    return code
