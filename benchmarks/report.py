"""Summaries over seeds, plain-text tables and JSON result files."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.host import blas_probe, cpu_model
from benchmarks.learning import Run
from benchmarks.paths import REPO_ROOT, RESULTS_DIR
from benchmarks.stats import Summary, summarize


def agents_in_order(runs: Iterable[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        seen.setdefault(run.agent, None)
    return list(seen)


def summary_by_agent(runs: Sequence[Run]) -> dict[str, dict[str, Summary]]:
    """Per agent and metric: mean and 95% t-interval over seeds (missing values skipped)."""
    out: dict[str, dict[str, Summary]] = {}
    for agent in agents_in_order(runs):
        mine = [r for r in runs if r.agent == agent]
        keys = list(mine[0].metrics)
        out[agent] = {}
        for key in keys:
            vals = [r.metrics.get(key) for r in mine]
            out[agent][key] = summarize([v for v in vals if v is not None])
        out[agent]["seconds"] = summarize([r.seconds for r in mine])
        out[agent]["setup_seconds"] = summarize([r.setup_seconds for r in mine])
    return out


def paired_difference(runs: Sequence[Run], a: str, b: str, key: str) -> Summary | None:
    """Per-seed ``a - b`` of a metric (the same stream per seed, so the pairing is exact)."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in runs:
        value = r.metrics.get(key)
        if r.agent in (a, b) and value is not None:
            by_seed.setdefault(r.seed, {})[r.agent] = value
    diffs = [v[a] - v[b] for v in by_seed.values() if a in v and b in v]
    return summarize(diffs) if diffs else None


def fmt_mean(summary: Summary | None, digits: int = 1) -> str:
    """The mean alone (for timings, where an interval over 2-3 seeds says little)."""
    if summary is None or summary.n == 0 or math.isnan(summary.mean):
        return "-"
    return f"{summary.mean:.{digits}f}"


def fmt(summary: Summary | None, digits: int = 1) -> str:
    if summary is None or summary.n == 0 or math.isnan(summary.mean):
        return "-"
    return summary.fmt(digits)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable as plain text too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for mod in ("numpy", "vowpalwabbit", "torch", "ef_middleware"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:
            info[mod] = None
    try:  # the host's speed at the engine's largest product (rank timings depend on it)
        info["blas"] = blas_probe()
    except Exception as exc:  # a missing threadpoolctl must not lose a run's results
        info["blas"] = {"error": f"{type(exc).__name__}: {exc}"}
    info["ef_middleware_source_sha1"] = SOURCE_AT_START
    now = source_digest()
    if now != SOURCE_AT_START:
        info["ef_middleware_source_sha1_at_end"] = now  # the engine was edited during the run
    info["git_head"] = _git_head()
    return info


def source_digest() -> str:
    """SHA-1 over the engine's Python sources, to tell uncommitted versions apart."""
    digest = hashlib.sha1()
    root = REPO_ROOT / "ef_middleware"
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


SOURCE_AT_START = source_digest()


def _git_head() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def runs_json(runs: Sequence[Run]) -> list[dict[str, Any]]:
    return [
        {
            "agent": r.agent,
            "kind": r.kind,
            "seed": r.seed,
            "seconds": r.seconds,
            "setup_seconds": r.setup_seconds,
            "metrics": r.metrics,
        }
        for r in runs
    ]


def write_json(name: str, payload: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``results/<name>.json`` atomically and return its path."""
    folder = results_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    payload = {"benchmark": name, "environment": environment(), **payload}
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(obj: object) -> object:
    if isinstance(obj, Summary):
        return obj.to_json()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
