"""True conversion rates of the simulator's four hero variants, per visitor and phase.

Phase 0 is before the population shift, phase 1 after it (when preferences shift). Rates start
from per-variant base rates, are multiplied by segment effects and are clipped to [2%, 15%].
"""

from __future__ import annotations

from collections.abc import Mapping

BASE = {"minimal": 0.042, "detailed": 0.04, "video": 0.03, "testimonial": 0.035}
LOW, HIGH = 0.02, 0.15


def conversion_rates(v: Mapping[str, str | int | bool], phase: int) -> dict[str, float]:
    """Conversion probability of each variant for visitor ``v``."""
    p = dict(BASE)
    device, referrer = v["device"], v["referrer"]
    hour = int(v["hour"])
    evening = 18 <= hour <= 23
    weekend = int(v["weekday"]) >= 5
    returning = bool(v["returning"])
    if device == "mobile":
        p["minimal"] *= 1.4 if phase == 0 else 1.1
        p["detailed"] *= 0.6
    if device == "tablet":
        p["video"] *= 2.0
    if device == "desktop" and weekend:
        p["video"] *= 1.2
    # Three-way interaction, stable across the shift: mobile + social likes video only at night.
    if device == "mobile" and referrer == "social":
        p["video"] *= 4.0 if evening else 0.6
    if not returning and referrer == "paid":
        p["minimal"] *= 1.8
    if v["language"] != "en":
        p["video"] *= 0.6  # the demo video is narrated in English
        p["detailed"] *= 0.85
    if phase == 0:
        if device == "desktop" and referrer == "search":
            p["detailed"] *= 2.3
        if returning and referrer == "email":
            p["testimonial"] *= 3.5
        if v["utm_campaign"] == "winback_30d":
            p["testimonial"] *= 1.3
    else:
        # After the shift: the newsletter now carries the testimonials, so returning email
        # visitors want the fast path; desktop searchers now prefer the (new) product video.
        if device == "desktop" and referrer == "search":
            p["detailed"] *= 1.2
            p["video"] *= 2.8
        if returning and referrer == "email":
            p["testimonial"] *= 1.1
            p["minimal"] *= 2.6
        if v["utm_campaign"] == "summer_launch":
            p["video"] *= 2.5
        p["video"] *= 1.3  # a new, better demo video
    return {k: min(HIGH, max(LOW, val)) for k, val in p.items()}
