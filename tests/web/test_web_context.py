"""Visitor context: user agent, referrer, language, time zone, UTM, country, hook, visits."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from web_helpers import (
    DESKTOP,
    GOOGLEBOT,
    IPHONE,
    SECRET,
    Clock,
    make_app,
    put_cookie,
    set_cookies,
    tamper,
)

from ef_middleware import Engine
from ef_middleware.web.context import (
    classify_referrer,
    country_code,
    header_map,
    local_time,
    parse_device,
    primary_language,
    utm_params,
    visitor_zone,
)

IPAD = ("Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/16.0 Mobile/15E148 Safari/604.1")
ANDROID_PHONE = ("Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
                 "Chrome/120.0.0.0 Mobile Safari/537.36")
ANDROID_TABLET = ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like "
                  "Gecko) Chrome/120.0.0.0 Safari/537.36")
MAC_FIREFOX = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.1; rv:121.0) Gecko/20100101 Firefox/121.0"
SAMSUNG_PHONE = ("Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like "
                 "Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36")
SAMSUNG_TABLET = SAMSUNG_PHONE.replace("SM-S918B", "SM-X700").replace("Mobile Safari", "Safari")
MAC_SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, "
              "like Gecko) Version/18.1 Safari/605.1.15")
WINDOWS_FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
FACEBOOK_IOS = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
                "(KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0.0.39.108;FBBV/612345678;"
                "FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/17.5;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]")
INSTAGRAM_ANDROID = ("Mozilla/5.0 (Linux; Android 14; SM-S911B Build/UP1A.231005.007; wv) "
                     "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/129.0.6668.81 "
                     "Mobile Safari/537.36 Instagram 352.0.0.38.100 Android (34/14; 420dpi; "
                     "1080x2340; samsung; SM-S911B; dm1q; qcom; en_US; 650248234)")
CUBOT = ("Mozilla/5.0 (Linux; Android 12; CUBOT KINGKONG 7) AppleWebKit/537.36 (KHTML, like "
         "Gecko) Chrome/120.0.0.0 Mobile Safari/537.36")  # a brand with "bot" in it
BYTESPIDER = ("Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile "
              "Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)")
LIGHTHOUSE = ("Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, "
              "like Gecko) Chrome/119.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse")
Client = Callable[..., TestClient]


@pytest.mark.parametrize(
    ("user_agent", "device", "browser", "os", "bot"),
    [
        (IPHONE, "mobile", "Mobile Safari", "iOS", False),
        (IPAD, "tablet", "Mobile Safari", "iOS", False),
        (ANDROID_PHONE, "mobile", "Chrome Mobile", "Android", False),
        (ANDROID_TABLET, "tablet", "Chrome", "Android", False),
        # Samsung Internet's family does not say "mobile": the UA's Mobile token does
        (SAMSUNG_PHONE, "mobile", "Samsung Internet", "Android", False),
        (SAMSUNG_TABLET, "tablet", "Samsung Internet", "Android", False),
        (DESKTOP, "desktop", "Chrome", "Windows", False),
        (MAC_FIREFOX, "desktop", "Firefox", "Mac OS X", False),
        (GOOGLEBOT, "bot", "Googlebot", "Other", True),
        # crawlers without a URL in their agent: ua-parser's Spider family alone says bot
        ("Googlebot/2.1", "bot", "Googlebot", "Other", True),
        ("Mozilla/5.0 (compatible; YandexBot/3.0)", "bot", "YandexBot", "Other", True),
        ("", "bot", "Other", "Other", True),
        ("curl/8.5.0", "bot", "curl", "Other", True),
        ("python-requests/2.31.0", "bot", "Python Requests", "Other", True),
        ("Go-http-client/1.1", "bot", "Go-http-client", "Other", True),
        ("Python/3.11 aiohttp/3.9.1", "bot", "Python aiohttp", "Other", True),
        (DESKTOP.replace("Chrome/", "HeadlessChrome/"), "bot", "HeadlessChrome", "Windows", True),
    ],
)
def test_parse_device(user_agent: str, device: str, browser: str, os: str, bot: bool) -> None:
    info = parse_device(user_agent)
    assert (info.device, info.browser, info.os, info.bot) == (device, browser, os, bot)


@pytest.mark.parametrize("user_agent", [
    # ua-parser finds neither a browser nor an OS
    "python-httpx/0.27.0",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "undici",
    "testclient",  # Starlette's TestClient's own
    # a token of SELF_DECLARED in an agent that ua-parser takes for a browser
    BYTESPIDER,
    LIGHTHOUSE,
    "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0 (+https://example.test/about)",
])
def test_automated_clients_that_ua_parser_misses_are_bots(user_agent: str) -> None:
    """A review of 2026-12-05 found python-httpx, node-fetch, undici, Bytespider and
    Chrome-Lighthouse ranked and logged as visitors."""
    assert parse_device(user_agent).bot


SWITCH = ("Mozilla/5.0 (Nintendo Switch; WebApplet) AppleWebKit/609.4 (KHTML, like Gecko) "
          "NF/6.0.2.21.3 NintendoBrowser/5.1.0.22474")
PS4 = "Mozilla/5.0 (PlayStation 4 5.55) AppleWebKit/601.2 (KHTML, like Gecko)"


@pytest.mark.parametrize("user_agent", [
    DESKTOP, MAC_FIREFOX, WINDOWS_FIREFOX, MAC_SAFARI, IPHONE, IPAD, ANDROID_PHONE,
    ANDROID_TABLET, SAMSUNG_PHONE, SAMSUNG_TABLET, FACEBOOK_IOS, INSTAGRAM_ANDROID, CUBOT,
    SWITCH, PS4])
def test_browsers_stay_visitors(user_agent: str) -> None:
    """The bot checks above leave browsers alone, in-app ones, a phone brand with "bot" in
    its name, and consoles whose browser and OS ua-parser does not name (a review of
    2026-12-05 found a Switch and a PS4 counted as bots)."""
    assert not parse_device(user_agent).bot


@pytest.mark.parametrize(
    ("referer", "medium", "expected"),
    [
        (None, None, ("direct", "")),
        ("https://www.google.com/search?q=x", None, ("search", "www.google.com")),
        ("https://www.google.co.uk/", None, ("search", "www.google.co.uk")),
        ("https://duckduckgo.com/", None, ("search", "duckduckgo.com")),
        ("https://t.co/abc", None, ("social", "t.co")),
        ("https://m.facebook.com/", None, ("social", "m.facebook.com")),
        ("https://mail.google.com/mail/u/0", None, ("email", "mail.google.com")),
        ("https://shop.example.com/cart", None, ("internal", "shop.example.com")),
        ("https://blog.other.org/post", None, ("other", "blog.other.org")),
        (None, "email", ("email", "")),
        ("https://blog.other.org/", "newsletter", ("email", "blog.other.org")),
        (None, "social", ("social", "")),
        (None, "cpc", ("search", "")),
        (None, "Email", ("email", "")),
        ("https://mygoogleblog.com/", None, ("other", "mygoogleblog.com")),
        ("https://notx.com/", None, ("other", "notx.com")),
        ("https://www.notfacebook.com/", None, ("other", "www.notfacebook.com")),
        ("not a url", None, ("direct", "")),
    ],
)
def test_classify_referrer(referer: str | None, medium: str | None,
                           expected: tuple[str, str]) -> None:
    assert classify_referrer(referer, "shop.example.com:443", medium) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("fr-CA,fr;q=0.9,en;q=0.5", "fr"),
        ("en;q=0.3, de-DE", "de"),
        ("*", None),
        ("", None),
        (None, None),
        ("zh-Hant-TW", "zh"),
        ("en;q=0, es", "es"),
        ("en;q=abc", None),
        ("de,fr", "de"),
        ("fr;q=0.5, de;q=0.5", "fr"),
    ],
)
def test_primary_language(header: str | None, expected: str | None) -> None:
    assert primary_language(header) == expected


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/localtime", "Not/AZone", "", "a" * 80,
                                  "Europe/Paris\x00", "Europe/../Paris"])
def test_visitor_zone_rejects_junk(name: str) -> None:
    assert visitor_zone(name) is None


def test_local_time_uses_the_visitor_zone() -> None:
    # 2027-01-15 12:30 UTC is a Friday: 21:30 in Tokyo, 07:30 in New York.
    now = dt.datetime(2027, 1, 15, 12, 30, tzinfo=dt.UTC).timestamp()
    assert local_time(now, visitor_zone("Asia/Tokyo")) == (21.5, 4)
    assert local_time(now, visitor_zone("America/New_York")) == (7.5, 4)
    assert local_time(now, visitor_zone("Pacific/Kiritimati")) == (2.5, 5)  # UTC+14: Saturday


def test_utm_params_and_country() -> None:
    query = b"utm_source=news&utm_medium=email&utm_campaign=spring+sale&utm_x=1&q=utm_source"
    assert utm_params(query) == {"utm_source": "news", "utm_medium": "email",
                                 "utm_campaign": "spring sale"}
    assert utm_params(b"a=1") == {}
    assert utm_params(b"utm_source=" + b"x" * 500)["utm_source"] == "x" * 64
    assert country_code(" de ") == "DE"
    assert country_code("XX") is None
    assert country_code("T1") is None
    assert country_code("DEU") is None


def test_utm_values_keep_their_case_and_the_first_of_a_repeat_wins() -> None:
    """Campaign names are the marketer's own (``Spring`` and ``spring`` may be two); a
    repeated parameter (a link tagged twice) counts by its first value."""
    assert utm_params(b"utm_campaign=Spring&utm_source=News") == {"utm_campaign": "Spring",
                                                                   "utm_source": "News"}
    assert utm_params(b"utm_source=first&utm_source=second") == {"utm_source": "first"}


@pytest.mark.parametrize(("value", "expected"), [
    ("ch", "CH"), (" de ", "DE"), ("1A", None), ("A1", None), ("XX", None), ("T1", None),
    ("DEU", None), ("", None), (None, None), ("\u00c9S", None)])
def test_country_codes_are_two_ascii_letters(value: str | None, expected: str | None) -> None:
    assert country_code(value) == expected


def test_cookies_sent_in_separate_headers_are_all_read() -> None:
    """HTTP/2 and HTTP/3 clients may send each cookie in a header of its own, and the ASGI
    scope keeps them apart: all are read (other headers keep their first value)."""
    scope = {"headers": [(b"cookie", b"ef_d=signed"), (b"referer", b"https://a.test/"),
                         (b"cookie", b"ef_tz=Asia/Tokyo"), (b"referer", b"https://b.test/")]}
    headers = header_map(scope)
    assert headers["cookie"] == "ef_d=signed; ef_tz=Asia/Tokyo"
    assert headers["referer"] == "https://a.test/"


def test_request_context(engine: Engine, loop_name: str, clock: Clock,
                         client_for: Callable[..., TestClient]) -> None:
    clock.now = dt.datetime(2027, 1, 15, 12, 30, tzinfo=dt.UTC).timestamp()
    app = make_app(engine, [loop_name], clock=clock, country_header="CF-IPCountry",
                   context_hook=lambda scope: {"plan": "pro", "cart_items": 2})
    client = client_for(app, user_agent=IPHONE)
    put_cookie(client, "ef_tz", "Asia/Tokyo")
    response = client.get(
        "/context?utm_source=news&utm_medium=email&utm_campaign=jan",
        headers={"referer": "https://mail.google.com/", "accept-language": "de-CH, en;q=0.5",
                 "cf-ipcountry": "ch", "x-forwarded-for": "203.0.113.9"},
    )
    ctx: dict[str, Any] = response.json()
    assert ctx == {
        "device": "mobile", "browser": "Mobile Safari", "os": "iOS", "bot": False,
        "hour": 21.5, "weekday": 4, "referrer": "email", "referrer_host": "mail.google.com",
        "returning": False, "visits": 1, "utm_source": "news", "utm_medium": "email",
        "utm_campaign": "jan", "language": "de", "country": "CH", "plan": "pro", "cart_items": 2,
    }
    assert "203.0.113.9" not in response.text and "testclient" not in response.text


def test_bad_timezone_cookie_falls_back_to_server_time(
        engine: Engine, loop_name: str, clock: Clock,
        client_for: Callable[..., TestClient]) -> None:
    client = client_for(make_app(engine, [loop_name], clock=clock))
    put_cookie(client, "ef_tz", "Mars/Olympus_Mons")
    ctx = client.get("/context").json()
    assert (ctx["hour"], ctx["weekday"]) == local_time(clock.now, None)


def test_returning_visitor_and_visit_count(engine: Engine, loop_name: str, clock: Clock,
                                           client_for: Callable[..., TestClient]) -> None:
    client = client_for(make_app(engine, [loop_name], clock=clock))
    first = client.get("/context")
    assert first.json()["returning"] is False
    visitor_cookie = set_cookies(first)["ef_v"]
    assert "Max-Age=31536000" in visitor_cookie and "HttpOnly" in visitor_cookie

    clock.advance(10)  # same visit: no new cookie
    same = client.get("/context")
    assert same.json()["visits"] == 1 and "ef_v" not in set_cookies(same)

    clock.advance(31 * 60)  # after the 30 min gap: a new visit
    second = client.get("/context")
    assert (second.json()["returning"], second.json()["visits"]) == (True, 2)
    assert "ef_v" in set_cookies(second)

    clock.advance(60)  # a new campaign landing starts a visit too
    third = client.get("/context?utm_source=newsletter&utm_medium=email")
    assert third.json()["visits"] == 3


def test_exactly_the_visit_gap_later_is_still_the_same_visit(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    """A new visit starts after *more* than ``visit_gap`` (30 minutes) without a view."""
    client = client_for(make_app(engine, [loop_name], clock=clock))
    client.get("/context")
    clock.advance(30 * 60)
    assert client.get("/context").json()["visits"] == 1
    clock.advance(30 * 60 + 1)
    assert client.get("/context").json()["visits"] == 2


def test_an_untagged_visit_keeps_the_campaign_it_came_back_from(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    """A visit that starts untagged remembers the last campaign: the visitor clicking that
    same campaign link again a minute later is still in the same visit."""
    client = client_for(make_app(engine, [loop_name], clock=clock))
    tagged = "/context?utm_source=news&utm_medium=email&utm_campaign=jan"
    client.get(tagged)
    clock.advance(31 * 60)
    assert client.get("/context").json()["visits"] == 2
    clock.advance(60)
    assert client.get(tagged).json()["visits"] == 2


def test_a_new_medium_for_the_same_source_and_campaign_starts_a_visit(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    """The campaign is source, medium and campaign together: the same newsletter campaign
    shared on social media is a new landing."""
    client = client_for(make_app(engine, [loop_name], clock=clock))
    client.get("/context?utm_source=news&utm_medium=email&utm_campaign=jan")
    clock.advance(60)
    social = "/context?utm_source=news&utm_medium=social&utm_campaign=jan"
    assert client.get(social).json()["visits"] == 2
    clock.advance(60)
    assert client.get(social).json()["visits"] == 2


@pytest.mark.parametrize(("visits", "expected"), [(49, 49), (50, 50), (51, 50), (80, 50)])
def test_the_visit_count_reaches_the_model_capped_at_50(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client, visits: int,
        expected: int) -> None:
    """A regular is a regular: the 80th visit is the model's 50th, so a few long-time
    visitors do not stretch the feature's scale for everyone else."""
    from ef_middleware.web import cookies as ck

    client = client_for(make_app(engine, [loop_name], clock=clock))
    signer = ck.make_serializer((SECRET,), ck.VISITOR_SALT, clock)
    state = ck.VisitorState(ck.new_visitor_id(), visits, int(clock.now))
    put_cookie(client, "ef_v", ck.dump_visitor(signer, state))
    ctx = client.get("/context").json()
    assert (ctx["visits"], ctx["returning"]) == (expected, True)


def test_an_internal_referrer_names_no_host(engine: Engine, loop_name: str,
                                            client_for: Client) -> None:
    """A view from a page of the same site is ``internal``, with no ``referrer_host``
    feature (it would be the site's own name on every internal view)."""
    client = client_for(make_app(engine, [loop_name]))
    ctx = client.get("/context", headers={"referer": "http://testserver/pricing"}).json()
    assert ctx["referrer"] == "internal" and "referrer_host" not in ctx


@pytest.mark.parametrize("value", [None, "XX", "1A"])
def test_no_country_feature_without_a_valid_country_header(
        engine: Engine, loop_name: str, client_for: Client, value: str | None) -> None:
    """A missing or unusable country header leaves the feature out, rather than a
    ``country: null`` the model would learn as a country of its own."""
    app = make_app(engine, [loop_name], country_header="CF-IPCountry")
    headers = {} if value is None else {"cf-ipcountry": value}
    assert "country" not in client_for(app).get("/context", headers=headers).json()


def test_a_visitor_cookie_older_than_its_max_age_is_a_new_visitor(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    """The visitor cookie is signed with its time and read for ``visitor_max_age`` (a year)
    after its last refresh, as its Max-Age tells the browser; past that, even if a client
    still sends it, the visitor is new."""
    client = client_for(make_app(engine, [loop_name], clock=clock))
    client.get("/context")
    year = 365 * 24 * 3600
    clock.advance(year - 60)  # a new visit before the year is over: refreshed
    assert client.get("/context").json()["visits"] == 2
    clock.advance(year + 1)
    again = client.get("/context").json()
    assert (again["returning"], again["visits"]) == (False, 1)


def test_tampered_visitor_cookie_is_a_new_visitor(engine: Engine, loop_name: str, clock: Clock,
                                                  client_for: Callable[..., TestClient]) -> None:
    client = client_for(make_app(engine, [loop_name], clock=clock))
    client.get("/context")
    clock.advance(3600)
    value = client.cookies["ef_v"]
    put_cookie(client, "ef_v", tamper(value))
    assert client.get("/context").json()["visits"] == 1


def test_local_time_ignores_seconds_but_not_minutes() -> None:
    zone = visitor_zone("Europe/Paris")
    minute = 1_800_000_000 // 60 * 60
    assert local_time(minute, zone) == local_time(minute + 59.9, zone)
    assert local_time(minute + 60, zone) != local_time(minute, zone)
    assert local_time(minute, zone) != local_time(minute, visitor_zone("Asia/Tokyo"))


def test_the_device_cache_keeps_what_is_parsed_only() -> None:
    """Agents are cached by the part that is parsed (MAX_UA characters): 2,000 distinct
    100 KB agents held 218 MB when the whole header was the key."""
    from ef_middleware.web.context import MAX_UA, _classify

    _classify.cache_clear()
    head = DESKTOP.ljust(MAX_UA, " ")
    for i in range(50):
        assert parse_device(head + f"{i:04d}" + "x" * 100_000) == parse_device(DESKTOP)
    assert _classify.cache_info().currsize <= 2  # the padded head and DESKTOP itself


def test_zones_missing_from_the_system_come_from_tzdata(tmp_path: Path) -> None:
    """Browsers report old link names (Asia/Calcutta); a system database without them (newer
    Debian moves them to tzdata-legacy) must not turn the visitor's hour into the server's."""
    import subprocess
    import sys

    code = ("from ef_middleware.web.context import visitor_zone; "
            "print([str(visitor_zone(z)) for z in ('Asia/Calcutta', 'Europe/Kiev')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONTZPATH": str(tmp_path)})
    assert done.stdout.strip() == "['Asia/Calcutta', 'Europe/Kiev']"
