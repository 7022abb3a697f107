"""A fast linear correction on top of the network: one logit offset per (context text, action).

The network learns from a replay buffer of thousands of visitors, which keeps it steady and
makes it slow to follow a change: a campaign nobody has seen, or a segment whose taste moved.
The correction learns online, one AdaGrad step per learned sample, on the residual of the
network's prediction at decision time. A cell that has seen few samples (a new campaign's)
takes large steps; a cell with a long history takes small ones. When the network is right the
correction's gradient is zero on average, so it shrinks back as the network catches up. On
the web simulator the network never quite does: on seed 100, in half the decisions between
visitors 1,000 and 10,000 the correction moved some action's predicted conversion rate by
6 points or more (docs/benchmarks.md, "Exploring where the correction disagrees").
The offsets of a context's texts and of the action itself are added to the network's logit.

An offset also fades while its cell gets no samples (``half_life``, in samples the loop
learned): it measured the network's error at that time, the network keeps learning, and a
correction that pushed an action below the others would otherwise stay there for good, since
the correction learns only from the chosen action (docs/design.md, "The fast correction").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ._types import FloatArray
from .priority import yield_to_requests

Float64Array = npt.NDArray[np.float64]
ACTION_CELL = ""  # the text key of an action's own offset
# (offset, summed squared gradients, clock of the offset's last write): a tuple of numbers,
# replaced on each step, which the garbage collector stops tracking at its next pass (a text's
# table at the next full pass, until a step writes into it again). As lists changed in place,
# all were tracked and walked by every full collection: 8.6-12.1 ms a full collection after
# 60 s of the catalogue load of docs/benchmarks.md, 2.5-2.7 ms with tuples.
Cell = tuple[float, float, float]
_NONE: Cell = (0.0, 0.0, 0.0)
MEMO_ROWS = 512  # texts whose rows of offsets one published model keeps
EVICT_SHARE = 0.1  # at the cap, this share of the offsets (the longest unwritten) makes room
STRIDE = 5  # numbers per cell in a snapshot (state)
STATE_CHUNK = 2048  # cells written into a snapshot between two chances for requests to run


class Correction:
    """Per-(text, action id) logit offsets, learned by AdaGrad with a little L2.

    ``rate`` is the step of a sample's *summed* offset, shared evenly among its cells (the
    action's own and one per text): a context with 22 texts (Mushroom) moves its prediction as
    far per sample as one with 6 (the web simulator). Unshared, 0.6 per cell locked 2 of 5
    Mushroom runs onto one action from the first visitors (docs/benchmarks.md).

    ``cells[text][action_id]`` is one offset with its AdaGrad sum and clock (a :data:`Cell`
    tuple, replaced on each step). Only the learner thread writes; rankings read (single dict
    operations, atomic under the interpreter lock, and a ranking sees a cell's old tuple or
    its new one, never half of a step).
    At most ``max_cells`` offsets are kept: a new one at the cap first drops the tenth of the
    offsets whose last step is oldest (:meth:`evict`; the actions' own cells stay), so a flood
    of values seen once cannot close the table to the values that come later. A new cell starts
    with ``initial`` summed squared gradients, so its first steps are about ``rate`` times the
    gradient rather than ``rate`` times its sign (one click on a rare referrer moves little).

    ``clock`` counts updates. An offset is multiplied by ``keep ** age`` (``keep = 0.5 **
    (1 / half_life)``), its age being the updates since its cell's last one, when it is read
    and before its next step (lazily: nothing walks the cells). ``half_life=None`` keeps
    offsets until their next step.
    """

    def __init__(self, rate: float, l2: float = 1e-3, max_cells: int = 200_000,
                 initial: float = 1.0, half_life: float | None = None) -> None:
        if half_life is not None and not (math.isfinite(half_life) and half_life > 0):
            raise ValueError("half_life must be a positive number of samples, or None")
        self.rate = rate
        self.l2 = l2
        self.initial = initial
        self.max_cells = max_cells
        self.half_life = half_life
        self.keep = None if half_life is None else 0.5 ** (1.0 / half_life)  # per update
        self.cells: dict[str, dict[str, Cell]] = {}
        self.size = 0
        self.clock = 0

    def offsets(self, texts: Sequence[str], ids: Sequence[str],
                memo: dict[str, FloatArray] | None = None) -> FloatArray:
        """The summed offsets of ``texts`` (and of the action's own cell) per action id.

        ``memo`` keeps each text's row of offsets over ``ids`` (the loop's own actions, for
        one published model): with K = 1,000 a row is 1,000 lookups, and visitors share texts.
        """
        out = np.zeros(len(ids), dtype=np.float32)
        for text in (ACTION_CELL, *texts):
            row = None if memo is None else memo.get(text)
            if row is None:
                per = self.cells.get(text)
                if not per:
                    continue
                if self.keep is None:
                    row = np.array([per.get(a, _NONE)[0] for a in ids], dtype=np.float32)
                else:
                    cells = [per.get(a, _NONE) for a in ids]
                    ages = self.clock - np.array([c[2] for c in cells])
                    row = (np.array([c[0] for c in cells]) * self.keep ** ages).astype(np.float32)
                if memo is not None:
                    if len(memo) >= MEMO_ROWS:
                        memo.clear()
                    memo[text] = row
            out += row
        return out

    def update(self, texts: Sequence[str], action: str, logit: float, reward: float) -> None:
        """One AdaGrad step of the logistic loss of ``logit`` + offsets on ``reward``.

        Each cell stepped is written at once with this step's clock (so an eviction later in
        the step keeps it), then with its new values; a text listed twice is stepped twice,
        and a cell that an eviction of this step took anyway loses its step.
        """
        self.clock += 1
        clock = self.clock
        steps: list[list[float]] = []  # [offset, summed squared gradients], one per text listed
        written: dict[str, tuple[Cell, list[float]]] = {}  # text -> (cell written now, values)
        evicted = False
        for text in (ACTION_CELL, *texts):
            per = self.cells.get(text)
            cell = None if per is None else per.get(action)
            held = written.get(text)
            if held is not None and cell is held[0]:  # listed twice: the same cell again
                steps.append(held[1])
                continue
            if cell is None:
                if self.size >= self.max_cells:
                    if evicted:
                        continue
                    self.evict()
                    evicted = True
                    if self.size >= self.max_cells:
                        continue
                per = self.cells.get(text)  # an eviction may have emptied it
                if per is None:
                    per = self.cells[text] = {}
                values = [0.0, self.initial]
                self.size += 1
            else:
                offset, total, stamp = cell
                if self.keep is not None and stamp < clock:
                    offset *= self.keep ** (clock - stamp)
                values = [offset, total]
            assert per is not None  # found in it, or made above
            now: Cell = (values[0], values[1], clock)
            per[action] = now
            written[text] = (now, values)
            steps.append(values)
        z = logit + sum(values[0] for values in steps)
        p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
        g = p - reward
        step = self.rate / max(1, len(steps))
        for values in steps:
            grad = g + self.l2 * values[0]
            values[1] += grad * grad
            if values[1] > 0:
                values[0] -= step * grad / math.sqrt(values[1])
        for text, (now, values) in written.items():
            per = self.cells.get(text)
            if per is not None and per.get(action) is now:  # not taken by an eviction
                per[action] = (values[0], values[1], clock)

    def evict(self) -> int:
        """Drop the :data:`EVICT_SHARE` of the texts' offsets whose last step is oldest (of
        offsets written at the same step, any); the actions' own cells stay. Returns how many
        went.

        The learner thread calls it when a new offset finds the table full: a walk over the
        cells (131-138 ms at 200,000 in five lab runs), once per ``max_cells / 10``
        new offsets, letting requests take the interpreter lock every 4,096 texts.
        """
        stamps: list[float] = []
        where: list[tuple[str, str]] = []
        for text, per in self.cells.items():
            if text != ACTION_CELL:
                for action, cell in per.items():
                    stamps.append(cell[2])
                    where.append((text, action))
        if not stamps:
            return 0
        n = max(1, int(len(stamps) * EVICT_SHARE))
        # Exactly n, ties or not: a snapshot from before the clocks restores every offset
        # as written at one step, and a cutoff by value would then drop them all.
        oldest = np.argpartition(np.asarray(stamps), n - 1)[:n]
        for j, i in enumerate(oldest.tolist()):
            text, action = where[i]
            per = self.cells[text]
            del per[action]
            if not per:
                del self.cells[text]
            if (j + 1) % 4096 == 0:
                yield_to_requests()
        self.size -= n
        return n

    def state(self) -> dict[str, Any]:
        """Every offset: ``texts``, ``actions``, ``clock`` and ``cells``, a flat float64 array
        of ``text index, action index, offset, AdaGrad sum, clock of its last write`` per cell
        (``stride`` numbers each). Everything but ``cells`` is JSON-ready; a snapshot writes
        ``cells`` as raw bytes (:meth:`~ef_middleware.trainer.Trainer.save`).

        Called by the learner thread for each snapshot, which shares the interpreter lock with
        requests. Flat, because 200,000 small lists (the cap, one per cell) took about 0.5 s to
        build in a process holding the model, most of it garbage collections they triggered.
        Filled :data:`STATE_CHUNK` cells at a time, letting requests take the lock between
        chunks. (Written as one JSON list, 200,000 cells took orjson 35-40 ms in a single call,
        and every request waited that long: docs/benchmarks.md, "Stalls inside `rank()`".)
        """
        texts = list(self.cells)
        actions: dict[str, int] = {}
        cells: Float64Array = np.empty(STRIDE * self.size, dtype="<f8")
        filled = 0
        chunk: list[float] = []
        for i, text in enumerate(texts):
            for action, (offset, total, stamp) in self.cells[text].items():
                chunk += (i, actions.setdefault(action, len(actions)), offset, total, stamp)
                if len(chunk) >= STRIDE * STATE_CHUNK:
                    cells, filled = _filled(cells, filled, chunk)
                    chunk = []
                    yield_to_requests()
        cells, filled = _filled(cells, filled, chunk)
        return {"texts": texts, "actions": list(actions), "clock": self.clock,
                "stride": STRIDE, "cells": cells[:filled]}

    def restore(self, state: Mapping[str, Any] | Sequence[Sequence[Any]]) -> None:
        """Load :meth:`state`, or an older snapshot's: four numbers per cell and no clock, or
        ``[text, action, offset, sum]`` rows (their offsets count as written at restore).

        Raises ``ValueError`` (or ``TypeError``, ``KeyError``) for a state it cannot read (a
        cell's numbers cut short, an index that names no text or action, a number that is not
        finite), and then changes nothing.
        """
        clock = 0
        if isinstance(state, Mapping):
            clock = int(state.get("clock", 0))
            texts, actions, flat = state["texts"], state["actions"], state["cells"]
            n = int(state.get("stride", 4))
            flat = _checked(np.asarray(flat, dtype=np.float64), n, len(texts), len(actions))
            rows: Any = ((texts[int(flat[j])], actions[int(flat[j + 1])], *flat[j + 2:j + n])
                         for j in range(0, len(flat), n))
        else:
            rows = state
        cells: dict[str, dict[str, Cell]] = {}
        size = 0
        for text, action, offset, total, *stamp in rows:
            when = float(stamp[0]) if stamp else float(clock)
            cells.setdefault(str(text), {})[str(action)] = (float(offset), float(total), when)
            size += 1
        self.cells, self.size, self.clock = cells, size, clock


def _checked(flat: Float64Array, stride: int, texts: int, actions: int) -> list[float]:
    """A snapshot's flat cells as a list, once checked: whole cells of ``stride`` finite
    numbers whose first two are indices of a text and an action (raw bytes that were damaged
    would otherwise name another text, or fail half-way through the restore)."""
    if flat.ndim != 1 or stride < 4 or len(flat) % stride:
        raise ValueError(f"{len(flat)} numbers are not cells of {stride}")
    if not np.isfinite(flat).all():
        raise ValueError("a cell holds a number that is not finite")
    index = flat.reshape(-1, stride)[:, :2]
    if (index != np.floor(index)).any() or (index < 0).any() or (
            len(index) and (index[:, 0].max() >= texts or index[:, 1].max() >= actions)):
        raise ValueError("a cell names no text or action of the snapshot")
    return flat.tolist()  # type: ignore[no-any-return]


def _filled(cells: Float64Array, filled: int, chunk: list[float]) -> tuple[Float64Array, int]:
    """``cells`` with ``chunk`` written from ``filled`` on (grown if it must be), and the new
    fill mark."""
    end = filled + len(chunk)
    if end > len(cells):  # not expected: ``size`` counts the cells
        cells = np.concatenate([cells[:filled], np.empty(end - filled, dtype=cells.dtype)])
    cells[filled:end] = chunk
    return cells, end
