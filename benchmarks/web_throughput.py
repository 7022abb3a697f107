"""Web throughput and latency: the example page with and without PersonalizationMiddleware, and
the reward route, measured in the same run.

Each app runs under uvicorn (one worker) in a fresh subprocess per measurement, on a loopback
port. Modes:

- ``bare``: the example page with the default variant and no middleware;
- ``new visitor``: the personalized page, no cookies: every request ranks, logs and signs;
- ``sticky visitor``: the personalized page with a valid decision cookie (no ranking);
- ``reward``: ``POST /_ef/reward``, each with a decision cookie of its own (204 expected).

Every mode is measured twice. **Saturated**: as many requests as the server answers (``wrk``
with ``--connections`` connections when installed, else the Python client below), giving
requests per second. **Fixed rate**: an open-loop client sends ``--page-rate`` (pages) or
``--reward-rate`` (rewards) requests per second whatever the answers' pace and times each
request from its *scheduled* send time, so queueing behind a stall counts (a closed-loop tool
such as wrk hides it); that is where the p50/p99 latencies come from. The bare, new-visitor and
sticky pages of one round run back to back (order alternating between rounds), and each
round's ratio to bare is taken within the round, because this machine is shared and its speed
drifts. Medians over rounds are reported, with each round's numbers in the JSON.

Usage: ``scripts/bench web-throughput [--rounds 3] [--quick] [...]`` (``--help`` for all).
Targets: personalized (new visitor) >= 80% of bare requests per second; reward p99 < 2 ms at
the fixed rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from benchmarks.http_load import LoadResult, closed_loop, open_loop, request_bytes
from ef_middleware.web import PersonalizeExtension, Variant
from examples.fastapi_site.content import HERO, TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0.0.0 Safari/537.36")
LOOP = "homepage-hero"
PAGE_MODES = ("bare", "new visitor", "sticky visitor")


def _server_tuning() -> None:
    """Apply ``--switch-interval`` (passed through the environment) in the server process."""
    interval = os.environ.get("EF_BENCH_SWITCH_INTERVAL")
    if interval:
        sys.setswitchinterval(float(interval))


def bare_app() -> FastAPI:
    """The example page without the middleware: the default variant, same template."""
    _server_tuning()

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
    _server_tuning()
    from examples.fastapi_site.app import create_app

    return create_app()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(factory: str, env: dict[str, str]) -> Iterator[int]:
    """Run ``benchmarks.web_throughput:<factory>`` under uvicorn; yields its port once the
    lifespan startup is done and ``/`` answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", f"benchmarks.web_throughput:{factory}",
         "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level",
         "warning"], cwd=ROOT, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error",
                                    "HF_HUB_DISABLE_PROGRESS_BARS": "1", **env})
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{factory}: uvicorn exited with {proc.returncode}")
            try:
                url = f"http://127.0.0.1:{port}/"
                if httpx.get(url, headers={"user-agent": UA}, timeout=5).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{factory}: the server did not start")
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wrk(port: int, duration: float, connections: int,
         headers: dict[str, str]) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         check=True).stdout
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


def _page_request(port: int, headers: dict[str, str]) -> bytes:
    return request_bytes("GET", "/", {"host": f"127.0.0.1:{port}", "user-agent": UA, **headers})


def page_run(port: int, args: argparse.Namespace, headers: dict[str, str]) -> dict[str, Any]:
    """Saturated throughput, then latency at the fixed page rate, on one server."""
    request = _page_request(port, headers)
    if args.tool == "wrk":
        _wrk(port, 2, args.connections, {"user-agent": UA, **headers})  # warm-up
        saturated = _wrk(port, args.duration, args.connections, {"user-agent": UA, **headers})
    else:
        closed_loop("127.0.0.1", port, [request], connections=args.connections, duration=2)
        saturated = closed_loop("127.0.0.1", port, [request], connections=args.connections,
                                duration=args.duration).summary()
    fixed = open_loop("127.0.0.1", port, [request], rate=args.page_rate,
                      duration=args.fixed_duration).summary()
    return {"saturated": saturated, "fixed": fixed}


def _check_decisions(port: int, run: dict[str, Any]) -> None:
    """Refuse a new-visitor run that did not rank: the middleware serves default variants
    when ranking fails (one log line each), and that page is not the one to measure."""
    stats = httpx.get(f"http://127.0.0.1:{port}/_ef/status").json()["loops"][LOOP]
    run["decisions"] = stats["decisions"]
    sent = run["saturated"]["requests"] + run["fixed"]["requests"]
    if stats["decisions"] < sent:
        raise RuntimeError(f"new visitor: {stats['decisions']} decisions for {sent:.0f} requests:"
                           " ranking failed and default variants were served (see the log)")


def _decisions(port: int, count: int) -> list[str]:
    """``count`` fresh decisions (one new visitor each): their ``ef_d=...`` cookies."""
    hero = request_bytes("GET", "/api/hero", {"host": f"127.0.0.1:{port}", "user-agent": UA})
    result = closed_loop("127.0.0.1", port, [hero], connections=4, count=count,
                         keep_headers=True)
    cookies = []
    for response in result.responses:
        for value in response.header_values("set-cookie"):
            if value.startswith("ef_d="):
                cookies.append(value.split(";", 1)[0])
    if len(cookies) != count:
        raise RuntimeError(f"asked for {count} decisions, got {len(cookies)}")
    return cookies


def _reward_requests(port: int, cookies: list[str]) -> list[bytes]:
    host = f"127.0.0.1:{port}"
    body = json.dumps({"loop": LOOP}).encode()
    return [request_bytes("POST", "/_ef/reward", {
        "host": host, "user-agent": UA, "cookie": cookie, "content-type": "application/json",
        "origin": f"http://{host}"}, body) for cookie in cookies]


def reward_run(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Rewards at the fixed rate, then saturated (``--reward-connections`` clients, closed
    loop), each request with a decision of its own; decisions are made first and the learner
    is given ``--reward-pause`` seconds to persist them."""
    fixed_cookies = _decisions(port, round(args.reward_rate * args.fixed_duration))
    saturated_cookies = _decisions(port, args.rewards)
    time.sleep(args.reward_pause)
    fixed = open_loop("127.0.0.1", port, _reward_requests(port, fixed_cookies),
                      rate=args.reward_rate, duration=args.fixed_duration)
    saturated: LoadResult = closed_loop(
        "127.0.0.1", port, _reward_requests(port, saturated_cookies),
        connections=args.reward_connections, count=len(saturated_cookies))
    stats = httpx.get(f"http://127.0.0.1:{port}/_ef/status").json()["loops"][LOOP]
    return {"fixed": fixed.summary(), "saturated": saturated.summary(),
            "stored_rewards": stats["rewards"],
            "posted": fixed.requests + saturated.requests}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Medians over rounds; ``share`` is the median of each round's ratio to that round's
    bare page."""
    out: dict[str, dict[str, float]] = {}
    for mode in (*PAGE_MODES, "reward"):
        runs = [r[mode] for r in rounds if mode in r]
        if not runs:
            continue
        row = {"rps": _median([x["saturated"]["rps"] for x in runs]),
               "sat_p50": _median([x["saturated"]["p50"] for x in runs]),
               "sat_p99": _median([x["saturated"]["p99"] for x in runs]),
               "fixed_p50": _median([x["fixed"]["p50"] for x in runs]),
               "fixed_p99": _median([x["fixed"]["p99"] for x in runs]),
               "fixed_p99_worst": max(x["fixed"]["p99"] for x in runs),
               "non_2xx": sum(x["saturated"]["non_2xx"] + x["fixed"]["non_2xx"] for x in runs)}
        if mode in PAGE_MODES:
            row["share"] = _median([r[mode]["saturated"]["rps"] / r["bare"]["saturated"]["rps"]
                                    for r in rounds])
        out[mode] = row
    return out


def print_report(summary: dict[str, dict[str, float]], args: argparse.Namespace) -> bool:
    print(f"tool={args.tool} rounds={args.rounds} saturated: {args.connections} connections "
          f"x {args.duration:g}s (rewards: {args.reward_connections} connections x "
          f"{args.rewards}); fixed rate: pages {args.page_rate:g}/s, rewards "
          f"{args.reward_rate:g}/s, {args.fixed_duration:g}s; cores={os.cpu_count()}; "
          f"switch interval={args.switch_interval or 'default'}")
    print()
    print("| mode | req/s (saturated) | % of bare | p50 / p99 ms at fixed rate | "
          "worst round p99 | p50 / p99 ms saturated | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, s in summary.items():
        share = f"{100 * s['share']:.0f}%" if "share" in s else "-"
        rate = args.reward_rate if mode == "reward" else args.page_rate
        print(f"| {mode} | {s['rps']:.0f} | {share} | {s['fixed_p50']:.2f} / "
              f"{s['fixed_p99']:.2f} (at {rate:g}/s) | {s['fixed_p99_worst']:.2f} | "
              f"{s['sat_p50']:.1f} / {s['sat_p99']:.1f} | {s['non_2xx']:.0f} |")
    page_ok = summary["new visitor"]["share"] >= 0.8
    reward_ok = "reward" in summary and summary["reward"]["fixed_p99"] < 2.0
    print()
    print(f"new visitor >= 80% of bare: {'yes' if page_ok else 'NO'}; "
          f"reward p99 < 2 ms at {args.reward_rate:g}/s: {'yes' if reward_ok else 'NO'}")
    return page_ok and reward_ok


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.web_throughput",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every mode, interleaved")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of saturated load")
    p.add_argument("--connections", type=int, default=32, help="saturated page connections")
    p.add_argument("--page-rate", type=float, default=200.0, help="fixed page rate (req/s)")
    p.add_argument("--reward-rate", type=float, default=200.0, help="fixed reward rate")
    p.add_argument("--fixed-duration", type=float, default=6.0, help="seconds at fixed rate")
    p.add_argument("--rewards", type=int, default=3000, help="rewards posted saturated")
    p.add_argument("--reward-connections", type=int, default=8, help="saturated reward clients")
    p.add_argument("--reward-pause", type=float, default=3.0,
                   help="seconds between making the decisions and rewarding them")
    p.add_argument("--no-rewards", action="store_true", help="pages only")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="sys.setswitchinterval in both servers (default: Python's 0.005)")
    p.add_argument("--tool", choices=("wrk", "python"), default="wrk" if shutil.which("wrk")
                   else "python", help="saturating load generator (default: wrk if installed)")
    p.add_argument("--quick", action="store_true",
                   help="1 round, 4 s saturated, 3 s fixed, 1000 rewards")
    p.add_argument("--json", type=Path, default=None,
                   help="default: benchmarks/results/web-throughput[-quick].json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.fixed_duration, args.rewards = 1, 4.0, 3.0, 1000
    if args.tool == "python":
        print("wrk is not installed (scripts/bench-setup installs it): saturating with the "
              "Python client, which competes with the server for the CPU", file=sys.stderr)
    tuning = {} if args.switch_interval is None else {
        "EF_BENCH_SWITCH_INTERVAL": str(args.switch_interval)}
    rounds: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for index in range(args.rounds):
            env = {"EF_SECRET_KEY": "bench-secret", "EF_REWARD_WAIT": "600",
                   "EF_DEMO_PANEL": "0", **tuning}
            result: dict[str, Any] = {"loadavg_before": os.getloadavg()[0]}
            order = PAGE_MODES if index % 2 == 0 else tuple(reversed(PAGE_MODES))
            for mode in order:
                # A fresh server (and store) per measurement: none inherits another's backlog.
                env["EF_STORE"] = str(work / f"store-{index}-{mode.split()[0]}")
                if mode == "bare":
                    with serve("bare_app", tuning) as port:
                        result[mode] = page_run(port, args, {})
                    continue
                with serve("personalized_app", env) as port:
                    headers: dict[str, str] = {}
                    if mode == "sticky visitor":
                        with httpx.Client(headers={"user-agent": UA}) as client:
                            client.get(f"http://127.0.0.1:{port}/").raise_for_status()
                            headers = {"cookie": f"ef_d={client.cookies['ef_d']}; "
                                                 f"ef_v={client.cookies['ef_v']}"}
                    result[mode] = page_run(port, args, headers)
                    if mode == "new visitor":
                        _check_decisions(port, result[mode])
            if not args.no_rewards:
                env["EF_STORE"] = str(work / f"store-{index}-rewards")
                with serve("personalized_app", env) as port:
                    result["reward"] = reward_run(port, args)
            rounds.append(result)
            shares = ", ".join(f"{m} {result[m]['saturated']['rps']:.0f}/s" for m in PAGE_MODES)
            print(f"round {index + 1}/{args.rounds} (load average {result['loadavg_before']:.1f}"
                  f" before): {shares}", file=sys.stderr, flush=True)
    summary = summarise(rounds)
    met = print_report(summary, args)
    if "reward" in summary:
        posted = sum(r["reward"]["posted"] for r in rounds)
        stored = sum(r["reward"]["stored_rewards"] for r in rounds)
        print(f"rewards stored by the engines: {stored} of {posted} posted")
    path = args.json or ROOT / "benchmarks" / "results" / (
        "web-throughput-quick.json" if args.quick else "web-throughput.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "command": "scripts/bench web-throughput " + " ".join(argv or sys.argv[1:]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"python": platform.python_version(), "cores": os.cpu_count(),
                        "platform": platform.platform()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "targets_met": met, "summary": summary, "rounds": rounds}, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
