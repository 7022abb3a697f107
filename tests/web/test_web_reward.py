"""The reward route: success, every 4xx, replay, and nothing learned from rejected requests."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.testclient import TestClient
from web_helpers import (
    ACTIONS,
    DESKTOP,
    EF_JS,
    GOOGLEBOT,
    Clock,
    make_app,
    put_cookie,
    stats,
    tamper,
)

from ef_middleware import Engine
from ef_middleware.errors import StoreError

Client = Callable[..., TestClient]
ORIGIN = {"origin": "http://testserver"}


@pytest.fixture
def visitor(engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> TestClient:
    """A visitor who has seen the page (holds a decision cookie for ``loop_name``)."""
    client = client_for(make_app(engine, [loop_name], clock=clock, max_body=512))
    assert client.get("/").status_code == 200
    return client


def error_of(response: Any) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


def post(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post("/_ef/reward", content=content,
                       headers={"content-type": "application/json", **ORIGIN, **(headers or {})})


def raw_post(app: Any, headers: list[tuple[bytes, bytes]],
             receive: Callable[[], Awaitable[dict[str, Any]]]) -> tuple[int, str]:
    """``POST /_ef/reward`` as raw ASGI (for what the test client cannot send): ``headers``
    after Host and Origin; the answer's status and error code."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/_ef/reward",
             "raw_path": b"/_ef/reward", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"testserver"), (b"origin", b"http://testserver"),
                         *headers],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)["error"]["code"]


def test_reward_is_stored_and_learned(engine: Engine, loop_name: str,
                                      visitor: TestClient) -> None:
    response = post(visitor, {"loop": loop_name, "value": 1})
    assert response.status_code == 204 and response.content == b""
    assert stats(engine, loop_name)["rewards"] == 1
    loop = engine.get_loop(loop_name)
    loop.flush()
    after = stats(engine, loop_name)
    assert after["learned"] >= 1  # handed to the trainer (a step comes every 8 samples)
    # ...with its value: one sample, of reward 1, for the variant shown
    learned = [loop.trainer.counts.get(action.id) for action in loop.actions]
    assert sorted(learned) == [(0.0, 0.0)] * (len(learned) - 1) + [(1.0, 1.0)]


def test_default_value_is_the_top_of_the_range(engine: Engine, clock: Clock,
                                               client_for: Client) -> None:
    engine.loop("revenue", actions=ACTIONS, reward_range=(0, 50))
    client = client_for(make_app(engine, ["revenue"], clock=clock))
    client.get("/")
    assert post(client, {"loop": "revenue"}).status_code == 204
    event_id = _middleware_entry(client, "revenue")
    stored = engine.store.get(f"reward:revenue:{event_id}")
    assert stored is not None and json.loads(stored)["value"] == 50.0


def _middleware_entry(client: TestClient, loop: str) -> str:
    from itsdangerous import URLSafeTimedSerializer

    from ef_middleware.web.cookies import DECISIONS_SALT

    payload = URLSafeTimedSerializer(["test-secret-key"], salt=DECISIONS_SALT).loads(
        client.cookies["ef_d"])
    return str(payload[loop][0])


def test_replayed_cookie_is_a_duplicate(engine: Engine, loop_name: str,
                                        visitor: TestClient) -> None:
    assert post(visitor, {"loop": loop_name}).status_code == 204
    cookie = visitor.cookies["ef_d"]
    replay = TestClient(visitor.app, cookies={"ef_d": cookie}, headers={"user-agent": DESKTOP})
    assert error_of(post(replay, {"loop": loop_name})) == (409, "duplicate_reward")
    assert error_of(post(visitor, {"loop": loop_name, "value": 0})) == (409, "duplicate_reward")
    assert stats(engine, loop_name)["rewards"] == 1


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b"{not json", {}, (400, "bad_json")),
        (b"\xff\xfe", {}, (400, "bad_json")),
        ([1, 2], {}, (400, "bad_json")),
        ({"value": 1}, {}, (400, "bad_value")),
        ({"loop": 7}, {}, (400, "bad_value")),
        ({"loop": ""}, {}, (400, "bad_value")),
        ({"loop": "{loop}", "value": "1"}, {}, (400, "bad_value")),
        ({"loop": "{loop}", "value": True}, {}, (400, "bad_value")),
        (b'{"loop": "{loop}", "value": NaN}', {}, (400, "bad_value")),
        (b'{"loop": "{loop}", "value": Infinity}', {}, (400, "bad_value")),
        (b'{"loop": "{loop}", "value": 1' + b"0" * 320 + b"}", {}, (400, "bad_value")),
        ({"loop": "{loop}", "value": 1.5}, {}, (400, "bad_value")),
        ({"loop": "{loop}", "value": -0.1}, {}, (400, "bad_value")),
        ({"loop": "{loop}"}, {"origin": "https://evil.example"}, (403, "bad_origin")),
        ({"loop": "{loop}"}, {"origin": "null"}, (403, "bad_origin")),
        ({"loop": "{loop}"}, {"origin": "http://testserver:8080"}, (403, "bad_origin")),
        ({"loop": "{loop}"}, {"sec-fetch-site": "cross-site"}, (403, "bad_origin")),
        ({"loop": "l" * 200}, {}, (400, "bad_value")),
        ({"loop": "no-such-loop"}, {}, (404, "unknown_loop")),
        ({"loop": "{loop}"}, {"content-type": "text/plain"}, (415, "unsupported_media_type")),
        ({"loop": "{loop}"}, {"content-type": "application/x-www-form-urlencoded"},
         (415, "unsupported_media_type")),
        ({"loop": "{loop}", "pad": "x" * 600}, {}, (413, "body_too_large")),
        ({"loop": "{loop}"}, {"content-length": "abc"}, (400, "bad_request")),
        ({"loop": "{loop}"}, {"content-length": "-1"}, (400, "bad_request")),
        ({"loop": "{loop}"}, {"content-length": "1" * 5000}, (400, "bad_request")),  # int()
    ],
)
def test_bad_requests(engine: Engine, loop_name: str, visitor: TestClient, body: Any,
                      headers: dict[str, str], expected: tuple[int, str]) -> None:
    if isinstance(body, dict):
        body = {k: (v.replace("{loop}", loop_name) if isinstance(v, str) else v)
                for k, v in body.items()}
    elif isinstance(body, bytes):
        body = body.replace(b"{loop}", loop_name.encode())
    assert error_of(post(visitor, body, headers)) == expected
    assert stats(engine, loop_name)["rewards"] == 0  # nothing stored, nothing learned


def test_a_content_length_that_only_str_isdigit_takes_is_a_bad_request(
        engine: Engine, loop_name: str, clock: Clock) -> None:
    """``"\u00b2"`` (byte 0xB2) is a digit to ``str.isdigit`` and not to ``int()``: a 500 until
    2026-12-05 (security audit). Sent as raw ASGI: the test client refuses such a header, and
    uvicorn's parser too, but not every server does."""
    app = make_app(engine, [loop_name], clock=clock)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps({"loop": loop_name}).encode(),
                "more_body": False}

    assert raw_post(app, [(b"user-agent", DESKTOP.encode()),
                          (b"content-type", b"application/json"),
                          (b"content-length", b"\xb2")], receive) == (400, "bad_request")
    assert stats(engine, loop_name)["rewards"] == 0


def test_a_client_that_disconnects_mid_body_gets_no_reward(engine: Engine, loop_name: str,
                                                           visitor: TestClient) -> None:
    """The first chunk is a whole JSON reward announced with ``more_body``, then the client
    disconnects: an early end of the body, not the body (a review of 2026-12-05 found the
    reward stored and a 204 sent). Raw ASGI: the test client cannot disconnect mid-body."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": json.dumps({"loop": loop_name}).encode(),
         "more_body": True},
        {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    cookie = f"ef_d={visitor.cookies.get('ef_d')}".encode()
    answer = raw_post(visitor.app, [(b"user-agent", DESKTOP.encode()),
                                    (b"content-type", b"application/json"), (b"cookie", cookie),
                                    (b"transfer-encoding", b"chunked")], receive)
    assert stats(engine, loop_name)["rewards"] == 0
    assert answer == (400, "bad_request")
    engine.get_loop(loop_name).flush()
    assert stats(engine, loop_name)["learned"] == 0


def test_a_decision_cookie_of_another_app_beside_ours_in_either_order(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    """A browser sends two ``ef_d`` cookies when a host-only one and a ``Domain=`` one (a
    sibling app's, here) both match: ours verifies in either order (a review of 2026-12-05
    found a 403 bad_signature when ours came first). When neither verifies, the last one's
    error stands, as with one cookie."""
    other = f"{loop_name}-b"
    engine.loop(other, actions=ACTIONS)
    app = make_app(engine, [loop_name, other], clock=clock)
    ours = client_for(app)
    ours.get("/")
    sibling = client_for(make_app(engine, [loop_name, other], clock=clock,
                                  secret_key="sibling-app-key"))
    sibling.get("/")
    mine, theirs = ours.cookies["ef_d"], sibling.cookies["ef_d"]
    bare = client_for(app)
    assert post(bare, {"loop": loop_name}, {"cookie": f"ef_d={mine}; ef_d={theirs}"}
                ).status_code == 204
    assert post(bare, {"loop": other}, {"cookie": f"ef_d={theirs}; ef_d={mine}"}
                ).status_code == 204
    assert stats(engine, loop_name)["rewards"] == stats(engine, other)["rewards"] == 1
    assert error_of(post(bare, {"loop": loop_name}, {"cookie": f"ef_d={mine}x; ef_d={theirs}"})
                    ) == (403, "bad_signature")


@pytest.mark.parametrize("content_type", [
    "application/json", "Application/JSON", "application/json; charset=utf-8",
    "application/json;charset=UTF-8"])
def test_json_content_types_in_any_case_and_with_parameters_are_accepted(
        engine: Engine, loop_name: str, visitor: TestClient, content_type: str) -> None:
    """Media types are case-insensitive and may carry parameters (fetch and jQuery send
    ``application/json; charset=utf-8``): each is a JSON reward, not a 415."""
    assert post(visitor, {"loop": loop_name}, {"content-type": content_type}).status_code == 204
    assert stats(engine, loop_name)["rewards"] == 1


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(("size", "status"), [(512, 204), (513, 413)])
def test_max_body_is_the_largest_body_accepted(engine: Engine, loop_name: str,
                                               visitor: TestClient, streamed: bool, size: int,
                                               status: int) -> None:
    """``max_body`` (512 bytes for this visitor) is accepted and one byte more is not, whether
    the body announces its Content-Length or is streamed in chunks without one."""
    head = b'{"loop": "' + loop_name.encode() + b'", "pad": "'
    body = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(body) == size

    def chunks() -> Any:
        yield body[:100]
        yield body[100:]

    response = visitor.post("/_ef/reward", content=chunks() if streamed else body,
                            headers={"content-type": "application/json", **ORIGIN})
    assert response.status_code == status
    if status != 204:
        assert error_of(response) == (413, "body_too_large")


def test_deeply_nested_json_is_bad_json(engine: Engine, loop_name: str, clock: Clock,
                                        client_for: Client) -> None:
    """Nesting past Python's recursion limit fits in a default-sized body (4 KB): the parser
    raises RecursionError, not ValueError, and it must still be a 400."""
    client = client_for(make_app(engine, [loop_name], clock=clock))
    client.get("/")
    body = b"[" * 2000 + b"]" * 2000
    assert len(body) <= 4096
    assert error_of(post(client, body)) == (400, "bad_json")
    assert stats(engine, loop_name)["rewards"] == 0


def test_referer_is_checked_when_there_is_no_origin(engine: Engine, loop_name: str,
                                                    visitor: TestClient) -> None:
    def send(headers: dict[str, str]) -> Any:
        return visitor.post("/_ef/reward", json={"loop": loop_name}, headers=headers)

    assert error_of(send({"referer": "https://evil.example/page"})) == (403, "bad_origin")
    assert send({"referer": "http://testserver/pricing", "sec-fetch-site": "same-origin"}
                ).status_code == 204


def test_trusted_origins(engine: Engine, loop_name: str, client_for: Client) -> None:
    client = client_for(make_app(engine, [loop_name], trusted_origins=["https://www.shop.test"]))
    client.get("/")
    assert post(client, {"loop": loop_name}, {"origin": "https://www.shop.test"}
                ).status_code == 204


def test_streamed_body_over_the_limit(engine: Engine, loop_name: str,
                                      visitor: TestClient) -> None:
    def chunks() -> Any:
        yield b'{"loop": "' + loop_name.encode() + b'", "pad": "'
        for _ in range(10):
            yield b"x" * 100
        yield b'"}'

    response = visitor.post("/_ef/reward", content=chunks(),
                            headers={"content-type": "application/json", **ORIGIN})
    assert error_of(response) == (413, "body_too_large")


def test_a_bot_or_an_opted_out_visitor_with_a_visitors_cookie_gets_no_reward(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    """Pages give bots and opted-out visitors no decision and ``ef.reward`` refuses them; the
    route stored their rewards all the same when they sent a visitor's cookie (a review of
    2026-12-06). Refused before the body is read, and nothing is stored."""
    app = make_app(engine, [loop_name], clock=clock, honor_gpc=True)
    visitor = client_for(app)
    assert visitor.get("/").status_code == 200
    bot = client_for(app, user_agent=GOOGLEBOT)
    bot.cookies.update(visitor.cookies)
    assert error_of(post(bot, {"loop": loop_name})) == (403, "not_tracked")
    nameless = client_for(app, user_agent="")  # no user agent: a bot to the pages too
    nameless.cookies.update(visitor.cookies)
    assert error_of(post(nameless, {"loop": loop_name})) == (403, "not_tracked")
    assert error_of(post(visitor, {"loop": loop_name}, {"sec-gpc": "1"})) == (403,
                                                                               "not_tracked")
    assert stats(engine, loop_name)["rewards"] == 0
    assert post(visitor, {"loop": loop_name}, {"sec-gpc": "0"}).status_code == 204
    # without honor_gpc the header is not an opt-out, as on the pages
    other = client_for(make_app(engine, [loop_name], clock=clock))
    other.get("/")
    assert post(other, {"loop": loop_name}, {"sec-gpc": "1"}).status_code == 204
    assert stats(engine, loop_name)["rewards"] == 2


def test_a_bots_reward_is_refused_before_its_body_is_read(engine: Engine, loop_name: str,
                                                         visitor: TestClient) -> None:
    """Raw ASGI: the route answers without awaiting ``receive`` for a bot."""
    cookie = f"ef_d={visitor.cookies['ef_d']}".encode()

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    assert raw_post(visitor.app, [(b"user-agent", GOOGLEBOT.encode()), (b"cookie", cookie),
                                  (b"content-type", b"application/json"),
                                  (b"content-length", b"20")], receive) == (403, "not_tracked")
    assert stats(engine, loop_name)["rewards"] == 0


def test_no_cookie_and_no_decision_for_the_loop(engine: Engine, loop_name: str,
                                                client_for: Client) -> None:
    stranger = client_for(make_app(engine, [loop_name]))
    assert error_of(post(stranger, {"loop": loop_name})) == (404, "no_decision")
    engine.loop(loop_name + "-other", actions=ACTIONS)
    stranger.get("/")  # decides loop_name only
    assert error_of(post(stranger, {"loop": loop_name + "-other"})) == (404, "no_decision")


def test_tampered_cookie_is_forbidden(engine: Engine, loop_name: str,
                                      visitor: TestClient) -> None:
    cookie = visitor.cookies["ef_d"]
    body, stamp, sig = cookie.rsplit(".", 2)
    put_cookie(visitor, "ef_d", ".".join([body, stamp, sig[::-1]]))
    assert error_of(post(visitor, {"loop": loop_name})) == (403, "bad_signature")
    put_cookie(visitor, "ef_d", tamper(cookie))
    assert error_of(post(visitor, {"loop": loop_name})) == (403, "bad_signature")
    put_cookie(visitor, "ef_d", "garbage")
    assert error_of(post(visitor, {"loop": loop_name})) == (403, "bad_signature")
    assert stats(engine, loop_name)["rewards"] == 0


def test_expired_cookie_is_forbidden(engine: Engine, loop_name: str, clock: Clock,
                                     visitor: TestClient) -> None:
    clock.advance(7 * 86_400 + 1)
    assert error_of(post(visitor, {"loop": loop_name})) == (403, "decision_expired")
    assert stats(engine, loop_name)["rewards"] == 0


def test_an_entry_past_the_decision_max_age_in_a_re_signed_cookie_is_expired(
        engine: Engine, loop_name: str, clock: Clock, client_for: Client) -> None:
    """A new decision for another loop re-signs the cookie with the older entries in it: the
    signature is fresh, but each decision may be rewarded for 7 days from when it was made.
    Loop A decided on day 0, loop B on day 5, a reward of A on day 8 is too late."""
    other = engine.loop(loop_name + "-b", actions=ACTIONS).name
    client = client_for(make_app(engine, [loop_name, other], clock=clock))
    client.get("/", params={"loop": loop_name})
    clock.advance(5 * 86_400)
    client.get("/", params={"loop": other})
    assert _middleware_entry(client, loop_name)  # A is still in the re-signed cookie
    clock.advance(3 * 86_400)
    assert error_of(post(client, {"loop": loop_name})) == (403, "decision_expired")
    assert stats(engine, loop_name)["rewards"] == 0
    assert post(client, {"loop": other}).status_code == 204


def test_event_unknown_to_the_engine(engine: Engine, loop_name: str, clock: Clock,
                                     client_for: Client, new_engine: Callable[..., Engine]
                                     ) -> None:
    other = new_engine()
    other.loop(loop_name, actions=ACTIONS)  # e.g. a restarted server that lost open decisions
    client = client_for(make_app(engine, [loop_name], clock=clock))
    client.get("/")
    moved = client_for(make_app(other, [loop_name], clock=clock))
    moved.cookies.update(client.cookies)
    assert error_of(post(moved, {"loop": loop_name})) == (404, "unknown_event")


def test_wrong_method_and_unknown_route(engine: Engine, loop_name: str,
                                        visitor: TestClient) -> None:
    response = visitor.get("/_ef/reward")
    assert error_of(response) == (405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert error_of(visitor.get("/_ef/nothing")) == (404, "not_found")
    assert error_of(visitor.get("/_ef/status")) == (404, "not_found")  # off by default


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_script_route_answers_get_and_head_only(engine: Engine, loop_name: str,
                                                    visitor: TestClient, method: str) -> None:
    """ef.js is a static file: any other method is a JSON 405 that names the allowed ones."""
    response = visitor.request(method, "/_ef/ef.js")
    assert error_of(response) == (405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD"
    head = visitor.head("/_ef/ef.js")
    assert head.status_code == 200 and head.content == b""


def test_answers_say_how_a_cache_may_keep_them(engine: Engine, loop_name: str,
                                               visitor: TestClient) -> None:
    """A reward's answers (the 204 and every error) are never kept by a cache or replayed
    to another visitor; ef.js is cached for an hour (its tag carries a version), 304 too."""
    assert post(visitor, {"loop": loop_name}).headers["cache-control"] == "no-store"
    duplicate = post(visitor, {"loop": loop_name})
    assert error_of(duplicate) == (409, "duplicate_reward")
    assert duplicate.headers["cache-control"] == "no-store"
    assert visitor.get("/_ef/nothing").headers["cache-control"] == "no-store"
    script = visitor.get("/_ef/ef.js")
    assert script.headers["cache-control"] == "public, max-age=3600"
    again = visitor.get("/_ef/ef.js", headers={"if-none-match": script.headers["etag"]})
    assert again.status_code == 304
    assert again.headers["cache-control"] == "public, max-age=3600"


def test_status_route(engine: Engine, loop_name: str, client_for: Client) -> None:
    client = client_for(make_app(engine, [loop_name], status_route=True))
    client.get("/")
    status = client.get("/_ef/status").json()
    loops = status["loops"]
    assert loops[loop_name]["decisions"] == 1
    assert {"decisions", "rewards", "updates", "log_failures", "unlogged"} <= set(loops[loop_name])
    assert status["engine"] == {"learner": "running", "closed": False, "embedding_queue": 0,
                                "embedding_overflowed": 0,
                                "embedder_failing": False, "embedding_failures": 0,
                                "embedding_store_failures": 0, "embedding_error": None}


def test_script_route(engine: Engine, loop_name: str, client_for: Client) -> None:
    client = client_for(make_app(engine, [loop_name], prefix="/personalize"))
    response = client.get("/personalize/ef.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert b"use strict" in response.content
    etag = response.headers["etag"]
    again = client.get("/personalize/ef.js", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/_ef/ef.js").status_code == 404  # the prefix moved
    # minified, and gzipped for a client that takes it (every browser): 1.5 KB on the
    # wire, not the 5.6 of the readable source
    source = EF_JS.read_bytes()
    assert response.content.startswith(b"/*! ef.js") and len(response.content) < 0.7 * len(
        source)
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert int(response.headers["content-length"]) < 2000 < len(response.content)
    plain = client.get("/personalize/ef.js", headers={"accept-encoding": "gzip;q=0, br"})
    assert "content-encoding" not in plain.headers and plain.content == response.content
    assert plain.headers["etag"] != etag  # one tag per representation
    assert client.get("/personalize/ef.js", headers={"accept-encoding": "identity",
                                                     "if-none-match": etag}).status_code == 200


@pytest.mark.parametrize(("header", "gzip"), [
    ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.8", True), ("*", True),
    ("gzip;q=0", False), ("identity", False), ("", False), ("gzip;q=x", False),
    ("x-gzip", True), ("deflate, X-GZIP;q=0.5", True), ("x-gzip;q=0", False),
    # a review of 2026-12-05: an explicit gzip decides over '*', and q may come later
    ("*;q=0, gzip", True), ("identity, *;q=0, gzip;q=1", True), ("gzip;level=9;q=1", True),
    ("gzip;level=9;q=0", False), ("br, *;q=0", False), ("br, *;q=0.1", True)])
def test_accept_encoding(header: str, gzip: bool) -> None:
    from ef_middleware.web.routes import accepts_gzip

    assert accepts_gzip(header) is gzip


@pytest.mark.parametrize(("if_none_match", "status"), [
    ("{etag}", 304), ("W/{etag}", 304), ('"other", {etag}', 304), ("*", 304),
    ('"other"', 200), ("", 200)])
def test_the_script_is_not_sent_again_to_a_cache_that_holds_it(
        engine: Engine, loop_name: str, visitor: TestClient, if_none_match: str,
        status: int) -> None:
    """If-None-Match by RFC 9110's weak comparison over a list: a proxy that weakens the
    ETag, a list of tags or '*' got the whole script again (a review of 2026-12-05)."""
    etag = visitor.get("/_ef/ef.js").headers["etag"]
    header = if_none_match.format(etag=etag)
    assert visitor.get("/_ef/ef.js", headers={"if-none-match": header}).status_code == status


def test_routes_and_script_under_a_root_path(engine: Engine, loop_name: str) -> None:
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def tag(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.scope["ef"].script()))

    app = make_app(engine, [loop_name])
    app.router.routes.append(Route("/tag", tag))
    client = TestClient(app, root_path="/shop")
    assert '<script src="/shop/_ef/ef.js?v=' in client.get("/tag").text
    assert client.get("/shop/_ef/ef.js").status_code == 200  # a proxy that keeps the prefix
    assert client.get("/_ef/ef.js").status_code == 200  # one that strips it


def test_script_of_a_page_in_a_mounted_sub_app_points_at_the_middlewares_prefix(
        engine: Engine, loop_name: str) -> None:
    """The middleware on the outer app, the page in a ``Mount("/blog", ...)``: the tag and
    the endpoint are the middleware's (``/_ef/``), not the mount's (``/blog/_ef/``, 404)."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def tag(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.scope["ef"].script()))

    app = make_app(engine, [loop_name])
    app.router.routes.append(Mount("/blog", routes=[Route("/tag", tag)]))
    client = TestClient(app)
    text = client.get("/blog/tag").text
    assert '<script src="/_ef/ef.js?v=' in text and 'data-endpoint="/_ef/"' in text
    assert client.get(text.split('src="')[1].split('"')[0]).status_code == 200


def test_script_tags_kept_for_root_paths_stay_bounded(engine: Engine, loop_name: str) -> None:
    """An app mounted under a path parameter (``Mount("/{tenant}", app)``) has a root path
    per tenant: the tags kept per root path grew without bound (security audit, 2026-12-05)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from ef_middleware.web.personalization import SCRIPT_TAGS

    async def tag(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.scope["ef"].script()))

    inner = make_app(engine, [loop_name])
    inner.router.routes.append(Route("/tag", tag))
    client = TestClient(Starlette(routes=[Mount("/{tenant}", app=inner)]))
    for i in range(3 * SCRIPT_TAGS):
        assert f'<script src="/t{i}/_ef/ef.js?v=' in client.get(f"/t{i}/tag").text
    runtime = inner.middleware_stack
    while not hasattr(runtime, "runtime"):
        runtime = runtime.app
    assert 0 < len(runtime.runtime.script_tags) <= SCRIPT_TAGS


@pytest.mark.parametrize(("raised", "expected"), [
    (StoreError("disk full"), (503, "store")),
    (OSError("disk gone"), (500, "internal")),
])
def test_store_failures_answer_json_and_log_one_line(
        engine: Engine, loop_name: str, visitor: TestClient, raised: Exception,
        expected: tuple[int, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(engine.store, "try_set", broken)  # on the event loop
    monkeypatch.setattr(engine.store, "set", broken)  # on the writer thread
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        assert error_of(post(visitor, {"loop": loop_name})) == expected
    assert len([r for r in caplog.records if r.name == "ef_middleware"]) == 1


def test_a_reward_the_store_cannot_take_at_once_goes_to_the_writer_thread(
        engine: Engine, loop_name: str, visitor: TestClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The route writes on the event loop when the store can take the write at once, and
    otherwise awaits the blocking write on its writer thread: stored either way."""
    calls: list[tuple[str, str]] = []
    store = engine.store
    real_try_set, real_set = store.try_set, store.set

    def busy(key: str, value: bytes, **kwargs: Any) -> bool:
        calls.append(("try_set", threading.current_thread().name))
        return False

    def blocking(key: str, value: bytes, **kwargs: Any) -> None:
        if key.startswith("reward:"):  # not the learner's lease, renewed meanwhile
            calls.append(("set", threading.current_thread().name))
        real_set(key, value, **kwargs)

    monkeypatch.setattr(store, "try_set", busy)
    monkeypatch.setattr(store, "set", blocking)
    assert post(visitor, {"loop": loop_name, "value": 1}).status_code == 204
    event_id = _middleware_entry(visitor, loop_name)
    assert store.get(f"reward:{loop_name}:{event_id}") is not None
    assert [name for name, _ in calls] == ["try_set", "set"]
    assert calls[1][1].startswith("ef-writer") and not calls[0][1].startswith("ef-writer")

    tried: list[bool] = []

    def trying(key: str, value: bytes, **kwargs: Any) -> bool:
        took = real_try_set(key, value, **kwargs)
        tried.append(took)
        return took

    monkeypatch.setattr(store, "try_set", trying)
    rewards = 1
    for _ in range(5):  # the store can be busy for a moment (the learner's own writes)
        calls.clear()
        tried.clear()
        visitor.cookies.clear()
        assert visitor.get("/").status_code == 200  # a new decision
        assert post(visitor, {"loop": loop_name, "value": 1}).status_code == 204
        rewards += 1
        event_id = _middleware_entry(visitor, loop_name)
        assert store.get(f"reward:{loop_name}:{event_id}") is not None
        assert len(tried) == 1
        assert [name for name, _ in calls] == ([] if tried[0] else ["set"])
        if tried[0]:  # written at once, no thread
            break
    assert tried == [True]
    engine.get_loop(loop_name).flush()
    assert stats(engine, loop_name)["rewards"] == rewards


def test_a_sum_reward_whose_event_has_a_write_running_waits_on_the_writer_thread(
        engine: Engine, clock: Clock, client_for: Client) -> None:
    """Under 'sum' an event has one reward write at a time: the route does not add a reward
    to a total whose write is still running (the older total could land last), nor wait for
    it on the event loop; it hands the reward to the writer thread."""
    loop = engine.loop("sum-in-flight", actions=ACTIONS, aggregation="sum",
                       reward_range=(0, 50))
    client = client_for(make_app(engine, ["sum-in-flight"], clock=clock))
    client.get("/")
    event_id = _middleware_entry(client, "sum-in-flight")
    running = loop.accept_reward(event_id, 2.0)  # another worker thread's write, still running
    landing = threading.Timer(0.3, running.commit)
    landing.start()
    assert post(client, {"loop": "sum-in-flight", "value": 3}).status_code == 204
    landing.join()
    stored = engine.store.get(f"reward:sum-in-flight:{event_id}")
    assert stored is not None and json.loads(stored)["value"] == 5.0
    assert stats(engine, "sum-in-flight")["rewards"] == 2


@pytest.mark.parametrize(("host", "origin", "same"), [
    ("shop.test:443", "https://shop.test", True),
    ("shop.test:80", "http://shop.test", True),
    ("shop.test", "https://shop.test:443", True),
    ("Shop.Test:443", "https://shop.test", True),
    ("shop.test:8443", "https://shop.test", False),
    ("shop.test", "https://shop.test:8443", False),
])
def test_a_default_port_in_the_host_header_is_the_same_origin(host: str, origin: str,
                                                              same: bool) -> None:
    """Behind a proxy the scheme is unknown, so a Host header naming port 80 or 443 is the
    same origin as a URL that leaves its default port out; any other port is not."""
    from ef_middleware.web.routes import same_origin

    assert same_origin({"host": host, "origin": origin}) is same


def test_the_origin_check_is_remembered_per_headers_and_trusted_origins() -> None:
    """``same_origin`` remembers its answer per headers, never across different headers or
    trusted origins."""
    from ef_middleware.web.routes import _same_origin, same_origin

    shop = {"host": "shop.test", "origin": "https://www.shop.test"}
    trusted = ("https://www.shop.test",)
    before = _same_origin.cache_info().hits
    assert not same_origin(shop)
    assert same_origin(shop, trusted)
    assert not same_origin(shop) and same_origin(shop, trusted)
    assert _same_origin.cache_info().hits == before + 2
    assert same_origin({"host": "shop.test", "referer": "https://shop.test/cart"})
    assert not same_origin({"host": "shop.test", "referer": "https://evil.test/cart"})
    assert not same_origin({**shop, "host": "www.shop.test", "sec-fetch-site": "cross-site"})
    assert same_origin({**shop, "host": "www.shop.test"})
    size = _same_origin.cache_info().currsize  # a huge header is checked, not remembered
    assert same_origin({"host": "shop.test", "referer": "https://shop.test/" + "x" * 70_000})
    assert _same_origin.cache_info().currsize == size
