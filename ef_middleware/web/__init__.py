"""The web layer: ASGI middleware, reward route, Jinja2 tags and ef.js for Starlette/FastAPI.

Install with the ``web`` extra. The usual setup::

    from ef_middleware import Engine
    from ef_middleware.web import PersonalizationMiddleware, setup_templates

    engine = Engine("var/ef")
    engine.loop("homepage-hero", actions=[...])
    app.add_middleware(PersonalizationMiddleware, engine=engine, secret_key=SECRET)
    templates = setup_templates(Jinja2Templates(directory="templates"))
"""

from __future__ import annotations

from .dependencies import personalization
from .middleware import PersonalizationMiddleware
from .personalization import Personalization
from .templating import PersonalizeExtension, ef_context, setup_templates
from .variant import NoDecisionError, Variant

__all__ = [
    "NoDecisionError",
    "Personalization",
    "PersonalizationMiddleware",
    "PersonalizeExtension",
    "Variant",
    "ef_context",
    "personalization",
    "setup_templates",
]
