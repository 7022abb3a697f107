"""Helpers shared by the web tests (a unique module name: tests/ has no packages)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

import ef_middleware
from ef_middleware import Engine
from ef_middleware.web import PersonalizationMiddleware

SECRET = "test-secret-key"
EF_JS = Path(ef_middleware.__file__).parent / "static" / "ef.js"  # the readable source
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")
DESKTOP = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/120.0.0.0 Safari/537.36")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
ACTIONS: list[dict[str, Any]] = [
    {"id": "minimal", "features": {"layout": "minimal", "cta": "Start free trial"}},
    {"id": "detailed", "features": {"layout": "detailed", "cta": "See all features"}},
    {"id": "video", "features": {"layout": "video", "cta": "Watch the demo"}},
    {"id": "testimonial", "features": {"layout": "testimonial", "cta": "Join 10,000 teams"}},
]
_names = itertools.count()


class Clock:
    """A clock tests move by hand (seconds since the epoch)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_app(engine: Engine, loops: list[str], **options: Any) -> Starlette:
    """A Starlette app whose ``/`` shows the variants of ``loops`` as ``loop=id`` lines."""

    async def home(request: Request) -> Response:
        ef = request.scope["ef"]
        lines = [f"{name}={ef.variant(name)}" for name in request.query_params.getlist("loop")
                 or loops]
        return PlainTextResponse("\n".join(lines))

    async def plain(request: Request) -> Response:
        return PlainTextResponse("no personalization here")

    async def context(request: Request) -> Response:
        return JSONResponse(request.scope["ef"].context)

    app = Starlette(routes=[Route("/", home), Route("/plain", plain), Route("/context", context)])
    options.setdefault("secret_key", SECRET)
    app.add_middleware(PersonalizationMiddleware, engine=engine, **options)
    return app


def set_cookies(response: Any) -> dict[str, str]:
    """The raw ``Set-Cookie`` headers of a response by cookie name."""
    found: dict[str, str] = {}
    for header in response.headers.get_list("set-cookie"):
        found[header.split("=", 1)[0]] = header
    return found


def stats(engine: Engine, loop: str) -> dict[str, Any]:
    return engine.get_loop(loop).stats()


def put_cookie(client: TestClient, name: str, value: str) -> None:
    """Replace a cookie in the client's jar (the server's copy has a domain; drop it first)."""
    client.cookies.delete(name)
    client.cookies.set(name, value)


def tamper(value: str) -> str:
    """Change one character in the middle of a signed value's payload."""
    middle = len(value) // 3
    return value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1:]
