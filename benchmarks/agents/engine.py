"""ef_middleware's Engine as an agent: one fresh engine (own store folder) per run."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from typing import Any

from benchmarks.agents.base import AgentSpec
from benchmarks.problems.base import Context, Problem

DEFAULT_STRATEGY = "thompson"


def engine_unavailable() -> str | None:
    """Why the engine cannot be benchmarked yet, or ``None`` when ``Engine`` imports."""
    try:
        from ef_middleware import Engine  # noqa: F401
    except Exception as exc:  # any import-time failure means: not ready
        return f"{type(exc).__name__}: {exc}"
    return None


def engine_strategies() -> tuple[str, ...]:
    """The strategies the engine declares."""
    from ef_middleware._types import STRATEGIES

    return tuple(str(s) for s in STRATEGIES)


_EMBEDDER: list[Any] = []


def shared_embedder() -> Any:
    """One embedder (the loaded transformer) for every engine in this process.

    Each engine still has its own store and embedding cache, so runs stay independent; only the
    seconds spent loading the model weights for every run are saved.
    """
    if not _EMBEDDER:
        from ef_middleware import SentenceTransformerEmbedder

        _EMBEDDER.append(SentenceTransformerEmbedder())
    return _EMBEDDER[0]


def make_engine(path: str, seed: int, sync: bool = False) -> Any:
    """``Engine(path, seed=seed)`` with the shared embedder; with ``sync``, no thread at all
    (learning in ``flush()``, new texts embedded at once), so a run is the same every time."""
    from ef_middleware import Engine

    kwargs: dict[str, Any] = {"seed": seed}
    with contextlib.suppress(ImportError):
        kwargs["embedder"] = shared_embedder()
    if sync:
        kwargs["learner"] = False
        kwargs["embed_in_background"] = False
    return Engine(path, **kwargs)


def _loop_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """``--loop-settings`` as ``engine.loop`` keywords: ``model.x=v`` set ModelConfig fields,
    ``option.x=v`` the strategy's options (``strategy_options``)."""
    from ef_middleware.model import ModelConfig

    out = {k: v for k, v in settings.items() if not k.startswith(("model.", "option."))}
    model = {k[len("model."):]: v for k, v in settings.items() if k.startswith("model.")}
    if model:
        out["model"] = ModelConfig(**model)
    options = {k[len("option."):]: v for k, v in settings.items() if k.startswith("option.")}
    if options:
        out["strategy_options"] = options
    return out


class EngineAgent:
    """Ranks with ``loop.rank``, rewards the chosen event and flushes every ``flush_every``."""

    def __init__(
        self, problem: Problem, seed: int, strategy: str, flush_every: int = 1, sync: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self._dir = tempfile.mkdtemp(prefix="ef-bench-")
        self._engine: Any = make_engine(self._dir, seed, sync)
        self._loop: Any = self._engine.loop(
            f"{problem.name}-{strategy}",
            actions=[a.to_engine() for a in problem.actions],
            strategy=strategy,
            reward_range=problem.reward_range,
            reward_wait=1e9,
            aggregation="earliest",
            **_loop_kwargs(settings or {}),
        )
        self._index = {a.id: i for i, a in enumerate(problem.actions)}
        self._flush_every = max(1, flush_every)
        self._pending = 0
        self._event: str | None = None

    def act(self, context: Context) -> tuple[int, float]:
        decision = self._loop.rank(dict(context))
        self._event = decision.event_id
        return self._index[decision.action_id], float(decision.probability)

    def learn(self, reward: float) -> None:
        if self._event is None:
            raise RuntimeError("learn() before act()")
        self._loop.reward(self._event, float(reward))
        self._event = None
        self._pending += 1
        if self._pending >= self._flush_every:
            self._loop.flush()
            self._pending = 0

    def close(self) -> None:
        try:
            self._loop.flush()
            self._engine.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


def engine_spec(strategy: str, flush_every: int = 1, sync: bool = False,
                settings: dict[str, Any] | None = None) -> AgentSpec:
    suffix = ",".join(f"{k}={v}" for k, v in (settings or {}).items())
    return AgentSpec(
        f"ef:{strategy}" + (f"[{suffix}]" if suffix else ""),
        lambda problem, seed: EngineAgent(problem, seed, strategy, flush_every, sync, settings),
        "engine",
    )
