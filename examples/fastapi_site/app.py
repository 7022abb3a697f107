"""A FastAPI site: a homepage hero of four variants chosen per visitor by a contextual bandit.

Run it with ``scripts/demo`` (or ``python -m uvicorn examples.fastapi_site.app:app``), then open
http://127.0.0.1:8000 and feed it visitors with
``ef-traffic --url http://127.0.0.1:8000 --visitors 500``.

Environment: ``EF_STORE`` (store folder, default ``var/demo``), ``EF_SECRET_KEY`` (cookie
signing key; a random one per start when unset), ``EF_REWARD_WAIT`` (seconds a decision waits
for its conversion before it counts as a non-conversion, default 600; ``scripts/demo`` uses 10 so
simulated traffic is learned quickly), ``EF_DEMO_PANEL=0`` hides the "why this variant" panel,
``EF_SECURE_COOKIES=1`` behind HTTPS.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ef_middleware import Engine
from ef_middleware.web import (
    Personalization,
    PersonalizationMiddleware,
    personalization,
    setup_templates,
)

from .content import HERO, LOOP, TEMPLATES

log = logging.getLogger("ef_middleware.examples")


def _secret_key() -> str:
    key = os.environ.get("EF_SECRET_KEY")
    if key:
        return key
    log.warning("EF_SECRET_KEY is not set: using a random key (cookies reset on restart)")
    return secrets.token_urlsafe(32)


def create_app(engine: Engine | None = None) -> FastAPI:
    """Build the site: engine (embedded diskcache store), loop, templates, routes, middleware."""
    engine = engine or Engine(os.environ.get("EF_STORE", "var/demo"))
    # A visitor who has not converted within reward_wait seconds counts as a non-conversion.
    wait = float(os.environ.get("EF_REWARD_WAIT", "600"))
    if LOOP not in engine.loops:  # a given engine may bring its own loop
        engine.loop(LOOP, actions=HERO, reward_wait=wait)  # default strategy: thompson
    templates = setup_templates(Jinja2Templates(directory=TEMPLATES))
    show_context = os.environ.get("EF_DEMO_PANEL", "1") == "1"
    app = FastAPI(title="ef_middleware demo", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "index.html",
                                          {"loop": LOOP, "show_context": show_context})

    @app.get("/signup", response_class=HTMLResponse)
    async def signup(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "signup.html", {"loop": LOOP})

    @app.get("/api/hero")
    def hero(ef: Personalization = Depends(personalization)) -> dict[str, Any]:  # noqa: B008
        """The same personalization for a JSON client."""
        return {**ef.variant(LOOP).to_dict(), "context": ef.context}

    app.add_middleware(
        PersonalizationMiddleware,
        engine=engine,
        secret_key=_secret_key(),
        status_route=True,
        secure=os.environ.get("EF_SECURE_COOKIES") == "1",
        honor_gpc=True,
        # Behind a proxy that sends its own Host: the site's public origins, space-separated.
        trusted_origins=os.environ.get("EF_TRUSTED_ORIGINS", "").split(),
    )
    return app


def __getattr__(name: str) -> Any:
    """``app`` is built on first access (``uvicorn examples.fastapi_site.app:app``), so
    importing :func:`create_app` stays cheap."""
    if name == "app":
        globals()["app"] = built = create_app()
        return built
    raise AttributeError(name)
