"""The middleware: cookies on the wire, stickiness, bots, failures, lifespan, pass-through."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket
from web_helpers import (
    ACTIONS,
    DESKTOP,
    EF_JS,
    GOOGLEBOT,
    SECRET,
    Clock,
    make_app,
    put_cookie,
    set_cookies,
    stats,
    tamper,
)

from ef_middleware import Engine, SentenceTransformerEmbedder
from ef_middleware.web import PersonalizationMiddleware
from ef_middleware.web.middleware import with_cookies
from tests.descriptors import open_under

Client = Callable[..., TestClient]


def shown(response: Any) -> dict[str, str]:
    return dict(line.split("=", 1) for line in response.text.splitlines())


def test_first_view_sets_one_signed_httponly_decision_cookie(
        engine: Engine, loop_name: str, client_for: Client) -> None:
    response = client_for(make_app(engine, [loop_name])).get("/")
    assert response.status_code == 200
    cookies = set_cookies(response)
    assert set(cookies) == {"ef_d", "ef_v"}
    raw = cookies["ef_d"]
    assert raw.startswith("ef_d=")
    assert "; Max-Age=604800; Path=/; HttpOnly; SameSite=Lax" in raw
    assert "Secure" not in raw
    assert response.headers["vary"] == "Cookie"
    assert response.headers["cache-control"] == "private"  # no shared cache keeps a variant
    assert shown(response)[loop_name] in {a["id"] for a in ACTIONS}
    assert stats(engine, loop_name)["decisions"] == 1


def test_secure_domain_and_custom_names(engine: Engine, loop_name: str, client_for: Client) -> None:
    app = make_app(engine, [loop_name], secure=True, cookie_domain="testserver",
                   decision_cookie="pd", visitor_cookie="pv")
    cookies = set_cookies(client_for(app, base_url="https://testserver").get("/"))
    assert set(cookies) == {"pd", "pv"}
    assert "; Domain=testserver; Secure; HttpOnly; SameSite=Lax" in cookies["pd"]


@pytest.mark.parametrize(("options", "attributes"), [
    ({"secure": True, "cookie_domain": "testserver", "cookie_path": "/shop"},
     "; Path=/shop; Domain=testserver; Secure; HttpOnly; SameSite=Lax"),
    ({"cookie_domain": "testserver"}, "; Path=/; Domain=testserver; HttpOnly; SameSite=Lax"),
])
def test_both_cookies_carry_the_path_domain_and_secure_options(
        engine: Engine, loop_name: str, client_for: Client, options: dict[str, Any],
        attributes: str) -> None:
    """The decision and the visitor cookie get the same Path, Domain and Secure: a visitor
    cookie without Secure would travel in clear on an HTTPS site, and a Domain is kept on a
    plain-HTTP one (a staging host)."""
    app = make_app(engine, [loop_name], **options)
    cookies = set_cookies(client_for(app, base_url="https://testserver").get("/"))
    assert cookies["ef_d"].endswith("; Max-Age=604800" + attributes)
    assert cookies["ef_v"].endswith("; Max-Age=31536000" + attributes)


def test_all_loops_of_a_request_share_one_cookie(engine: Engine, client_for: Client) -> None:
    engine.loop("cookie-a", actions=ACTIONS)
    engine.loop("cookie-b", actions=ACTIONS)
    client = client_for(make_app(engine, ["cookie-a", "cookie-b"]))
    response = client.get("/")
    assert len([c for c in response.headers.get_list("set-cookie") if c.startswith("ef_d=")]) == 1
    app = client.app
    assert isinstance(app, Starlette)
    serializer = _middleware(app).runtime.decisions
    assert set(serializer.loads(client.cookies["ef_d"])) == {"cookie-a", "cookie-b"}
    # A later page asking for one of them keeps the other in the cookie.
    engine.loop("cookie-c", actions=ACTIONS)
    client.get("/?loop=cookie-c")
    assert set(serializer.loads(client.cookies["ef_d"])) == {"cookie-a", "cookie-b", "cookie-c"}


def _middleware(app: Starlette) -> PersonalizationMiddleware:
    stack = app.build_middleware_stack()
    while not isinstance(stack, PersonalizationMiddleware):
        stack = stack.app  # type: ignore[attr-defined]
    return stack


def test_pages_that_do_not_personalize_set_nothing(engine: Engine, loop_name: str,
                                                   client_for: Client) -> None:
    response = client_for(make_app(engine, [loop_name])).get("/plain")
    assert response.headers.get_list("set-cookie") == []
    assert "vary" not in response.headers and "cache-control" not in response.headers


def test_the_context_is_built_only_when_a_page_asks_for_a_variant(
        engine: Engine, loop_name: str, client_for: Client,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Lazy: a page that personalizes nothing parses no user agent and builds no context,
    and one that asks builds it once, however many variants it asks for."""
    personalization = importlib.import_module("ef_middleware.web.personalization")
    parsed: list[str] = []
    built: list[int] = []
    parse, build = personalization.parse_device, personalization.Personalization._build_context

    def counting_parse(agent: str) -> Any:
        parsed.append(agent)
        return parse(agent)

    def counting_build(self: Any) -> Any:
        built.append(1)
        return build(self)

    monkeypatch.setattr(personalization, "parse_device", counting_parse)
    monkeypatch.setattr(personalization.Personalization, "_build_context", counting_build)
    engine.loop(loop_name + "-2", actions=ACTIONS)
    client = client_for(make_app(engine, [loop_name, loop_name + "-2"]))
    assert client.get("/plain").status_code == 200
    assert parsed == [] and built == []
    page = client.get("/")  # two loops' variants
    assert page.status_code == 200 and len(shown(page)) == 2
    assert len(built) == 1 and len(parsed) == 1


def test_sticky_within_the_window_then_a_new_decision(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    client = client_for(make_app(engine, [loop_name], clock=clock))
    first = shown(client.get("/"))[loop_name]
    for _ in range(5):
        clock.advance(60)
        response = client.get("/")
        assert shown(response)[loop_name] == first
        assert "ef_d" not in set_cookies(response)  # a sticky re-view is not a new decision
    assert stats(engine, loop_name)["decisions"] == 1
    clock.advance(30 * 60)
    response = client.get("/")
    assert "ef_d" in set_cookies(response)
    assert stats(engine, loop_name)["decisions"] == 2


def test_a_decision_cookie_of_another_app_beside_ours_keeps_the_sticky_variant(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    """Two ``ef_d`` cookies (a host-only one and a sibling app's ``Domain=`` one): ours is
    read in either order; a review of 2026-12-05 found a new decision on every view when
    ours came first."""
    app = make_app(engine, [loop_name], clock=clock)
    ours = client_for(app)
    first = shown(ours.get("/"))[loop_name]
    sibling = client_for(make_app(engine, [loop_name], clock=clock,
                                  secret_key="sibling-app-key"))
    sibling.get("/")
    mine, theirs = ours.cookies["ef_d"], sibling.cookies["ef_d"]
    decisions = stats(engine, loop_name)["decisions"]
    bare = client_for(app)
    for header in (f"ef_d={mine}; ef_d={theirs}", f"ef_d={theirs}; ef_d={mine}"):
        clock.advance(60)
        response = bare.get("/", headers={"cookie": header})
        assert shown(response)[loop_name] == first
        assert "ef_d" not in set_cookies(response)
    assert stats(engine, loop_name)["decisions"] == decisions


@pytest.mark.parametrize("bad", ["abc.A.def", "x.%%%.y", "..", "a.b"])
def test_a_malformed_visitor_cookie_keeps_the_sticky_variant(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client, bad: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """A visitor cookie whose timestamp is not base64 (itsdangerous raises BadData there)
    reads as no visitor data: the sticky variant stays, nothing is logged as a failure, and a
    fresh visitor cookie replaces it."""
    client = client_for(make_app(engine, [loop_name], clock=clock))
    first = shown(client.get("/"))[loop_name]
    clock.advance(120)  # past a minute: the visit is kept alive from the visitor cookie
    put_cookie(client, "ef_v", bad)
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        response = client.get("/")
    assert shown(response)[loop_name] == first
    assert caplog.records == []
    assert "ef_v" in set_cookies(response) and "ef_d" not in set_cookies(response)
    assert stats(engine, loop_name)["decisions"] == 1


def test_sticky_window_is_configurable(engine: Engine, loop_name: str, clock: Clock,
                                       client_for: Client) -> None:
    client = client_for(make_app(engine, [loop_name], clock=clock, sticky_seconds=0))
    client.get("/")
    client.get("/")
    assert stats(engine, loop_name)["decisions"] == 2


def test_sticky_action_must_still_exist(engine: Engine, clock: Clock, client_for: Client,
                                        new_engine: Callable[..., Engine]) -> None:
    old = new_engine()
    old.loop("hero", actions=ACTIONS)
    client = client_for(make_app(old, ["hero"], clock=clock))
    served = shown(client.get("/"))["hero"]
    chosen = client.cookies["ef_d"]
    # The site is redeployed with the chosen variant removed (same secret, new engine).
    fresh = new_engine()
    fresh.loop("hero", actions=[a for a in ACTIONS if a["id"] != served])
    client2 = client_for(make_app(fresh, ["hero"], clock=clock))
    put_cookie(client2, "ef_d", chosen)
    response = client2.get("/")
    assert shown(response)["hero"] != served
    assert stats(fresh, "hero")["decisions"] == 1


def test_uniform_ab_loop_is_sticky_per_visitor(engine: Engine, clock: Clock,
                                               client_for: Client) -> None:
    engine.loop("ab-test", actions=ACTIONS, strategy="uniform")
    client = client_for(make_app(engine, ["ab-test"], clock=clock))
    first = shown(client.get("/"))["ab-test"]
    for _ in range(10):
        clock.advance(6 * 3600)  # far beyond the 30 min window, within the cookie's 7 days
        assert shown(client.get("/"))["ab-test"] == first
    assert stats(engine, "ab-test")["decisions"] == 1


def test_tampered_and_expired_decision_cookies_quietly_read_as_none(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    client = client_for(make_app(engine, [loop_name], clock=clock))
    client.get("/")
    good = client.cookies["ef_d"]
    put_cookie(client, "ef_d", tamper(good))
    assert client.get("/").status_code == 200
    assert stats(engine, loop_name)["decisions"] == 2  # no valid decision: a new one

    put_cookie(client, "ef_d", good)
    clock.advance(7 * 86_400 + 1)  # older than decision_max_age
    assert client.get("/").status_code == 200
    assert stats(engine, loop_name)["decisions"] == 3


def test_old_keys_still_verify_after_rotation(engine: Engine, loop_name: str, clock: Clock,
                                              client_for: Client) -> None:
    client = client_for(make_app(engine, [loop_name], clock=clock, secret_key="old"))
    first = shown(client.get("/"))[loop_name]
    rotated = client_for(make_app(engine, [loop_name], clock=clock, secret_key=["new", "old"]))
    rotated.cookies.update(client.cookies)
    assert shown(rotated.get("/"))[loop_name] == first
    assert stats(engine, loop_name)["decisions"] == 1


def test_bots_get_the_default_and_are_never_logged(engine: Engine, loop_name: str,
                                                   client_for: Client) -> None:
    for user_agent in (GOOGLEBOT, ""):
        response = client_for(make_app(engine, [loop_name]), user_agent=user_agent).get("/")
        assert shown(response)[loop_name] == "minimal"
        assert response.headers.get_list("set-cookie") == []
    assert stats(engine, loop_name)["decisions"] == 0


def test_a_head_request_is_not_a_view(engine: Engine, loop_name: str,
                                     client_for: Client) -> None:
    """Uptime monitors and link checkers send ``HEAD``: no one sees that page, so nothing is
    decided, logged or set (before, each one logged a decision that then counted as a
    non-conversion)."""
    client = client_for(make_app(engine, [loop_name]))
    response = client.head("/")
    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == []
    assert stats(engine, loop_name)["decisions"] == 0
    assert set(set_cookies(client.get("/"))) == {"ef_d", "ef_v"}
    assert stats(engine, loop_name)["decisions"] == 1


@pytest.mark.parametrize("user_agent", [
    "python-httpx/0.27.0", "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile "
    "Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)"])
def test_automated_clients_that_ua_parser_misses_are_not_logged(
        engine: Engine, loop_name: str, client_for: Client, user_agent: str) -> None:
    """A review of 2026-12-05 found these ranked, given a decision cookie and logged."""
    response = client_for(make_app(engine, [loop_name]), user_agent=user_agent).get("/")
    assert shown(response)[loop_name] == "minimal"
    assert "ef_d" not in set_cookies(response)
    assert stats(engine, loop_name)["decisions"] == 0


def test_global_privacy_control_when_honoured(engine: Engine, loop_name: str,
                                              client_for: Client) -> None:
    client = client_for(make_app(engine, [loop_name], honor_gpc=True))
    response = client.get("/", headers={"sec-gpc": "1"})
    assert shown(response)[loop_name] == "minimal"
    assert response.headers.get_list("set-cookie") == []
    assert stats(engine, loop_name)["decisions"] == 0
    client.get("/")
    assert stats(engine, loop_name)["decisions"] == 1


def test_global_privacy_control_is_ignored_unless_honoured(engine: Engine, loop_name: str,
                                                          client_for: Client) -> None:
    """``honor_gpc`` is off by default: a ``Sec-GPC: 1`` visitor is then personalized and
    logged like any other."""
    response = client_for(make_app(engine, [loop_name])).get("/", headers={"sec-gpc": "1"})
    assert set(set_cookies(response)) == {"ef_d", "ef_v"}
    assert stats(engine, loop_name)["decisions"] == 1


def test_an_opted_out_visitor_asking_for_the_context_only_gets_no_visitor_cookie(
        engine: Engine, loop_name: str, client_for: Client) -> None:
    """With ``honor_gpc``, a page that reads ``ef.context`` without ranking still sets no
    first-party visitor cookie for a ``Sec-GPC: 1`` visitor, and counts no visit."""
    client = client_for(make_app(engine, [loop_name], honor_gpc=True))
    response = client.get("/context", headers={"sec-gpc": "1"})
    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == []
    assert (response.json()["visits"], response.json()["returning"]) == (0, False)


def test_failure_serves_the_default_and_logs_one_line(
        engine: Engine, loop_name: str, client_for: Client, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("model exploded\nwith a second line")

    monkeypatch.setattr(engine.get_loop(loop_name), "rank", broken)
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        response = client_for(make_app(engine, [loop_name])).get("/")
    assert response.status_code == 200
    assert shown(response)[loop_name] == "minimal"
    assert "ef_d" not in set_cookies(response)
    records = [r for r in caplog.records if r.name == "ef_middleware"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "\n" not in message and "RuntimeError: model exploded with a second line" in message
    assert loop_name in message


@pytest.mark.parametrize("outcome", [
    KeyError("user_id"), None, ["plan", "pro"],
    # values a context cannot hold: each made every rank fail, so every visitor got the
    # default variant (a review of 2026-12-05); the hook's other features stay
    {"plan": {"nested": 1}, "tier": "pro"}, {"score": math.nan, "tier": "pro"},
    {"visits_ever": 10**400, "tier": "pro"}])
def test_a_failing_context_hook_leaves_its_features_out(
    engine: Engine, loop_name: str, client_for: Client, caplog: pytest.LogCaptureFixture,
    outcome: object
) -> None:
    """The host's hook failing (raising, or not returning a mapping) costs its features only:
    it is called once per request, every loop still ranks, ``ef.context`` still answers, and
    the failure is logged in one line (the second within the minute is counted, not logged)."""
    second = engine.loop(f"{loop_name}-second", actions=ACTIONS).name
    calls: list[object] = []

    def hook(scope: object) -> Any:
        calls.append(scope)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    app = make_app(engine, [loop_name, second], context_hook=hook, status_route=True)
    before = {name: stats(engine, name)["decisions"] for name in (loop_name, second)}
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        response = client_for(app).get("/")
        context = client_for(app).get("/context")
    assert response.status_code == 200 and len(calls) == 2  # one per request
    assert {name: stats(engine, name)["decisions"] for name in before} == {
        name: count + 1 for name, count in before.items()}
    assert context.status_code == 200 and context.json()["device"] == "desktop"
    if isinstance(outcome, dict):
        assert context.json()["tier"] == "pro" and len(set(outcome) & set(context.json())) == 1
    records = [r for r in caplog.records if r.name == "ef_middleware"]
    assert len(records) == 1 and "context hook" in records[0].getMessage()
    assert client_for(app).get("/_ef/status").json()["web"]["failures"] == {"context_hook": 2}


def test_a_hook_feature_named_like_a_built_in_one_replaces_it(
        engine: Engine, loop_name: str, client_for: Client,
        caplog: pytest.LogCaptureFixture) -> None:
    """The engine compares feature names lower-cased: a hook's ``Hour`` beside the built-in
    ``hour`` made every rank refuse the context, and every visitor got the default variant
    with a line in the log. The hook's value now replaces the built-in one."""
    app = make_app(engine, [loop_name], context_hook=lambda scope: {"Hour": 3, " Plan ": "pro"})
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        for _ in range(3):
            assert "ef_d" in set_cookies(client_for(app).get("/"))
        context = client_for(app).get("/context").json()
    assert [r.getMessage() for r in caplog.records if r.name == "ef_middleware"] == []
    assert stats(engine, loop_name)["decisions"] == 3
    assert context["hour"] == 3 and context["plan"] == "pro" and "Hour" not in context


def test_a_failure_on_every_page_is_one_line_a_minute(
        engine: Engine, loop_name: str, client_for: Client, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop that fails on every page view does not flood the host's log: one line a minute
    per loop, the next one saying how many were held back, and ``GET status`` counts all."""
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("model exploded")

    second = engine.loop(f"{loop_name}-second", actions=ACTIONS).name
    for name in (loop_name, second):
        monkeypatch.setattr(engine.get_loop(name), "rank", broken)
    now = [1_000_000.0]
    client = client_for(make_app(engine, [loop_name, second], clock=lambda: now[0],
                                 status_route=True))

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "ef_middleware"]

    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        for _ in range(20):
            response = client.get("/")
            assert response.status_code == 200 and response.text.count("=minimal") == 2
        assert len(lines()) == 2  # one per loop
        assert {loop_name, second} == {m.split("'")[1] for m in lines()}
        now[0] += 59
        client.get(f"/?loop={loop_name}")
        assert len(lines()) == 2
        now[0] += 2
        client.get(f"/?loop={loop_name}")
    assert len(lines()) == 3
    assert lines()[-1].endswith("RuntimeError: model exploded (20 more like it since the last "
                                "one logged)")
    status = client.get("/_ef/status").json()
    assert status["web"]["failures"] == {"variant": 42}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_the_reward_writers_store_connections_close_at_shutdown(
        new_engine: Callable[..., Engine], tmp_path: Path) -> None:
    """The thread that takes the reward route's blocking writes closes its own connections
    to the store as it ends; before, they stayed open until a full garbage collection
    (collections are off here, as a busy process may go long without a full one)."""
    engine = new_engine()
    runtime = _middleware(make_app(engine, [])).runtime
    gc.collect()
    gc.disable()
    try:
        asyncio.run(runtime.write(engine.store.set, "k", b"v"))  # on the writer's thread
        runtime.shutdown()
        assert open_under(tmp_path) == 0
    finally:
        gc.enable()


def test_an_error_is_not_held_back_by_a_warning_of_the_same_kind(
        engine: Engine, loop_name: str, caplog: pytest.LogCaptureFixture) -> None:
    """The reward route logs a failing store as a warning (503) and a bug as an error (500),
    both of kind "reward": a review found the error held back behind the warning."""
    runtime = _middleware(make_app(engine, [loop_name])).runtime
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        runtime.warn("reward", loop_name, "store failed")
        runtime.warn("reward", loop_name, "a bug", level=logging.ERROR)
        runtime.warn("reward", loop_name, "store failed again")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "store failed"), ("ERROR", "a bug")]
    assert runtime.failures == {"reward": 3}


def test_unknown_loop_renders_empty_and_logs_one_line(engine: Engine, client_for: Client,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        response = client_for(make_app(engine, ["no-such-loop"])).get("/")
    assert response.status_code == 200 and response.text == "no-such-loop="
    assert len([r for r in caplog.records if r.name == "ef_middleware"]) == 1


def test_cookie_failure_never_breaks_the_page(engine: Engine, loop_name: str,
                                              client_for: Client,
                                              caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ef_middleware.web import cookies

    def broken(*args: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(cookies, "dump_decisions", broken)
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        response = client_for(make_app(engine, [loop_name])).get("/")
    assert response.status_code == 200
    assert len([r for r in caplog.records if r.name == "ef_middleware"]) == 1


def test_lifespan_starts_and_closes_the_engine(new_engine: Callable[..., Engine],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    engine = new_engine()
    engine.loop("hero", actions=ACTIONS)
    calls: list[str] = []
    start, close = engine.start, engine.close

    def spy_start() -> None:
        calls.append("start")
        start()

    def spy_close() -> None:
        calls.append("close")
        close()

    monkeypatch.setattr(engine, "start", spy_start)
    monkeypatch.setattr(engine, "close", spy_close)
    app = make_app(engine, ["hero"])
    with TestClient(app, headers={"user-agent": DESKTOP}) as client:
        assert calls == ["start"]
        client.get("/")
        assert stats(engine, "hero")["decisions"] == 1
    assert calls == ["start", "close"]


def test_a_fastapi_lifespan_starts_the_engine_and_closing_saves_the_model(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    """The same lifespan hook under FastAPI: the learner runs while the app is up, and the
    model learned is saved at shutdown and restored by the next engine on the folder."""
    from fastapi import Depends, FastAPI

    from ef_middleware.web import Personalization, personalization

    engine = Engine(tmp_path / "ef", embedder=embedder)
    loop = engine.loop("hero", actions=ACTIONS)
    starts: list[int] = []
    start = engine.start

    def recorded_start() -> None:
        starts.append(1)
        start()

    engine.start = recorded_start  # type: ignore[method-assign]
    app = FastAPI()

    @app.get("/api")
    def api(ef: Personalization = Depends(personalization)) -> dict[str, Any]:  # noqa: B008
        return ef.variant("hero").to_dict()

    app.add_middleware(PersonalizationMiddleware, engine=engine, secret_key="k" * 32)
    try:
        assert starts == []
        with TestClient(app, headers={"user-agent": DESKTOP}) as client:
            assert starts == [1]  # the lifespan's startup (a loop's creation starts it too)
            assert engine._learner is not None and engine._learner.is_alive()
            for _ in range(3):
                client.cookies.clear()
                assert client.get("/api").json()["id"] in {a["id"] for a in ACTIONS}
            for event_id in list(loop._pending)[:3]:
                loop.reward(event_id, 1.0)
            loop.flush()
            assert loop.stats()["learned"] == 3, loop.stats()
        assert loop.closed and not engine._learner.is_alive()
    finally:
        engine.close()
    again = Engine(tmp_path / "ef", embedder=embedder)
    try:
        restored = again.loop("hero", actions=ACTIONS).trainer  # the snapshot's samples
        assert restored.learned == 3
        # three rewards, discounted by thompson's count half-life (5,000 samples)
        assert sum(restored.counts.get(a["id"])[1] for a in ACTIONS) == pytest.approx(3, abs=0.01)
    finally:
        again.close()


def test_an_engine_that_fails_to_start_leaves_the_host_startup_alone(
    new_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    """The middleware starts the engine on the way into the host's lifespan: if that fails,
    the host's own startup and shutdown still run, pages still render, one line is logged."""
    engine = new_engine()
    engine.loop("hero", actions=ACTIONS)
    host: list[str] = []

    def broken_start() -> None:
        raise RuntimeError("can't start new thread")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        host.append("up")
        yield
        host.append("down")

    async def home(request: Request) -> Response:
        return PlainTextResponse(f"hero={request.scope['ef'].variant('hero')}")

    monkeypatch.setattr(engine, "start", broken_start)
    app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
    app.add_middleware(PersonalizationMiddleware, engine=engine, secret_key=SECRET)
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        with TestClient(app, headers={"user-agent": DESKTOP}) as client:
            assert host == ["up"]
            response = client.get("/")
        assert host == ["up", "down"]
    assert response.status_code == 200 and response.text.startswith("hero=")
    records = [r for r in caplog.records if r.name == "ef_middleware"]
    assert len(records) == 1 and "can't start new thread" in records[0].getMessage()


def test_a_variant_first_asked_for_while_streaming_is_the_default_and_not_logged(
    engine: Engine, loop_name: str, client_for: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the headers are sent, a new decision could not reach the cookie: it would be
    learned as a visit that never converts. The default is served, nothing logged."""
    async def page(request: Request) -> Response:
        ef = request.scope["ef"]

        async def body() -> AsyncIterator[bytes]:
            yield b"<header>"
            yield f"hero={ef.variant(loop_name)}".encode()

        return StreamingResponse(body())

    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(PersonalizationMiddleware, engine=engine, secret_key=SECRET)
    before = stats(engine, loop_name)["decisions"]
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        response = client_for(app).get("/")
    assert response.text == f"<header>hero={ACTIONS[0]['id']}"
    assert "ef_d" not in set_cookies(response)
    assert stats(engine, loop_name)["decisions"] == before
    records = [r for r in caplog.records if r.name == "ef_middleware"]
    assert len(records) == 1 and "headers were sent" in records[0].getMessage()


def test_websocket_scopes_pass_through(engine: Engine, loop_name: str) -> None:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("ef" if "ef" in websocket.scope else "no ef")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    app.add_middleware(PersonalizationMiddleware, engine=engine, secret_key=SECRET)
    with TestClient(app).websocket_connect("/ws") as ws:
        assert ws.receive_text() == "no ef"


def test_fastapi_app_and_dependency(engine: Engine, loop_name: str, client_for: Client) -> None:
    from fastapi import Depends, FastAPI

    from ef_middleware.web import Personalization, personalization

    api = FastAPI()

    @api.get("/api/hero")
    def hero(ef: Personalization = Depends(personalization)) -> dict[str, Any]:  # noqa: B008
        return ef.variant(loop_name).to_dict()

    api.add_middleware(PersonalizationMiddleware, engine=engine, secret_key=SECRET)
    client = client_for(api)
    body = client.get("/api/hero").json()
    assert body["loop"] == loop_name and body["id"] in {a["id"] for a in ACTIONS}
    assert body["features"] == next(a["features"] for a in ACTIONS if a["id"] == body["id"])
    assert client.get("/api/hero").json()["sticky"] is True
    assert client.post("/_ef/reward", json={"loop": loop_name}).status_code == 204


def test_dependency_without_middleware_says_so() -> None:
    from fastapi import Depends, FastAPI

    from ef_middleware.errors import ConfigurationError
    from ef_middleware.web import Personalization, personalization

    api = FastAPI()

    @api.get("/")
    def page(ef: Personalization = Depends(personalization)) -> str:  # noqa: B008
        return "unreachable"

    with pytest.raises(ConfigurationError, match="not installed"):
        TestClient(api).get("/")


def _app_that_sells(engine: Engine, loop_name: str) -> Starlette:
    """The test app with ``POST /buy``: a server-side reward of 1 (404 without a decision)."""
    from starlette.routing import Route

    from ef_middleware.web import NoDecisionError

    async def buy(request: Request) -> PlainTextResponse:
        try:
            request.scope["ef"].reward(loop_name, 1.0)
        except NoDecisionError as exc:
            return PlainTextResponse(exc.code, status_code=404)
        return PlainTextResponse("thanks")

    app = make_app(engine, [loop_name])
    app.router.routes.append(Route("/buy", buy, methods=["POST"]))
    return app


def test_server_side_reward(engine: Engine, loop_name: str, client_for: Client) -> None:
    client = client_for(_app_that_sells(engine, loop_name))
    assert client.post("/buy").status_code == 404
    client.get("/")
    assert client.post("/buy").text == "thanks"
    engine.get_loop(loop_name).flush()
    assert stats(engine, loop_name)["rewards"] == 1


def test_a_server_side_reward_is_refused_to_a_bot_with_a_visitors_cookie(
        engine: Engine, loop_name: str, client_for: Client) -> None:
    """Bots get no decision cookie, so the docs say ``ef.reward`` raises ``NoDecisionError``
    for one; a bot that sends a visitor's cookie was rewarded all the same (a review of
    2026-12-06)."""
    app = _app_that_sells(engine, loop_name)
    visitor = client_for(app)
    visitor.get("/")
    bot = client_for(app, user_agent=GOOGLEBOT)
    bot.cookies.update(visitor.cookies)
    assert bot.post("/buy").status_code == 404
    assert visitor.post("/buy").text == "thanks"
    engine.get_loop(loop_name).flush()
    assert stats(engine, loop_name)["rewards"] == 1


def test_a_server_side_reward_after_a_new_decision_rewards_the_new_event(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    """Past the sticky window a page makes a new decision while the incoming cookie still
    holds the old one: a reward in the same request is for what this page showed."""
    from starlette.routing import Route

    async def show_and_buy(request: Request) -> PlainTextResponse:
        ef = request.scope["ef"]
        shown_now = ef.variant(loop_name)
        ef.reward(loop_name, 1.0)
        return PlainTextResponse(shown_now.event_id or "")

    app = make_app(engine, [loop_name], clock=clock)
    app.router.routes.append(Route("/show-and-buy", show_and_buy, methods=["POST"]))
    client = client_for(app)
    client.get("/")
    old = _middleware(app).runtime.decisions.loads(client.cookies["ef_d"])[loop_name][0]
    clock.advance(31 * 60)
    new = client.post("/show-and-buy").text
    assert new and new != old
    assert engine.store.get(f"reward:{loop_name}:{new}") is not None
    assert engine.store.get(f"reward:{loop_name}:{old}") is None


def test_sticky_views_keep_the_visit_alive(engine: Engine, loop_name: str, clock: Clock,
                                           client_for: Client) -> None:
    client = client_for(make_app(engine, [loop_name], clock=clock, sticky_seconds=3600))
    client.get("/")
    clock.advance(10)
    assert "ef_v" not in set_cookies(client.get("/"))  # touched less than a minute ago
    for _ in range(6):  # a 40-minute session of sticky views, 7 minutes apart
        clock.advance(7 * 60)
        response = client.get("/")
        assert "ef_v" in set_cookies(response) and "ef_d" not in set_cookies(response)
    # The session went on without a 30-minute gap: still the first visit.
    clock.advance(60)
    assert client.get("/context").json()["visits"] == 1
    put_cookie(client, "ef_v", tamper(client.cookies["ef_v"]))
    clock.advance(5)
    assert client.get("/context").json()["visits"] == 1  # a forged cookie is a new visitor


def test_scope_lets_go_of_the_personalization_after_the_response(
        engine: Engine, loop_name: str, client_for: Client) -> None:
    """scope -> ef -> scope would be a reference cycle per page view (work for the cyclic
    garbage collector, whose full passes pause the server): the middleware breaks it."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    kept: list[dict[str, Any]] = []

    async def keep(request: Request) -> PlainTextResponse:
        kept.append(request.scope)
        return PlainTextResponse(str(request.scope["ef"].variant(loop_name)))

    app = make_app(engine, [loop_name])
    app.router.routes.append(Route("/keep", keep))
    response = client_for(app).get("/keep")
    assert response.status_code == 200 and "ef_d" in set_cookies(response)
    from ef_middleware.web.personalization import AfterResponse, Personalization

    # what stays holds no scope: a stand-in that gives default variants (an error page
    # rendered outside the middleware)
    assert kept and not isinstance(kept[0]["ef"], Personalization)
    assert isinstance(kept[0]["ef"], AfterResponse)


@pytest.mark.parametrize(("vary", "expected"), [
    (None, b"Cookie"),
    (b"Accept-Encoding", b"Accept-Encoding, Cookie"),
    (b"accept-encoding, cookie", b"accept-encoding, cookie"),
    (b"*", b"*"),
])
def test_with_cookies_adds_set_cookie_and_vary(vary: bytes | None, expected: bytes) -> None:
    headers = [(b"content-type", b"text/html")] + ([(b"vary", vary)] if vary else [])
    out = with_cookies(tuple(headers), ["a=1; Path=/", "b=2; Path=/"])
    assert out[0] == (b"content-type", b"text/html")
    assert [v for k, v in out if k == b"set-cookie"] == [b"a=1; Path=/", b"b=2; Path=/"]
    assert [v for k, v in out if k == b"vary"] == [expected]
    assert [v for k, v in out if k == b"cache-control"] == [b"private"]


@pytest.mark.parametrize(("cache_control", "expected"), [
    (b"no-store", b"no-store"),
    (b"private, max-age=60", b"private, max-age=60"),
    (b"no-cache, PRIVATE", b"no-cache, PRIVATE"),
    # a shared cache may store these: the personalized page would reach other visitors
    (b"Private=\"set-cookie\"", b"private, Private=\"set-cookie\""),
    (b"public, max-age=60", b"private, max-age=60"),
    (b"max-age=60, s-maxage=600, must-revalidate", b"private, max-age=60, must-revalidate"),
    (b"no-cache", b"private, no-cache"),
])
def test_with_cookies_makes_the_applications_cache_control_private(
        cache_control: bytes, expected: bytes) -> None:
    headers = ((b"Cache-Control", cache_control), (b"vary", b"Accept-Encoding"))
    out = with_cookies(headers, ["a=1; Path=/"])
    assert [v for k, v in out if k.lower() == b"cache-control"] == [expected]
    assert [v for k, v in out if k == b"vary"] == [b"Accept-Encoding, Cookie"]


@pytest.mark.parametrize("freeze", [True, False])
def test_startup_freezes_the_heap_for_the_garbage_collector(
        new_engine: Callable[..., Engine], freeze: bool) -> None:
    import gc

    engine = new_engine()
    engine.loop("hero", actions=ACTIONS)
    gc.unfreeze()  # an earlier test may have frozen it already
    app = make_app(engine, ["hero"], freeze_gc=freeze)
    try:
        with TestClient(app):
            assert (gc.get_freeze_count() > 0) is freeze
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("key", [None, "", [], ["ok", ""], 5])
def test_a_missing_or_bad_secret_key_is_a_configuration_error(engine: Engine, key: Any) -> None:
    """``secret_key=os.environ.get("EF_SECRET_KEY")`` with the variable unset gave a bare
    TypeError (a review of 2026-12-05): every bad key says what to pass."""
    from ef_middleware.errors import ConfigurationError

    app = Starlette()
    with pytest.raises(ConfigurationError, match="secret_key must be"):
        PersonalizationMiddleware(app, engine=engine, secret_key=key)


@pytest.mark.parametrize(("name", "value"), [
    ("cookie_domain", ".example.com;secure"), ("cookie_domain", "a.com, b.com"),
    ("cookie_domain", ""), ("cookie_domain", "exämple.com"), ("cookie_path", "/a b"),
    ("cookie_path", "/;domain=x")])
def test_a_cookie_domain_or_path_that_would_add_attributes_is_refused(
        engine: Engine, name: str, value: str) -> None:
    """They go into the Set-Cookie headers and, the domain, into ef.js's time zone cookie:
    a ';' there would add attributes of its own."""
    from ef_middleware.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=name):
        PersonalizationMiddleware(Starlette(), engine=engine, secret_key="k", **{name: value})
    PersonalizationMiddleware(Starlette(), engine=engine, secret_key="k",
                              cookie_domain=".example.com", cookie_path="/shop")


def test_without_rjsmin_ef_js_is_served_as_it_is(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An install from before rjsmin joined the web extra still serves ef.js (readable), and
    says so in one line."""
    from ef_middleware.web import settings

    monkeypatch.setattr(settings, "jsmin", None)
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        served = settings._load_script()
    source = EF_JS.read_bytes()
    assert served == source and "rjsmin is not installed" in caplog.text
    monkeypatch.undo()
    assert len(settings._load_script()) < 0.7 * len(source)
