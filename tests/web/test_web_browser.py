"""End to end in a real browser: the example site under uvicorn, Debian's chromium, playwright.

Setup: ``scripts/browser-setup`` (as root: apt-get install chromium; pip install playwright).
Without them the test is skipped, unless ``EF_REQUIRE_BROWSER=1`` makes that a failure (CI).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOP = "homepage-hero"
DESKTOP_CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/131.0.0.0 Safari/537.36")

pytestmark = pytest.mark.slow


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("EF_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (EF_REQUIRE_BROWSER=1)")
    pytest.skip(reason + "; run scripts/browser-setup")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The example FastAPI site under uvicorn on a free loopback port (a subprocess)."""
    port = _free_port()
    env = {**os.environ, "EF_STORE": str(tmp_path / "store"), "EF_SECRET_KEY": "e2e-secret",
           "EF_REWARD_WAIT": "30"}
    log = (tmp_path / "uvicorn.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_site.app:app", "--host",
         "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "uvicorn.log").read_text()
            try:
                if httpx.get(base + "/_ef/status", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the example site did not start"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert "Application shutdown complete" in (tmp_path / "uvicorn.log").read_text()


def _status(base: str) -> dict[str, Any]:
    loops: dict[str, Any] = httpx.get(base + "/_ef/status", timeout=5).json()["loops"]
    return dict(loops[LOOP])


def _wait_for(base: str, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = _status(base)
        if check(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_click_on_the_cta_is_learned(server: str) -> None:
    _require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "the playwright package is missing")
        return

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            # Headless Chromium names itself HeadlessChrome, which the middleware counts as a
            # bot (scrapers and pre-renderers use it): this visitor shows a desktop browser's.
            context = browser.new_context(timezone_id="Asia/Tokyo", locale="fr-FR",
                                          user_agent=DESKTOP_CHROME)
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server + "/")
            page.wait_for_function("window.ef && window.ef.loaded === true")
            shown = page.get_attribute("#hero", "data-ef-variant")
            assert shown in {"minimal", "detailed", "video", "testimonial"}
            cookies = {c["name"]: c for c in context.cookies()}
            assert cookies["ef_tz"]["value"] == "Asia/Tokyo"  # reported by ef.js
            assert cookies["ef_tz"]["sameSite"] == "Lax"
            assert cookies["ef_d"]["httpOnly"] and cookies["ef_d"]["sameSite"] == "Lax"
            assert page.evaluate("document.cookie").find("ef_d=") < 0  # HttpOnly

            # The next request knows the visitor's local time; the variant is sticky.
            api = page.evaluate("fetch('/api/hero').then((r) => r.json())")
            tokyo = dt.datetime.now(ZoneInfo("Asia/Tokyo"))
            hour = tokyo.hour + tokyo.minute / 60
            gap = abs(api["context"]["hour"] - hour)
            assert min(gap, 24 - gap) < 0.1
            assert api["context"]["language"] == "fr"
            assert (api["id"], api["sticky"]) == (shown, True)
            assert _status(server)["decisions"] == 1

            page.click("#cta")  # data-ef-convert: ef.js posts the reward with keepalive
            page.wait_for_url(server + "/signup")
            status = _wait_for(server, lambda s: s["rewards"] >= 1 and s["learned"] >= 1)
            assert status["rewards"] == 1
            assert status["learned"] >= 1  # in the trainer: buffer, posterior, step budget

            # A second click on the same decision is refused (once per event), not learned.
            page.goto(server + "/")
            assert page.get_attribute("#hero", "data-ef-variant") == shown
            page.click("#cta")
            page.wait_for_url(server + "/signup")
            time.sleep(1.0)
            assert _status(server)["rewards"] == 1
        finally:
            browser.close()
    assert errors == []
