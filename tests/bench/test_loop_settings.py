"""``--loop-settings`` as the engine agents pass it to ``engine.loop``."""

from __future__ import annotations

from benchmarks.__main__ import _loop_settings
from benchmarks.agents.engine import _loop_kwargs
from ef_middleware.model import ModelConfig


def test_model_fields_and_strategy_options_are_routed() -> None:
    settings = _loop_settings("replay_ratio=2,model.warmup_steps=10,option.noise=0.35")
    kwargs = _loop_kwargs(settings)
    assert kwargs == {"replay_ratio": 2, "model": ModelConfig(warmup_steps=10),
                      "strategy_options": {"noise": 0.35}}
    assert _loop_kwargs({}) == {}
