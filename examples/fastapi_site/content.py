"""The hero's four variants (importing this is cheap: no engine, no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOOP = "homepage-hero"
TEMPLATES = Path(__file__).parent / "templates"

HERO: list[dict[str, Any]] = [
    {"id": "minimal", "features": {
        "layout": "minimal", "headline": "Ship your roadmap, not your spreadsheets",
        "cta": "Start free trial"}},
    {"id": "detailed", "features": {
        "layout": "detailed feature list", "headline": "Everything your team needs to plan",
        "cta": "Compare plans"}},
    {"id": "video", "features": {
        "layout": "video demo", "headline": "See it in two minutes", "cta": "Watch the demo"}},
    {"id": "testimonial", "features": {
        "layout": "customer testimonial", "headline": "Loved by 10,000 teams",
        "cta": "Join them today"}},
]
