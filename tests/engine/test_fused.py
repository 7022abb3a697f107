"""The optimiser step in torch's fused kernel: chosen only when torch is loaded and the kernel
agrees with the numpy step; the same step as numpy's on the full-size network."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ef_middleware import fused
from ef_middleware.model import ModelConfig, RewardNet, _probe


def test_the_kernel_is_used_once_torch_is_loaded() -> None:
    import torch  # noqa: F401

    assert isinstance(fused.kernel(_probe), fused.Kernel)  # the pinned torch has it


def test_full_size_steps_agree_with_numpy() -> None:
    import torch  # noqa: F401

    numpy_net, fused_net = RewardNet(ModelConfig(), seed=3), RewardNet(ModelConfig(), seed=3)
    numpy_net.fused, fused_net.fused = False, True
    start = numpy_net.params.copy()
    rng = np.random.default_rng(0)
    for _ in range(40):  # past the warmup's first steps, with clipping (norms well over 1)
        g = rng.normal(size=start.size).astype(np.float32) * 0.01
        numpy_net.apply(g.copy())
        fused_net.apply(g)
    assert fused_net._tensors is not None  # the kernel ran
    assert np.abs(numpy_net.params - start).max() > 1e-3  # and the weights moved
    for name in ("params", "m", "v", "average"):
        np.testing.assert_allclose(getattr(fused_net, name), getattr(numpy_net, name),
                                   rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_kernel_that_disagrees_or_fails_is_not_used(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    import torch

    def failing(op: fused.Kernel) -> bool:
        raise TypeError("unexpected keyword argument")

    with caplog.at_level(logging.INFO, logger="ef_middleware"):
        assert fused._checked(torch, lambda op: False) is None
        assert fused._checked(torch, failing) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "differs from the numpy step" in lines[0] and "TypeError" in lines[1]


def test_without_torch_the_numpy_step_runs_and_torch_stays_unloaded() -> None:
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from ef_middleware import Engine, fused
        from ef_middleware.model import ModelConfig, RewardNet
        net = RewardNet(ModelConfig(text_dim=2, numeric_dim=1, hidden=(3, 2, 2)))
        before = net.params.copy()
        net.apply(np.full(net.params.size, 0.1, dtype=np.float32))
        assert not np.array_equal(net.params, before)
        assert "torch" not in sys.modules and fused._decided == []
        net.fused = True
        try:
            net.apply(np.full(net.params.size, 0.1, dtype=np.float32))
        except RuntimeError as exc:
            print("refused:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: torch's fused AdamW kernel is not available" in out.stdout
