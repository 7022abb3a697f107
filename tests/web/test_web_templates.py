"""Jinja2: ``ef.variant``, the ``{% personalize %}`` block, ``ef.script()``, setup helper."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jinja2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.testclient import TestClient
from web_helpers import ACTIONS, GOOGLEBOT, SECRET

from ef_middleware import Engine
from ef_middleware.errors import ConfigurationError
from ef_middleware.web import PersonalizationMiddleware, PersonalizeExtension, setup_templates
from ef_middleware.web.personalization import SCRIPT_STUB

Client = Callable[..., TestClient]

BLOCK = """<main>{% personalize loop %}
  {% variant "minimal" %}<h1>M {{ ef.variant(loop).features.cta }}</h1>{% endvariant %}
  {% variant "detailed" %}<h1>D</h1>{% endvariant %}
  {% variant "video" %}<h1>V</h1>{% endvariant %}
  {% variant "testimonial" %}<h1>T</h1>{% endvariant %}
{% endpersonalize %}</main>"""
TEMPLATES = {
    "inline.html": "{{ ef.variant(loop) }}|{{ ef.variant(loop).id }}|"
                   "{{ ef.variant(loop).features.cta }}|"
                   "{% if ef.variant(loop) == 'video' %}is-video{% endif %}",
    "block.html": BLOCK,
    "partial.html": '{% personalize loop %}{% variant "minimal" %}M{% endvariant %}'
                    "{% endpersonalize %}",
    "script.html": "{{ ef.script() }}\n{{ ef.script(nonce='abc\"') }}\n"
                   "{{ ef.script(stub=False) }}\n{{ ef.script(nonce='n1', stub=False) }}",
    # a macro imported without context (Jinja's default) sees no ef: its block has no ef
    "macros.html": "{% macro hero(loop) %}"
                   + BLOCK.replace(" {{ ef.variant(loop).features.cta }}", "")
                   + "{% endmacro %}",
    "macro.html": '{% import "macros.html" as m %}{{ m.hero(loop) }}|{{ ef.variant(loop) }}',
    "macro_ctx.html": '{% import "macros.html" as m with context %}{{ m.hero(loop) }}|'
                      "{{ ef.variant(loop) }}",
}
LETTER = {"minimal": "M", "detailed": "D", "video": "V", "testimonial": "T"}


def template_app(engine: Engine, **options: Any) -> Starlette:
    templates = setup_templates(Jinja2Templates(env=jinja2.Environment(
        loader=jinja2.DictLoader(TEMPLATES), autoescape=True)))

    async def page(request: Request) -> Response:
        return templates.TemplateResponse(request, request.path_params["name"],
                                          {"loop": request.query_params["loop"]})

    app = Starlette(routes=[Route("/{name}", page)])
    app.add_middleware(PersonalizationMiddleware, engine=engine, secret_key=SECRET, **options)
    return app


def test_inline_variant(engine: Engine, loop_name: str, client_for: Client) -> None:
    text = client_for(template_app(engine)).get(f"/inline.html?loop={loop_name}").text
    chosen, same, cta, is_video = text.split("|")
    assert chosen == same and chosen in LETTER
    assert cta == next(a["features"]["cta"] for a in ACTIONS if a["id"] == chosen)
    assert (is_video == "is-video") == (chosen == "video")


def test_block_renders_only_the_chosen_variant(engine: Engine, loop_name: str,
                                               client_for: Client) -> None:
    client = client_for(template_app(engine))
    text = client.get(f"/block.html?loop={loop_name}").text
    chosen = client.get(f"/inline.html?loop={loop_name}").text.split("|")[0]  # sticky: same
    body = text.removeprefix("<main>").removesuffix("</main>").strip()
    assert body.startswith(f"<h1>{LETTER[chosen]}")
    assert sum(f"<h1>{letter}" in text for letter in LETTER.values()) == 1
    assert engine.get_loop(loop_name).stats()["decisions"] == 1


def test_block_for_bots_shows_the_default(engine: Engine, loop_name: str,
                                          client_for: Client) -> None:
    text = client_for(template_app(engine), user_agent=GOOGLEBOT).get(
        f"/block.html?loop={loop_name}").text
    assert "<h1>M Start free trial</h1>" in text


def test_block_for_an_unknown_loop_shows_the_first_block(
        engine: Engine, client_for: Client, caplog: pytest.LogCaptureFixture) -> None:
    """A misspelt loop name renders the default (first) block and logs one line, as the
    block does without the middleware: before, it rendered nothing."""
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        text = client_for(template_app(engine)).get("/block.html?loop=no-such-loop").text
    assert text.removeprefix("<main>").removesuffix("</main>").strip() == "<h1>M </h1>"
    assert len([r for r in caplog.records if r.name == "ef_middleware"]) == 1


def test_chosen_variant_without_a_block_renders_nothing(
        engine: Engine, client_for: Client, caplog: pytest.LogCaptureFixture) -> None:
    engine.loop("only-video", actions=["video", "minimal"])
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        for _ in range(20):  # fresh visitors until one gets "video"
            client = client_for(template_app(engine))
            text = client.get("/partial.html?loop=only-video").text
            if client.get("/inline.html?loop=only-video").text.startswith("video"):
                break
        else:
            pytest.skip("the policy never chose 'video'")
    assert text == ""
    assert len([r for r in caplog.records if "no {% variant %} block" in r.getMessage()]) == 1


def test_script_tag(engine: Engine, loop_name: str, client_for: Client) -> None:
    text = client_for(template_app(engine, prefix="/p/", honor_gpc=True)).get(
        f"/script.html?loop={loop_name}").text
    plain, with_nonce, alone, alone_with_nonce = text.split("\n")
    # The inline stub first (ef.convert before ef.js has loaded queues), then ef.js.
    stub = f"<script>{SCRIPT_STUB}</script>"
    assert plain.startswith(stub + '<script src="/p/ef.js?v=') and plain.endswith(
        ' data-endpoint="/p/" data-gpc="true" defer></script>')
    assert plain.count("<script") == 2
    assert with_nonce.startswith(f'<script nonce="abc&#34;">{SCRIPT_STUB}</script><script src=')
    assert with_nonce.count('nonce="abc&#34;"') == 2  # on both tags (a CSP with a nonce)
    assert alone == plain.removeprefix(stub)  # stub=False: the src tag alone
    assert alone_with_nonce.startswith('<script src="/p/ef.js?v=')
    assert alone_with_nonce.count("<script") == 1 and 'nonce="n1"' in alone_with_nonce


def test_script_tag_names_the_sites_cookie_domain(engine: Engine, loop_name: str,
                                                  client_for: Client) -> None:
    """ef.js writes the time zone cookie for the domain the middleware's cookies use, so a
    visitor's zone reaches every subdomain that shares the decision cookie."""
    text = client_for(template_app(engine, cookie_domain=".example.com")).get(
        f"/script.html?loop={loop_name}").text
    assert 'data-cookie-domain=".example.com"' in text.split("\n")[0]
    text = client_for(template_app(engine)).get(f"/script.html?loop={loop_name}").text
    assert "data-cookie-domain" not in text


def test_block_without_middleware_renders_the_first_block() -> None:
    env = jinja2.Environment(extensions=[PersonalizeExtension])
    template = env.from_string('{% personalize "x" %}{% variant "a" %}A{% endvariant %}'
                               '{% variant "b" %}B{% endvariant %}{% endpersonalize %}')
    assert template.render() == "A"


@pytest.mark.parametrize("source", [
    '{% personalize "x" %}text{% variant "a" %}A{% endvariant %}{% endpersonalize %}',
    '{% personalize "x" %}{% variant "a" %}A{% endvariant %}{{ y }}{% endpersonalize %}',
    '{% personalize "x" %}{% endpersonalize %}',
    '{% personalize "x" %}{% variant "a" %}A{% endpersonalize %}',
])
def test_block_syntax_errors(source: str) -> None:
    env = jinja2.Environment(extensions=[PersonalizeExtension])
    with pytest.raises(jinja2.TemplateSyntaxError):
        env.from_string(source)


def test_a_block_in_a_macro_imported_with_context_shows_the_chosen_variant(
        engine: Engine, loop_name: str, client_for: Client,
        caplog: pytest.LogCaptureFixture) -> None:
    """``{% import ... with context %}``: the macro's block finds the request's
    personalization. Without context (Jinja's default) it cannot: it shows its first variant
    and says so once, in one line (a review of 2026-12-05 found it silent while the page's
    own ``ef.variant`` logged another variant, whose rewards then went to one never shown)."""
    from ef_middleware.web import templating

    app = template_app(engine)
    seen = set()
    for _ in range(12):  # fresh visitors: the chosen variants differ
        text = client_for(app).get(f"/macro_ctx.html?loop={loop_name}").text
        block, chosen = text.rsplit("|", 1)
        assert f"<h1>{LETTER[chosen]}" in block
        assert sum(f"<h1>{letter}" in block for letter in LETTER.values()) == 1
        seen.add(chosen)
    assert len(seen) > 1
    templating._told.clear()
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        for _ in range(3):
            block = client_for(app).get(f"/macro.html?loop={loop_name}").text.rsplit("|")[0]
            assert "<h1>M" in block
    told = [r for r in caplog.records if "found no personalization" in r.getMessage()]
    assert len(told) == 1 and "with context" in told[0].getMessage()


def test_an_error_page_rendered_outside_the_middleware_shows_default_variants(
        engine: Engine, loop_name: str) -> None:
    """A 500 page is rendered by Starlette's ServerErrorMiddleware, outside every other
    middleware: ``ef_context`` raised there and the page came out empty (a review of
    2026-12-05). It now gets each loop's default variant and no script."""
    templates = setup_templates(Jinja2Templates(env=jinja2.Environment(
        loader=jinja2.DictLoader({"error.html": "Sorry|{{ ef.variant(loop) }}|"
                                                "{{ ef.script() }}|" + BLOCK}),
        autoescape=True)))

    async def broken(request: Request) -> Response:
        request.scope["ef"].variant(loop_name)
        raise RuntimeError("the host's bug")

    async def error_page(request: Request, exc: Exception) -> Response:
        return templates.TemplateResponse(request, "error.html", {"loop": loop_name},
                                          status_code=500)

    app = Starlette(routes=[Route("/", broken)], exception_handlers={500: error_page})
    app.add_middleware(PersonalizationMiddleware, engine=engine, secret_key=SECRET)
    response = TestClient(app, raise_server_exceptions=False).get("/")
    assert response.status_code == 500
    assert response.text.startswith("Sorry|minimal||<main>") and "<h1>M " in response.text


def test_setup_templates_is_idempotent_and_needs_the_middleware() -> None:
    templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES)))
    assert setup_templates(setup_templates(templates)) is templates
    assert len(templates.context_processors) == 1

    async def page(request: Request) -> Response:
        return templates.TemplateResponse(request, "inline.html", {"loop": "x"})

    with pytest.raises(ConfigurationError, match="not installed"):
        TestClient(Starlette(routes=[Route("/", page)])).get("/")
