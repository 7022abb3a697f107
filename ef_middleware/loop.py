"""One personalization loop: rank actions for a context, take rewards, hand them to learning.

The request path (:meth:`Loop.rank`, :meth:`Loop.reward`) only reads the published
:class:`~ef_middleware.trainer.ServingState` and appends to in-memory queues; the learner thread
(:meth:`Loop.learn_pending`) persists decisions, finalises them and trains.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any, Final, Literal, overload

import numpy as np
import orjson

from ._json import kept, kept_json
from ._types import Context, FloatArray
from .decision import Choice, Decision, LogEntry, context_json, log_json, log_record
from .errors import (
    DuplicateRewardError,
    EngineClosedError,
    InvalidInputError,
    RewardOutOfRangeError,
    StoreError,
    UnknownEventError,
)
from .features import (
    MAX_ID,
    Action,
    EncodedContext,
    FeatureEncoder,
    join_texts,
    split_texts,
    to_actions,
)
from .memo import Memo
from .model import sigmoid
from .policies import Candidates, Policy, make_policy, resolve_choices
from .priority import yield_to_requests
from .settings import LoopSettings
from .store import Store
from .throttle import Throttle
from .trainer import ActionKey, Sample, ServingState, Trainer, action_key

log = logging.getLogger("ef_middleware")
LEARN_CHUNK = 256  # samples learned between two publications of the serving state
# Event ids: 128 random bits from a generator seeded by the OS (a uuid4 costs a system call
# per decision). They need to be unique, not secret: rewards from browsers come with a signed
# cookie, and the APIs are for trusted backends.
_ids = random.Random()
# ...and seeded again in a forked child: a prefork server that builds its app before forking
# (gunicorn --preload) gave every worker the same ids (a review of 2026-12-06).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)
VIEW_CACHE_SIZE = 4096  # contexts whose forward pass is kept per published model...
VIEW_CACHE_BYTES = 16 << 20  # ...and the memory they may take, per loop
PERSIST_CHUNK = 64  # decision records per store write (one key, about 1 ms of writing)
WRITE_GRACE = 300.0  # seconds a decision's expiry waits for its reward's write to end
UNLOGGED_LIMIT = 100_000  # decision records kept for the log while its writes fail
LOG_FAILURE_WARN_EVERY = 60.0  # seconds between two warnings of failing decision-log writes
LOG_RETRY = 1.0  # seconds before the decision log is written again after a failed write
ACTIONS_KEPT = 20_000  # per-call actions remembered by key (the oldest go first)
ARRIVALS_SLACK = 4096  # ids of finalised decisions the arrival queue may hold before a sweep


# A decision waiting for its reward is one plain tuple (index names below): the model's inputs
# (arrays, not tracked by the garbage collector), the chosen action's key (its id, then its
# features' names and values in name order, as JSON bytes: never tracked, the same object for
# every decision of the action, see ``Loop._key_of``), the context only when one
# of its texts was not embedded yet, and the reward so far. The collector
# stops tracking a tuple of untracked values after its first pass, so the decisions that wait
# ``reward_wait`` seconds (600,000 of them at 1,000 a second and the default 10 minutes) cost
# full collections nothing; a slotted object per decision cost 43 ms per pass at 200,000.
_TIME: Final = 0
_TEXT: Final = 1
_RAW: Final = 2
_MASK: Final = 3
_ACTION: Final = 4
_CONTEXT: Final = 5
_TEXTS: Final = 6
_LOGIT: Final = 7
_TOTAL: Final = 8
_REWARDED: Final = 9
_Key = bytes  # JSON: an action's id, then its features' names and values in name order
Waiting = tuple[float, FloatArray, FloatArray, FloatArray, _Key, Context | None, str,
                float, float, bool]


class _View:
    """One context's forward pass over a candidate set: what every policy chooses from."""

    __slots__ = (
        "actions",
        "candidates",
        "encoded",
        "ids",
        "ids_json",
        "joined",
        "keys",
        "network_logits",
        "predicted",
    )

    def __init__(self, encoded: EncodedContext, actions: list[Action], ids: tuple[str, ...],
                 ids_json: bytes, predicted: FloatArray, candidates: Candidates,
                 network_logits: FloatArray) -> None:
        self.network_logits = network_logits  # the network's own, before the correction
        self.joined = join_texts(encoded.texts)  # a str: the waiting tuples stay untracked
        self.encoded = encoded
        self.actions = actions
        self.ids = ids  # the actions' ids, shared by decisions: immutable
        # ...and as JSON for the decision log: bytes are never tracked by the garbage
        # collector, while a tuple made per view (a per-call list) kept a waiting record
        # tracked until a second collection
        self.ids_json = ids_json
        self.predicted = predicted  # predicted rewards in the loop's reward range
        self.candidates = candidates
        self.keys: dict[int, _Key] = {}  # action index -> its key (``Loop._key_of``)


class _Views(Memo[tuple[Any, ...], _View]):
    """Views of one published serving state, by context (see ``Loop._cached_view``), at most
    ``VIEW_CACHE_SIZE`` of them and about ``VIEW_CACHE_BYTES`` (a view of K actions holds
    K rows of the last hidden layer: 1.1 KB for K = 4, 280 KB for K = 1,000); past that the
    oldest goes (emptied whole, 4,096 views were freed by the request that found it full)."""

    def __init__(self, state: ServingState | None) -> None:
        super().__init__(VIEW_CACHE_SIZE)
        self.state = state
        self.sized = False  # the limit is set by the first view's size

    def put(self, key: tuple[Any, ...], value: _View) -> None:
        if not self.sized:
            c = value.candidates
            size = c.hidden.nbytes + 12 * c.mean.nbytes
            self.limit = max(1, min(VIEW_CACHE_SIZE, VIEW_CACHE_BYTES // size))
            self.sized = True
        super().put(key, value)


class Loop:
    """A set of actions (variants) and the model that learns which one suits which visitor.

    Create loops with :meth:`Engine.loop`, not directly.

    Examples
    --------
    >>> hero = engine.loop("homepage-hero", actions=["minimal", "video"])   # doctest: +SKIP
    >>> d = hero.rank({"device": "mobile", "hour": 14})                     # doctest: +SKIP
    >>> hero.reward(d.event_id, 1.0)                                        # doctest: +SKIP
    """

    def __init__(self, name: str, actions: Iterable[Any], settings: LoopSettings, *,
                 encoder: FeatureEncoder, store: Store, seed: int,
                 clock: Callable[[], float] = time.time,
                 wake: Callable[[bool], None] = lambda urgent: None) -> None:
        self.name = name
        self.settings = settings
        self.actions: list[Action] = to_actions(actions)
        self.encoder = encoder
        self.store = store
        self.clock = clock
        self._wake = wake
        self.policy: Policy = make_policy(settings.strategy, dict(settings.strategy_options))
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self.trainer = Trainer(name, settings, encoder, store, seed)
        self.restored = self.trainer.restore()
        self._serving: ServingState = self.trainer.publish(self.actions)
        self._views = _Views(None)
        self._pending: dict[str, Waiting] = {}
        self._arrivals: deque[str] = deque()  # event ids in ranking order, for expiry
        self._in_flight: dict[str, RewardWrite] = {}  # each event's unfinished write
        # One key object per action, shared by the decisions that name it, with the action
        # itself for the loop's own actions only (and any whose feature values are not all
        # strings, which JSON would not give back as they were): a per-call action is rebuilt
        # from its key when learned or logged (4 us), so the garbage collector tracks none of
        # them. (Kept as objects, 20,000 per-call actions added 7 ms to every full collection,
        # one every ~13 s at 150 catalogue ranks a second.) A memory, not a table: past
        # ACTIONS_KEPT the oldest key goes, so per-call action lists that change do not grow it.
        self._actions_by_key: Memo[_Key, tuple[_Key, Action | None]] = Memo(ACTIONS_KEPT)
        self._pending_lock = threading.Lock()
        self._landed_write = threading.Condition(self._pending_lock)  # an in-flight one ended
        self._to_persist: deque[LogEntry] = deque()
        self._ready: deque[Sample] = deque()
        self._progress = threading.Condition()
        self._train_lock = threading.Lock()
        self.enqueued = 0  # samples handed to learning
        self.learned = 0  # samples learned (or dropped)
        self.dropped = 0  # samples whose learning failed (the learner logged why)
        # of the last pass: lower when it was behind, higher when boosted (replay_boost)
        self.replay_ratio = self.settings.replay_ratio
        self.closed = False  # set by Engine.close: rank, rewards and flush raise after it
        self.decisions = 0
        self.rewards = 0
        self._log_chunks = 0
        self.finalised_early = 0  # decisions learned before reward_wait: past max_pending
        self.log_failures = 0  # decision-log writes that failed (their records were retried)
        self.unlogged = 0  # decision records given up on: past UNLOGGED_LIMIT while writes fail
        self._log_warnings = Throttle(LOG_FAILURE_WARN_EVERY)
        self._log_retry_at = -math.inf

    # -- ranking ---------------------------------------------------------------------------
    @property
    def model_version(self) -> int:
        return self._serving.version

    def rank(self, context: Context, actions: Sequence[Any] | None = None, *,
             exclude: Iterable[str] = (), event_id: str | None = None) -> Decision:
        """Rank the actions for ``context`` and choose one by the loop's policy.

        Parameters
        ----------
        context
            Visitor features: str values are embedded as text, numbers stay numbers (``hour``
            and ``weekday`` become sin/cos), booleans become 0/1, lists of str are multi-valued.
            At most 128 features and 256 text values (``InvalidInputError`` past them).
        actions
            This call's candidates instead of the loop's own (ids and features).
        exclude
            Action ids not to consider for this call.
        event_id
            Use this id for the logged decision instead of a fresh random one: a string of 1
            to 128 characters that names no other decision of the loop. An id that an open
            decision has, or whose reward is stored, raises ``InvalidInputError`` (a second
            decision would overwrite the first one's reward).

        Returns
        -------
        Decision
            The chosen action, its propensity and every candidate ranked.
        """
        if self.closed:
            raise self._closed_error()
        given_id = event_id is not None
        if given_id and (not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_ID):
            raise InvalidInputError(f"event_id must be a string of 1 to {MAX_ID} "
                                    f"characters, not {event_id!r}")
        state = self._serving
        own = actions is None and not exclude and not isinstance(exclude, str)
        view = self._cached_view(state, context) if own else None
        if view is None:
            view = self._view(state, context, *self._candidates(state, actions, exclude))
        with self._rng_lock:
            choice = self.policy.choose(view.candidates, self._rng)
        chosen = view.actions[choice.index]
        event_id = event_id or f"{_ids.getrandbits(128):032x}"
        now = self.clock()
        key = self._key_of(state, view, choice.index)
        inputs = view.encoded
        # Both kept as flat tuples of plain values, which the garbage collector stops tracking
        # (see Choice.state).
        waiting = (now, inputs.text, inputs.numeric_raw, inputs.numeric_mask, key,
                   dict(context) if inputs.provisional else None, view.joined,
                   float(view.network_logits[choice.index]), 0.0, False)
        logged = (event_id, now, context_json(context), view.ids_json, key, state.version,
                  *choice.state())
        with self._pending_lock:
            if given_id:  # checked together under the lock: a reward that lands is stored
                # before its decision leaves the open ones ('earliest', ``_written``)
                if event_id in self._pending:
                    raise InvalidInputError(f"event {event_id!r} is already open in loop "
                                            f"{self.name!r}: an event id names one decision")
                if self.store.get(self._reward_key(event_id)) is not None:
                    raise InvalidInputError(f"event {event_id!r} of loop {self.name!r} has its"
                                            " reward stored already: an event id names one "
                                            "decision")
            self._pending[event_id] = waiting
            self._arrivals.append(event_id)
            self._to_persist.append(logged)
            self.decisions += 1
        return Decision(self.name, event_id, chosen, choice, view.ids, view.predicted,
                        state.version)

    def _closed_error(self) -> EngineClosedError:
        return EngineClosedError(f"loop {self.name!r}: its engine is closed")

    def _kept_for(self) -> float:
        """Seconds the store keeps a decision record or a reward: twice the reward wait and
        a day."""
        return self.settings.reward_wait * 2 + 86_400

    def _reward_key(self, event_id: str) -> str:
        """The store key of ``event_id``'s reward. A ``:`` in a caller's event id is escaped
        (``%`` with it): before, loop ``a:b``'s event ``c`` and loop ``a``'s event ``b:c``
        shared one key, and one's reward was taken for the other's. Generated ids (hex) and
        ids without either character keep the key they always had."""
        if ":" in event_id or "%" in event_id:
            event_id = event_id.replace("%", "%25").replace(":", "%3A")
        return f"reward:{self.name}:{event_id}"

    def _key_of(self, state: ServingState, view: _View, index: int) -> _Key:
        """The key of ``view``'s action ``index``, memoised on the view; the action is
        remembered by it (:meth:`_action_of`)."""
        found = view.keys.get(index)
        if found is None:
            action = view.actions[index]
            key = kept(log_json([action.id,
                                 *chain.from_iterable(sorted(action.features.items()))]))
            remembered = self._actions_by_key.get(key)
            if remembered is None:
                row = state.index.get(action.id)
                own = row is not None and state.actions[row] is action
                # An Action built directly may hold values JSON does not give back (a
                # Decimal, a tuple, NaN): such an action is kept as it is, to be learned
                # with the texts it was ranked with.
                exact = all(type(v) is str for v in action.features.values())
                self._actions_by_key.put(key, (key, None if exact and not own else action))
            else:  # one key object per action, shared by its decisions
                key = remembered[0]
            found = view.keys[index] = key
        return found

    def _action_of(self, key: _Key) -> Action:
        """The action ``key`` names: the loop's own, or an equal one built from the key (the
        same id and features)."""
        found = self._actions_by_key.get(key)
        if found is not None and found[1] is not None:
            return found[1]
        items = orjson.loads(key)
        return Action(items[0], dict(zip(items[1::2], items[2::2], strict=True)))

    def _view(self, state: ServingState, context: Context, candidates: list[Action],
              rows: FloatArray, counts: FloatArray, successes: FloatArray, *,
              own: bool = False) -> _View:
        """The model's forward pass for ``context`` and these candidates."""
        encoded = self.encoder.context(context)
        model = state.model
        text_mean, text_inv = state.text_scale
        text = np.clip((encoded.text - text_mean) * text_inv, -5.0, 5.0)
        numeric = self.encoder.numeric.standardise(encoded.numeric_raw, encoded.numeric_mask)
        hidden = model.last_hidden(model.project_context(text, numeric), rows)
        network = logits = model.logits(hidden)
        ids = state.ids if own else tuple(a.id for a in candidates)
        if state.correction is not None:  # own: the loop's actions, rows memoised
            logits = network + state.correction.offsets(
                encoded.texts, ids, state.offset_rows if own else None)
        mean = sigmoid(logits).astype(np.float32)
        low, high = self.settings.reward_range
        ids_json = state.ids_json if own else kept_json(ids)
        return _View(encoded, candidates, ids, ids_json, low + mean * (high - low),
                     Candidates(mean, logits, hidden, counts, successes, model,
                                state.posterior, state.learned), network)

    def _cached_view(self, state: ServingState, context: Context) -> _View | None:
        """The view of the loop's own actions for ``context``, from the cache when this
        published model has served the same context before.

        Visitors share contexts (device, browser, referrer, the minute of the day...), and
        between two publications of the model the forward pass and the posterior widths for
        one context do not change: only the policy's draw does. Contexts with unhashable
        values (lists) are not cached, nor are those whose texts are not embedded yet.
        """
        views = self._views
        if views.state is not state:
            views = self._views = _Views(state)
        try:
            key = tuple(context.items())
            found = views.get(key)  # hashes the key once: unhashable values raise here
        except (TypeError, AttributeError):
            return None
        if found is None:
            found = self._view(state, context, *self._candidates(state, None, ()), own=True)
            if not found.encoded.provisional:
                views.put(key, found)
        return found

    def _candidates(
        self, state: ServingState, actions: Sequence[Any] | None, exclude: Iterable[str]
    ) -> tuple[list[Action], FloatArray, FloatArray, FloatArray]:
        if isinstance(exclude, str):
            raise InvalidInputError("exclude takes a list of action ids, not one string")
        try:
            excluded: set[object] = set(exclude)
        except TypeError:  # not iterable, or an item that cannot be hashed (a list)
            excluded = {None}
        if not all(isinstance(e, str) for e in excluded):
            raise InvalidInputError(f"exclude takes a list of action ids (strings), not "
                                    f"{exclude!r}")
        if actions is None and not excluded:
            return list(state.actions), state.rows, state.counts, state.successes
        pool = list(state.actions) if actions is None else to_actions(actions)
        chosen = [a for a in pool if a.id not in excluded]
        if not chosen:
            raise InvalidInputError(f"loop {self.name!r}: every action is excluded")
        index = [state.index.get(a.id, -1) for a in chosen]
        known = [i >= 0 and state.actions[i] == a for i, a in zip(index, chosen, strict=True)]
        if all(known):
            pick = np.asarray(index)
            return chosen, state.rows[pick], state.counts[pick], state.successes[pick]
        rows = np.empty((len(chosen), state.rows.shape[1]), dtype=np.float32)
        counts = np.empty(len(chosen), dtype=np.float32)
        successes = np.empty(len(chosen), dtype=np.float32)
        memo = state.model.action_rows
        new: list[tuple[int, ActionKey, Action]] = []
        for j, (a, i, ok) in enumerate(zip(chosen, index, known, strict=True)):
            if ok:
                rows[j], counts[j] = state.rows[i], state.counts[i]
                successes[j] = state.successes[i]
                continue
            key = action_key(a)
            cached = memo.get(key)
            if cached is None:
                new.append((j, key, a))
            else:
                rows[j] = cached
            counts[j], successes[j] = self.trainer.counts.get(a.id)
        if new:  # pooled together: their new texts reach the embedder in one call
            projected, final = self.trainer.action_rows([a for _, _, a in new], state.model)
            for (j, key, _), row, done in zip(new, projected, final, strict=True):
                rows[j] = row
                if done:  # a stand-in is computed again until the real vectors are in
                    memo.put(key, row.copy())  # bounded: a frozen loop's model lives on; a
                    # copy, not a view that would keep the whole batch alive
        return chosen, rows, counts, successes

    def default_decision(self) -> Decision:
        """The first (default) action, not logged: for bots and for failures."""
        k = len(self.actions)
        probs = np.zeros(k, dtype=np.float32)
        probs[0] = 1.0
        return Decision(self.name, "", self.actions[0], Choice(0, probs),
                        [a.id for a in self.actions], [math.nan] * k, self.model_version,
                        logged=False)

    # -- rewards ---------------------------------------------------------------------------
    def reward(self, event_id: str, value: float | None = None) -> None:
        """Record a reward for a logged decision; learning happens on the learner thread.

        ``value`` defaults to the top of ``reward_range`` (a conversion). Under ``earliest``
        aggregation the first reward is final; under ``sum`` rewards add up until the wait
        time is over. The reward is written to the store before this returns.

        Raises
        ------
        UnknownEventError
            No open decision has this id (never logged, or already finalised and forgotten).
        DuplicateRewardError
            ``earliest`` aggregation and the event already has its reward.
        RewardOutOfRangeError
            ``value`` is not a finite number within ``reward_range``.
        EngineClosedError
            The engine was closed.
        """
        self.accept_reward(event_id, value).commit()

    @overload
    def accept_reward(self, event_id: str, value: float | None = None, *,
                      wait: Literal[True] = True) -> RewardWrite: ...

    @overload
    def accept_reward(self, event_id: str, value: float | None = None, *,
                      wait: bool) -> RewardWrite | None: ...

    def accept_reward(self, event_id: str, value: float | None = None, *,
                      wait: bool = True) -> RewardWrite | None:
        """Check a reward and record it in memory, as :meth:`reward` does, without writing
        it: the returned :class:`RewardWrite` stores it and hands it to learning. For a
        caller that decides where the write runs (the reward route: on its event loop when
        the store can take it at once). Raises what :meth:`reward` raises.

        Under 'sum' an event has one write at a time, so that the stored total never goes
        back to an older one and a failed write is undone exactly: a second reward for the
        event waits until the first one's write has ended, or with ``wait=False`` returns
        ``None`` at once, having recorded nothing."""
        if self.closed:
            raise self._closed_error()
        if not isinstance(event_id, str) or not event_id:
            raise InvalidInputError(f"event_id must be a non-empty string, not {event_id!r}")
        low, high = self.settings.reward_range
        if value is None:
            value = high
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | numbers.Real):
            raise RewardOutOfRangeError(f"a reward is a number, not {type(value).__name__}",
                                        loop=self.name, event_id=event_id)
        try:
            value = float(value)
        except OverflowError:  # an int past float's range
            value = math.inf
        if not (math.isfinite(value) and low <= value <= high):
            raise RewardOutOfRangeError(
                f"reward {value!r} is outside the loop's range {low}..{high}",
                loop=self.name, event_id=event_id)
        with self._pending_lock:
            if self.settings.aggregation == "sum" and event_id in self._in_flight:
                if not wait:
                    return None
                if not self._landed_write.wait_for(lambda: event_id not in self._in_flight,
                                                   timeout=WRITE_GRACE):
                    raise StoreError(f"event {event_id!r}: its previous reward is still being "
                                     "written")
            before = self._pending.get(event_id)
            if before is None:
                if self.store.get(self._reward_key(event_id)) is not None:
                    closed = ("was already rewarded" if self.settings.aggregation == "earliest"
                              else "was rewarded and its reward wait is over")
                    raise DuplicateRewardError(f"event {event_id!r} {closed}",
                                               loop=self.name, event_id=event_id)
                raise UnknownEventError(self.name, event_id)
            rewarded = before[_REWARDED]
            if rewarded and self.settings.aggregation == "earliest":
                raise DuplicateRewardError(f"event {event_id!r} already has its reward "
                                           "(aggregation 'earliest')",
                                           loop=self.name, event_id=event_id)
            # The raw sum is kept and clipped where it is stored and learned: clipped at each
            # reward, the total depended on the order the rewards came in (0.7, 0.7, -0.5 gave
            # 0.5 in -1..1, and -0.5, 0.7, 0.7 gave 0.9; a review of 2026-12-05).
            total = before[_TOTAL] + value if rewarded else value
            after = (*before[:_TOTAL], total, True)
            now = self.clock()
            write = RewardWrite(self, event_id, before, after, now,
                                orjson.dumps({"value": self.settings.clip(total),
                                              "time": now}))
            self._pending[event_id] = after  # kept until written: a second one is refused
            self._in_flight[event_id] = write  # and not finalised by ``expire`` meanwhile
            self.rewards += 1
        return write

    def _landed(self, write: RewardWrite) -> None:
        """``write`` has ended (under the pending lock)."""
        if self._in_flight.get(write.event_id) is write:
            del self._in_flight[write.event_id]
            self._landed_write.notify_all()

    def _written(self, write: RewardWrite) -> None:
        """``write`` is durable: under 'earliest' its decision is final, learn it now."""
        with self._pending_lock:
            self._landed(write)
            if (self.settings.aggregation != "earliest"
                    or self._pending.get(write.event_id) is not write.after):
                return  # 'sum': final at the deadline; or finalised past WRITE_GRACE
            del self._pending[write.event_id]
            self._enqueue(write.after)
        self._wake(False)

    def _unwritten(self, write: RewardWrite) -> None:
        """``write`` failed: forget the reward, so that it can be sent again."""
        with self._pending_lock:
            self._landed(write)
            if self._pending.get(write.event_id) is write.after:
                self._pending[write.event_id] = write.before
                self.rewards -= 1

    def _enqueue(self, pending: Waiting) -> None:
        value = (self.settings.clip(pending[_TOTAL]) if pending[_REWARDED]
                 else float(self.settings.default_reward or 0.0))
        context = pending[_CONTEXT]
        inputs = EncodedContext(pending[_TEXT], pending[_RAW], pending[_MASK],
                                provisional=context is not None,
                                texts=split_texts(pending[_TEXTS]))
        self._ready.append(Sample(inputs, self._action_of(pending[_ACTION]),
                                  self.settings.normalise(value), context, pending[_LOGIT]))
        self.enqueued += 1

    def expire(self, now: float | None = None) -> int:
        """Finalise decisions whose wait time is over (default reward if none came).

        A decision whose reward is being written waits for the write to end (up to
        ``WRITE_GRACE`` seconds), and so do the decisions after it: it is learned with the
        reward if the write succeeds and without it if it fails, never with a reward the
        client was told had failed."""
        now = self.clock() if now is None else now
        deadline = now - self.settings.reward_wait
        most = self.settings.max_pending
        count = 0
        with self._pending_lock:
            arrivals, waiting = self._arrivals, self._pending
            while arrivals:
                event_id = arrivals[0]
                pending = waiting.get(event_id)
                if pending is None:  # rewarded and finalised already ('earliest')
                    arrivals.popleft()
                    continue
                early = pending[_TIME] > deadline  # not due: only past max_pending
                if early and len(waiting) <= most:
                    break
                write = self._in_flight.get(event_id)
                if write is not None:
                    if write.started > now - WRITE_GRACE:
                        break
                    del self._in_flight[event_id]  # taken as lost; finalised as it stands
                    self._landed_write.notify_all()
                del waiting[arrivals.popleft()]
                self._enqueue(pending)
                count += 1
                self.finalised_early += early
            if len(arrivals) > 2 * len(waiting) + ARRIVALS_SLACK:
                # Rewarded ('earliest') decisions leave their ids here until the oldest
                # waiting one ahead of them is due: one decision never rewarded kept a reward
                # wait's worth of ids (200,001 ids, 17.8 MB, in a review of 2026-12-05).
                self._arrivals = deque(e for e in arrivals if e in waiting)
        return count

    # -- learning (learner thread) ---------------------------------------------------------
    def learn_pending(self) -> int:
        """Persist new decisions, finalise due ones and train on what is ready; returns the
        number of samples learned. Called by the learner thread (or by :meth:`flush`)."""
        with self._train_lock:
            self._log_decisions()
            self.expire()
            # Only what waits now: samples arriving meanwhile wait for the next call, so a
            # rate above the learner's still lets it persist, expire and report between
            # calls. How many wait says whether it keeps up, and so this call's replay ratio.
            waiting = self.waiting
            gain = self.trainer.fresh_gain.gain if self.settings.learning else None
            self.replay_ratio = self.settings.replay_ratio_at(waiting, gain)
            learned = 0
            while learned < waiting:
                batch = [self._ready.popleft() for _ in range(min(LEARN_CHUNK, waiting - learned))]
                try:
                    if self.settings.learning:  # frozen: the published model and its views stay
                        self.trainer.learn(batch, self.replay_ratio)
                        self._serving = self.trainer.publish(self.actions)
                except Exception:
                    self.dropped += len(batch)
                    raise
                finally:  # a chunk that failed is dropped, not waited for by flush()
                    learned += len(batch)
                    with self._progress:
                        self.learned += len(batch)
                        self._progress.notify_all()
            return learned

    @property
    def waiting(self) -> int:
        """Samples handed to learning that no pass has taken yet (a pass's chunk in progress
        is not counted: ``enqueued - learned`` counts it too)."""
        return len(self._ready)

    def _persist(self) -> None:
        """Append new decision records to the store's decision log, in chunks of
        ``PERSIST_CHUNK`` records per key (JSON lines): one write per chunk, and a reward's
        write waits for one chunk at most, not for the whole backlog."""
        expire = self._kept_for()
        backlog = [self._to_persist.popleft() for _ in range(len(self._to_persist))]
        try:
            choices = [Choice.from_state(entry[6:]) for entry in backlog]
            resolve_choices(choices)  # the propensities, vectorised
        except Exception:  # records that cannot be made would fail every pass: given up
            self.unlogged += len(backlog)
            raise
        for start in range(0, len(backlog), PERSIST_CHUNK):
            lines: list[bytes] = []
            bad: set[int] = set()
            for i in range(start, min(start + PERSIST_CHUNK, len(backlog))):
                try:
                    lines.append(log_json(log_record(backlog[i], choices[i],
                                                     self._action_of(backlog[i][4]))))
                except Exception as exc:  # one record that cannot be written: given up alone
                    bad.add(i)
                    self.unlogged += 1
                    self._log_failed(exc)
            self._log_chunks += 1
            key = f"decisions:{self.name}:{backlog[start][1]:.6f}:{self._log_chunks}"
            try:
                if lines:
                    self.store.set_many({key: b"\n".join(lines)}, expire=expire)
            except BaseException:  # the store refused (a full disk): they wait for a pass
                self._log_later([backlog[i] for i in range(start, len(backlog)) if i not in bad])
                raise
            yield_to_requests()

    def _log_decisions(self, *, retry: bool = False) -> None:
        """:meth:`_persist`, counting a failure instead of raising it (a full disk, a lock
        held too long: learning, expiry and snapshots go on). After a failure the next
        attempt waits :data:`LOG_RETRY` seconds (``retry`` tries at once): each attempt
        recomputes the propensities of every waiting record, 0.5 s at 100,000."""
        if not retry and time.monotonic() < self._log_retry_at:
            return
        try:
            self._persist()
        except Exception as exc:
            self._log_retry_at = time.monotonic() + LOG_RETRY
            self._log_failed(exc)
        else:
            self._log_retry_at = -math.inf

    def _log_later(self, records: list[LogEntry]) -> None:
        """Put ``records`` back in front of the log's queue, keeping at most
        :data:`UNLOGGED_LIMIT` records in it (the oldest go first and are counted)."""
        self._to_persist.extendleft(reversed(records))
        over = len(self._to_persist) - UNLOGGED_LIMIT
        for _ in range(max(0, over)):
            self._to_persist.popleft()
        self.unlogged += max(0, over)

    def _log_failed(self, exc: Exception) -> None:
        """Count a failed decision-log write (or a record that could not be made) and say so
        in one line, once a minute."""
        self.log_failures += 1
        if self._log_warnings.allow() is not None:
            log.warning("ef_middleware: loop %r could not write its decision log (%d failures "
                        "so far; its records wait, at most %d): %s: %s", self.name,
                        self.log_failures, UNLOGGED_LIMIT, type(exc).__name__,
                        " ".join(str(exc).split()))

    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until every reward handed to learning so far, and every decision whose
        reward wait is over, has been learned.

        Raises ``TimeoutError`` if the learner does not get there within ``timeout`` seconds,
        :class:`~ef_middleware.errors.EngineClosedError` once the engine is closed.
        """
        if self.closed:
            raise self._closed_error()
        self.expire()  # decisions whose wait is over are handed to learning first
        target = self.enqueued
        self._wake(True)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._progress:
            while self.learned < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"loop {self.name!r}: learner did not catch up")
                self._progress.wait(timeout=0.05 if left is None else min(left, 0.05))

    def save(self, *, only_if_learned: bool = False) -> None:
        """Write a model snapshot now (``EngineClosedError`` once the engine is closed: the
        engine saved every loop as it closed). ``only_if_learned=True`` writes none for a
        model that learned nothing since it was restored or saved (the decision log is
        written all the same)."""
        if self.closed:
            raise self._closed_error()
        with self._train_lock:
            self._log_decisions(retry=True)
            if not only_if_learned or self.trainer.unsaved:
                self.trainer.save()

    def stats(self) -> dict[str, Any]:
        """Counters for dashboards and health checks."""
        with self._pending_lock:
            pending = len(self._pending)
        return {"loop": self.name, "strategy": self.settings.strategy,
                "decisions": self.decisions, "rewards": self.rewards, "pending": pending,
                "learned": self.learned, "dropped": self.dropped,
                "log_failures": self.log_failures, "unlogged": self.unlogged,
                "finalised_early": self.finalised_early,
                "stand_ins_learned": self.trainer.stand_ins_learned,
                "updates": self.trainer.net.step,
                "model_version": self.model_version, "replay_ratio": self.replay_ratio,
                "fresh_gain": self.trainer.fresh_gain.gain}


class RewardWrite:
    """A reward that :meth:`Loop.accept_reward` checked and recorded in memory, not yet in
    the store. Until :meth:`commit` writes it, a second reward for the event is refused (or,
    under 'sum', added to it); a write that fails undoes the record."""

    __slots__ = ("after", "before", "event_id", "loop", "payload", "started")

    def __init__(self, loop: Loop, event_id: str, before: Waiting, after: Waiting,
                 started: float, payload: bytes) -> None:
        self.loop = loop
        self.event_id = event_id
        self.before = before  # the waiting decision without this reward
        self.after = after  # and with it
        self.started = started  # the loop's clock when it was accepted
        self.payload = payload

    def commit(self, *, wait: bool = True) -> bool:
        """Write the reward to the store, then hand it to learning; return whether it was
        written. ``wait=False`` writes only if the store can take it at once
        (:meth:`Store.try_set`) and otherwise returns ``False`` having done nothing: commit
        again, waiting, from where blocking is allowed."""
        loop = self.loop
        key = loop._reward_key(self.event_id)
        expire = loop._kept_for()
        # Accepted before the engine closed, written after it (the reward route's writer
        # thread during a shutdown): EngineClosedError, as for any call after close, not the
        # closed journal's OSError (a review of 2026-12-05).
        if loop.closed:
            loop._unwritten(self)
            raise loop._closed_error()
        # Durable before the caller answers; outside the loop's lock, so that ranking never
        # waits on the disk.
        try:
            if wait:
                loop.store.set(key, self.payload, expire=expire)
            elif not loop.store.try_set(key, self.payload, expire=expire):
                return False
        except BaseException as exc:
            loop._unwritten(self)
            if loop.closed and isinstance(exc, OSError):  # it closed during the write
                raise loop._closed_error() from exc
            raise
        loop._written(self)
        return True
