"""The routes under the middleware's prefix: ``POST reward``, ``GET ef.js``, ``GET status``.

Every error is JSON ``{"error": {"code": ..., "message": ...}}``. A reward is checked in full
(origin, a visitor who is tracked: not a bot, not opted out, content type, size, JSON, loop,
signed decision cookie, value) before the engine sees it, so nothing is learned from a
rejected request.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ef_middleware.errors import (
    DuplicateRewardError,
    EFError,
    InvalidInputError,
    RewardOutOfRangeError,
    UnknownEventError,
    UnknownLoopError,
)

from . import cookies as ck
from .context import gpc_opt_out, header_map, parse_device
from .settings import Runtime, one_line

__all__ = ["handle", "same_origin"]

DEFAULT_PORTS = {"http": 80, "https": 443}


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error response."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _key(host: str | None, port: int | None, default_ports: tuple[int, ...]) -> str | None:
    if not host:
        return None
    return host.lower() if port is None or port in default_ports else f"{host.lower()}:{port}"


def _origin_netloc(url: str) -> str | None:
    """``host[:port]`` of an Origin or Referer URL, its scheme's default port left out."""
    try:
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            return None
        return _key(parts.hostname, parts.port, (DEFAULT_PORTS[parts.scheme],))
    except ValueError:
        return None


def _host_netloc(host: str) -> str | None:
    """``host[:port]`` of a Host header (the scheme is unknown behind a proxy: 80 and 443
    both count as default)."""
    try:
        parts = urlsplit("//" + host.strip())
        return _key(parts.hostname, parts.port, (80, 443))
    except ValueError:
        return None


def same_origin(headers: dict[str, str], trusted: tuple[str, ...] = ()) -> bool:
    """Whether a request comes from a page of this site.

    ``Sec-Fetch-Site: cross-site`` is refused; an ``Origin`` (or, without one, a ``Referer``)
    must name the request's ``Host`` (or a trusted origin). A request with neither passes.
    The answer depends on those headers alone, and a site's rewards repeat them: it is
    remembered per headers (parsing them with ``urlsplit`` took 46-51 us of the reward route's
    median in the server, docs/benchmarks.md, "The origin check remembered").
    """
    origin = headers.get("origin")
    args = (headers.get("sec-fetch-site", ""), headers.get("host", ""), origin,
            headers.get("referer") if origin is None else None, trusted)
    if len(args[1]) + len(origin or args[3] or "") > MAX_REMEMBERED:  # not kept: checked once
        return _same_origin.__wrapped__(*args)
    return _same_origin(*args)


MAX_REMEMBERED = 2048  # characters of Host and Origin (or Referer) a remembered answer keeps


@functools.lru_cache(maxsize=1024)
def _same_origin(fetch_site: str, host_header: str, origin: str | None, referer: str | None,
                 trusted: tuple[str, ...]) -> bool:
    if fetch_site.strip().lower() == "cross-site":
        return False
    allowed = {n for n in (_origin_netloc(t) for t in trusted) if n}
    host = _host_netloc(host_header)
    if host:
        allowed.add(host)
    for value in (origin, referer):
        if value is not None:
            return _origin_netloc(value.strip()) in allowed
    return True


async def _read_body(receive: Receive, limit: int) -> bytes | Response:
    """The request body, or the error to answer: it exceeds ``limit`` bytes, or the client
    disconnected before its end."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # http.disconnect: the client left mid-body, and what came may parse as JSON all
            # the same (a review of 2026-12-05 found such a reward stored); nobody reads this
            # answer, but it stays well-formed
            return error(400, "bad_request", "the request body ended early")
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            return error(413, "body_too_large", f"a reward body is at most {limit} bytes")
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _value(payload: dict[str, Any]) -> float | str | None:
    """The reward value, ``None`` for "use the default", or an error message."""
    if "value" not in payload or payload["value"] is None:
        return None
    value = payload["value"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "value must be a number"
    try:
        number = float(value)
    except OverflowError:
        return "value must be a finite number"
    if not math.isfinite(number):
        return "value must be a finite number"
    return number


async def reward(rt: Runtime, scope: Scope, receive: Receive) -> Response:
    """``POST {prefix}reward`` with JSON ``{"loop": str, "value": number?}``."""
    s, headers = rt.settings, header_map(scope)
    if not same_origin(headers, s.trusted_origins):
        return error(403, "bad_origin", "rewards are accepted from this site's own pages only")
    # As a page treats them (Personalization.passive): a bot gets no decision, and an
    # opted-out visitor is not tracked, so a decision cookie either sends is not theirs to
    # reward with. Before, both were stored here while ``ef.reward`` refused them.
    if gpc_opt_out(headers, s.honor_gpc):
        return error(403, "not_tracked", "this visitor has opted out (Global Privacy Control)")
    if parse_device(headers.get("user-agent", "")).bot:
        return error(403, "not_tracked", "rewards from automated clients are not taken")
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return error(415, "unsupported_media_type", "send the reward as application/json")
    length = headers.get("content-length", "0").strip()
    # isdigit alone takes "²", which int() refuses, and int() refuses 4,301 digits and more
    digits = len(length) <= 18 and length.isascii() and length.isdigit()
    if not digits or int(length) > s.max_body:
        if not digits:
            return error(400, "bad_request", "invalid Content-Length")
        return error(413, "body_too_large", f"a reward body is at most {s.max_body} bytes")
    body = await _read_body(receive, s.max_body)
    if isinstance(body, Response):
        return body
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        return error(400, "bad_json", "the body is not valid JSON")
    if not isinstance(payload, dict):
        return error(400, "bad_json", 'the body must be a JSON object: {"loop": ..., "value": 1}')
    name = payload.get("loop")
    if not isinstance(name, str) or not 0 < len(name) <= ck.MAX_ID:
        return error(400, "bad_value", "loop must be a non-empty string")
    value = _value(payload)
    if isinstance(value, str):
        return error(400, "bad_value", value)
    try:
        loop = rt.engine.get_loop(name)
    except UnknownLoopError:
        return error(404, "unknown_loop", f"no loop named {name!r}")
    low, high = loop.settings.reward_range
    if value is not None and not low <= value <= high:
        return error(400, "bad_value", f"value must lie within {low}..{high}")
    raw = ck.decision_cookie(rt.decisions, headers.get("cookie", ""), s.decision_cookie,
                             max_age=s.decision_max_age)
    if not raw:
        return error(404, "no_decision", f"this visitor has no decision for loop {name!r}")
    now = rt.now()
    try:
        entries = ck.load_decisions_strict(rt.decisions, raw, max_age=s.decision_max_age)
    except ck.ExpiredDecisionCookie:
        return error(403, "decision_expired", "the decision cookie has expired")
    except ck.BadDecisionCookie:
        return error(403, "bad_signature", "the decision cookie does not verify")
    entry = entries.get(name)
    if entry is None:
        return error(404, "no_decision", f"this visitor has no decision for loop {name!r}")
    if ck.entry_expired(entry, max_age=s.decision_max_age, now=now):
        return error(403, "decision_expired", f"the decision for loop {name!r} has expired")
    try:
        # On the event loop when the store can take the write at once (a lock-free moment:
        # nearly always), else on the writer thread (docs/design.md, "Threads"), which also
        # takes a 'sum' reward whose event has a write still running there.
        write = loop.accept_reward(entry.event_id, value, wait=False)
        if write is None:
            await rt.write(loop.reward, entry.event_id, value)
        elif not write.commit(wait=False):
            await rt.write(write.commit)
    except DuplicateRewardError as exc:
        return error(409, exc.code, str(exc))
    except UnknownEventError as exc:
        return error(404, exc.code, str(exc))
    except (RewardOutOfRangeError, InvalidInputError) as exc:
        return error(400, exc.code, str(exc))
    except EFError as exc:
        rt.warn("reward", name, "ef_middleware: reward for loop %r failed: %s", name,
                one_line(exc))
        return error(503, exc.code, "the reward could not be stored; try again")
    except Exception as exc:  # a bug or a broken store: still a JSON answer, and one log line
        rt.warn("reward", name, "ef_middleware: reward for loop %r failed: %s", name,
                one_line(exc), level=logging.ERROR)
        return error(500, "internal", "the reward could not be stored")
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


def script(rt: Runtime, scope: Scope) -> Response:
    """``GET {prefix}ef.js``: the client script, cacheable, with an ETag per encoding,
    gzipped for a client that accepts it."""
    if not rt.script:
        return error(404, "not_found", "ef.js is not installed")
    headers = header_map(scope)
    zipped = accepts_gzip(headers.get("accept-encoding", ""))
    cache = {"ETag": rt.script_gzip_etag if zipped else rt.script_etag,
             "Cache-Control": "public, max-age=3600", "Vary": "Accept-Encoding"}
    if _matches(headers.get("if-none-match", ""), cache["ETag"]):
        return Response(status_code=304, headers=cache)
    if zipped:
        cache["Content-Encoding"] = "gzip"
    return Response(rt.script_gzip if zipped else rt.script,
                    media_type="text/javascript; charset=utf-8", headers=cache)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header admits gzip: a ``gzip`` (or ``x-gzip``) entry
    decides by its ``q``, wherever it stands among the parameters; without one, ``*`` does
    (RFC 9110, 12.5.3). The first entry of either kind decided, and ``q`` was read as the
    first parameter only: ``*;q=0, gzip`` and ``gzip;level=9;q=1`` were refused (a review of
    2026-12-05)."""
    star = False
    for item in accept_encoding.lower().split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if coding in ("gzip", "x-gzip"):
            return quality > 0
        if coding == "*":
            star = quality > 0
    return star


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110's weak comparison over an ``If-None-Match`` list (``W/`` tags, ``*``): a
    proxy that weakens the ETag, or a list, got the whole script again (a review of
    2026-12-05)."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


async def status(rt: Runtime) -> Response:
    """``GET {prefix}status``: the engine's health (learner thread, embedder queue) and
    per-loop counters (decisions, rewards, updates, decision-log failures)."""
    loops: dict[str, Any] = {}
    for name, loop in rt.engine.loops.items():
        loops[name] = await run_in_threadpool(loop.stats)
    return JSONResponse({"engine": rt.engine.health(), "loops": loops,
                         "web": {"failures": dict(rt.failures)}},
                        headers={"Cache-Control": "no-store"})


async def handle(rt: Runtime, subpath: str, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one request under the prefix."""
    method = scope["method"]
    response: Response
    if subpath == "reward":
        if method != "POST":
            response = error(405, "method_not_allowed", "use POST", {"Allow": "POST"})
        else:
            response = await reward(rt, scope, receive)
    elif subpath == "ef.js":
        if method not in ("GET", "HEAD"):
            response = error(405, "method_not_allowed", "use GET", {"Allow": "GET, HEAD"})
        else:
            response = script(rt, scope)
    elif subpath == "status" and rt.settings.status_route:
        if method not in ("GET", "HEAD"):
            response = error(405, "method_not_allowed", "use GET", {"Allow": "GET, HEAD"})
        else:
            response = await status(rt)
    else:
        response = error(404, "not_found", f"no route {subpath!r} under {rt.settings.prefix}")
    await response(scope, receive, send)
