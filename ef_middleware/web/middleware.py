"""``PersonalizationMiddleware``: pure ASGI, like Starlette's own middleware."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import routes
from .personalization import AfterResponse, Personalization
from .settings import ContextHook, Runtime, WebSettings, logger, one_line, secret_keys_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from ef_middleware.engine import Engine

__all__ = ["PersonalizationMiddleware", "with_cookies"]


def with_cookies(headers: Iterable[tuple[bytes, bytes]],
                 cookies: Iterable[str]) -> list[tuple[bytes, bytes]]:
    """Raw response headers of a personalized page: one ``set-cookie`` per cookie, ``Cookie``
    in ``vary`` and ``Cache-Control: private``.

    An existing ``vary`` header is extended (unless it already names ``Cookie`` or is ``*``);
    otherwise one is added. The response varies by cookie even when no cookie is set.
    ``private`` keeps shared caches (a CDN, a caching proxy) from serving one visitor's
    variant, and the cookies that name it, to others: a ``cache-control`` the application
    set is kept when it says ``private`` or ``no-store``, and otherwise gets ``private`` in
    place of ``public`` and ``s-maxage`` (its other directives stay).
    """
    out = list(headers)
    out.extend((b"set-cookie", value.encode("latin-1")) for value in cookies)
    vary = -1
    cache_control = False
    for i, (name, value) in enumerate(out):
        lower = name.lower()
        if lower == b"vary" and vary < 0:
            vary = i
        elif lower == b"cache-control":
            cache_control = True
            out[i] = (name, _private(value))
    if vary < 0:
        out.append((b"vary", b"Cookie"))
    else:
        name, value = out[vary]
        tokens = {t.strip().lower() for t in value.split(b",")}
        if not tokens & {b"cookie", b"*"}:
            out[vary] = (name, value + b", Cookie" if value.strip() else b"Cookie")
    if not cache_control:
        out.append((b"cache-control", b"private"))
    return out


def _private(cache_control: bytes) -> bytes:
    """A ``cache-control`` value that no shared cache may store the response under."""
    directives = [d.strip() for d in cache_control.split(b",") if d.strip()]
    names = [d.split(b"=")[0].strip().lower() for d in directives]
    # 'private="set-cookie"' names fields only: a shared cache may still store the page
    if b"private" in (d.lower() for d in directives) or b"no-store" in names:
        return cache_control
    kept = [d for d, n in zip(directives, names, strict=True) if n not in (b"public", b"s-maxage")]
    return b", ".join([b"private", *kept])


class PersonalizationMiddleware:
    """Show each visitor the variant a contextual bandit picks for them.

    Puts a :class:`~ef_middleware.web.Personalization` at ``scope["ef"]`` for every HTTP
    request (nothing is computed until a variant is asked for), sets the signed cookies on the
    response, answers the routes under ``prefix`` (``reward``, ``ef.js``, ``status``) and, on the
    ``lifespan`` scope, starts the engine's learner at startup and closes the engine (saving the
    models) at shutdown.

    Parameters
    ----------
    app
        The ASGI app to wrap.
    engine
        The :class:`~ef_middleware.Engine` whose loops are served.
    secret_key
        Signing key, or a list of keys newest first: the first signs, all verify (rotation).
    prefix
        Path prefix of the middleware's routes (default ``/_ef/``).
    sticky_seconds
        A visitor keeps a loop's variant this long (default 30 minutes; uniform A/B loops keep
        it for ``decision_max_age``). A sticky re-view is not a new decision.
    decision_max_age
        Lifetime of the decision cookie and of a decision's right to a reward (default 7 days).
    visitor_max_age
        Lifetime of the first-party visitor-id cookie (default 365 days).
    visit_gap
        Inactivity, in seconds, after which a page view starts a new visit (default 30 min);
        a landing from a new UTM campaign starts one too.
    secure
        Mark cookies ``Secure`` (serve over HTTPS).
    cookie_domain, cookie_path
        ``Domain`` and ``Path`` attributes of the cookies. ef.js writes the time zone cookie
        with the same domain (``data-cookie-domain`` on its tag) and path ``/``.
    decision_cookie, visitor_cookie, tz_cookie
        Cookie names (``ef_d``, ``ef_v``, and ``ef_tz`` which ef.js sets).
    country_header
        A header with the visitor's country code set by your CDN, e.g. ``cf-ipcountry``.
    context_hook
        ``hook(scope) -> dict`` of extra context features (called once per ranked request).
        If it raises or returns something else than a mapping, the request is ranked without
        its features and one line is logged; a value a context cannot hold (a dict, NaN) is
        left out the same way, the hook's other features kept. Its keys are lower-cased and
        stripped, as the engine compares names; one that names a built-in feature (``hour``,
        ``device``) replaces it.
    honor_gpc
        Honour Global Privacy Control: requests with ``Sec-GPC: 1`` get default variants and
        no cookies, and ef.js (``data-gpc="true"``) sends nothing.
    max_body
        Largest reward body accepted, in bytes.
    trusted_origins
        Extra origins (``https://www.example.com``) allowed to post rewards.
    status_route
        Serve ``GET {prefix}status`` with per-loop counters (off by default).
    freeze_gc
        At startup, after the engine is loaded, move every object that exists into the garbage
        collector's permanent generation (``gc.freeze()``): full collections then skip the
        app and the engine. On by default. (The default embedder freezes again once it has
        loaded its model, on first use; ``SentenceTransformerEmbedder(freeze_gc=False)``
        turns that off.)
    clock
        Seconds since the epoch; tests inject one.

    Examples
    --------
    >>> app.add_middleware(PersonalizationMiddleware, engine=engine,
    ...                    secret_key=os.environ["EF_SECRET_KEY"])  # doctest: +SKIP
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: Engine,
        secret_key: str | Sequence[str],
        prefix: str = "/_ef/",
        sticky_seconds: float = 1800.0,
        decision_max_age: int = 7 * 86_400,
        visitor_max_age: int = 365 * 86_400,
        visit_gap: int = 1800,
        secure: bool = False,
        cookie_domain: str | None = None,
        cookie_path: str = "/",
        decision_cookie: str = "ef_d",
        visitor_cookie: str = "ef_v",
        tz_cookie: str = "ef_tz",
        country_header: str | None = None,
        context_hook: ContextHook | None = None,
        honor_gpc: bool = False,
        max_body: int = 4096,
        trusted_origins: Sequence[str] = (),
        status_route: bool = False,
        freeze_gc: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.app = app
        settings = WebSettings(
            secret_keys=secret_keys_of(secret_key), prefix=prefix, sticky_seconds=sticky_seconds,
            decision_max_age=decision_max_age, visitor_max_age=visitor_max_age,
            visit_gap=visit_gap, secure=secure, cookie_domain=cookie_domain,
            cookie_path=cookie_path, decision_cookie=decision_cookie,
            visitor_cookie=visitor_cookie, tz_cookie=tz_cookie, country_header=country_header,
            context_hook=context_hook, honor_gpc=honor_gpc, max_body=max_body,
            trusted_origins=tuple(trusted_origins), status_route=status_route, freeze_gc=freeze_gc,
            **({"clock": clock} if clock is not None else {}),
        )
        self.runtime = Runtime(engine, settings)
        self._after = AfterResponse(self.runtime)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        prefix = self.runtime.settings.prefix
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if path.startswith(prefix):
            await routes.handle(self.runtime, path[len(prefix):], scope, receive, send)
            return

        ef = Personalization(scope, self.runtime)
        scope["ef"] = ef

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                ef.headers_sent = True  # from now on, a new decision could not be signed
                if ef.touched:
                    try:
                        message["headers"] = with_cookies(message.get("headers", ()),
                                                          ef.cookie_headers())
                    except Exception as exc:  # never break the host page
                        self.runtime.warn("cookies", None,
                                          "ef_middleware: could not set cookies: %s",
                                          one_line(exc))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # scope -> ef -> scope is a reference cycle: left alone, every page view would wait
            # for the cyclic garbage collector (a full collection pauses the server). What
            # stays holds no scope (an error page rendered outside gets default variants).
            scope["ef"] = self._after

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await run_in_threadpool(runtime.startup)
                except Exception as exc:  # the host app's own startup must still run
                    logger.error("ef_middleware: starting the engine failed: %s", one_line(exc))
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                try:
                    await run_in_threadpool(runtime.shutdown)
                except Exception as exc:
                    logger.error("ef_middleware: closing the engine failed: %s", one_line(exc))
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)
