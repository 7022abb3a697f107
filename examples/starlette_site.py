"""A plain Starlette site: a pricing page whose call to action is an A/B test (uniform loop).

Run it with::

    EF_SECRET_KEY=change-me .venv/bin/python -m uvicorn examples.starlette_site:app --port 8001

A uniform loop is a classic A/B split: each visitor keeps their variant for as long as their
decision cookie lives (``decision_max_age``, 7 days by default). Clicking the button (or
submitting the form) posts a conversion through ef.js.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import jinja2
from markupsafe import escape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from ef_middleware import Engine
from ef_middleware.web import PersonalizationMiddleware, setup_templates

LOOP = "pricing-cta"
ACTIONS = [
    {"id": "monthly", "features": {"offer": "monthly billing", "cta": "Start for $12/month"}},
    {"id": "annual", "features": {"offer": "annual billing, two months free",
                                  "cta": "Get two months free"}},
]
PAGES = {
    "pricing.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Pricing</title></head>
<body>
  {% set offer = ef.variant("pricing-cta") %}
  <h1>Pricing</h1>
  {% personalize "pricing-cta" %}
    {% variant "monthly" %}<p>Pay as you go. Cancel any time.</p>{% endvariant %}
    {% variant "annual" %}<p>Pay yearly and get <strong>two months free</strong>.</p>
    {% endvariant %}
  {% endpersonalize %}
  <form method="post" action="/subscribe" data-ef-convert="pricing-cta">
    <button type="submit" data-ef-variant="{{ offer }}">{{ offer.features.cta }}</button>
  </form>
  {{ ef.script() }}
</body></html>""",
    "thanks.html": """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Thanks</title></head><body><h1>Thanks!</h1><a href="/">Back</a>{{ ef.script() }}
</body></html>""",
}

templates = setup_templates(Jinja2Templates(env=jinja2.Environment(
    loader=jinja2.DictLoader(PAGES), autoescape=True)))


async def pricing(request: Request) -> Response:
    return templates.TemplateResponse(request, "pricing.html")


async def subscribe(request: Request) -> Response:
    return RedirectResponse("/thanks", status_code=303)


async def thanks(request: Request) -> Response:
    return templates.TemplateResponse(request, "thanks.html")


async def group(request: Request) -> Response:
    """The visitor's variant without a template."""
    chosen = request.scope["ef"].variant(LOOP)
    return HTMLResponse(f"<p>You are in group <b>{escape(str(chosen))}</b>.</p>")


def create_app(engine: Engine | None = None) -> Starlette:
    """The site, with its own engine (store folder ``EF_STORE``) unless one is given."""
    engine = engine or Engine(os.environ.get("EF_STORE", "var/starlette-demo"))
    engine.loop(LOOP, actions=ACTIONS, strategy="uniform")
    app = Starlette(routes=[
        Route("/", pricing),
        Route("/subscribe", subscribe, methods=["POST"]),
        Route("/thanks", thanks),
        Route("/group", group),
    ])
    app.add_middleware(
        PersonalizationMiddleware,
        engine=engine,
        secret_key=os.environ.get("EF_SECRET_KEY") or secrets.token_urlsafe(32),
        status_route=True,
    )
    return app


def __getattr__(name: str) -> Any:
    """``app`` is built on first access (by uvicorn), so importing this module stays cheap."""
    if name == "app":
        globals()["app"] = built = create_app()
        return built
    raise AttributeError(name)
