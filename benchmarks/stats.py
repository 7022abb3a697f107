"""Small statistics helpers: mean with a 95% t-interval, percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# Two-sided 95% Student-t critical values for 1..30 degrees of freedom.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(df: int) -> float:
    """Critical value of the two-sided 95% t-interval (normal approximation past 30 df)."""
    if df < 1:
        return math.nan
    if df <= len(_T95):
        return _T95[df - 1]
    return 1.96 + 2.4 / df  # within 0.01 of the exact value for df > 30


@dataclass(frozen=True)
class Summary:
    """Mean of per-seed values with a 95% t-interval (half-width ``ci``)."""

    mean: float
    ci: float
    n: int
    values: list[float]

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["low"] = self.low
        out["high"] = self.high
        return out

    def fmt(self, digits: int = 1) -> str:
        if self.n < 2 or math.isnan(self.ci):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.ci:.{digits}f}"


def summarize(values: Sequence[float]) -> Summary:
    """Mean and 95% t-interval half-width of ``values`` (one value per seed)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Summary(math.nan, math.nan, 0, [])
    mean = sum(vals) / n
    if n < 2:
        return Summary(mean, math.nan, n, vals)
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return Summary(mean, t95(n - 1) * math.sqrt(var / n), n, vals)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of already sorted values."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac)
