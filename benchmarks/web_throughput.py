"""Web throughput and latency: the example page with and without PersonalizationMiddleware, and
the reward route, measured in the same run.

Each app runs under uvicorn (one worker) in a subprocess on a loopback port. The example's loop
first learns from ``--train-visitors`` simulated visitors, and every personalized server starts
from a copy of that store, so pages are ranked by a trained model. Modes:

- ``bare``: the example page with the default variant and no middleware;
- ``new visitor``: the personalized page, no cookies: every request ranks, logs and signs;
- ``new visitors, mixed``: the same, cycling through simulated visitors' first views (devices,
  referrers, campaigns, time zones, languages), so contexts vary;
- ``sticky visitor``: the personalized page with a valid decision cookie (no ranking);
- ``reward``: ``POST /_ef/reward``, each with a decision cookie of its own (204 expected),
  beside its peer: the same requests at the same rate to a no-op ``POST`` route of the bare
  app (the host's and the web stack's own latency, in the same run).

Pages: all servers are up at once, and each round sends one saturated burst (``wrk`` with
``--connections`` connections when installed, else the Python client below) to each, in a
rotating order; a round's ratios to bare are taken within it, because this machine is shared and
its speed drifts. Then one **fixed-rate** run per page: an open-loop client sends ``--page-rate``
requests per second whatever the answers' pace and times each request from its *scheduled* send
time, so queueing behind a stall counts (a closed-loop tool such as wrk hides it). Rewards: per
round a fresh server, ``--reward-rate`` rewards per second (open loop), then ``--rewards`` from
``--reward-connections`` closed-loop clients. :class:`ServerTimer` also times every request
inside the server. Medians over rounds are reported, with each round's numbers in the JSON.

Usage: ``scripts/bench web-throughput [--rounds 5] [--quick] [...]`` (``--help`` for all).
Targets: personalized (new visitor) >= 80% of bare requests per second; reward p99 < 2 ms in
the server at the fixed rate.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from benchmarks.host import (
    cpu_model,
    cpu_probe,
    cpu_ticks,
    percent,
    process_memory,
    steal_share,
)
from benchmarks.http_load import (
    LoadResult,
    closed_loop,
    open_loop,
    percentile,
    request_bytes,
)
from ef_middleware.web import PersonalizeExtension, Variant
from examples.fastapi_site.content import HERO, TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0.0.0 Safari/537.36")
LOOP = "homepage-hero"
PAGE_MODES = ("bare", "new visitor", "new visitors, mixed", "sticky visitor")


def _server_tuning() -> None:
    """Apply ``--switch-interval`` (passed through the environment) in the server process."""
    interval = os.environ.get("EF_BENCH_SWITCH_INTERVAL")
    if interval:
        sys.setswitchinterval(float(interval))


NOOP = "/_bench/noop"  # the bare app's no-op POST route: the reward route's peer


def bare_app() -> ServerTimer:
    """The example page without the middleware: the default variant, same template."""
    _server_tuning()
    return ServerTimer(_bare())


def _bare() -> FastAPI:
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

    @app.post(NOOP)
    async def noop(request: Request) -> Response:
        """The reward route's peer: reads the same request's body, stores nothing."""
        await request.body()
        return Response(status_code=204, headers={"Cache-Control": "no-store"})

    return app


class ServerTimer:
    """Times each request inside the server, from the app's call to its last body byte
    handed to uvicorn, per path; ``GET /_bench/timings`` answers the percentiles so far (ms)
    (and starts over) and the CPU seconds the process and its event loop's thread have used
    so far. This is the route's own latency, without the client, the kernel and
    HTTP parsing, which the open-loop client's numbers include."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.times: dict[str, list[float]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/_bench/timings":
            report: dict[str, Any] = {p: _percentiles(t) for p, t in self.times.items()}
            # CPU seconds so far: the whole process (learner and embedder threads included)
            # and the event loop's thread alone, which answers this request.
            report["cpu"] = {"process": time.process_time(), "loop": time.thread_time()}
            body = json.dumps(report).encode()
            self.times = {}
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        start = time.perf_counter()

        async def timed(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.times.setdefault(path, []).append(time.perf_counter() - start)

        await self.app(scope, receive, timed)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"requests": float(len(ordered)), "p50": percentile(ordered, 50) * 1000,
            "p99": percentile(ordered, 99) * 1000, "max": ordered[-1] * 1000}


def personalized_app() -> ServerTimer:
    """The example FastAPI site (store: ``EF_STORE``), timed by :class:`ServerTimer`."""
    _server_tuning()
    from examples.fastapi_site.app import create_app

    return ServerTimer(create_app())


def prepare_store(path: Path, visitors: int) -> dict[str, Any]:
    """Train the example's loop on ``visitors`` simulated visitors (``ef_middleware.web.traffic``,
    in process) and save it in ``path``: every personalized server starts from a copy, so
    pages are ranked by a trained model with a posterior, as on a live site, not by a fresh
    one (which ranks greedily, without the posterior's cost)."""
    from starlette.testclient import TestClient

    from ef_middleware import Engine
    from ef_middleware.web.traffic import simulate
    from examples.fastapi_site.app import create_app

    engine = Engine(path)
    hero = engine.loop(LOOP, actions=HERO, reward_wait=0.5)
    with TestClient(create_app(engine), base_url="http://127.0.0.1:8000") as client:
        result = simulate(cast("httpx.Client", client), visitors, seed=7, out=io.StringIO())
        time.sleep(0.6)
        hero.expire()
        hero.flush(timeout=600)
        stats = hero.stats()
    return {"visitors": visitors, "conversions": result["conversions"],
            "learned": stats["learned"], "updates": stats["updates"],
            "model_version": stats["model_version"]}


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _server_cpus() -> set[int]:
    """The CPUs ``main`` left to servers (none when they share every CPU)."""
    cpus = os.environ.get("EF_BENCH_SERVER_CPUS")
    return {int(c) for c in cpus.split(",")} if cpus else set()


def _pin_server() -> None:
    """In the server's process before it starts: the CPUs ``main`` left to servers."""
    cpus = _server_cpus()
    if cpus:
        os.sched_setaffinity(0, cpus)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SERVER_PIDS: dict[int, int] = {}  # port -> process id of the servers that are up


@contextmanager
def serve(factory: str, env: dict[str, str], root: Path = ROOT) -> Iterator[int]:
    """Run ``benchmarks.web_throughput:<factory>`` under uvicorn from ``root`` (a checkout:
    its ``ef_middleware`` and ``benchmarks`` are the ones imported); yields its port once the
    lifespan startup is done and ``/`` answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", f"benchmarks.web_throughput:{factory}",
         "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level",
         "warning"], cwd=root, preexec_fn=_pin_server,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error",
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
        SERVER_PIDS[port] = proc.pid
        yield port
    finally:
        SERVER_PIDS.pop(port, None)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wrk(port: int, duration: float, connections: int,
         pages: list[tuple[str, dict[str, str]]]) -> dict[str, float]:
    """``wrk`` on one loopback server; several pages are sent in turn by a Lua script."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if len(pages) == 1:
            for name, value in pages[0][1].items():
                cmd += ["-H", f"{name}: {value}"]
            url = pages[0][0]
        else:
            script.write(_wrk_script(port, pages))
            script.flush()
            cmd += ["-s", script.name]
            url = "/"
        out = subprocess.run([*cmd, f"http://127.0.0.1:{port}{url}"], capture_output=True,
                             text=True, check=True).stdout
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


def _wrk_script(port: int, pages: list[tuple[str, dict[str, str]]]) -> str:
    """A wrk Lua script that sends ``pages`` round robin."""
    def lua(text: str) -> str:
        return json.dumps(text)  # a JSON string is a valid Lua string for this ASCII text

    rows = []
    for url, headers in pages:
        fields = ", ".join(f"[{lua(k)}] = {lua(v)}" for k, v in
                           {"Host": f"127.0.0.1:{port}", **headers}.items())
        rows.append(f"  wrk.format(\"GET\", {lua(url)}, {{{fields}}}),")
    return ("local pages = {}\nlocal i = 0\nfunction init(args)\n pages = {\n" +
            "\n".join(rows) + "\n }\nend\nfunction request()\n i = i % #pages + 1\n"
            " return pages[i]\nend\n")


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def mixed_pages(count: int, headers: dict[str, str] | None = None,
                seed: int = 3) -> list[tuple[str, dict[str, str]]]:
    """``count`` first page views of simulated visitors (``ef_middleware.web.traffic``):
    three devices, four sources (email ones with a campaign), five time zones (the ``ef_tz``
    cookie ef.js sets) and four languages, so contexts vary as on a live site."""
    import random

    from ef_middleware.web.traffic import make_visitor, page_request

    rng = random.Random(seed)
    pages = []
    for _ in range(count):
        visitor = make_visitor(rng)
        url, page_headers = page_request(visitor)
        pages.append((url, {**page_headers, "cookie": f"ef_tz={visitor.zone}",
                            **(headers or {})}))
    return pages


def saturated_run(port: int, args: argparse.Namespace,
                  pages: list[tuple[str, dict[str, str]]], duration: float) -> dict[str, Any]:
    """Requests per second at saturation for ``duration`` seconds, with the server's own
    timings of those requests."""
    timings = f"http://127.0.0.1:{port}/_bench/timings"
    before = httpx.get(timings).json()["cpu"]
    if args.tool == "wrk":
        result = _wrk(port, duration, args.connections, pages)
    else:
        result = closed_loop("127.0.0.1", port, _page_requests(port, pages),
                             connections=args.connections, duration=duration).summary()
    report = httpx.get(timings).json()
    server: dict[str, float] = report.get("/", {})
    # Server CPU per request: unlike requests per second, it hardly moves when another
    # tenant of the host takes the CPU away, so it shows the cost of a page more steadily.
    served = server.get("requests") or result.get("requests") or math.nan
    out: dict[str, Any] = {**result, "server": server}
    for kind in ("process", "loop"):
        out[f"cpu_us_{kind}"] = (report["cpu"][kind] - before[kind]) / served * 1e6
    return out


def fixed_run(port: int, args: argparse.Namespace,
              pages: list[tuple[str, dict[str, str]]]) -> dict[str, Any]:
    """Latency at the fixed page rate (open loop), client side and in the server."""
    timings = f"http://127.0.0.1:{port}/_bench/timings"
    httpx.get(timings)
    result = open_loop("127.0.0.1", port, _page_requests(port, pages), rate=args.page_rate,
                       duration=args.fixed_duration).summary()
    result["server"] = httpx.get(timings).json().get("/", {})
    return result


def _page_requests(port: int, pages: list[tuple[str, dict[str, str]]]) -> list[bytes]:
    return [request_bytes("GET", url, {"host": f"127.0.0.1:{port}", **headers})
            for url, headers in pages]


def _check_decisions(port: int, mode: str, sent: float) -> float:
    """Refuse a new-visitor server that did not rank: the middleware serves default variants
    when ranking fails (one log line each), and that page is not the one to measure."""
    decisions: float = httpx.get(f"http://127.0.0.1:{port}/_ef/status").json()[
        "loops"][LOOP]["decisions"]
    if decisions < sent:
        raise RuntimeError(f"{mode}: {decisions} decisions for {sent:.0f} requests: ranking "
                           "failed and default variants were served (see the log)")
    return decisions


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


def _reward_requests(port: int, cookies: list[str], path: str = "/_ef/reward") -> list[bytes]:
    host = f"127.0.0.1:{port}"
    body = json.dumps({"loop": LOOP}).encode()
    return [request_bytes("POST", path, {
        "host": host, "user-agent": UA, "cookie": cookie, "content-type": "application/json",
        "origin": f"http://{host}"}, body) for cookie in cookies]


def reward_run(port: int, args: argparse.Namespace, peer: int | None = None) -> dict[str, Any]:
    """Rewards at the fixed rate, then saturated (``--reward-connections`` clients, closed
    loop), each request with a decision of its own; decisions are made first and the learner
    is given ``--reward-pause`` seconds to persist them. The CPU probe runs first, while the
    server is idle: a reading of the host, not of the server's own work. With ``peer`` (a bare
    app's port), the same requests go to its no-op route at the same rate just before the
    rewards (``fixed["peer"]``)."""
    probe = cpu_probe(_server_cpus())
    fixed_cookies = _decisions(port, round(args.reward_rate * args.fixed_duration))
    saturated_cookies = _decisions(port, args.rewards)
    time.sleep(args.reward_pause)
    noop: dict[str, Any] | None = None
    if peer is not None:
        peer_timings = f"http://127.0.0.1:{peer}/_bench/timings"
        httpx.get(peer_timings)
        noop = open_loop("127.0.0.1", peer, _reward_requests(peer, fixed_cookies, NOOP),
                         rate=args.reward_rate, duration=args.fixed_duration).summary()
        noop["server"] = httpx.get(peer_timings).json().get(NOOP, {})
    timings = f"http://127.0.0.1:{port}/_bench/timings"
    httpx.get(timings)
    ticks = cpu_ticks()
    fixed = open_loop("127.0.0.1", port, _reward_requests(port, fixed_cookies),
                      rate=args.reward_rate, duration=args.fixed_duration)
    fixed_summary = {**fixed.summary(), "steal": steal_share(ticks, cpu_ticks()),
                     "probe": probe, "peer": noop,
                     "server": httpx.get(timings).json().get("/_ef/reward", {})}
    saturated: LoadResult = closed_loop(
        "127.0.0.1", port, _reward_requests(port, saturated_cookies),
        connections=args.reward_connections, count=len(saturated_cookies))
    stats = httpx.get(f"http://127.0.0.1:{port}/_ef/status").json()["loops"][LOOP]
    return {"fixed": fixed_summary, "saturated": saturated.summary(),
            "stored_rewards": stats["rewards"],
            "posted": fixed.requests + saturated.requests}


def page_modes(compare: tuple[str, Path] | None) -> tuple[str, ...]:
    """The page modes of a run: :data:`PAGE_MODES`, and the compared checkout's new visitor."""
    return PAGE_MODES if compare is None else (*PAGE_MODES, compare[0])


@contextmanager
def checkout(revision: str, work: Path) -> Iterator[Path]:
    """A detached ``git worktree`` of ``revision`` under ``work``, removed afterwards."""
    path = work / "compare"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), revision],
                   cwd=ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                       check=False)


def _prepare_elsewhere(root: Path, store: Path, visitors: int) -> None:
    """:func:`prepare_store` run by the checkout at ``root`` (same visitors, same seed)."""
    store.mkdir(parents=True, exist_ok=True)
    if visitors:
        code = ("import sys; from pathlib import Path; "
                "from benchmarks.web_throughput import prepare_store; "
                "prepare_store(Path(sys.argv[1]), int(sys.argv[2]))")
        subprocess.run([sys.executable, "-c", code, str(store), str(visitors)], cwd=root,
                       check=True, capture_output=True,
                       env={**os.environ, "TRANSFORMERS_VERBOSITY": "error",
                            "HF_HUB_DISABLE_PROGRESS_BARS": "1"})


def compare_report(rounds: list[dict[str, Any]], mode: str) -> str:
    """Per round, the new visitor's share of bare with this engine and the compared one."""
    pairs = [(r["new visitor"]["rps"] / r["bare"]["rps"], r[mode]["rps"] / r["bare"]["rps"])
             for r in rounds if "bare" in r and mode in r]
    if not pairs:
        return ""
    diffs = [100 * (a - b) for a, b in pairs]
    ahead = sum(d > 0 for d in diffs)
    spread = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    per_round = ", ".join(f"{100 * a:.0f} vs {100 * b:.0f}" for a, b in pairs)
    return (f"new visitor, % of bare, this checkout vs {mode} per round: {per_round}; "
            f"difference {statistics.mean(diffs):+.1f} points (standard error {spread:.1f}), "
            f"ahead in {ahead} of {len(diffs)} rounds")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(rounds: list[dict[str, Any]], fixed: dict[str, dict[str, Any]],
              page_modes: Sequence[str] = PAGE_MODES) -> dict[str, dict[str, float]]:
    """Medians over rounds; ``share`` is the median of each round's ratio to that round's
    bare page; the fixed-rate columns come from ``fixed`` (pages: one run per mode) or from
    each round's reward run; ``steal`` and ``steal_max``, the host's steal time (median and
    highest share) over the page rounds or the fixed-rate reward runs, where measured;
    ``probe_p50`` and ``probe_p99``, the CPU probe's figures before the reward runs, and
    ``peer_p50`` and ``peer_p99``, the in-server latency of the bare app's no-op route at the
    reward rate (medians over runs), and ``peer_gap_p99``, the reward's p99 minus the no-op's
    (median of the per-run differences); ``rss_mb`` and ``peak_rss_mb``, a page server's
    resident and peak resident memory after its fixed-rate run, where read."""
    out: dict[str, dict[str, float]] = {}
    for mode in (*page_modes, "reward"):
        runs = [r[mode] for r in rounds if mode in r]
        if not runs:
            continue
        sat = [x["saturated"] if mode == "reward" else x for x in runs]
        slow = [x["fixed"] for x in runs] if mode == "reward" else [fixed[mode]]
        row = {"rps": _median([x["rps"] for x in sat]),
               "sat_p50": _median([x["p50"] for x in sat]),
               "sat_p99": _median([x["p99"] for x in sat]),
               "sat_server_p50": _median([x.get("server", {}).get("p50", math.nan)
                                          for x in sat]),
               "fixed_p50": _median([x["p50"] for x in slow]),
               "fixed_p99": _median([x["p99"] for x in slow]),
               "non_2xx": sum(x["non_2xx"] for x in sat + slow),
               "server_p50": _median([x.get("server", {}).get("p50", math.nan) for x in slow]),
               "server_p99": _median([x.get("server", {}).get("p99", math.nan) for x in slow]),
               "server_p99_worst": max(x.get("server", {}).get("p99", math.nan)
                                       for x in slow)}
        steal = [v for v in ([x.get("steal") for x in slow] if mode == "reward" else
                             [r.get("steal") for r in rounds if mode in r]) if v is not None]
        if steal:  # the host's share of the CPU time while these were measured
            row["steal"], row["steal_max"] = _median(steal), max(steal)
        paired = [x for x in slow if x.get("peer")] if mode == "reward" else []
        if paired:  # the bare app's no-op POST at the same rate, just before each reward run
            peers = [x["peer"]["server"] for x in paired]
            row["peer_p50"] = _median([x.get("p50", math.nan) for x in peers])
            row["peer_p99"] = _median([x.get("p99", math.nan) for x in peers])
            row["peer_gap_p99"] = _median([  # what the route adds to the host's own tail
                x["server"].get("p99", math.nan) - x["peer"]["server"].get("p99", math.nan)
                for x in paired])
        probes = [x["probe"] for x in slow if x.get("probe")] if mode == "reward" else []
        if probes:  # the CPU probe before each reward run (benchmarks/host.py)
            row["probe_p50"] = _median([x["p50"] for x in probes])
            row["probe_p99"] = _median([x["p99"] for x in probes])
        memory = fixed[mode].get("memory_mb") if mode in page_modes else None
        if memory:  # the server's resident and peak resident memory after its last page
            row["rss_mb"], row["peak_rss_mb"] = memory["rss"], memory["peak"]
        if mode in page_modes:
            row["cpu_us"] = _median([x.get("cpu_us_process", math.nan) for x in sat])
            row["cpu_us_loop"] = _median([x.get("cpu_us_loop", math.nan) for x in sat])
        if mode in page_modes and "bare" in rounds[0]:
            paired = [r for r in rounds if mode in r and "bare" in r]
            row["share"] = _median([r[mode]["rps"] / r["bare"]["rps"] for r in paired])
            # The share the CPU cost implies: the bare page's CPU per request over this one's.
            row["cpu_share"] = _median([r["bare"]["cpu_us_process"] / r[mode]["cpu_us_process"]
                                        for r in paired])
        out[mode] = row
    return out


def print_report(summary: dict[str, dict[str, float]], args: argparse.Namespace) -> bool:
    print(f"tool={args.tool} rounds={args.rounds} (reward runs: {args.reward_rounds}) "
          f"saturated: {args.connections} connections "
          f"x {args.duration:g}s (rewards: {args.reward_connections} connections x "
          f"{args.rewards}); fixed rate: pages {args.page_rate:g}/s, rewards "
          f"{args.reward_rate:g}/s, {args.fixed_duration:g}s; cores={os.cpu_count()}; "
          f"switch interval={args.switch_interval or 'default'}; client and servers on "
          f"{'separate CPUs' if args.pin else 'shared CPUs'}")
    print()
    print("| mode | req/s (saturated) | % of bare | server CPU us/request (event loop) | "
          "% of bare by CPU | in-server p50 ms saturated | "
          "client p50 / p99 ms at fixed rate | in-server p50 / p99 ms at fixed rate "
          "(worst round) | client p50 / p99 ms saturated | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, s in summary.items():
        share = f"{100 * s['share']:.0f}%" if "share" in s else "-"
        cpu = f"{s['cpu_us']:.0f} ({s['cpu_us_loop']:.0f})" if "cpu_us" in s else "-"
        cpu_share = f"{100 * s['cpu_share']:.0f}%" if "cpu_share" in s else "-"
        rate = args.reward_rate if mode == "reward" else args.page_rate
        print(f"| {mode} | {s['rps']:.0f} | {share} | {cpu} | {cpu_share} | "
              f"{s['sat_server_p50']:.2f} | "
              f"{s['fixed_p50']:.2f} / "
              f"{s['fixed_p99']:.2f} (at {rate:g}/s) | {s['server_p50']:.2f} / "
              f"{s['server_p99']:.2f} ({s['server_p99_worst']:.2f}) | "
              f"{s['sat_p50']:.1f} / {s['sat_p99']:.1f} | {s['non_2xx']:.0f} |")
    page_ok = "new visitor" in summary and summary["new visitor"]["share"] >= 0.8
    reward_ok = "reward" in summary and summary["reward"]["server_p99"] < 2.0

    def verdict(measured: bool, ok: bool) -> str:
        return ("yes" if ok else "NO") if measured else "not measured"

    steal = [f"{name} {percent(summary[mode]['steal'])} (at most "
             f"{percent(summary[mode]['steal_max'])})"
             for name, mode in (("page rounds", "bare"), ("reward runs at the fixed rate",
                                                         "reward"))
             if "steal" in summary.get(mode, {})]
    if steal:
        print("\nThe host's steal time, median share of CPU time: " + "; ".join(steal))
    memory = [f"{mode} {s['rss_mb']:.0f} / {s['peak_rss_mb']:.0f}"
              for mode, s in summary.items() if "rss_mb" in s]
    if memory:
        print("Server memory after its pages, resident / peak resident MB: "
              + "; ".join(memory))
    if "peer_p99" in summary.get("reward", {}):
        r = summary["reward"]
        print(f"The reward route's peer, the same requests at the same rate to a no-op POST "
              f"route of the bare app just before each reward run (medians over runs): "
              f"in-server p50 {r['peer_p50']:.2f} ms, p99 {r['peer_p99']:.2f} ms; the reward "
              f"route's p99 minus its peer's, paired per run: median "
              f"{r['peer_gap_p99']:+.2f} ms")
    if "probe_p50" in summary.get("reward", {}):
        r = summary["reward"]
        print(f"The CPU probe before the reward runs (benchmarks/host.py: a fixed piece of "
              f"Python after a 3 ms sleep, on the servers' CPU), medians over runs: p50 "
              f"{r['probe_p50']:.0f} us, p99 {r['probe_p99']:.0f} us")
    print()
    print(f"new visitor >= 80% of bare: {verdict('new visitor' in summary, page_ok)}; "
          f"reward p99 in the server < 2 ms at {args.reward_rate:g}/s: "
          f"{verdict('reward' in summary, reward_ok)}")
    return page_ok and reward_ok


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to an option's help unless the help already tells its default,
    or the default is ``None`` or a flag's."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)


def parser(prog: str = "python -m benchmarks.web_throughput") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)
    p.add_argument("--rounds", type=int, default=20,
                   help="page rounds: one saturated burst of every page mode each, "
                        "interleaved (many short bursts: see docs/benchmarks.md, A/A runs)")
    p.add_argument("--duration", type=float, default=1.0,
                   help="seconds of one saturated burst")
    p.add_argument("--reward-rounds", type=int, default=5,
                   help="reward runs, each on a fresh server")
    p.add_argument("--connections", type=int, default=32, help="saturated page connections")
    p.add_argument("--page-rate", type=float, default=200.0, help="fixed page rate (req/s)")
    p.add_argument("--reward-rate", type=float, default=200.0, help="fixed reward rate")
    p.add_argument("--fixed-duration", type=float, default=6.0, help="seconds at fixed rate")
    p.add_argument("--rewards", type=int, default=3000, help="rewards posted saturated")
    p.add_argument("--reward-connections", type=int, default=8, help="saturated reward clients")
    p.add_argument("--reward-pause", type=float, default=3.0,
                   help="seconds between making the decisions and rewarding them")
    p.add_argument("--no-rewards", action="store_true", help="pages only")
    p.add_argument("--no-pages", action="store_true", help="rewards only")
    p.add_argument("--train-visitors", type=int, default=3000,
                   help="simulated visitors the loop learns from before serving (0: a fresh "
                        "model, which ranks greedily)")
    p.add_argument("--mixed-pages", type=int, default=1000,
                   help="distinct simulated first views sent in turn in the mixed mode")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="sys.setswitchinterval in both servers (default: Python's 0.005)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not put the load generators on the first CPU and the servers on "
                        "the others (done when there are two or more)")
    p.add_argument("--tool", choices=("wrk", "python"), default="wrk" if shutil.which("wrk")
                   else "python",
                   help="saturating load generator (default: wrk if installed, else python)")
    p.add_argument("--compare", metavar="REVISION", default=None,
                   help="also serve a new visitor with the engine of this git revision (a "
                        "temporary git worktree) in every round: an A/B that this host's "
                        "drift between runs cannot blur")
    p.add_argument("--quick", action="store_true",
                   help="6 rounds of 1 s bursts, 3 s fixed, 1000 rewards, 2 reward runs")
    p.add_argument("--json", type=Path, default=None,
                   help="default: benchmarks/results/web-throughput[-quick].json")
    return p


def _store_copy(trained: Path, work: Path, name: str) -> Path:
    """A copy of the trained store (or a new empty folder when none was trained)."""
    target = work / ("store-" + name.replace(" ", "-").replace(",", ""))
    if trained.exists():
        shutil.copytree(trained, target)
    return target


def page_rounds(args: argparse.Namespace, work: Path, trained: Path, env: dict[str, str],
                rounds: list[dict[str, Any]], fixed: dict[str, dict[str, Any]],
                checks: dict[str, float], compare: tuple[str, Path] | None = None) -> None:
    """All page servers up at once; each round sends one saturated burst to each, in a
    rotating order, so a round's ratios to the bare page are taken within seconds of each
    other (this machine's speed drifts by 2x over minutes). Then one fixed-rate run each.
    The personalized servers keep their decisions across rounds, as a live site does.
    ``compare``: ``(mode name, checkout)``, a new visitor served by another checkout's engine
    in the same rounds."""
    modes = page_modes(compare)
    one_page = [("/", {"user-agent": UA})]
    pages = {"bare": one_page, "new visitor": one_page,
             "new visitors, mixed": mixed_pages(args.mixed_pages)}
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for mode in modes:
            if mode == "bare":
                ports[mode] = stack.enter_context(serve("bare_app", env))
                continue
            root = compare[1] if compare is not None and mode == compare[0] else ROOT
            if root == ROOT:
                store = _store_copy(trained, work, mode)
            else:  # trained by that engine: its snapshots' format may differ
                store = work / "store-compare"
                _prepare_elsewhere(root, store, args.train_visitors)
                pages[mode] = one_page
            ports[mode] = stack.enter_context(serve("personalized_app",
                                                    {**env, "EF_STORE": str(store)}, root))
        with httpx.Client(headers={"user-agent": UA}) as client:
            client.get(f"http://127.0.0.1:{ports['sticky visitor']}/").raise_for_status()
            pages["sticky visitor"] = [("/", {
                "user-agent": UA,
                "cookie": f"ef_d={client.cookies['ef_d']}; ef_v={client.cookies['ef_v']}"})]
        for mode in modes:  # warm-up
            saturated_run(ports[mode], args, pages[mode], 2.0)
        for index in range(args.rounds):
            start = index % len(modes)
            result: dict[str, Any] = {"loadavg_before": os.getloadavg()[0]}
            ticks = cpu_ticks()
            for mode in modes[start:] + modes[:start]:
                result[mode] = saturated_run(ports[mode], args, pages[mode], args.duration)
            result["steal"] = steal_share(ticks, cpu_ticks())
            rounds.append(result)
            print(f"round {index + 1}/{args.rounds}: " + ", ".join(
                f"{m} {result[m]['rps']:.0f}/s ({result[m]['cpu_us_process']:.0f} us CPU)"
                for m in modes) + f"; steal {percent(result['steal'])}", file=sys.stderr,
                flush=True)
        for mode in modes:
            fixed[mode] = fixed_run(ports[mode], args, pages[mode])
        for mode in modes:  # after every page it served (any checkout: read from outside)
            fixed[mode]["memory_mb"] = process_memory(SERVER_PIDS[ports[mode]])
        for mode in ("new visitor", "new visitors, mixed"):
            # Warm-up requests come on top, so this is a lower bound.
            sent = sum(r[mode]["requests"] for r in rounds) + fixed[mode]["requests"]
            checks[mode] = _check_decisions(ports[mode], mode, sent)


def main(argv: list[str] | None = None,
         prog: str = "python -m benchmarks.web_throughput") -> int:
    args = parser(prog).parse_args(argv)
    cpus = _cpus()
    if args.pin and len(cpus) >= 2:
        # Load generators (this process, its threads, wrk) on the first CPU, servers on the
        # others: a client and a server time-slicing one core time each other's turns.
        os.environ["EF_BENCH_SERVER_CPUS"] = ",".join(str(c) for c in cpus[1:])
        os.sched_setaffinity(0, {cpus[0]})
    else:
        args.pin = False
    if args.quick:
        args.rounds, args.duration, args.fixed_duration, args.rewards = 6, 1.0, 3.0, 1000
        args.reward_rounds = 2
    if args.tool == "python":
        print("wrk is not installed (scripts/bench-setup installs it): saturating with the "
              "Python client, which competes with the server for the CPU", file=sys.stderr)
    tuning = {} if args.switch_interval is None else {
        "EF_BENCH_SWITCH_INTERVAL": str(args.switch_interval)}
    rounds: list[dict[str, Any]] = []
    fixed: dict[str, dict[str, Any]] = {}
    checks: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trained = work / "trained"
        if args.train_visitors:
            print(f"training the example's loop on {args.train_visitors} simulated visitors",
                  file=sys.stderr, flush=True)
            training = prepare_store(trained, args.train_visitors)
            print(f"trained: {training}", file=sys.stderr, flush=True)
        env = {"EF_SECRET_KEY": "bench-secret", "EF_REWARD_WAIT": "600", "EF_DEMO_PANEL": "0",
               **tuning}
        compare: tuple[str, Path] | None = None
        if not args.no_pages:
            with ExitStack() as stack:
                if args.compare:
                    compare = (f"new visitor @{args.compare}",
                               stack.enter_context(checkout(args.compare, work)))
                page_rounds(args, work, trained, env, rounds, fixed, checks, compare)
        for index in range(args.reward_rounds if not args.no_rewards else 0):
            # A fresh server and store per reward run: none inherits another's backlog.
            env["EF_STORE"] = str(_store_copy(trained, work, f"rewards-{index}"))
            with serve("bare_app", env) as peer, serve("personalized_app", env) as port:
                reward = reward_run(port, args, peer)
            if index < len(rounds):
                rounds[index]["reward"] = reward
            else:
                rounds.append({"reward": reward})
            probe, noop = reward["fixed"]["probe"], reward["fixed"]["peer"]["server"]
            print(f"rewards {index + 1}/{args.reward_rounds}: in-server p99 "
                  f"{reward['fixed']['server'].get('p99', math.nan):.2f} ms (bare no-op "
                  f"{noop.get('p99', math.nan):.2f} ms), steal "
                  f"{percent(reward['fixed']['steal'])}, CPU probe p50/p99 "
                  f"{probe['p50']:.0f}/{probe['p99']:.0f} us", file=sys.stderr, flush=True)
    summary = summarise(rounds, fixed, page_modes(compare))
    met = print_report(summary, args)
    if compare is not None:
        print(compare_report(rounds, compare[0]))
    if "reward" in summary:
        posted = sum(r["reward"]["posted"] for r in rounds if "reward" in r)
        stored = sum(r["reward"]["stored_rewards"] for r in rounds if "reward" in r)
        print(f"rewards stored by the engines: {stored} of {posted} posted")
    path = args.json or ROOT / "benchmarks" / "results" / (
        "web-throughput-quick.json" if args.quick else "web-throughput.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "command": " ".join(["scripts/bench web-throughput",
                             *(sys.argv[1:] if argv is None else argv)]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"python": platform.python_version(), "cores": os.cpu_count(),
                        "platform": platform.platform(), "cpu_model": cpu_model()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "targets_met": met, "summary": summary, "rounds": rounds, "fixed": fixed,
        "decisions": checks}, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
