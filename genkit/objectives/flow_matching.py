"""Flow matching (rectified flow) objective: regress a velocity on a path's target.

SPEC section 2(b): ``L = E_{t, x_0, x_1} || v(x_t, t) - dx_t ||^2`` with
``x_0 ~ N(0, I)`` independent of the data ``x_1`` and ``t ~ U[t_min, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.objectives.base import LossOutput
from genkit.paths import AffinePath

__all__ = ["FlowMatching", "flow_matching_loss"]


def flow_matching_loss(v: Tensor, dx_t: Tensor) -> Tensor:
    """Mean over the batch of the mean over dimensions of ``(v - dx_t)^2``.

    ``v, dx_t: (B, ...)``; returns a 0-dim tensor.
    """
    return (v - dx_t).pow(2).flatten(1).mean(1).mean()


class FlowMatching:
    """Conditional flow matching with Gaussian noise as the source (an ``Objective``).

    Args:
        path: the path whose conditional velocity is the regression target.
        model: key of the velocity network in ``models`` and of the returned loss.
        t_min: times are drawn from ``U[t_min, 1]`` (the RF code uses 1e-3).
    """

    def __init__(self, path: AffinePath, *, model: str = "model", t_min: float = 0.0) -> None:
        if not 0.0 <= t_min < 1.0:
            raise GenkitError(f"t_min must be in [0, 1), got {t_min}")
        self.path = path
        self.model = model
        self.t_min = t_min

    def __call__(
        self,
        models: Mapping[str, nn.Module],
        batch: Any,
        *,
        need: frozenset[str],
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """Flow-matching loss on a data batch.

        Args:
            models: must hold the velocity network under ``self.model``, called as
                ``v(x_t: (B, ...), t: (B,)) -> (B, ...)``.
            batch: data ``x_1: (B, ...)``, or a ``(x_1, ...)`` tuple/list (labels ignored).
            need: optimizer names the Trainer will step; this objective has only one
                loss and always computes it.
            generator: draws ``x_0`` then ``t``; must live on ``x_1``'s device.

        Returns:
            ``LossOutput(losses={model: loss}, metrics={})``, loss a 0-dim tensor.
        """
        x_1 = _data(batch)
        if self.model not in models:
            raise GenkitError(f"flow matching needs a model named {self.model!r}; got {sorted(models)}")
        n = x_1.shape[0]
        x_0 = torch.randn(x_1.shape, generator=generator, device=x_1.device, dtype=x_1.dtype)
        u = torch.rand((n,), generator=generator, device=x_1.device, dtype=x_1.dtype)
        t = self.t_min + (1.0 - self.t_min) * u
        ps = self.path.sample(x_0, x_1, t)
        v = models[self.model](ps.x_t, t)
        if v.shape != x_1.shape:
            raise GenkitError(f"the velocity model returned shape {tuple(v.shape)}, expected {tuple(x_1.shape)}")
        # A bf16 output (autocast) is promoted to the target's float32 by the subtraction.
        loss = flow_matching_loss(v, ps.dx_t)
        return LossOutput(losses={self.model: loss}, metrics={})

    def __repr__(self) -> str:
        return f"FlowMatching({self.path!r}, model={self.model!r}, t_min={self.t_min})"


def _data(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        x_1 = batch
    elif isinstance(batch, Sequence) and len(batch) > 0 and isinstance(batch[0], Tensor):
        x_1 = batch[0]
    else:
        raise GenkitError(f"flow matching expects a data tensor (B, ...) or (x_1, ...), got {type(batch).__name__}")
    if x_1.dim() < 2 or not x_1.is_floating_point():
        raise GenkitError(f"data must be a float tensor of shape (B, ...), got {x_1.dtype} {tuple(x_1.shape)}")
    return x_1
