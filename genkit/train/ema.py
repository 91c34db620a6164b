"""Exponential moving average of a model's weights, with the usual warm-up.

The average lives in a full copy of the module, so it can be sampled from directly
(``ema.module(x, t)``) and saved like any model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """Decay used after ``step`` completed optimizer steps.

    With warm-up the decay is ``min(decay, (1 + step) / (10 + step))``: early weights,
    which are far from the final ones, are forgotten quickly.
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """A frozen copy of ``model`` that tracks ``decay * ema + (1 - decay) * model``."""

    def __init__(self, model: nn.Module, *, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._read_from: tuple[nn.Module, nn.Module] | None = None  # (model, module) the lists below come from
        self._params: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._buffer_names: list[str] = []

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend ``model``'s parameters in; buffers (e.g. norm statistics) are copied."""
        if self._read_from is None or self._read_from[0] is not model or self._read_from[1] is not self.module:
            # Walking a deep network's modules costs more than the update itself: do it once per model.
            # Parameter objects survive .to() and load_state_dict (their data is replaced in place);
            # buffers may be replaced by new tensors, so they are looked up by name each time.
            self._read_from = (model, self.module)
            self._params = (list(self.module.parameters()), list(model.parameters()))
            self._buffer_names = [name for name, _ in model.named_buffers()]
        d = ema_decay(step, self.decay, self.warmup)
        # lerp_(ema, p, w) = ema + w * (p - ema) = d * ema + (1 - d) * p with w = 1 - d
        torch._foreach_lerp_(*self._params, 1.0 - d)
        for name in self._buffer_names:
            self.module.get_buffer(name).copy_(model.get_buffer(name))
