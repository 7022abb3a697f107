"""Jinja2 support: ``{{ ef.variant(...) }}``, ``{{ ef.script() }}`` and a block form.

.. code-block:: jinja

    {% personalize "homepage-hero" %}
      {% variant "minimal" %}<h1>Start free</h1>{% endvariant %}
      {% variant "video" %}<video ...></video>{% endvariant %}
    {% endpersonalize %}

Only the chosen variant's body is rendered. Use :func:`setup_templates` on Starlette's (or
FastAPI's) ``Jinja2Templates``; for a plain :class:`jinja2.Environment` add
:class:`PersonalizeExtension` and pass ``ef=request.scope["ef"]`` when rendering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.runtime import Context

from ef_middleware.errors import ConfigurationError

from .personalization import AfterResponse, Personalization
from .settings import logger

if TYPE_CHECKING:
    from jinja2.parser import Parser
    from starlette.requests import Request
    from starlette.templating import Jinja2Templates

__all__ = ["PersonalizeExtension", "ef_context", "setup_templates"]

_MISSING = "PersonalizationMiddleware is not installed on this app (no scope['ef'])"
_told: list[bool] = []  # whether the one line of _say_no_personalization was logged


def _say_no_personalization() -> None:
    """Log once per process that a block found no personalization. A macro imported without
    context (Jinja's default for ``{% import %}``) sees neither ``ef`` nor ``request``: its
    block showed the first variant, silently, while ``ef.variant`` elsewhere on the page
    logged another, whose rewards then went to a variant never shown (a review of
    2026-12-05). Finding the request another way (a ContextVar set per request) cost the
    first view 2.5 points of the bare page's throughput (docs/benchmarks.md, "Run AD")."""
    if not _told:
        _told.append(True)
        logger.warning("ef_middleware: a {%% personalize %%} block found no personalization "
                       "(no middleware, or a macro imported without context: import it "
                       "'with context'); it shows its first variant")


def ef_context(request: Request) -> dict[str, Any]:
    """Context processor: ``{"ef": request.scope["ef"]}`` for every template.

    Raises
    ------
    ConfigurationError
        The middleware is not installed, so there is nothing to personalize with.
    """
    ef = request.scope.get("ef")
    if not isinstance(ef, Personalization | AfterResponse):
        raise ConfigurationError(_MISSING)
    return {"ef": ef}


def setup_templates(templates: Jinja2Templates) -> Jinja2Templates:
    """Add the ``{% personalize %}`` extension and the ``ef`` context processor.

    Parameters
    ----------
    templates
        Starlette's (or FastAPI's) ``Jinja2Templates``.

    Returns
    -------
    Jinja2Templates
        The same object, for chaining.

    Examples
    --------
    >>> templates = setup_templates(Jinja2Templates(directory="templates"))  # doctest: +SKIP
    """
    if PersonalizeExtension.identifier not in templates.env.extensions:
        templates.env.add_extension(PersonalizeExtension)
    if ef_context not in templates.context_processors:
        templates.context_processors.append(ef_context)
    return templates


class PersonalizeExtension(Extension):
    """The ``{% personalize loop %}{% variant id %}...{% endvariant %}{% endpersonalize %}`` tag.

    Only ``{% variant %}`` blocks (and whitespace) may stand directly inside ``personalize``.
    The personalization object is the template variable ``ef`` (or ``request.scope["ef"]``).
    Without one (no middleware) the first block renders; a chosen variant without a block
    renders nothing and logs one line.
    """

    tags = {"personalize"}  # noqa: RUF012 - the type jinja2.ext.Extension declares

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        loop = parser.parse_expression()
        self._only_whitespace(parser, parser.parse_statements(("name:variant",
                                                               "name:endpersonalize")))
        branches: list[tuple[nodes.Expr, list[nodes.Node]]] = []
        while parser.stream.current.test("name:variant"):
            next(parser.stream)
            variant_id = parser.parse_expression()
            body = parser.parse_statements(("name:endvariant",), drop_needle=True)
            branches.append((variant_id, body))
            between = parser.parse_statements(("name:variant", "name:endpersonalize"))
            self._only_whitespace(parser, between)
        next(parser.stream)  # endpersonalize
        if not branches:
            parser.fail("{% personalize %} needs at least one {% variant %} block", lineno)
        ids = nodes.List([expr for expr, _ in branches], lineno=lineno)
        root: nodes.If | None = None
        last: nodes.If | None = None
        for variant_id, body in branches:
            test = self.call_method("_shows", [nodes.ContextReference(), loop, variant_id, ids],
                                    lineno=lineno)
            node = nodes.If(test, body, [], [], lineno=lineno)
            if last is None:
                root = node
            else:
                last.else_ = [node]
            last = node
        assert root is not None
        return root

    @staticmethod
    def _only_whitespace(parser: Parser, found: list[nodes.Node]) -> None:
        for node in found:
            data = node.nodes if isinstance(node, nodes.Output) else [node]
            for item in data:
                if not (isinstance(item, nodes.TemplateData) and not item.data.strip()):
                    parser.fail("only {% variant %} blocks may stand inside {% personalize %}",
                                node.lineno)

    def _shows(self, context: Context, loop: str, variant_id: str, ids: list[str]) -> bool:
        ef = context.get("ef")
        if not isinstance(ef, Personalization):
            request = context.get("request")
            scope = getattr(request, "scope", None)
            ef = scope.get("ef") if isinstance(scope, dict) else None
        if not isinstance(ef, Personalization):
            if not isinstance(ef, AfterResponse):
                _say_no_personalization()
            return variant_id == ids[0]
        chosen = ef.variant(loop).id
        if not chosen:  # an unknown loop (logged): the first block, as without the middleware
            return variant_id == ids[0]
        if chosen == variant_id:
            return True
        if variant_id == ids[-1] and chosen and chosen not in ids:
            ef.runtime.warn("template", (loop, chosen), "ef_middleware: loop %r chose %r but "
                            "the template has no {%% variant %%} block for it", loop, chosen)
        return False
