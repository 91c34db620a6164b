"""Adam as every recipe builds it: PyTorch's fused kernel when the parameters live on a GPU.

The fused implementation updates all parameters in a few kernel launches instead of a
handful per tensor; it computes the same update as the default one (to float rounding).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def adam(
    params: Iterable[nn.Parameter], *, lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0
) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``params``, fused when they are all on CUDA."""
    params = list(params)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)
