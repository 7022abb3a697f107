"""Signed cookies: the request's decisions and the first-party visitor id.

Both are signed with :mod:`itsdangerous` (one salt per purpose, a list of keys for rotation, a
maximum age). A cookie that is tampered with, signed by an unknown key, too old or malformed reads
as "no data" in the page path; the reward route tells those cases apart with
:func:`load_decisions_strict`.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import math
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, cast

import orjson
from itsdangerous import BadData, SignatureExpired, Signer, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import (
    base64_decode,
    base64_encode,
    bytes_to_int,
    int_to_bytes,
    want_bytes,
)
from starlette.requests import cookie_parser

from .. import features
from .._json import kept_json
from ..memo import Memo

__all__ = [
    "DECISIONS_SALT",
    "VISITOR_SALT",
    "BadDecisionCookie",
    "DecisionEntry",
    "ExpiredDecisionCookie",
    "VisitorState",
    "cookie_attributes",
    "cookie_values",
    "decision_cookie",
    "dump_decisions",
    "dump_visitor",
    "entry_expired",
    "last_verified",
    "load_decisions",
    "load_decisions_strict",
    "load_visitor",
    "make_serializer",
    "new_visitor_id",
    "set_cookie",
    "signed_age",
]

DECISIONS_SALT = "ef_middleware.web.decisions"
VISITOR_SALT = "ef_middleware.web.visitor"
MAX_ENTRIES = 16  # loops remembered in one decision cookie (oldest dropped first)
# Characters of a decision cookie's value: with its name and attributes, under the 4,096 bytes
# a browser keeps.
MAX_VALUE = 3800
# Characters of an event id, action id or loop name we accept from a cookie: the engine's own
# bound on ids (a loop name is at most 100).
MAX_ID = features.MAX_ID
KNOWN_VALUES = 4096  # signed values remembered per serializer (about 2 MB at most)


class DecisionEntry(NamedTuple):
    """One loop's decision as stored in the cookie: ids and the time it was made."""

    event_id: str
    action_id: str
    issued_at: int


@dataclass(frozen=True)
class VisitorState:
    """The first-party visitor cookie: a random id, the visit count and when we last saw it."""

    id: str
    visits: int
    last_seen: int
    campaign: str = ""


class BadDecisionCookie(Exception):
    """The decision cookie is tampered with, signed by an unknown key, or malformed."""


class ExpiredDecisionCookie(BadDecisionCookie):
    """The decision cookie (or the entry asked for) is older than its maximum age."""


class _CompactJSON:
    """itsdangerous's compact JSON (no spaces, UTF-8 kept), written and read by orjson (already
    the decision log's): for our payloads of ids and ints the text is the same as
    ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``, in a tenth of the time."""

    @staticmethod
    def dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode("utf-8")

    @staticmethod
    def loads(text: str | bytes) -> Any:
        return orjson.loads(text)


class _CookieSerializer(URLSafeTimedSerializer):
    """``URLSafeTimedSerializer`` with the same output format, minus per-call waste.

    Our payloads are a few ids: zlib rarely shrinks them, and trying costs more than the rest
    of the signing (``zlib.compress`` allocates its 256 KB state every call), so payloads are
    never compressed; compressed ones (a leading ``.``) still load. The signer is built once
    per salt instead of once per call.

    A visitor sends the same cookie with every page view and reward, so the last
    :data:`KNOWN_VALUES` values this serializer signed or verified are remembered with their
    payload's JSON text and signing time: a known value is not verified or base64-decoded
    again, and its age is still checked on every load. Whether a value verifies depends only
    on the value and this serializer's keys, which never change, so remembering it changes no
    answer. The memory holds only str, bytes and int, in tuples, which the garbage collector
    stops tracking: holding the decoded payloads (a dict and a list per cookie) kept about
    16,000 objects that every full collection scanned.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signers: dict[str | bytes | None, Signer] = {}
        self._keys: dict[str | bytes | None, _SaltKeys] = {}
        # A Memo (an OrderedDict): forgetting its oldest entry takes constant time (a dict's
        # first entry is found by skipping the slots of those deleted before it).
        self._known: Memo[tuple[str | bytes | None, bytes], tuple[bytes, int]] = Memo(
            KNOWN_VALUES)

    def dumps(self, obj: Any, salt: str | bytes | None = None) -> str:
        # Serializer.dumps and TimestampSigner.sign in one step (see _SaltKeys), keeping the
        # JSON text and the signing time to remember.
        text = kept_json(obj)  # remembered below: right-sized (ef_middleware._json)
        signed, stamp = self._salt_keys(salt).sign(_urlsafe_b64(text))
        self._known.put((salt, signed), (text, stamp))
        return signed.decode("ascii")

    def loads(self, s: str | bytes, max_age: int | None = None,  # type: ignore[override]
              return_timestamp: bool = False, salt: str | bytes | None = None) -> Any:
        key = (salt, want_bytes(s))
        known = self._known.get(key)
        if known is None:
            verified = self._verified(key[1], salt)
            if verified is None:  # anything else: itsdangerous decides, with its own errors
                payload, signed_at = super().loads(s, return_timestamp=True, salt=salt)
                stamp = int(signed_at.timestamp())
                text = kept_json(payload)
            else:
                payload, text, stamp = verified
            self._known.put(key, (text, stamp))
        else:
            text, stamp = known
            payload = orjson.loads(text)
        if max_age is not None:  # as TimestampSigner.unsign checks it
            age = cast("TimestampSigner", self.make_signer(salt)).get_timestamp() - stamp
            if age > max_age or age < 0:
                bound = f"> {max_age}" if age > max_age else "< 0"
                raise SignatureExpired(f"Signature age {age} {bound} seconds", payload=payload,
                                       date_signed=_utc(stamp))
        if return_timestamp:
            return payload, _utc(stamp)
        return payload

    def _salt_keys(self, salt: str | bytes | None) -> _SaltKeys:
        found = self._keys.get(salt)
        if found is None:
            found = self._keys[salt] = _SaltKeys(cast("TimestampSigner", self.make_signer(salt)))
        return found

    def _verified(self, value: bytes, salt: str | bytes | None) -> tuple[Any, bytes, int] | None:
        """``value``'s payload, JSON text and signing time if it is what :meth:`dumps` writes
        (uncompressed) and verifies with one of the keys; ``None`` for anything else.

        itsdangerous's ``loads`` spends about 60 Python calls on a value (a signer per key,
        key derivation, ``hmac.new``, three decodings), and in the reward route, called cold
        at 200 rewards a second, it took 174-183 us at the median (docs/benchmarks.md, "The
        cookie verified in one step"). Here the keys' HMAC states are keyed once
        (:class:`_SaltKeys`) and copied per value, and the parts are decoded as itsdangerous
        decodes them (:func:`_urlsafe_b64_decode`, tested against its ``base64_decode``). A
        value this does not verify goes to itsdangerous, so every refusal, and its error,
        stays itsdangerous's; a test checks that both accept the same values with the same
        results.
        """
        keys = self._salt_keys(salt)
        head = keys.verify(value)
        if head is None:
            return None
        encoded, dot, stamp_text = head.rpartition(keys.sep)
        if not dot or not encoded or encoded.startswith(b"."):  # compressed: itsdangerous
            return None
        try:
            stamp = bytes_to_int(_urlsafe_b64_decode(stamp_text))
            _utc(stamp)  # a time itsdangerous can represent
            text = _urlsafe_b64_decode(encoded)
            payload = orjson.loads(text.decode("utf-8"))
        except Exception:  # itsdangerous raises its own error for it
            return None
        return payload, text, stamp

    def known_stamp(self, s: str | bytes, salt: str | bytes | None = None) -> int | None:
        """The signing time of ``s`` if this serializer signed or verified it lately."""
        known = self._known.get((salt, want_bytes(s)))
        return None if known is None else known[1]

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(_CompactJSON.dumps(obj).encode("utf-8"))

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        found = self._signers.get(salt)
        if found is None:
            found = self._signers[salt] = super().make_signer(salt)
        return found


class _SaltKeys:
    """One salt's keys, prepared once: signing with the newest (``TimestampSigner.sign``'s
    output, byte for byte, with the per-call work done ahead) and checking a signature
    against each.

    ``sign`` spends about 60 Python calls per value (encodings, key derivation, ``hmac.new``),
    and a new visitor's page signs two cookies. Here the derived key's HMAC state is keyed once
    and copied per value, and the timestamp's encoding is kept for the second it stands for;
    the parts come from itsdangerous itself (its key derivation, ``int_to_bytes``) or
    encode as it does (:func:`_urlsafe_b64`), and a test checks the output against
    itsdangerous's signer. Verification keys each key's state the same way
    (:meth:`_CookieSerializer._verified`).
    """

    def __init__(self, signer: TimestampSigner) -> None:
        self._clock = signer.get_timestamp
        self.sep = want_bytes(signer.sep)
        self._macs = tuple(hmac.new(signer.derive_key(k), digestmod=signer.digest_method)
                           for k in reversed(signer.secret_keys))  # the newest first
        self._stamp: tuple[int, bytes] = (-1, b"")

    def sign(self, value: bytes) -> tuple[bytes, int]:
        """The signed value and its signing time (seconds since the epoch)."""
        now = self._clock()
        second, stamp = self._stamp
        if second != now:
            stamp = base64_encode(int_to_bytes(now))
            self._stamp = (now, stamp)
        value = value + self.sep + stamp
        mac = self._macs[0].copy()
        mac.update(value)
        return value + self.sep + _urlsafe_b64(mac.digest()), now

    def verify(self, value: bytes) -> bytes | None:
        """``value`` without its signature if one of the keys signed it, else ``None``."""
        head, _, sig = value.rpartition(self.sep)
        try:
            digest = _urlsafe_b64_decode(sig)
        except ValueError:
            return None
        for mac in self._macs:
            check = mac.copy()
            check.update(head)
            if hmac.compare_digest(digest, check.digest()):
                return head
        return None


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _urlsafe_b64(data: bytes) -> bytes:
    """itsdangerous's ``base64_encode`` (URL-safe alphabet, no padding) in three calls instead
    of eight: it runs twice per signed value."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _urlsafe_b64_decode(data: bytes) -> bytes:
    """itsdangerous's ``base64_decode`` of bytes (padding added, characters outside the
    alphabet skipped) in three calls instead of about eight; raises ``binascii.Error``, a
    ``ValueError``, where it raises ``BadData``."""
    return binascii.a2b_base64(data.translate(_FROM_URLSAFE) + b"=" * (-len(data) % 4))


def _utc(stamp: int) -> datetime:
    return datetime.fromtimestamp(stamp, tz=UTC)


def make_serializer(
    secret_keys: Sequence[str], salt: str, clock: Callable[[], float]
) -> URLSafeTimedSerializer:
    """Build a timed serializer that signs with ``secret_keys[0]`` and verifies with all.

    The format is itsdangerous's ``URLSafeTimedSerializer`` with HMAC-SHA1 and the
    ``django-concat`` key derivation (its defaults), so cookies verify either way.

    Parameters
    ----------
    secret_keys
        Newest first: the first key signs, every key verifies (rotation).
    salt
        One salt per purpose, so a cookie of one kind never verifies as another.
    clock
        Seconds since the epoch; tests inject one to travel in time.
    """

    derived: dict[tuple[bytes, str | bytes | None], bytes] = {}

    class _ClockSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())

        def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
            # The derived key depends on (salt, key) only: hash it once, not per request.
            found = derived.get((self.salt, secret_key))
            if found is None:
                found = derived[(self.salt, secret_key)] = super().derive_key(secret_key)
            return found

    # itsdangerous signs with the *last* key of its list. hashlib.sha1 itself (the default is a
    # wrapper function) lets hmac use OpenSSL's HMAC directly: same signature, half the time.
    return _CookieSerializer(list(reversed(secret_keys)), salt=salt, serializer=_CompactJSON,
                             signer=_ClockSigner, signer_kwargs={"digest_method": hashlib.sha1})


def signed_age(serializer: URLSafeTimedSerializer, raw: str | None, now: float) -> float | None:
    """Seconds since ``raw`` was signed, read **without** verifying it (``None`` if unreadable).

    A value ``serializer`` signed or verified lately (a visitor sends the same cookie with
    every view) answers from its memory; any other is parsed. Only for deciding that nothing
    needs doing; never trust data on this basis.
    """
    if not raw:
        return None
    stamp = serializer.known_stamp(raw) if isinstance(serializer, _CookieSerializer) else None
    if stamp is None:
        try:
            stamp = bytes_to_int(base64_decode(raw.rsplit(".", 2)[-2]))
        # struct: over 8 bytes; BadData: base64 that does not decode (a review of
        # 2026-12-05: it reached the page's variant() and cost the visitor their variant)
        except (IndexError, ValueError, TypeError, struct.error, BadData):
            return None
    return now - stamp


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID


def _entries(payload: object) -> dict[str, DecisionEntry]:
    if not isinstance(payload, dict):
        raise BadDecisionCookie("decision cookie payload is not an object")
    entries: dict[str, DecisionEntry] = {}
    for loop, item in payload.items():
        if not (_valid_id(loop) and isinstance(item, list) and len(item) == 3):
            raise BadDecisionCookie("malformed decision entry")
        event_id, action_id, issued_at = item
        if not (_valid_id(event_id) and _valid_id(action_id)):
            raise BadDecisionCookie("malformed decision ids")
        if isinstance(issued_at, bool) or not isinstance(issued_at, int):
            raise BadDecisionCookie("malformed decision time")
        entries[loop] = DecisionEntry(event_id, action_id, issued_at)
    return entries


def load_decisions_strict(
    serializer: URLSafeTimedSerializer, raw: str, *, max_age: int
) -> dict[str, DecisionEntry]:
    """Verify and decode a decision cookie, raising on any problem.

    Entries are returned whatever their age: check each with :func:`entry_expired`.

    Raises
    ------
    ExpiredDecisionCookie
        The signature is older than ``max_age`` (or from the future).
    BadDecisionCookie
        Any other problem: bad signature, unknown key, malformed payload.
    """
    try:
        payload = serializer.loads(raw, max_age=max_age)
    except SignatureExpired as exc:
        raise ExpiredDecisionCookie("decision cookie expired") from exc
    except BadData as exc:
        raise BadDecisionCookie("decision cookie signature does not verify") from exc
    return _entries(payload)


def cookie_values(header: str, name: str) -> list[str]:
    """Every value of the cookie ``name`` in a ``Cookie`` header, in header order.

    A browser sends two cookies of one name when both match the request (a host-only one and
    a ``Domain=`` one, say), and starlette's ``cookie_parser`` keeps the last. Each part is
    read by ``cookie_parser`` itself, so the splitting and unquoting are its own.
    """
    values: list[str] = []
    for part in header.split(";"):
        if name in part:
            value = cookie_parser(part).get(name)
            if value is not None:
                values.append(value)
    return values


def last_verified(
    serializer: URLSafeTimedSerializer, values: Sequence[str], *, max_age: int
) -> str | None:
    """The last of a decision cookie's ``values`` that verifies, else the last (``None`` for
    none), which the caller then refuses as it would refuse a single cookie. The last: of two
    of ours (an app that moved to ``cookie_domain=``), the browser sends the older first, and
    the first kept every view a new decision (a review of 2026-12-05)."""
    if len(values) < 2:  # the usual case: the caller verifies it once
        return values[0] if values else None
    for value in reversed(values):
        try:
            load_decisions_strict(serializer, value, max_age=max_age)
        except BadDecisionCookie:
            continue
        return value
    return values[-1]


def decision_cookie(
    serializer: URLSafeTimedSerializer, header: str, name: str, *, max_age: int
) -> str | None:
    """The decision cookie ``name`` of a ``Cookie`` header: of several, the last that
    verifies (:func:`cookie_values`, :func:`last_verified`)."""
    return last_verified(serializer, cookie_values(header, name), max_age=max_age)


def _fresh(entry: DecisionEntry, max_age: int, now: float) -> bool:
    return 0 <= now - entry.issued_at <= max_age


def load_decisions(
    serializer: URLSafeTimedSerializer, raw: str | None, *, max_age: int, now: float
) -> dict[str, DecisionEntry]:
    """Decode a decision cookie; anything wrong (or too old) quietly reads as no decisions."""
    if not raw:
        return {}
    try:
        entries = load_decisions_strict(serializer, raw, max_age=max_age)
    except BadDecisionCookie:
        return {}
    return {loop: entry for loop, entry in entries.items() if _fresh(entry, max_age, now)}


def entry_expired(entry: DecisionEntry, *, max_age: int, now: float) -> bool:
    """Whether one decision entry is older than ``max_age`` seconds (or from the future)."""
    return not _fresh(entry, max_age, now)


def dump_decisions(
    serializer: URLSafeTimedSerializer, entries: Mapping[str, DecisionEntry]
) -> str:
    """Sign the decisions (ids only); keeps the newest :data:`MAX_ENTRIES` loops, and fewer
    if their value would pass :data:`MAX_VALUE` characters (long loop names and ids: a
    browser drops a cookie past 4 KB whole, and every decision in it with it)."""
    items: Any = entries.items()
    if len(entries) > MAX_ENTRIES:
        items = sorted(items, key=lambda kv: kv[1].issued_at)[-MAX_ENTRIES:]
    payload = {loop: [e.event_id, e.action_id, e.issued_at] for loop, e in items}
    value = str(serializer.dumps(payload))
    while len(value) > MAX_VALUE and len(payload) > 1:
        oldest = min(payload, key=lambda loop: payload[loop][2])
        del payload[oldest]
        value = str(serializer.dumps(payload))
    return value


def new_visitor_id() -> str:
    """A random visitor id (128 bits, URL-safe); it says nothing about the visitor."""
    return secrets.token_urlsafe(16)


def load_visitor(
    serializer: URLSafeTimedSerializer, raw: str | None, *, max_age: int
) -> VisitorState | None:
    """Decode the visitor cookie, or ``None`` if it is missing, tampered with or too old."""
    if not raw:
        return None
    try:
        payload: Any = serializer.loads(raw, max_age=max_age)
    except BadData:
        return None
    if not (isinstance(payload, list) and len(payload) == 4):
        return None
    vid, visits, last_seen, campaign = payload
    if not (_valid_id(vid) and isinstance(campaign, str)):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (visits, last_seen)):
        return None
    if visits < 1:
        return None
    return VisitorState(vid, visits, last_seen, campaign)


def dump_visitor(serializer: URLSafeTimedSerializer, state: VisitorState) -> str:
    """Sign the visitor state."""
    return str(serializer.dumps([state.id, state.visits, state.last_seen, state.campaign]))


def cookie_attributes(
    *,
    max_age: float,
    path: str = "/",
    secure: bool = False,
    httponly: bool = True,
    samesite: Literal["Lax", "Strict", "None"] = "Lax",
    domain: str | None = None,
) -> str:
    """The attributes part of a ``Set-Cookie`` value, from ``"; Max-Age=..."`` on.

    They are the same for every response of an app: build them once, append to ``name=value``.
    """
    parts = ["", f"Max-Age={math.floor(max_age)}", f"Path={path}"]
    if domain:
        parts.append(f"Domain={domain}")
    if secure:
        parts.append("Secure")
    if httponly:
        parts.append("HttpOnly")
    parts.append(f"SameSite={samesite}")
    return "; ".join(parts)


def set_cookie(
    name: str,
    value: str,
    *,
    max_age: float,
    path: str = "/",
    secure: bool = False,
    httponly: bool = True,
    samesite: Literal["Lax", "Strict", "None"] = "Lax",
    domain: str | None = None,
) -> str:
    """Format one ``Set-Cookie`` header value.

    ``value`` must already be cookie-safe (our signed values are URL-safe base64).
    """
    return f"{name}={value}" + cookie_attributes(max_age=max_age, path=path, secure=secure,
                                                 httponly=httponly, samesite=samesite,
                                                 domain=domain)
