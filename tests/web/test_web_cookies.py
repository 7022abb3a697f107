"""Signing: salts per purpose, key rotation, max age with an injected clock, malformed data."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from starlette.requests import cookie_parser
from web_helpers import Clock, tamper

from ef_middleware.web import cookies as ck

ENTRY = ck.DecisionEntry("e" * 32, "video", 1_800_000_000)


def serializer(clock: Clock, keys: tuple[str, ...] = ("new",),
               salt: str = ck.DECISIONS_SALT) -> URLSafeTimedSerializer:
    return ck.make_serializer(keys, salt, clock)


def test_round_trip_holds_ids_only(clock: Clock) -> None:
    s = serializer(clock)
    raw = ck.dump_decisions(s, {"hero": ENTRY})
    assert ck.load_decisions(s, raw, max_age=60, now=clock.now) == {"hero": ENTRY}
    payload = s.loads(raw)
    assert payload == {"hero": ["e" * 32, "video", 1_800_000_000]}


def test_tampered_or_foreign_cookie_reads_as_nothing(clock: Clock) -> None:
    s = serializer(clock)
    raw = ck.dump_decisions(s, {"hero": ENTRY})
    forged = tamper(raw)
    assert ck.load_decisions(s, forged, max_age=60, now=clock.now) == {}
    with pytest.raises(ck.BadDecisionCookie):
        ck.load_decisions_strict(s, forged, max_age=60)
    other_key = serializer(clock, ("attacker",))
    assert ck.load_decisions(s, ck.dump_decisions(other_key, {"hero": ENTRY}), max_age=60,
                             now=clock.now) == {}
    assert ck.load_decisions(s, "garbage", max_age=60, now=clock.now) == {}
    assert ck.load_decisions(s, None, max_age=60, now=clock.now) == {}


def test_salt_separates_purposes(clock: Clock) -> None:
    visitor = serializer(clock, salt=ck.VISITOR_SALT)
    raw = ck.dump_visitor(visitor, ck.VisitorState("abc", 1, 0))
    assert ck.load_decisions(serializer(clock), raw, max_age=60, now=clock.now) == {}
    decisions = ck.dump_decisions(serializer(clock), {"hero": ENTRY})
    assert ck.load_visitor(visitor, decisions, max_age=60) is None


def test_key_rotation(clock: Clock) -> None:
    old = serializer(clock, ("old",))
    rotated = serializer(clock, ("new", "old"))
    raw_old = ck.dump_decisions(old, {"hero": ENTRY})
    assert ck.load_decisions(rotated, raw_old, max_age=60, now=clock.now) == {"hero": ENTRY}
    raw_new = ck.dump_decisions(rotated, {"hero": ENTRY})  # signed with the first (newest) key
    assert ck.load_decisions(serializer(clock, ("new",)), raw_new, max_age=60, now=clock.now)
    assert ck.load_decisions(old, raw_new, max_age=60, now=clock.now) == {}


def test_expiry_by_max_age_with_injected_clock(clock: Clock) -> None:
    s = serializer(clock)
    entry = ck.DecisionEntry("e1", "video", int(clock.now))
    raw = ck.dump_decisions(s, {"hero": entry})
    clock.advance(60)
    assert ck.load_decisions(s, raw, max_age=60, now=clock.now) == {"hero": entry}
    clock.advance(1)
    assert ck.load_decisions(s, raw, max_age=60, now=clock.now) == {}
    with pytest.raises(ck.ExpiredDecisionCookie):
        ck.load_decisions_strict(s, raw, max_age=60)


def test_an_entry_expires_at_its_own_age_in_a_freshly_signed_cookie(clock: Clock) -> None:
    """A cookie re-signed just now still holds older decisions: each entry is fresh up to
    max_age seconds after it was made, inclusive, and not one second more."""
    s = serializer(clock)
    at_limit = ck.DecisionEntry("e1", "video", int(clock.now) - 60)
    past_limit = ck.DecisionEntry("e2", "video", int(clock.now) - 61)
    raw = ck.dump_decisions(s, {"kept": at_limit, "gone": past_limit})  # signed now
    assert ck.load_decisions(s, raw, max_age=60, now=clock.now) == {"kept": at_limit}
    assert not ck.entry_expired(at_limit, max_age=60, now=clock.now)
    assert ck.entry_expired(past_limit, max_age=60, now=clock.now)


def test_an_entry_dated_in_the_future_is_expired(clock: Clock) -> None:
    """An entry made "later" than now (a clock gone back, or a forged time under a leaked
    key) is refused like an expired one, never treated as brand new."""
    s = serializer(clock)
    now = ck.DecisionEntry("e1", "video", int(clock.now))
    future = ck.DecisionEntry("e2", "video", int(clock.now) + 10)
    raw = ck.dump_decisions(s, {"now": now, "future": future})
    assert ck.load_decisions(s, raw, max_age=60, now=clock.now) == {"now": now}
    assert ck.entry_expired(future, max_age=60, now=clock.now)
    assert not ck.entry_expired(now, max_age=60, now=clock.now)


def test_a_cookie_keeps_sixteen_loops_at_most(clock: Clock) -> None:
    """Sixteen loops fit in one decision cookie; a seventeenth pushes out the oldest."""
    s = serializer(clock)

    def entries(count: int) -> dict[str, ck.DecisionEntry]:
        return {f"loop{i}": ck.DecisionEntry(f"e{i}", "a", int(clock.now) - 100 + i)
                for i in range(count)}

    assert len(ck.load_decisions(s, ck.dump_decisions(s, entries(16)), max_age=1000,
                                 now=clock.now)) == 16
    loaded = ck.load_decisions(s, ck.dump_decisions(s, entries(17)), max_age=1000,
                               now=clock.now)
    assert set(loaded) == {f"loop{i}" for i in range(1, 17)}


def test_old_entries_are_dropped_and_the_cookie_stays_small(clock: Clock) -> None:
    s = serializer(clock)
    entries = {f"loop{i}": ck.DecisionEntry(f"{i:032x}", "a", int(clock.now) - 100 + i)
               for i in range(40)}
    raw = ck.dump_decisions(s, entries)
    loaded = ck.load_decisions(s, raw, max_age=1000, now=clock.now)
    assert len(loaded) == ck.MAX_ENTRIES and "loop39" in loaded and "loop0" not in loaded
    assert len(raw) < 2000
    stale = ck.load_decisions(s, raw, max_age=70, now=clock.now)
    assert set(stale) == {f"loop{i}" for i in range(30, 40)}


def test_a_cookie_of_long_ids_keeps_under_what_a_browser_keeps(clock: Clock) -> None:
    """16 loops of 100-character names with 128-character ids signed to 5.9 KB, which a
    browser drops whole: the oldest decisions give way until it fits."""
    s = serializer(clock)
    entries = {f"{i:02d}" + "n" * 98: ck.DecisionEntry("e" * 128, "a" * 128,
                                                         int(clock.now) - 100 + i)
               for i in range(ck.MAX_ENTRIES)}
    raw = ck.dump_decisions(s, entries)
    loaded = ck.load_decisions(s, raw, max_age=1000, now=clock.now)
    assert len(raw) <= ck.MAX_VALUE and 5 < len(loaded) < ck.MAX_ENTRIES
    newest = sorted(entries, key=lambda loop: entries[loop].issued_at)[-len(loaded):]
    assert set(loaded) == set(newest)


@pytest.mark.parametrize("domain", [None, "www.example.com"])
def test_the_whole_set_cookie_header_of_long_ids_stays_within_4096_bytes(
        clock: Clock, domain: str | None) -> None:
    """A browser keeps a cookie of at most 4,096 bytes, name and attributes included, and
    drops a larger one whole: with 16 loops of the longest names and ids, the header the
    middleware sends (every attribute on) still fits."""
    s = serializer(clock)
    entries = {f"{i:02d}" + "n" * 98: ck.DecisionEntry(f"{i:02d}" + "e" * 126, "a" * 128,
                                                         int(clock.now) - 100 + i)
               for i in range(16)}
    header = ck.set_cookie("ef_d", ck.dump_decisions(s, entries), max_age=7 * 86_400,
                           path="/", secure=True, domain=domain)
    assert len(header.encode("latin-1")) <= 4096
    assert ck.load_decisions(s, header.split("=", 1)[1].split(";")[0], max_age=1000,
                             now=clock.now)


@pytest.mark.parametrize("payload", [[1, 2], {"hero": ["e", "a"]}, {"hero": ["e", "a", "x"]},
                                     {"hero": ["", "a", 1]}, {"hero": ["e", "a", True]},
                                     {"h" * 200: ["e", "a", 1]}, {"hero": ["e", "", 1]},
                                     {"hero": ["e", "a" * 129, 1]}, {"hero": ["e", 7, 1]},
                                     {"hero": ["e" * 129, "a", 1]}])
def test_malformed_payload_signed_with_our_key_is_refused(clock: Clock, payload: object) -> None:
    s = serializer(clock)
    with pytest.raises(ck.BadDecisionCookie):
        ck.load_decisions_strict(s, s.dumps(payload), max_age=60)


@pytest.mark.parametrize("header", [
    "ef_d=one", ' ef_d = "a\\"b" ;ef_v=x', "xef_d=1; ef_d_old=2; ef_d=3; =ef_d; ef_d",
    "ef_v=ef_d; ef_d=", ""])
def test_cookie_values_splits_and_unquotes_as_starlette_does(header: str) -> None:
    """With one cookie of the name (or none), the same value as starlette's cookie_parser."""
    expected = cookie_parser(header).get("ef_d")
    assert ck.cookie_values(header, "ef_d") == ([] if expected is None else [expected])


def test_cookie_values_keeps_every_value_of_a_name_in_header_order() -> None:
    """A browser sends a host-only and a ``Domain=`` cookie of one name both, and
    cookie_parser keeps the last (a review of 2026-12-05)."""
    header = 'ef_d=first; ef_v=v; ef_d="second"; ef_d=third'
    assert ck.cookie_values(header, "ef_d") == ["first", "second", "third"]
    assert ck.cookie_values(header, "ef_v") == ["v"]


def test_last_verified_takes_the_last_value_that_verifies(clock: Clock) -> None:
    ours = ck.dump_decisions(serializer(clock), {"hero": ENTRY})
    theirs = ck.dump_decisions(serializer(clock, ("another app",)), {"hero": ENTRY})
    for values in ([ours, theirs], [theirs, ours], ["", theirs, ours]):
        assert ck.last_verified(serializer(clock), values, max_age=60) == ours
    # two of ours (an app that moved to cookie_domain=): the browser sends the older first,
    # and the first one kept every view a new decision (a review of 2026-12-05)
    newer = ck.dump_decisions(serializer(clock), {"hero": ENTRY, "other": ENTRY})
    assert ck.last_verified(serializer(clock), [ours, newer], max_age=60) == newer
    # none verifies: the last, refused by the caller as a single cookie would be
    assert ck.last_verified(serializer(clock), [tamper(ours), theirs], max_age=60) == theirs
    assert ck.last_verified(serializer(clock), [ours + "x", ""], max_age=60) == ""
    assert ck.last_verified(serializer(clock), [], max_age=60) is None


def test_visitor_cookie(clock: Clock) -> None:
    s = serializer(clock, salt=ck.VISITOR_SALT)
    state = ck.VisitorState(ck.new_visitor_id(), 3, 1_800_000_000, "news|email|")
    assert ck.load_visitor(s, ck.dump_visitor(s, state), max_age=60) == state
    assert ck.load_visitor(s, s.dumps(["id", 0, 1, ""]), max_age=60) is None
    assert ck.load_visitor(s, s.dumps(["id", True, 1, ""]), max_age=60) is None
    assert ck.new_visitor_id() != ck.new_visitor_id()


@pytest.mark.parametrize("payload", [
    ["id", 1, 1, 7], ["id", 1, 1, None], ["id", 1, "1800000000", ""], ["id", 1, 1.5, ""],
    ["id", 1, True, ""], ["id", 1, 1], ["id", 1, 1, "", "extra"], ["", 1, 1, ""],
    ["i" * 129, 1, 1, ""], [7, 1, 1, ""], {"id": "id", "visits": 1}])
def test_malformed_visitor_payload_signed_with_our_key_reads_as_none(
        clock: Clock, payload: object) -> None:
    """A visitor payload of the wrong shape or types reads as a new visitor, even when its
    signature verifies (an old format, a leaked key), and never raises in the page path."""
    s = serializer(clock, salt=ck.VISITOR_SALT)
    assert ck.load_visitor(s, s.dumps(payload), max_age=60) is None


def test_set_cookie_attributes() -> None:
    assert ck.set_cookie("ef_d", "v", max_age=60) == (
        "ef_d=v; Max-Age=60; Path=/; HttpOnly; SameSite=Lax")
    assert ck.set_cookie("ef_d", "v", max_age=60.9, secure=True, domain="example.com") == (
        "ef_d=v; Max-Age=60; Path=/; Domain=example.com; Secure; HttpOnly; SameSite=Lax")


def test_a_domain_is_set_without_secure_too() -> None:
    """``cookie_domain`` on a plain-HTTP site (a staging host): the cookie still names it."""
    assert ck.set_cookie("ef_d", "v", max_age=60, domain="example.com") == (
        "ef_d=v; Max-Age=60; Path=/; Domain=example.com; HttpOnly; SameSite=Lax")


def test_a_known_value_is_verified_once_and_still_expires(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    signer_side = serializer(clock)  # signed the value: knows it
    reader = serializer(clock)  # meets it first in a request
    raw = ck.dump_decisions(signer_side, {"hero": ENTRY})
    verified: list[bytes] = []
    verify = ck._CookieSerializer._verified

    def counting(self: ck._CookieSerializer, value: bytes,
                 salt: str | bytes | None) -> tuple[object, bytes, int] | None:
        verified.append(value)
        return verify(self, value, salt)

    monkeypatch.setattr(ck._CookieSerializer, "_verified", counting)
    for _ in range(3):
        assert ck.load_decisions_strict(signer_side, raw, max_age=60) == {"hero": ENTRY}
        assert ck.load_decisions_strict(reader, raw, max_age=60) == {"hero": ENTRY}
    assert len(verified) == 1  # the reader, the first time
    with pytest.raises(ck.BadDecisionCookie):
        ck.load_decisions_strict(reader, tamper(raw), max_age=60)
    assert ck.load_decisions(reader, tamper(raw), max_age=60, now=clock.now) == {}
    clock.advance(-1)  # signed "in the future": refused, as itsdangerous does
    with pytest.raises(ck.ExpiredDecisionCookie):
        ck.load_decisions_strict(reader, raw, max_age=60)
    clock.advance(61)
    assert ck.load_decisions_strict(signer_side, raw, max_age=60) == {"hero": ENTRY}
    clock.advance(1)
    for each in (signer_side, reader):
        with pytest.raises(ck.ExpiredDecisionCookie):
            ck.load_decisions_strict(each, raw, max_age=60)
    payload, signed_at = reader.loads(raw, return_timestamp=True)
    assert payload == {"hero": ["e" * 32, "video", 1_800_000_000]}
    assert signed_at.timestamp() == 1_800_000_000


def test_known_values_are_bounded(clock: Clock) -> None:
    s = serializer(clock)
    signed = [ck.dump_decisions(s, {"hero": ck.DecisionEntry(f"e{i}", "video", 1)})
              for i in range(ck.KNOWN_VALUES + 10)]
    assert len(s._known) == ck.KNOWN_VALUES  # type: ignore[attr-defined]
    # The forgotten ones still load, verified again.
    assert ck.load_decisions_strict(s, signed[0], max_age=60) == {
        "hero": ck.DecisionEntry("e0", "video", 1)}


def test_a_full_memory_forgets_the_oldest_value_first(clock: Clock) -> None:
    """The memory of known values is first in, first out: a visitor's current cookie (the
    newest) stays known, and the oldest gives way."""
    s = serializer(clock)
    signed = [ck.dump_decisions(s, {"hero": ck.DecisionEntry(f"e{i}", "video", 1)})
              for i in range(ck.KNOWN_VALUES + 1)]
    assert s.known_stamp(signed[0]) is None  # type: ignore[attr-defined]
    for kept in (signed[1], signed[-2], signed[-1]):
        assert s.known_stamp(kept) == int(clock.now)  # type: ignore[attr-defined]


def _traced_bytes(work: Callable[[], None]) -> int:
    """The bytes of memory that ``work()`` left allocated."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_a_full_memory_of_known_values_takes_about_two_megabytes(clock: Clock) -> None:
    """Each remembered value keeps its payload's JSON text. orjson 3.12+ hands its text back in
    a buffer of at least 4 KiB, so kept as it came, a full memory took about 18 MB per
    serializer instead of 2 (and a site has two): the texts are right-sized copies."""
    def entry(i: int) -> dict[str, ck.DecisionEntry]:
        return {"hero": ck.DecisionEntry(f"{i:032x}", "video", 1_800_000_000)}

    signer = serializer(clock)

    def sign() -> None:
        for i in range(ck.KNOWN_VALUES):
            ck.dump_decisions(signer, entry(i))

    # about 480 bytes a value here; 4,470 with orjson's buffers kept
    assert _traced_bytes(sign) / ck.KNOWN_VALUES < 1_000
    assert len(signer._known) == ck.KNOWN_VALUES  # type: ignore[attr-defined]

    other = serializer(clock, ("other",))
    values = [ck.dump_decisions(other, entry(i)) for i in range(2_000)]
    verifier = serializer(clock, ("other",))

    def verify() -> None:
        for value in values:
            ck.load_decisions_strict(verifier, value, max_age=60)

    assert _traced_bytes(verify) / len(values) < 1_000
    assert len(verifier._known) == len(values)  # type: ignore[attr-defined]


def test_format_is_itsdangerous_both_ways(clock: Clock) -> None:
    """Our faster serializer writes what plain itsdangerous reads, and reads what it writes
    (compressed payloads and older keys included)."""
    ours = serializer(clock, keys=("new", "old"))
    plain_new = URLSafeTimedSerializer(["new"], salt=ck.DECISIONS_SALT)
    plain_old = URLSafeTimedSerializer(["old"], salt=ck.DECISIONS_SALT)
    payload = {"hero": ["e" * 32, "video", 1_800_000_000], "héro": ["x", "y", 1]}
    assert plain_new.loads(ours.dumps(payload)) == payload
    compressed = plain_old.dumps(payload)  # repetitive: itsdangerous compresses it
    assert compressed.startswith(".")
    assert ours.loads(compressed) == payload
    assert not ours.dumps(payload).startswith(".")  # we never compress
    with pytest.raises(BadSignature):
        plain_old.loads(ours.dumps(payload))  # signed with the newest key only


def test_signed_value_is_itsdangerous_own_byte_for_byte(clock: Clock) -> None:
    """Our one-step signing writes exactly what ``URLSafeTimedSerializer.dumps`` writes, at the
    same second, and a new second gets a new timestamp."""

    class SameClock(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock.now)

    ours = serializer(clock, keys=("new", "old"))
    plain = URLSafeTimedSerializer(["old", "new"], salt=ck.DECISIONS_SALT, signer=SameClock)
    payloads = [{"hero": ["e1", "video", 1_800_000_000]}, ["visitor-id", 3, 1_800_000_000, ""]]
    for payload in payloads:
        first = ours.dumps(payload)
        assert first == plain.dumps(payload)
        clock.advance(1.5)
        assert ours.dumps(payload) == plain.dumps(payload) != first
    for size in range(64):  # every padding case of the encoding
        data = bytes(range(256 - size, 256))
        assert ck._urlsafe_b64(data) == base64_encode(data)


def test_signed_age_reads_the_timestamp_without_verifying(clock: Clock) -> None:
    s = serializer(clock, salt=ck.VISITOR_SALT)
    raw = ck.dump_visitor(s, ck.VisitorState("v1", 2, int(clock.now)))
    assert s.known_stamp(raw) == int(clock.now)  # type: ignore[attr-defined]
    assert ck.signed_age(s, raw, clock.now + 30) == 30
    assert ck.signed_age(s, tamper(raw), clock.now + 30) == 30  # read, not verified
    assert ck.signed_age(s, "garbage", clock.now) is None
    assert ck.signed_age(s, "WyJ4IiwxLDEsIiJd.AAAAAAAAAAAA.c2ln", clock.now) is None  # 9 bytes
    assert ck.signed_age(s, None, clock.now) is None
    remembered = len(s._known)  # type: ignore[attr-defined]
    long = "x" * 4096 + raw  # not ours: read, not remembered
    assert ck.signed_age(s, long, clock.now + 5) == 5
    assert s.known_stamp(long) is None  # type: ignore[attr-defined]
    assert len(s._known) == remembered  # type: ignore[attr-defined]


def test_cookie_attributes_match_set_cookie() -> None:
    attributes = ck.cookie_attributes(max_age=86_400.5, path="/shop", secure=True,
                                      domain="example.com")
    assert attributes == "; Max-Age=86400; Path=/shop; Domain=example.com; Secure; HttpOnly; " \
                         "SameSite=Lax"
    assert ck.set_cookie("ef_v", "abc", max_age=86_400.5, path="/shop", secure=True,
                         domain="example.com") == "ef_v=abc" + attributes


def _signed_by(key: str, head: bytes) -> bytes:
    """``head`` signed as itsdangerous's signer for the decisions salt signs: a test's way to
    make values whose signature verifies but whose timestamp or payload is broken."""
    signer = TimestampSigner(key, salt=ck.DECISIONS_SALT)
    return head + b"." + signer.get_signature(head)


def _outcome(load: object, value: bytes) -> object:
    try:
        return ("ok", load(value))  # type: ignore[operator]
    except Exception as exc:
        return ("error", type(exc).__name__)


def test_one_step_verification_accepts_what_itsdangerous_accepts(clock: Clock) -> None:
    """Every value, well-formed or not, loads to the same payload or the same error through
    the one-step verification as through plain itsdangerous (a fresh serializer each time,
    so nothing is remembered), with either key of a rotation; and values this code signs
    never reach itsdangerous's own ``loads``."""
    plain = URLSafeTimedSerializer(["old", "new"], salt=ck.DECISIONS_SALT)
    good = ["e1", 1_800_000_000]  # too short for zlib to shrink: itsdangerous leaves it as is
    now = base64_encode(int(clock.now).to_bytes(4, "big"))
    body = base64_encode(b'{"hero":["e1","video",1800000000]}')
    values = [
        plain.dumps(good).encode(),  # signed with the newest key
        URLSafeTimedSerializer(["old"], salt=ck.DECISIONS_SALT).dumps(good).encode(),
        URLSafeTimedSerializer(["other"], salt=ck.DECISIONS_SALT).dumps(good).encode(),
        URLSafeTimedSerializer(["new"], salt=ck.VISITOR_SALT).dumps(good).encode(),
        plain.dumps({"x": "y" * 200}).encode(),  # compressed by itsdangerous
        tamper(plain.dumps(good)).encode(),
        plain.dumps(good).encode()[:-1],
        b"", b".", b"..", b"no-dots", b"a.b.c", b"a.b.c.d",
        _signed_by("new", body + b"." + now),
        _signed_by("new", base64_encode('{"hé":["x","y",1]}'.encode()) + b"." + now),  # UTF-8
        _signed_by("new", body),  # no timestamp
        _signed_by("new", body + b".!!!"),  # a timestamp that does not decode
        _signed_by("new", body + b"." + base64_encode((1 << 62).to_bytes(8, "big"))),  # no datetime
        _signed_by("new", base64_encode(b"{not json") + b"." + now),
        _signed_by("new", base64_encode(b'"\xff\xfe"') + b"." + now),  # not UTF-8
        _signed_by("new", b"." + now),  # an empty payload
        _signed_by("new", b"?" + body + b"." + now),  # a character base64 ignores
    ]
    for value in values:
        ours = serializer(clock, keys=("new", "old"))
        expected = _outcome(lambda v: plain.loads(v), value)
        assert _outcome(lambda v, ours=ours: ours.loads(v), value) == expected, value
    assert not values[0].startswith(b".") and values[4].startswith(b".")
    assert [_outcome(plain.loads, v)[0] for v in values[:3]] == ["ok", "ok", "error"]
    fast = [serializer(clock, keys=("new", "old"))._verified(v, None) is not None
            for v in values]
    assert fast[:2] == [True, True] and sum(fast) == 5  # the well-formed values, not others

    signed = serializer(clock, keys=("new",)).dumps(good)
    fresh = serializer(clock, keys=("new", "old"))
    real = URLSafeTimedSerializer.loads
    try:
        URLSafeTimedSerializer.loads = None  # type: ignore[assignment,method-assign]
        assert fresh.loads(signed) == good
    finally:
        URLSafeTimedSerializer.loads = real  # type: ignore[method-assign]


def test_urlsafe_decoding_is_itsdangerous_own() -> None:
    """The one-step verification's decoder returns what itsdangerous's ``base64_decode``
    returns, and fails where it fails, for every padding case and for characters outside the
    alphabet."""
    from itsdangerous import BadData
    from itsdangerous.encoding import base64_decode

    cases = [base64_encode(bytes(range(256 - n, 256))) for n in range(40)]
    cases += [b"", b"a", b"ab", b"abc", b"a=b", b"!!!", b"a b-c_d", b"\xff\xfe", b"abcd=", b"ab=="]
    for case in cases:
        try:
            expected: object = base64_decode(case)
        except BadData:
            expected = "error"
        try:
            got: object = ck._urlsafe_b64_decode(case)
        except ValueError:
            got = "error"
        assert got == expected, case
