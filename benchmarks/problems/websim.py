"""Web-visitor simulator: a homepage hero with four variants and Bernoulli conversions.

Visitors carry the context the web middleware produces (device, browser, os, referrer, hour,
weekday, returning, utm_campaign, language). Segments prefer different variants, with nonlinear
interactions (mobile visitors from social like the video variant only in the evening; returning
visitors from email like the testimonial). At ``shift_at`` the population shifts: preferences
change (``preferences``), the segment mix changes and a new campaign appears (``mix``), or both.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from benchmarks.problems.base import Action, Context, Stream, stream_rng
from benchmarks.problems.websim_model import conversion_rates

SHIFT_KINDS = ("both", "preferences", "mix", "none")

VARIANTS = [
    Action("minimal", {"layout": "minimal", "cta": "Start free trial"}),
    Action("detailed", {"layout": "detailed", "cta": "See all features and pricing"}),
    Action("video", {"layout": "video", "cta": "Watch the 2-minute demo"}),
    Action("testimonial", {"layout": "testimonial", "cta": "Read customer stories"}),
]

Dist = Mapping[str, float]

DEVICE: tuple[Dist, Dist] = (
    {"mobile": 0.50, "desktop": 0.42, "tablet": 0.08},
    {"mobile": 0.68, "desktop": 0.25, "tablet": 0.07},
)
REFERRER: tuple[Dist, Dist] = (
    {"search": 0.38, "direct": 0.22, "social": 0.18, "email": 0.14, "paid": 0.08},
    {"search": 0.25, "direct": 0.15, "social": 0.38, "email": 0.12, "paid": 0.10},
)
CAMPAIGN: tuple[Mapping[str, Dist], Mapping[str, Dist]] = (
    {
        "email": {"spring_newsletter": 0.6, "winback_30d": 0.4},
        "social": {"brand_awareness": 0.7, "creator_collab": 0.3},
        "paid": {"search_brand": 0.5, "generic_trial": 0.5},
    },
    {
        "email": {"spring_newsletter": 0.6, "winback_30d": 0.4},
        "social": {"summer_launch": 0.6, "brand_awareness": 0.25, "creator_collab": 0.15},
        "paid": {"search_brand": 0.5, "generic_trial": 0.5},
    },
)
RETURNING = {"email": 0.8, "direct": 0.6, "search": 0.25, "social": 0.2, "paid": 0.15}
LANGUAGE: Dist = {"en": 0.6, "de": 0.12, "fr": 0.1, "es": 0.1, "ja": 0.08}
OS: Mapping[str, Dist] = {
    "mobile": {"iOS": 0.55, "Android": 0.45},
    "desktop": {"Windows": 0.6, "macOS": 0.32, "Linux": 0.08},
    "tablet": {"iPadOS": 0.6, "Android": 0.4},
}
BROWSER: Mapping[str, Dist] = {
    "iOS": {"Mobile Safari": 0.85, "Chrome Mobile": 0.15},
    "Android": {"Chrome Mobile": 0.75, "Samsung Internet": 0.25},
    "Windows": {"Chrome": 0.65, "Edge": 0.25, "Firefox": 0.1},
    "macOS": {"Safari": 0.45, "Chrome": 0.5, "Firefox": 0.05},
    "Linux": {"Chrome": 0.6, "Firefox": 0.4},
    "iPadOS": {"Mobile Safari": 1.0},
}
HOUR_WEIGHTS = (1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.5, 3.5,
                4, 4, 3.5, 3.5, 3.5, 3.5, 4, 5, 5.5, 5, 3.5, 2)  # fmt: skip
WEEKDAY_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 0.95, 0.75, 0.7)


class _Sampler:
    """Draws from small discrete distributions with one uniform number each (fast, seeded)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._cache: dict[tuple[tuple[str, float], ...], tuple[list[str], list[float]]] = {}

    def pick(self, dist: Dist) -> str:
        key = tuple(dist.items())  # by content: an id() of a temporary dict gets reused
        if key not in self._cache:
            names = list(dist)
            total = sum(dist.values())
            cum = list(itertools.accumulate(dist[n] / total for n in names))
            self._cache[key] = (names, cum)
        names, cum = self._cache[key]
        return names[min(bisect.bisect_right(cum, self._rng.random()), len(names) - 1)]


def _weights(weights: tuple[float, ...]) -> dict[str, float]:
    return {str(i): w for i, w in enumerate(weights)}


_HOURS = _weights(HOUR_WEIGHTS)
_WEEKDAYS = _weights(WEEKDAY_WEIGHTS)


def sample_visitor(sampler: _Sampler, phase: int) -> dict[str, str | int | bool]:
    """One visitor's context in the middleware's shape; ``phase`` 1 uses the shifted mix."""
    device = sampler.pick(DEVICE[phase])
    os_name = sampler.pick(OS[device])
    referrer = sampler.pick(REFERRER[phase])
    campaigns = CAMPAIGN[phase].get(referrer)
    return {
        "device": device,
        "browser": sampler.pick(BROWSER[os_name]),
        "os": os_name,
        "referrer": referrer,
        "hour": int(sampler.pick(_HOURS)),
        "weekday": int(sampler.pick(_WEEKDAYS)),
        "returning": sampler.pick({"1": RETURNING[referrer], "0": 1 - RETURNING[referrer]}) == "1",
        "utm_campaign": sampler.pick(campaigns) if campaigns else "(none)",
        "language": sampler.pick(LANGUAGE),
    }


@dataclass
class WebSim:
    """Homepage hero test; ``shift_at`` is a fraction of the horizon (<= 1) or a visitor count."""

    shift_at: float = 0.5
    shift_kind: str = "both"
    name: str = "web"
    actions: list[Action] = field(default_factory=lambda: list(VARIANTS))
    reward_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.shift_kind not in SHIFT_KINDS:
            raise ValueError(f"shift_kind must be one of {SHIFT_KINDS}, not {self.shift_kind!r}")

    def shift_step(self, horizon: int) -> int:
        if self.shift_kind == "none":
            return horizon
        step = round(self.shift_at * horizon) if self.shift_at <= 1 else int(self.shift_at)
        return max(0, min(horizon, step))

    def stream(self, seed: int, horizon: int) -> Stream:
        rng = stream_rng(self.name, seed)
        sampler = _Sampler(rng)
        shift = self.shift_step(horizon)
        mix_shift = self.shift_kind in ("mix", "both")
        pref_shift = self.shift_kind in ("preferences", "both")
        ids = [a.id for a in self.actions]
        contexts: list[Context] = []
        expected = np.zeros((horizon, len(ids)))
        for t in range(horizon):
            after = t >= shift
            visitor = sample_visitor(sampler, 1 if after and mix_shift else 0)
            rates = conversion_rates(visitor, 1 if after and pref_shift else 0)
            expected[t] = [rates[i] for i in ids]
            contexts.append(visitor)
        realized = (rng.random(expected.shape) < expected).astype(np.float64)
        return Stream(
            contexts, expected, realized, {"shift_at": shift, "shift_kind": self.shift_kind}
        )
