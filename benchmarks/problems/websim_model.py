"""True click-through rates of the simulator's four hero variants, per visitor and phase.

The reward is a click on the hero's call to action, the event ``ef.js`` reports. Rates start
from per-variant base rates (6-7%), are multiplied by segment effects and are clipped to
[1%, 35%]. Phase 0 is before the population shift, phase 1 after it (when preferences shift).

The segments and why they behave so:

- mobile visitors click the short page (minimal x1.5) and skip the long one (detailed x0.45);
- desktop visitors read the detailed page (x1.5), desktop searchers most of all (x2 more):
  they compare; on weekends desktop visitors watch the video (x1.3);
- tablets play the video (x1.8);
- social visitors like the video (x1.4), and mobile social visitors only in the evening
  (x2.2 from 18:00, x0.7 by day): a three-way interaction a linear model cannot express;
- new visitors from paid ads take the free trial (minimal x1.6);
- returning visitors from the newsletter trust the testimonials (x3; the win-back campaign x1.3);
- the demo video is narrated in English: others click it less (x0.6).

After the shift the newsletter carries the testimonials itself, so returning email visitors want
the fast path (minimal x2.2); desktop searchers now prefer a new product video (x2.4); a new
campaign, ``summer_launch``, sells the video (x2.2); and the new video is better for all (x1.2).
"""

from __future__ import annotations

from collections.abc import Mapping

BASE = {"minimal": 0.07, "detailed": 0.07, "video": 0.06, "testimonial": 0.06}
LOW, HIGH = 0.01, 0.35


def conversion_rates(v: Mapping[str, str | int | bool], phase: int) -> dict[str, float]:
    """Click-through probability of each variant for visitor ``v``."""
    p = dict(BASE)
    device, referrer = v["device"], v["referrer"]
    evening = 18 <= int(v["hour"]) <= 23
    weekend = int(v["weekday"]) >= 5
    returning = bool(v["returning"])
    if device == "mobile":
        p["minimal"] *= 1.5
        p["detailed"] *= 0.45
        p["video"] *= 0.8
        p["testimonial"] *= 0.8
    elif device == "desktop":
        p["detailed"] *= 1.5
        p["minimal"] *= 0.8
        if weekend:
            p["video"] *= 1.3
    else:  # tablet
        p["video"] *= 1.8
    if referrer == "social":
        p["video"] *= 1.4
        if device == "mobile":
            p["video"] *= 2.2 if evening else 0.7
    if not returning and referrer == "paid":
        p["minimal"] *= 1.6
    if v["language"] != "en":
        p["video"] *= 0.6
        p["detailed"] *= 0.85
    if phase == 0:
        if device == "desktop" and referrer == "search":
            p["detailed"] *= 2.0
        if returning and referrer == "email":
            p["testimonial"] *= 3.0
        if v["utm_campaign"] == "winback_30d":
            p["testimonial"] *= 1.3
    else:
        if device == "desktop" and referrer == "search":
            p["detailed"] *= 1.1
            p["video"] *= 2.4
        if returning and referrer == "email":
            p["testimonial"] *= 1.1
            p["minimal"] *= 2.2
        if v["utm_campaign"] == "summer_launch":
            p["video"] *= 2.2
        p["video"] *= 1.2
    return {k: min(HIGH, max(LOW, val)) for k, val in p.items()}
