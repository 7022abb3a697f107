"""The middleware's configuration and the shared, per-app runtime (engine, signers, script)."""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from markupsafe import Markup
from starlette.types import Scope

from ef_middleware.errors import ConfigurationError
from ef_middleware.store import release_thread
from ef_middleware.throttle import Throttle, held_back

from .context import parse_device
from .cookies import DECISIONS_SALT, VISITOR_SALT, cookie_attributes, make_serializer

try:
    from rjsmin import jsmin
except ImportError:  # an install from before rjsmin joined the web extra
    jsmin = None

if TYPE_CHECKING:
    from itsdangerous import URLSafeTimedSerializer

    from ef_middleware.engine import Engine

__all__ = ["ContextHook", "Runtime", "WebSettings", "logger", "one_line"]

logger = logging.getLogger("ef_middleware")

ContextHook = Callable[[Scope], Mapping[str, Any]]
_T = TypeVar("_T")
MINUTE, DAY = 60, 86_400


@dataclass(frozen=True)
class WebSettings:
    """Options of :class:`~ef_middleware.web.PersonalizationMiddleware` (see its docstring)."""

    secret_keys: tuple[str, ...]
    prefix: str = "/_ef/"
    sticky_seconds: float = 30 * MINUTE
    decision_max_age: int = 7 * DAY
    visitor_max_age: int = 365 * DAY
    visit_gap: int = 30 * MINUTE
    secure: bool = False
    cookie_domain: str | None = None
    cookie_path: str = "/"
    decision_cookie: str = "ef_d"
    visitor_cookie: str = "ef_v"
    tz_cookie: str = "ef_tz"
    country_header: str | None = None
    context_hook: ContextHook | None = None
    honor_gpc: bool = False
    max_body: int = 4096
    trusted_origins: tuple[str, ...] = ()
    status_route: bool = False
    freeze_gc: bool = True
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        if not self.secret_keys or not all(isinstance(k, str) and k for k in self.secret_keys):
            raise ConfigurationError(
                "secret_key must be a non-empty string or a list of them (newest first), "
                "e.g. secret_key=os.environ['EF_SECRET_KEY']"
            )
        prefix = "/" + self.prefix.strip("/") + "/"
        if prefix == "//":
            raise ConfigurationError("prefix must name a path segment, e.g. '/_ef/'")
        object.__setattr__(self, "prefix", prefix)
        if self.sticky_seconds < 0:
            raise ConfigurationError("sticky_seconds must be >= 0 (0 turns stickiness off)")
        for name in ("decision_max_age", "visitor_max_age", "visit_gap", "max_body"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be a positive number of seconds/bytes")
        names = (self.decision_cookie, self.visitor_cookie, self.tz_cookie)
        if len(set(names)) != 3 or not all(n and n.isascii() and n.isidentifier() for n in names):
            raise ConfigurationError("cookie names must be distinct ASCII identifiers")
        for name in ("cookie_domain", "cookie_path"):  # they go into cookie attributes
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.isascii() and value
                                          and not set(value) & _COOKIE_SEPARATORS):
                raise ConfigurationError(f"{name} must be a non-empty ASCII string without "
                                         f"';', ',', '=' or spaces, not {value!r}")
        if self.country_header is not None:
            object.__setattr__(self, "country_header", self.country_header.lower())


_COOKIE_SEPARATORS = frozenset(';,= \t\r\n"')


def one_line(exc: BaseException) -> str:
    """An exception as one short log line (type and message, whitespace collapsed)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def secret_keys_of(secret_key: str | Sequence[str] | None) -> tuple[str, ...]:
    """Accept one key or a list of keys (newest first). ``None`` (an unset environment
    variable) gives no key, which :class:`WebSettings` refuses with its own message instead
    of a ``TypeError`` (a review of 2026-12-05)."""
    if isinstance(secret_key, str):
        return (secret_key,)
    if secret_key is None or not isinstance(secret_key, Iterable):
        return ()
    return tuple(secret_key)


def _load_script() -> bytes:
    """ef.js as served: minified by rjsmin (whitespace and comments out, its licence comment
    kept), once per app; the package keeps the readable source."""
    try:
        source = resources.files("ef_middleware").joinpath("static/ef.js").read_bytes()
    except (OSError, ModuleNotFoundError) as exc:  # a broken install; pages still work
        logger.warning("ef_middleware: static/ef.js is missing from the install: %s", exc)
        return b""
    if jsmin is None:
        logger.warning("ef_middleware: rjsmin is not installed: serving ef.js unminified "
                       "(pip install 'ef-middleware[web]')")
        return source
    return bytes(jsmin(source, keep_bang_comments=True))


class Runtime:
    """What every request of one app shares: the engine, the settings, the signers, ef.js.

    Parameters
    ----------
    engine
        The :class:`~ef_middleware.Engine` whose loops are served.
    settings
        Validated options.
    """

    def __init__(self, engine: Engine, settings: WebSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.decisions: URLSafeTimedSerializer = make_serializer(
            settings.secret_keys, DECISIONS_SALT, settings.clock
        )
        self.visitors: URLSafeTimedSerializer = make_serializer(
            settings.secret_keys, VISITOR_SALT, settings.clock
        )
        self.script = _load_script()
        self.script_etag = '"' + hashlib.sha256(self.script).hexdigest()[:16] + '"'
        # Served to browsers that accept gzip (all of them): 2 KB instead of 4.
        self.script_gzip = gzip.compress(self.script, 9, mtime=0) if self.script else b""
        self.script_gzip_etag = self.script_etag[:-1] + '-gz"'
        self.script_tags: dict[tuple[str, bool], Markup] = {}
        """``<script>`` tags without a nonce, by root path and stub (``Personalization.script``)."""
        common: dict[str, Any] = {"path": settings.cookie_path, "secure": settings.secure,
                                  "domain": settings.cookie_domain}
        self.decision_cookie_attributes = cookie_attributes(max_age=settings.decision_max_age,
                                                            **common)
        self.visitor_cookie_attributes = cookie_attributes(max_age=settings.visitor_max_age,
                                                           **common)
        # Rewards are written by one thread, in arrival order: the event loop never waits on
        # the disk, and the writes of one process never contend with each other.
        self._writer: ThreadPoolExecutor | None = None
        self.failures: Counter[str] = Counter()
        """Failures the pages and the reward route survived, by kind (``GET status``)."""
        self._warnings = Throttle(clock=settings.clock)

    def warn(self, kind: str, subject: object, message: str, *args: object,
             level: int = logging.WARNING) -> None:
        """Count a failure of ``kind`` and log it in one line: at most one a minute per kind,
        ``subject`` (a loop) and level, ending with how many were held back since, so a
        failure on every page view does not flood the host's log (an error is never held
        back by a warning of the same kind)."""
        self.failures[kind] += 1
        held = self._warnings.allow((kind, subject, level))
        if held is not None:
            logger.log(level, message + "%s", *args, held_back(held))

    async def write(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` (a blocking store write) on the writer thread and await it."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ef-writer")
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    def now(self) -> float:
        """The injected clock's time in seconds."""
        return self.settings.clock()

    def startup(self) -> None:
        """Start the learner, warm the user-agent parser and, with ``freeze_gc``, take what
        exists now (model, torch, the app) out of the cyclic garbage collector's passes."""
        self.engine.start()
        parse_device("Mozilla/5.0 (X11; Linux x86_64) Warm-up")
        if self.settings.freeze_gc:
            # A full collection over torch and the embedding model took 324 ms here, and one
            # comes every ~100k long-lived new objects (pending decisions): a server-wide pause.
            gc.collect()
            gc.freeze()

    def shutdown(self) -> None:
        """Finish the pending reward writes, stop the learner and save every model."""
        if self._writer is not None:
            # The writer's own store connections, closed on its thread before it ends (else
            # they stayed open until a full garbage collection, as the learner's did)
            self._writer.submit(release_thread, self.engine.store)
            self._writer.shutdown(wait=True)
            self._writer = None
        self.engine.close()
