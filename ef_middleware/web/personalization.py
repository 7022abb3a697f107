"""The per-request object at ``scope["ef"]``: lazy context, sticky variants, cookies to set."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape
from starlette.requests import cookie_parser
from starlette.types import Scope

from ..features import is_feature_value
from . import cookies as ck
from .context import (
    DeviceInfo,
    campaign_of,
    classify_referrer,
    country_code,
    gpc_opt_out,
    header_map,
    local_time,
    parse_device,
    primary_language,
    utm_params,
    visitor_zone,
)
from .settings import Runtime, one_line
from .variant import NoDecisionError, Variant

if TYPE_CHECKING:
    from ef_middleware.loop import Loop

__all__ = ["NoDecisionError", "Personalization", "Variant"]

# What {{ ef.script() }} puts before the ef.js tag: ef.convert(...) queues until ef.js has loaded
# (ef.js then replaces it and sends the queue). No global but window.ef.
SCRIPT_STUB = ("(function(w){var e=w.ef=w.ef||{q:[]};e.convert=e.convert||function(l,v){"
               '(e.q=e.q||[]).push(["convert",l,v])}})(window)')
MAX_VISITS = 50  # the visit count reaches the model capped (a regular is a regular)
SCRIPT_TAGS = 64  # root paths whose script tags are kept (Mount("/{tenant}") makes one each)


def default_variant(runtime: Runtime, loop: str) -> Variant:
    """``loop``'s default (first) variant, not logged; for an unknown loop (or a closed
    engine) an empty one: nothing to show, and the page still renders."""
    try:
        decision = runtime.engine.get_loop(loop).default_decision()
    except Exception:
        return Variant(loop, "", {}, default=True)
    return Variant.from_decision(decision, default=True)


class AfterResponse:
    """What ``scope["ef"]`` holds once the middleware has answered: a page rendered after it
    (an error page of Starlette's ``ServerErrorMiddleware``, outside every other middleware)
    gets each loop's default variant and no script; nothing is decided or logged. Before
    (a review of 2026-12-05), ``ef_context`` raised there and a custom 500 page came out
    empty. It holds the runtime only, not the scope: no reference cycle."""

    __slots__ = ("_rt",)

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    @property
    def context(self) -> dict[str, Any]:
        return {}

    def variant(self, loop: str) -> Variant:
        return default_variant(self._rt, loop)

    def script(self, *, nonce: str | None = None, stub: bool = True) -> Markup:
        return Markup("")


class Personalization:
    """What the middleware puts at ``scope["ef"]`` for each HTTP request.

    Nothing is computed until asked: the visitor context is built on the first
    :meth:`variant` call, from headers and cookies only.

    Parameters
    ----------
    scope
        The request's ASGI scope.
    runtime
        The app's shared :class:`~ef_middleware.web.settings.Runtime`.
    """

    def __init__(self, scope: Scope, runtime: Runtime) -> None:
        self._scope = scope
        # The root path the middleware was called under: a Mount inside the app changes the
        # scope's own before a template asks for ef.script(), and the middleware serves its
        # prefix under this one (a review of 2026-12-05: a mounted page's tag gave 404s).
        self._root: str = scope.get("root_path", "")
        self._rt = runtime
        self._now = runtime.now()
        self._headers: dict[str, str] | None = None
        self._cookies: dict[str, str] | None = None
        self._device: DeviceInfo | None = None
        self._context: dict[str, Any] | None = None
        self._utm: dict[str, str] | None = None
        self._incoming: dict[str, ck.DecisionEntry] | None = None
        self._new: dict[str, ck.DecisionEntry] = {}
        self._visitor: ck.VisitorState | None = None
        self._visitor_changed = False
        self.decisions: dict[str, Variant] = {}
        """This request's variants by loop name."""
        self.headers_sent = False
        """The response's headers are gone (a streamed body): a new decision could not reach
        the cookie, so none is made (the default variant is served, one line logged)."""

    @property
    def runtime(self) -> Runtime:
        """The app's shared runtime: settings, signers, the failures survived."""
        return self._rt

    # -- request data ----------------------------------------------------------------------
    @property
    def headers(self) -> dict[str, str]:
        """Request headers, lower-cased names, first value (cookies joined)."""
        if self._headers is None:
            self._headers = header_map(self._scope)
        return self._headers

    @property
    def cookies(self) -> dict[str, str]:
        """Request cookies."""
        if self._cookies is None:
            self._cookies = cookie_parser(self.headers.get("cookie", ""))
        return self._cookies

    @property
    def device(self) -> DeviceInfo:
        """Device type, browser and OS families and bot flag, from ua-parser."""
        if self._device is None:
            self._device = parse_device(self.headers.get("user-agent", ""))
        return self._device

    @property
    def is_bot(self) -> bool:
        """A crawler or a client without a user agent: default variants, never logged."""
        return self.device.bot

    @property
    def opted_out(self) -> bool:
        """Global Privacy Control (``Sec-GPC: 1``) when the middleware honours it."""
        return gpc_opt_out(self.headers, self._rt.settings.honor_gpc)

    @property
    def unseen(self) -> bool:
        """A ``HEAD`` request: no one sees its page (uptime monitors and link checkers send
        them), so nothing is decided, logged or counted. Before, each one logged a decision
        that then counted as a non-conversion."""
        return self._scope.get("method") == "HEAD"

    @property
    def passive(self) -> bool:
        """Default variants, nothing logged, no cookie: a bot, an opted-out visitor or a
        ``HEAD`` request."""
        return self.unseen or self.is_bot or self.opted_out

    @property
    def utm(self) -> dict[str, str]:
        """UTM parameters of the query string."""
        if self._utm is None:
            self._utm = utm_params(self._scope.get("query_string", b""))
        return self._utm

    @property
    def visitor(self) -> ck.VisitorState | None:
        """The first-party visitor state (``None`` for bots, opted-out visitors and ``HEAD``
        requests)."""
        if self._visitor is None and not self.passive:
            self._visitor = self._visit()
        return self._visitor

    def _visit(self) -> ck.VisitorState:
        s, now = self._rt.settings, int(self._now)
        state = ck.load_visitor(self._rt.visitors, self.cookies.get(s.visitor_cookie),
                                max_age=s.visitor_max_age)
        campaign = campaign_of(self.utm)
        if state is None:
            state = ck.VisitorState(ck.new_visitor_id(), 1, now, campaign)
        elif now - state.last_seen > s.visit_gap or (campaign and campaign != state.campaign):
            state = ck.VisitorState(state.id, state.visits + 1, now, campaign or state.campaign)
        elif now - state.last_seen >= 60:  # keep the visit alive, at most once a minute
            state = replace(state, last_seen=now)
        else:
            return state
        self._visitor_changed = True
        return state

    def _keep_visit_alive(self) -> None:
        """Refresh the visitor cookie's ``last_seen`` (at most once a minute) on a sticky view.

        A cookie signed less than a minute ago needs nothing, so its signature is not even
        checked (none of its data is used here).
        """
        if self.passive:
            return
        raw = self.cookies.get(self._rt.settings.visitor_cookie)
        age = ck.signed_age(self._rt.visitors, raw, self._now)
        if age is None or not 0 <= age < 60:
            self.visitor  # noqa: B018 - verifies, then counts or refreshes the visit

    @property
    def context(self) -> dict[str, Any]:
        """The visitor context handed to :meth:`Loop.rank` (built once, on first use)."""
        if self._context is None:
            self._context = self._build_context()
        return self._context

    def _build_context(self) -> dict[str, Any]:
        s, headers = self._rt.settings, self.headers
        info = self.device
        ctx: dict[str, Any] = {"device": info.device, "browser": info.browser, "os": info.os,
                               "bot": info.bot}
        ctx["hour"], ctx["weekday"] = local_time(
            self._now, visitor_zone(self.cookies.get(s.tz_cookie)))
        utm = self.utm
        ref_class, ref_host = classify_referrer(
            headers.get("referer"), headers.get("host"), utm.get("utm_medium"))
        ctx["referrer"] = ref_class
        if ref_host and ref_class != "internal":
            ctx["referrer_host"] = ref_host
        visitor = self.visitor
        visits = visitor.visits if visitor else 0
        ctx["returning"] = visits > 1
        ctx["visits"] = min(visits, MAX_VISITS)
        ctx.update(utm)
        language = primary_language(headers.get("accept-language"))
        if language:
            ctx["language"] = language
        if s.country_header:
            country = country_code(headers.get(s.country_header))
            if country:
                ctx["country"] = country
        if s.context_hook is not None:
            try:
                extra = list(s.context_hook(self._scope).items())
            except Exception as exc:  # the host's code: its features are left out this time
                self._rt.warn("context_hook", None, "ef_middleware: the context hook failed, "
                              "its features are left out: %s", one_line(exc))
            else:
                # A value the engine refuses (a dict, NaN) made every rank fail, and every
                # visitor got the default variant (a review of 2026-12-05): that feature is
                # left out instead.
                # Keys are taken as the engine compares them, lower-cased and stripped: a
                # hook's "Hour" beside the built-in "hour" made every rank refuse the
                # context (two numbers of one name), and every visitor got the default.
                refused = []
                for key, value in extra:
                    if is_feature_value(value):
                        ctx[str(key).strip().lower()] = value
                    else:
                        refused.append(str(key))
                if refused:
                    self._rt.warn("context_hook", None, "ef_middleware: the context hook gave "
                                  "values a context cannot hold, left out: %s",
                                  ", ".join(refused)[:200])
        return ctx

    # -- decisions -------------------------------------------------------------------------
    def _incoming_entries(self) -> dict[str, ck.DecisionEntry]:
        if self._incoming is None:
            s = self._rt.settings
            raw = self.cookies.get(s.decision_cookie)
            header = self.headers.get("cookie", "")
            if raw is not None and header.count(s.decision_cookie) > 1:
                # Perhaps two cookies of that name (a host-only and a Domain= one): self.cookies
                # kept the last, and ours may be the other (a review of 2026-12-05). Only then
                # is the header parsed again.
                raw = ck.decision_cookie(self._rt.decisions, header, s.decision_cookie,
                                         max_age=s.decision_max_age)
            self._incoming = ck.load_decisions(self._rt.decisions, raw,
                                               max_age=s.decision_max_age, now=self._now)
        return self._incoming

    def variant(self, loop: str) -> Variant:
        """The variant of ``loop`` for this visitor; decided on first call, then cached.

        Never raises: on any failure the loop's default (first) variant is served and one line
        is logged on the ``ef_middleware`` logger.
        """
        found = self.decisions.get(loop)
        if found is None:
            try:
                found = self._choose(loop)
            except Exception as exc:
                found = self._fallback(loop, exc)
            self.decisions[loop] = found
        return found

    def _choose(self, name: str) -> Variant:
        loop = self._rt.engine.get_loop(name)
        if self.passive:
            return Variant.from_decision(loop.default_decision(), default=True)
        entry = self._incoming_entries().get(name)
        if entry is not None and self._still_sticky(loop, entry):
            for action in loop.actions:
                if action.id == entry.action_id:
                    self._keep_visit_alive()
                    return Variant(name, action.id, action.features, event_id=entry.event_id,
                                   sticky=True)
        if self.headers_sent:
            raise RuntimeError("the response's headers were sent before this variant was asked"
                               " for: a decision made now could not be signed into the cookie")
        decision = loop.rank(self.context)
        if decision.logged:
            self._new[name] = ck.DecisionEntry(decision.event_id, decision.action_id,
                                               int(self._now))
        return Variant.from_decision(decision)

    def _still_sticky(self, loop: Loop, entry: ck.DecisionEntry) -> bool:
        s = self._rt.settings
        window = s.decision_max_age if loop.settings.strategy == "uniform" else s.sticky_seconds
        return 0 <= self._now - entry.issued_at < window

    def _fallback(self, name: str, exc: Exception) -> Variant:
        self._rt.warn("variant", name, "ef_middleware: loop %r serves its default variant: %s",
                      name, one_line(exc))
        return default_variant(self._rt, name)

    def entry(self, loop: str) -> ck.DecisionEntry | None:
        """This visitor's current decision for ``loop`` (made now or read from the cookie)."""
        return self._new.get(loop) or self._incoming_entries().get(loop)

    def reward(self, loop: str, value: float | None = None) -> None:
        """Reward this visitor's decision for ``loop`` from server code (e.g. a form handler).

        Raises
        ------
        NoDecisionError
            The visitor has no valid decision for ``loop``, or is a bot or opted out (a
            decision cookie they carry is not theirs to use, or not to be tracked).
        ef_middleware.errors.EFError
            What :meth:`Loop.reward` raises (duplicate, out of range, unknown event).
        """
        entry = None if self.passive else self.entry(loop)
        if entry is None:
            raise NoDecisionError(f"this visitor has no decision for loop {loop!r}")
        self._rt.engine.get_loop(loop).reward(entry.event_id, value)

    # -- output ----------------------------------------------------------------------------
    def script(self, *, nonce: str | None = None, stub: bool = True) -> Markup:
        """The ``<script>`` tags that load ef.js from the middleware's prefix.

        An inline stub comes first, so that ``ef.convert(...)`` in a page's own inline script
        before the (deferred) ef.js has loaded is queued rather than a ``ReferenceError``. With
        a ``nonce`` both tags carry it; ``stub=False`` gives the ``src`` tag alone, for a
        Content-Security-Policy that allows no inline script.
        """
        root = self._root.rstrip("/")
        if not nonce:
            key = (root, stub)
            tags = self._rt.script_tags
            found = tags.get(key)
            if found is None:
                if len(tags) >= SCRIPT_TAGS:  # an app mounted under a path parameter
                    tags.clear()
                found = tags[key] = self._script_tag(root, None, stub)
            return found
        return self._script_tag(root, nonce, stub)

    def _script_tag(self, root: str, nonce: str | None, stub: bool) -> Markup:
        s = self._rt.settings
        endpoint = root + s.prefix
        version = self._rt.script_etag.strip('"')[:8]
        attrs = [f'src="{escape(endpoint)}ef.js?v={version}"',
                 f'data-endpoint="{escape(endpoint)}"']
        if s.tz_cookie != "ef_tz":
            attrs.append(f'data-tz-cookie="{escape(s.tz_cookie)}"')
        if s.cookie_domain:  # the time zone cookie spans the subdomains the others do
            attrs.append(f'data-cookie-domain="{escape(s.cookie_domain)}"')
        if s.honor_gpc:
            attrs.append('data-gpc="true"')
        if nonce:
            attrs.append(f'nonce="{escape(nonce)}"')
        tag = f"<script {' '.join(attrs)} defer></script>"
        if stub:
            own = f' nonce="{escape(nonce)}"' if nonce else ""
            tag = f"<script{own}>{SCRIPT_STUB}</script>{tag}"
        return Markup(tag)

    @property
    def touched(self) -> bool:
        """Whether a variant or the context was asked for (the response varies by cookie)."""
        return bool(self.decisions) or self._context is not None

    def cookie_headers(self) -> list[str]:
        """``Set-Cookie`` values for the response (new decisions, visitor state)."""
        rt, out = self._rt, []
        if self._new:
            entries = {**self._incoming_entries(), **self._new}
            value = ck.dump_decisions(rt.decisions, entries)
            out.append(f"{rt.settings.decision_cookie}={value}{rt.decision_cookie_attributes}")
        if self._visitor_changed and self._visitor is not None:
            value = ck.dump_visitor(rt.visitors, self._visitor)
            out.append(f"{rt.settings.visitor_cookie}={value}{rt.visitor_cookie_attributes}")
        return out
