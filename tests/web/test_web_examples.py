"""The example sites and the traffic generator, in process (TestClient)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from starlette.testclient import TestClient
from web_helpers import IPHONE

from ef_middleware import Engine, commands
from ef_middleware.web import traffic
from examples.fastapi_site.app import create_app
from examples.fastapi_site.content import HERO, LOOP


@pytest.fixture
def site(new_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("EF_SECRET_KEY", "example-secret")
    return TestClient(create_app(new_engine()), headers={"user-agent": IPHONE})


def test_fastapi_example_page(site: TestClient) -> None:
    page = site.get("/")
    assert page.status_code == 200
    variant = traffic._shown_variant(page.text)
    assert variant in {a["id"] for a in HERO}
    cta = next(a["features"]["cta"] for a in HERO if a["id"] == variant)
    assert f'data-ef-convert="{LOOP}">{cta}</a>' in page.text
    assert '<script src="/_ef/ef.js?v=' in page.text and 'data-gpc="true"' in page.text
    api = site.get("/api/hero").json()
    assert api["id"] == variant and api["sticky"] is True and api["context"]["device"] == "mobile"
    assert site.get("/signup").status_code == 200
    reward = site.post("/_ef/reward", json={"loop": LOOP},
                       headers={"origin": "http://testserver"})
    assert reward.status_code == 204
    status = site.get("/_ef/status").json()["loops"][LOOP]
    assert (status["decisions"], status["rewards"]) == (1, 1)


def test_the_example_behind_a_proxy_takes_its_public_origins(
        new_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy that sends the upstream's Host: rewards from the public origin are refused
    unless EF_TRUSTED_ORIGINS names it."""
    monkeypatch.setenv("EF_SECRET_KEY", "example-secret")
    public = {"origin": "https://www.shop.example"}
    for trusted, status in (("", 403), ("https://shop.example https://www.shop.example", 204)):
        monkeypatch.setenv("EF_TRUSTED_ORIGINS", trusted)
        client = TestClient(create_app(new_engine()), headers={"user-agent": IPHONE},
                            base_url="http://127.0.0.1:8000")
        client.get("/")
        assert client.post("/_ef/reward", json={"loop": LOOP}, headers=public).status_code == status


def test_starlette_example(new_engine: Callable[..., Engine]) -> None:
    from examples.starlette_site import create_app as create_starlette_app

    client = TestClient(create_starlette_app(new_engine()), headers={"user-agent": IPHONE})
    page = client.get("/")
    group = traffic._shown_variant(page.text)
    assert group in {"monthly", "annual"}
    assert 'data-ef-convert="pricing-cta"' in page.text
    assert f"<b>{group}</b>" in client.get("/group").text  # A/B: sticky per visitor
    assert client.post("/subscribe", follow_redirects=False).status_code == 303


def test_traffic_generator_converts_through_the_reward_route(site: TestClient) -> None:
    out = io.StringIO()
    # Starlette's TestClient is an httpx2 client: the same API, another class.
    result = traffic.simulate(cast("httpx.Client", site), 60, seed=3, report_every=30, out=out)
    assert result["visitors"] == 60 and sum(result["shown"].values()) == 60
    assert "?" not in result["shown"]
    assert result["conversions"] > 0
    assert len(result["windows"]) == 2 and "favourite shown" in out.getvalue()
    status = site.get("/_ef/status").json()["loops"][LOOP]
    assert status["rewards"] == result["conversions"]
    assert status["decisions"] >= 60
    assert result["reward_answers"] == {204: result["conversions"]}
    assert result["interrupted"] is False


def test_traffic_generator_counts_the_rewards_the_route_refuses(site: TestClient) -> None:
    """A misspelt loop: every reward is answered 404, which the generator reported as plain
    non-conversions (a review of 2026-12-05); it now counts the answers."""
    result = traffic.simulate(cast("httpx.Client", site), 40, seed=3, loop="hero-typo",
                              out=io.StringIO())
    assert result["conversions"] == 0
    assert set(result["reward_answers"]) == {404} and result["reward_answers"][404] > 0


def test_traffic_generator_stops_on_ctrl_c_with_the_totals_so_far(
        site: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C printed a traceback and no totals (a review of 2026-12-05)."""
    real_visit = traffic.visit
    calls = 0

    def visit(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 15:
            raise KeyboardInterrupt
        return real_visit(*args, **kwargs)

    monkeypatch.setattr(traffic, "visit", visit)
    result = traffic.simulate(cast("httpx.Client", site), 40, seed=3, out=io.StringIO())
    assert result["interrupted"] is True and result["visitors"] == 14
    assert sum(result["shown"].values()) == 14


def test_the_traffic_generator_is_a_command_of_the_package() -> None:
    """``ef-traffic`` (``[project.scripts]``) runs :func:`traffic.main`, with httpx from the
    ``web`` extra; installed where this interpreter's scripts go."""
    from importlib.metadata import entry_points, requires

    (command,) = entry_points(group="console_scripts", name="ef-traffic")
    assert command.load() is commands.traffic
    assert any(r.startswith("httpx") and r.replace("'", '"').endswith('extra == "web"')
               for r in requires("ef-middleware") or [])
    script = Path(sysconfig.get_path("scripts")) / "ef-traffic"
    found = str(script) if script.exists() else shutil.which("ef-traffic")
    assert found is not None, "ef-traffic is not installed"
    done = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.startswith("usage: ef-traffic") and "--visitors" in done.stdout


def test_the_traffic_command_names_the_extra_it_needs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without the web extra (its import fails), one line says what to install."""
    monkeypatch.setitem(sys.modules, "ef_middleware.web.traffic", None)  # import -> ImportError
    assert commands.traffic(["--visitors", "1"]) == 2
    assert "pip install 'ef-middleware[web]'" in capsys.readouterr().err


def test_visitor_model() -> None:
    mobile = traffic.Visitor("mobile", "direct", False, "UTC", "en")
    regular = traffic.Visitor("mobile", "direct", True, "UTC", "en")
    assert traffic.conversion_rate(mobile, "video") > traffic.conversion_rate(mobile, "minimal")
    assert regular.favourite == "testimonial" and regular.segment == "returning"


def test_traffic_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        traffic.main(["--visitors", "0"])
    assert "--visitors" in capsys.readouterr().err
