"""Mushroom (Riquelme et al. 2018 payoffs) and MAGIC (one arm per class) as bandit problems."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from benchmarks.data import Table, read_tsv_gz
from benchmarks.problems.base import Action, Context, Stream, stream_rng

EAT_EDIBLE = 5.0
EAT_POISON_BAD = -35.0
EAT_POISON_GOOD = 5.0
P_POISON_BAD = 0.5
EAT_POISON_EXPECTED = P_POISON_BAD * EAT_POISON_BAD + (1 - P_POISON_BAD) * EAT_POISON_GOOD


def _codes_as_text(table: Table) -> list[Context]:
    """Categorical codes stay strings (``{"odor": "6"}``): the engine embeds them as categories."""
    cols = table.columns
    return [{c: str(int(float(v))) for c, v in zip(cols, row, strict=True)} for row in table.rows]


@dataclass
class Mushroom:
    """Arms eat/skip. Skip pays 0; eating edible pays +5; poisonous pays -35 w.p. 1/2, else +5.

    Target ``0`` is edible and ``1`` poisonous (shared/data/README.md). Regret uses the expected
    payoffs (poisonous eat = -15); agents learn from the realized, noisy payoffs.
    """

    name: str = "mushroom"
    actions: list[Action] = field(
        default_factory=lambda: [
            Action("eat", {"action": "eat"}),
            Action("skip", {"action": "skip"}),
        ]
    )
    reward_range: tuple[float, float] = (EAT_POISON_BAD, EAT_EDIBLE)
    _contexts: list[Context] = field(default_factory=list, repr=False)
    _target: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    def _load(self) -> None:
        if not self._contexts:
            table = read_tsv_gz("mushroom.tsv.gz")
            self._contexts = _codes_as_text(table)
            self._target = table.target

    def stream(self, seed: int, horizon: int) -> Stream:
        self._load()
        rng = stream_rng(self.name, seed)
        idx = rng.integers(0, len(self._contexts), size=horizon)
        coin = rng.random(horizon)
        poison = self._target[idx] == 1
        expected = np.zeros((horizon, 2))
        realized = np.zeros((horizon, 2))
        expected[:, 0] = np.where(poison, EAT_POISON_EXPECTED, EAT_EDIBLE)
        bad = coin < P_POISON_BAD
        poison_payoff = np.where(bad, EAT_POISON_BAD, EAT_POISON_GOOD)
        realized[:, 0] = np.where(poison, poison_payoff, EAT_EDIBLE)
        contexts = [self._contexts[i] for i in idx]
        return Stream(contexts, expected, realized, {"poisonous_share": float(poison.mean())})


@dataclass
class Magic:
    """Two arms (one per class); reward 1 when the arm equals the label, else 0."""

    name: str = "magic"
    actions: list[Action] = field(
        default_factory=lambda: [
            Action("class-0", {"action": "class 0"}),
            Action("class-1", {"action": "class 1"}),
        ]
    )
    reward_range: tuple[float, float] = (0.0, 1.0)
    _contexts: list[Context] = field(default_factory=list, repr=False)
    _target: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    def _load(self) -> None:
        if not self._contexts:
            table = read_tsv_gz("magic.tsv.gz")
            self._contexts = [
                {c: float(v) for c, v in zip(table.columns, row, strict=True)} for row in table.rows
            ]
            self._target = table.target

    def stream(self, seed: int, horizon: int) -> Stream:
        self._load()
        rng = stream_rng(self.name, seed)
        idx = rng.integers(0, len(self._contexts), size=horizon)
        label = self._target[idx]
        expected = np.zeros((horizon, 2))
        expected[np.arange(horizon), label] = 1.0
        contexts = [self._contexts[i] for i in idx]
        return Stream(contexts, expected, expected.copy(), {"class1_share": float(label.mean())})
