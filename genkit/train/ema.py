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

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend ``model``'s parameters in; buffers (e.g. norm statistics) are copied."""
        d = ema_decay(step, self.decay, self.warmup)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        # lerp_(ema, p, w) = ema + w * (p - ema) = d * ema + (1 - d) * p with w = 1 - d
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
