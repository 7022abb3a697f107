"""Type aliases shared across the package (one place, as the house style asks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, TypeAlias, get_args

import numpy as np
import numpy.typing as npt

Strategy: TypeAlias = Literal[
    "laplace",
    "thompson",
    "thompson-dropout",
    "neural-linear",
    "ucb",
    "squarecb",
    "epsilon-greedy",
    "uniform",
    "bernoulli-ts",
]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

Aggregation: TypeAlias = Literal["earliest", "sum"]

FeatureValue: TypeAlias = str | int | float | bool | Sequence[str] | None
Context: TypeAlias = Mapping[str, FeatureValue]

FloatArray: TypeAlias = npt.NDArray[np.float32]
Float64Array: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
