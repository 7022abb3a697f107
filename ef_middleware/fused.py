"""torch's fused AdamW kernel for the reward model's optimiser step, when torch is loaded.

Adam's step reads and writes the parameters, both moments and the served average (about 1 MB
each for the default network). As numpy operations it is some seventeen passes over them and
took about 40% of the learner's time per reward; torch's fused kernel (the one behind
``torch.optim.AdamW(fused=True)``) does the step in one pass, in place on the same memory
(``torch.from_numpy`` shares it): the step went from 190-240 to 120-165 us of the learner's
CPU per reward, and the speed benchmark's learning rate rose by about a third
(docs/benchmarks.md, "The optimiser step in one pass").

The network stays numpy, and this module never imports torch: the kernel is used only when
torch is already loaded in the process (the default embedder loads it) and only after a probe
has shown that it computes what the numpy step computes (:func:`kernel`). Otherwise, and on a
torch that lacks the kernel or computes something else, the numpy step runs.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("ef_middleware")
_lock = threading.Lock()
_decided: list[Kernel | None] = []  # empty until torch is loaded and the probe has run


class Kernel:
    """torch's ``_fused_adamw_`` over numpy arrays (shared memory, no copies)."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self._op = torch._fused_adamw_

    def tensors(self, arrays: Sequence[np.ndarray[Any, Any]]) -> list[Any]:
        """Tensors that share each array's memory."""
        return [self._torch.from_numpy(a) for a in arrays]

    def step_counter(self) -> Any:
        """A scalar tensor for :meth:`adamw`'s step number (``torch.tensor`` of a float took
        about 40 us; filling one takes a few)."""
        return self._torch.zeros(())

    def adamw(self, params: list[Any], grads: list[Any], m: list[Any], v: list[Any],
              counter: Any, step: int, *, lr: float, beta1: float, beta2: float,
              weight_decay: float, eps: float) -> None:
        """One AdamW step in place; ``step`` is the step number after this one (from 1),
        written to ``counter`` (the kernel reads it and does not advance it)."""
        counter.fill_(float(step))
        self._op(params, grads, m, v, [], [counter] * len(params), lr=lr, beta1=beta1,
                 beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=False,
                 maximize=False)

    @staticmethod
    def lerp(average: Any, target: Any, weight: float) -> None:
        """``average += weight * (target - average)`` in place."""
        average.lerp_(target, weight)


def kernel(probe: Callable[[Kernel], bool]) -> Kernel | None:
    """The fused kernel if torch is loaded and ``probe`` accepts it, else ``None``.

    Decided once per process, the first time torch is found fully imported (not while another
    thread is still importing it); until then ``None`` without deciding, so a learner that
    starts before the embedder has loaded torch switches to the kernel when it has.
    """
    if _decided:
        return _decided[0]
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None
    with _lock:
        if not _decided:
            _decided.append(_checked(torch, probe))
    return _decided[0]


def _checked(torch: Any, probe: Callable[[Kernel], bool]) -> Kernel | None:
    try:
        candidate = Kernel(torch)
        if probe(candidate):
            return candidate
        reason = "its step differs from the numpy step"
    except Exception as exc:  # an older or newer torch: any failure means the numpy step
        reason = f"{type(exc).__name__}: {exc}"
    log.info("ef_middleware: optimiser step in numpy (torch's fused AdamW unused: %s)", reason)
    return None
