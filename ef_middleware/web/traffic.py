"""Simulated visitors for a personalized site, to watch a loop learn.

Each visitor belongs to segments with a favourite variant (mobile visitors convert best on
``video``, returning ones on ``testimonial``, desktop visitors from search on ``detailed``, tablet
ones on ``minimal``). A visitor loads the page like a browser would (user agent, referrer, time
zone cookie, its own cookie jar), reads which variant it was shown, converts with its segment's
probability by posting the reward route with its cookies and an ``Origin`` header, and leaves.

Usage::

    ef-traffic --url http://127.0.0.1:8000 --visitors 500
    python -m ef_middleware.web.traffic --url http://127.0.0.1:8000 --visitors 500  # the same

Needs ``httpx`` (in the ``web`` extra). Only point it at your own server.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

__all__ = ["Visitor", "conversion_rate", "main", "make_visitor", "page_request", "simulate"]

USER_AGENTS = {
    "mobile": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
              "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "tablet": "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
              "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "desktop": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
               "Gecko) Chrome/124.0.0.0 Safari/537.36",
}
REFERRERS = {"search": "https://www.google.com/", "social": "https://t.co/x1",
             "direct": None, "email": None}
ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "America/Los_Angeles", "UTC")
LANGUAGES = ("en-US,en;q=0.9", "fr-FR,fr;q=0.8,en;q=0.5", "de-DE,de;q=0.9", "es-ES,es;q=0.9")
BASE_RATE = {"minimal": 0.06, "detailed": 0.05, "video": 0.04, "testimonial": 0.05}


@dataclass(frozen=True)
class Visitor:
    """One simulated visitor."""

    device: str
    source: str
    returning: bool
    zone: str
    language: str

    @property
    def favourite(self) -> str:
        """The variant this visitor's segment converts best on."""
        if self.returning:
            return "testimonial"
        if self.device == "mobile":
            return "video"
        if self.device == "desktop" and self.source == "search":
            return "detailed"
        return "minimal"

    @property
    def segment(self) -> str:
        if self.returning:
            return "returning"
        if self.device == "desktop" and self.source == "search":
            return "desktop+search"
        return self.device


def conversion_rate(visitor: Visitor, variant: str) -> float:
    """The true chance that ``visitor`` converts when shown ``variant``."""
    if variant == visitor.favourite:
        return 0.30 if visitor.returning else 0.25
    return BASE_RATE.get(variant, 0.05)


def make_visitor(rng: random.Random) -> Visitor:
    """Draw a visitor from the site's audience."""
    device = rng.choices(("mobile", "desktop", "tablet"), weights=(45, 45, 10))[0]
    source = rng.choices(("search", "social", "direct", "email"), weights=(35, 20, 35, 10))[0]
    return Visitor(device, source, rng.random() < 0.25, rng.choice(ZONES), rng.choice(LANGUAGES))


class _VariantFinder(HTMLParser):
    """Finds the first ``data-ef-variant`` attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.variant: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "data-ef-variant" and self.variant is None:
                self.variant = value


def _shown_variant(html: str) -> str | None:
    finder = _VariantFinder()
    finder.feed(html)
    return finder.variant


def _origin(client: httpx.Client) -> str:
    url = client.base_url
    default = {"http": 80, "https": 443}.get(url.scheme)
    port = "" if url.port in (None, default) else f":{url.port}"
    return f"{url.scheme}://{url.host}{port}"


def page_request(visitor: Visitor, path: str = "/", query: str = "") -> tuple[str, dict[str, str]]:
    """The URL (path and query) and headers of ``visitor``'s page view, as a browser sends
    them (cookies aside): user agent, language, referrer, and a campaign for email visitors."""
    headers = {"user-agent": USER_AGENTS[visitor.device], "accept-language": visitor.language}
    referer = REFERRERS[visitor.source]
    if referer:
        headers["referer"] = referer
    if visitor.source == "email" and not query:
        query = "utm_source=newsletter&utm_medium=email&utm_campaign=launch"
    return path + ("?" + query if query else ""), headers


def _view(client: httpx.Client, visitor: Visitor, path: str, query: str) -> str | None:
    url, headers = page_request(visitor, path, query)
    response = client.get(url, headers=headers)
    response.raise_for_status()
    return _shown_variant(response.text)


def visit(client: httpx.Client, visitor: Visitor, rng: random.Random, *, path: str = "/",
          loop: str = "homepage-hero", prefix: str = "/_ef/",
          answers: Counter[int] | None = None) -> tuple[str | None, bool]:
    """Play one visitor; returns the variant shown and whether the visitor converted (its
    reward was accepted). ``answers`` counts the reward route's status codes."""
    client.cookies.clear()
    client.cookies.set("ef_tz", visitor.zone)  # what ef.js would have set
    if visitor.returning:
        _view(client, visitor, path, "")  # an earlier visit...
        client.cookies.delete("ef_d")  # ...long enough ago that its decision is no longer sticky
        variant = _view(client, visitor, path,
                        "utm_source=newsletter&utm_medium=email&utm_campaign=weekly")
    else:
        variant = _view(client, visitor, path, "")
    if variant is None or rng.random() >= conversion_rate(visitor, variant):
        return variant, False
    response = client.post(f"{prefix}reward", content=json.dumps({"loop": loop}),
                           headers={"content-type": "application/json",
                                    "origin": _origin(client),
                                    "user-agent": USER_AGENTS[visitor.device]})
    if answers is not None:
        answers[response.status_code] += 1
    return variant, response.status_code == 204


def simulate(client: httpx.Client, visitors: int, *, seed: int = 0, path: str = "/",
             loop: str = "homepage-hero", prefix: str = "/_ef/", report_every: int = 100,
             delay: float = 0.0, out: Any = sys.stdout) -> dict[str, Any]:
    """Run ``visitors`` simulated visitors against ``client``'s base URL and report progress.

    Returns
    -------
    dict
        ``visitors`` (played: fewer if interrupted), ``conversions``, ``shown`` (variant
        counts), ``reward_answers`` (the reward route's status codes: a refused reward, a
        misspelt loop's 404 say, is no conversion), ``interrupted`` (Ctrl-C) and per window
        the share of visitors shown their segment's favourite variant (``windows``).
    """
    rng = random.Random(seed)
    totals: Counter[str] = Counter()
    answers: Counter[int] = Counter()
    conversions = 0
    played = 0
    windows: list[dict[str, Any]] = []
    window_hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    window_conv = 0
    print(f"{'visitors':>10} {'conv. rate':>10} {'favourite shown':>16}   by segment", file=out)
    interrupted = False
    for i in range(1, visitors + 1):
        visitor = make_visitor(rng)
        try:
            variant, converted = visit(client, visitor, rng, path=path, loop=loop,
                                       prefix=prefix, answers=answers)
        except KeyboardInterrupt:  # Ctrl-C: the totals so far, not a traceback
            interrupted = True
            break
        played = i
        totals[variant or "?"] += 1
        conversions += converted
        window_conv += converted
        hit = window_hits[visitor.segment]
        hit[0] += variant == visitor.favourite
        hit[1] += 1
        if i % report_every == 0 or i == visitors:
            size = (i - 1) % report_every + 1
            fav = sum(h[0] for h in window_hits.values()) / max(1, size)
            by_segment = {s: round(h[0] / h[1], 2) for s, h in sorted(window_hits.items())}
            windows.append({"until": i, "conversion_rate": window_conv / size,
                            "favourite_share": fav, "by_segment": by_segment})
            segs = "  ".join(f"{s} {v:.0%}" for s, v in by_segment.items())
            print(f"{i - size + 1:>4}-{i:<5} {window_conv / size:>10.1%} {fav:>16.0%}   {segs}",
                  file=out, flush=True)
            window_hits.clear()
            window_conv = 0
        if delay:
            try:
                time.sleep(delay)
            except KeyboardInterrupt:
                interrupted = True
                break
    return {"visitors": played, "conversions": conversions, "shown": dict(totals),
            "reward_answers": dict(answers), "interrupted": interrupted, "windows": windows}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="ef-traffic",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the site's base URL")
    parser.add_argument("--visitors", type=int, default=500, help="how many visitors")
    parser.add_argument("--loop", default="homepage-hero", help="loop the page personalizes")
    parser.add_argument("--path", default="/", help="the personalized page")
    parser.add_argument("--prefix", default="/_ef/", help="the middleware's route prefix")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--report-every", type=int, default=100, help="visitors per line")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between visitors")
    args = parser.parse_args(argv)
    if args.visitors < 1 or args.report_every < 1:
        parser.error("--visitors and --report-every must be positive")
    try:
        import httpx
    except ImportError:
        print("the traffic generator needs httpx: pip install 'ef-middleware[web]'",
              file=sys.stderr)
        return 2
    with httpx.Client(base_url=args.url, timeout=30.0) as client:
        try:
            result = simulate(client, args.visitors, seed=args.seed, path=args.path,
                              loop=args.loop, prefix=args.prefix, report_every=args.report_every,
                              delay=args.delay)
        except httpx.HTTPError as exc:
            print(f"traffic: {exc}", file=sys.stderr)
            return 1
        print(f"{result['conversions']} conversions from {result['visitors']} visitors; "
              f"shown: {json.dumps(result['shown'], sort_keys=True)}")
        refused = {code: n for code, n in result["reward_answers"].items() if code != 204}
        if refused:
            print(f"traffic: the reward route refused {sum(refused.values())} rewards "
                  f"(status: count {json.dumps(refused, sort_keys=True)}): check --loop, "
                  "--prefix and the server's log", file=sys.stderr)
        if result["interrupted"]:
            return 130
        status = client.get(f"{args.prefix}status")
        if status.status_code == 200:
            print("server:", json.dumps(status.json().get("loops", {}).get(args.loop, {})))
    return 1 if refused and not result["conversions"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
