"""Web throughput: the example page with and without PersonalizationMiddleware, and the reward
route, measured in the same run.

Each app runs under uvicorn in a subprocess on a loopback port; load comes from ``wrk`` (Debian's
package) when installed, else from an httpx async client. Modes:

- ``bare``: the example page with the default variant and no middleware;
- ``new visitor``: the personalized page, no cookies: every request ranks, logs and signs;
- ``sticky visitor``: the personalized page with a valid decision cookie (no ranking);
- ``reward``: ``POST /_ef/reward`` with a fresh decision cookie per request (204 expected;
  a non-2xx count means the pool of decisions ran out and cookies repeated).

Usage: ``python -m benchmarks.web_throughput [--duration 10] [--connections 32] [--rounds 2]``.
The target is personalized (new visitor) >= 80% of bare requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from ef_middleware.web import PersonalizeExtension, Variant
from examples.fastapi_site.content import HERO, TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0.0.0 Safari/537.36")
LOOP = "homepage-hero"


def bare_app() -> FastAPI:
    """The example page without the middleware: the default variant, same template."""
    class DefaultOnly:
        context: dict[str, Any] = {}  # noqa: RUF012

        def __init__(self) -> None:
            self.hero = Variant(LOOP, HERO[0]["id"], HERO[0]["features"], default=True)

        def variant(self, loop: str) -> Variant:
            return self.hero

        def script(self) -> Markup:
            return Markup('<script src="/_ef/ef.js" data-endpoint="/_ef/" defer></script>')

    ef = DefaultOnly()
    templates = Jinja2Templates(directory=TEMPLATES, context_processors=[lambda r: {"ef": ef}])
    templates.env.add_extension(PersonalizeExtension)
    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "index.html", {"loop": LOOP})

    return app


def personalized_app() -> FastAPI:
    """The example FastAPI site (store: ``EF_STORE``)."""
    from examples.fastapi_site.app import create_app

    return create_app()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(factory: str, env: dict[str, str]) -> Iterator[str]:
    """Run ``benchmarks.web_throughput:<factory>`` under uvicorn; yields its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", f"benchmarks.web_throughput:{factory}",
         "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level",
         "warning"], cwd=ROOT, env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{factory}: uvicorn exited with {proc.returncode}")
            try:
                if httpx.get(base + "/", headers={"user-agent": UA}, timeout=5).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{factory}: the server did not start")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wrk(url: str, duration: float, connections: int, headers: dict[str, str],
         script: Path | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = {"non_2xx": 0.0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(parts[1])
        elif parts[:1] in (["50%"], ["99%"]):
            result["p" + parts[0].rstrip("%")] = _ms(parts[1])
        elif line.strip().startswith("Non-2xx"):
            result["non_2xx"] = float(parts[-1])
        elif "requests in" in line:
            result["requests"] = float(parts[0])
    return result


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


async def _httpx_load(url: str, duration: float, connections: int,
                      requests: list[dict[str, Any]] | None,
                      headers: dict[str, str]) -> dict[str, float]:
    """Fallback load generator: ``connections`` workers; GETs for ``duration`` seconds, or
    the given requests (method, url, headers, content) once each."""
    latencies: list[float] = []
    bad = 0
    stop = time.perf_counter() + duration
    queue = iter(requests or [])
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        async def worker() -> None:
            nonlocal bad
            while True:
                if requests is None:
                    if time.perf_counter() > stop:
                        return
                    req: dict[str, Any] = {"method": "GET", "url": url}
                else:
                    req = next(queue, {})
                    if not req:
                        return
                began = time.perf_counter()
                response = await client.request(**req)
                latencies.append(time.perf_counter() - began)
                bad += not response.is_success

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "requests": float(len(latencies)),
            "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000, "non_2xx": float(bad)}


def page_load(url: str, args: argparse.Namespace, headers: dict[str, str]) -> dict[str, float]:
    headers = {"user-agent": UA, **headers}
    if args.tool == "wrk":
        _wrk(url, 2, args.connections, headers)  # warm-up
        return _wrk(url, args.duration, args.connections, headers)
    asyncio.run(_httpx_load(url, 2, args.connections, None, headers))
    return asyncio.run(_httpx_load(url, args.duration, args.connections, None, headers))


REWARD_LUA = """
local cookies, i = {}, 0
for line in io.lines("%s") do cookies[#cookies + 1] = line end
request = function()
  i = i + 1  -- one decision per request; past the end they repeat and answer 409 (non-2xx)
  return wrk.format("POST", "/_ef/reward", {["Cookie"] = cookies[(i - 1) %% #cookies + 1],
    ["Content-Type"] = "application/json", ["Origin"] = "%s"}, '{"loop": "%s"}')
end
"""


def reward_load(base: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Make ``args.rewards`` decisions (one visitor each), then post one reward for each: with
    wrk for ``args.reward_duration`` seconds (fewer than ``args.rewards`` requests, else the
    repeats show as non-2xx), or with httpx once per decision."""
    cookies: list[str] = []
    with httpx.Client(base_url=base, headers={"user-agent": UA}) as client:
        for _ in range(args.rewards):
            client.cookies.clear()
            client.get("/api/hero").raise_for_status()
            cookies.append(f"ef_d={client.cookies['ef_d']}")
    time.sleep(args.reward_pause)  # let the learner persist the burst of decisions made above
    if args.tool == "wrk":
        (work / "cookies.txt").write_text("\n".join(cookies) + "\n")
        script = work / "reward.lua"
        script.write_text(REWARD_LUA % (work / "cookies.txt", base, LOOP))
        result = _wrk(base + "/_ef/reward", args.reward_duration, args.reward_connections,
                      {"user-agent": UA}, script)
    else:
        requests = [{"method": "POST", "url": base + "/_ef/reward", "content": json.dumps(
            {"loop": LOOP}), "headers": {"cookie": c, "content-type": "application/json",
                                         "origin": base}} for c in cookies]
        result = asyncio.run(_httpx_load("", 0, args.reward_connections, requests, {}))
    stats = httpx.get(base + "/_ef/status").json()["loops"][LOOP]
    result["stored_rewards"] = float(stats["rewards"])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.web_throughput", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--connections", type=int, default=32, help="concurrent connections")
    p.add_argument("--rounds", type=int, default=2, help="alternating bare/personalized rounds")
    p.add_argument("--rewards", type=int, default=6000, help="decisions made for the rewards")
    p.add_argument("--reward-duration", type=float, default=4.0, help="seconds of wrk rewards")
    p.add_argument("--reward-connections", type=int, default=8, help="connections posting")
    p.add_argument("--reward-pause", type=float, default=5.0,
                   help="seconds between making the decisions and rewarding them")
    p.add_argument("--tool", choices=("wrk", "httpx"), default="wrk" if shutil.which("wrk")
                   else "httpx", help="load generator (default: wrk when installed)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "new visitor": [],
                                               "sticky visitor": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {"EF_STORE": str(work / "store"), "EF_SECRET_KEY": "bench-secret",
               "EF_REWARD_WAIT": "600", "EF_DEMO_PANEL": "0"}
        # Every measurement gets a fresh server process, so none inherits another's backlog
        # (e.g. the decisions the learner still has to persist after the new-visitor run).
        for round_ in range(args.rounds):
            env["EF_STORE"] = str(work / f"store{round_}")
            with serve("bare_app", {}) as bare:
                runs["bare"].append(page_load(bare + "/", args, {}))
            with serve("personalized_app", env) as personalized:
                runs["new visitor"].append(page_load(personalized + "/", args, {}))
            with serve("personalized_app", env) as personalized:
                with httpx.Client(headers={"user-agent": UA}) as client:
                    client.get(personalized + "/").raise_for_status()
                    sticky = {"cookie": f"ef_d={client.cookies['ef_d']}; "
                                        f"ef_v={client.cookies['ef_v']}"}
                runs["sticky visitor"].append(page_load(personalized + "/", args, sticky))
        env["EF_STORE"] = str(work / "store-rewards")
        with serve("personalized_app", env) as personalized:
            reward = reward_load(personalized, args, work)
    summary = {mode: {"rps": statistics.median(r["rps"] for r in rs),
                      "p50_ms": statistics.median(r["p50"] for r in rs),
                      "p99_ms": statistics.median(r["p99"] for r in rs),
                      "non_2xx": sum(r["non_2xx"] for r in rs)} for mode, rs in runs.items()}
    summary["reward"] = {"rps": reward["rps"], "p50_ms": reward["p50"], "p99_ms": reward["p99"],
                         "non_2xx": reward["non_2xx"], "requests": reward["requests"],
                         "stored_rewards": reward["stored_rewards"]}
    bare_rps = summary["bare"]["rps"]
    print(f"tool={args.tool} connections={args.connections} duration={args.duration}s "
          f"rounds={args.rounds} reward connections={args.reward_connections} "
          f"cores={os.cpu_count()}")
    print(f"{'mode':<16}{'req/s':>10}{'% of bare':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for mode, s in summary.items():
        share = f"{100 * s['rps'] / bare_rps:.0f}%" if mode != "reward" else "-"
        print(f"{mode:<16}{s['rps']:>10.0f}{share:>11}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}"
              f"{s['non_2xx']:>9.0f}")
    print(f"rewards stored by the engine: {reward['stored_rewards']:.0f} of "
          f"{reward['requests']:.0f} posted")
    target = summary["new visitor"]["rps"] >= 0.8 * bare_rps
    print(f"personalized (new visitor) >= 80% of bare: {'yes' if target else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
