"""Distillation of a (rectified) flow into a one- or k-step map (SPEC section 2(b)).

The student trains on pairs ``(Z_0, Z_1)`` of a teacher flow (:mod:`genkit.pairs`):

* ``steps = 1``: the one-step map ``x_1_hat = z_0 + v(z_0, 0)`` is compared with ``z_1``
  (this is what ``ODESampler(field, shape, method="euler", steps=1)`` computes);
* ``steps = k > 1``: ``t`` is drawn uniformly from the grid ``{0, 1/k, ..., (k-1)/k}``,
  ``x_t = t z_1 + (1 - t) z_0``, and the velocity ``v(x_t, t)`` is compared with
  ``z_1 - z_0``: the k-step Euler map then follows the straight line to ``z_1``. (The RF
  code offsets times by eps; genkit uses the exact grid times.)

The comparison is a per-sample distance ``(pred, target) -> (B,)``: :func:`l2_distance`,
:func:`pseudo_huber_distance` (Song & Dhariwal 2023), or a user callable such as LPIPS
(not shipped; meaningful on images, so with ``steps = 1``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genkit.couplings import Pairs
from genkit.errors import GenkitError
from genkit.objectives.base import LossOutput
from genkit.paths import AffinePath, LinearSchedule

__all__ = [
    "DISTANCES",
    "Distance",
    "DistanceName",
    "Distillation",
    "huber_c_default",
    "l2_distance",
    "pseudo_huber_distance",
]

Distance = Callable[[Tensor, Tensor], Tensor]
"""``distance(pred: (B, ...), target: (B, ...)) -> (B,)`` per-sample losses."""

DistanceName = Literal["l2", "pseudo_huber"]

# Song & Dhariwal 2023 ("Improved techniques for training consistency models"): c = 0.00054 sqrt(d)
# for data in [-1, 1]^d.
HUBER_C_PER_SQRT_DIM = 0.00054


def l2_distance(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over dimensions of ``(pred - target)^2``: ``pred, target: (B, ...)`` -> ``(B,)``."""
    return (pred - target).pow(2).flatten(1).mean(1)


def huber_c_default(dim: int) -> float:
    """Default pseudo-Huber ``c = 0.00054 sqrt(dim)`` for ``dim`` values per sample."""
    return HUBER_C_PER_SQRT_DIM * math.sqrt(dim)


def pseudo_huber_distance(pred: Tensor, target: Tensor, c: float | None = None) -> Tensor:
    """``sqrt(||pred - target||^2 + c^2) - c`` per sample, ``||.||`` over all dimensions.

    ``pred, target: (B, ...)`` -> ``(B,)``. ``c`` defaults to :func:`huber_c_default` of the
    per-sample size. For ``||d|| << c`` it is ``~ ||d||^2 / (2c)``; for ``||d|| >> c`` it is
    ``~ ||d|| - c``.
    """
    if c is None:
        c = huber_c_default(pred[0].numel())
    sq = (pred - target).pow(2).flatten(1).sum(1)
    return torch.sqrt(sq + c * c) - c


DISTANCES: dict[str, Distance] = {
    "l2": l2_distance,
    "pseudo_huber": pseudo_huber_distance,
}


class Distillation:
    """Distil teacher pairs into a ``steps``-step student (an ``Objective``).

    Args:
        steps: 1 for a one-step map, ``k > 1`` for the k-step grid.
        loss: ``"l2"`` (mean squared error over dimensions) or ``"pseudo_huber"``.
        huber_c: the pseudo-Huber ``c`` (default ``0.00054 sqrt(dim)``); only with
            ``loss="pseudo_huber"``.
        distance: a per-sample distance ``(pred, target) -> (B,)`` that replaces ``loss``
            (e.g. LPIPS); with ``steps > 1`` it compares velocities.
        model: key of the student network in ``models`` and of the returned loss.
    """

    def __init__(
        self,
        *,
        steps: int = 1,
        loss: DistanceName = "l2",
        huber_c: float | None = None,
        distance: Distance | None = None,
        model: str = "model",
    ) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise GenkitError(f"distillation steps must be an integer >= 1, got {steps!r}")
        if loss not in DISTANCES:
            raise GenkitError(f"unknown distillation loss {loss!r}; choose one of {', '.join(DISTANCES)}")
        if huber_c is not None and (loss != "pseudo_huber" or distance is not None):
            raise GenkitError("huber_c applies only to loss='pseudo_huber' without a custom distance")
        if huber_c is not None and not huber_c > 0.0:
            raise GenkitError(f"huber_c must be > 0, got {huber_c}")
        self.steps = steps
        self.loss = loss
        self.huber_c = huber_c
        self.distance = distance
        self.model = model
        self.path = AffinePath(LinearSchedule())
        if distance is not None:
            self._fn = distance
        elif huber_c is not None:
            self._fn = functools.partial(pseudo_huber_distance, c=huber_c)
        else:
            self._fn = DISTANCES[loss]

    def _distance(self, pred: Tensor, target: Tensor) -> Tensor:
        d = self._fn(pred, target)
        if not isinstance(d, Tensor) or d.shape != (pred.shape[0],):
            got = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
            raise GenkitError(f"the distillation distance must return per-sample losses ({pred.shape[0]},), got {got}")
        return d

    def __call__(
        self,
        models: Mapping[str, nn.Module],
        batch: Any,
        *,
        need: frozenset[str],
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """Distillation loss on teacher pairs.

        Args:
            models: must hold the student under ``self.model``, called as
                ``v(x: (B, ...), t: (B,)) -> (B, ...)``.
            batch: :class:`Pairs` ``(z_0, z_1)``, both ``(B, ...)``.
            need: optimizer names the Trainer will step (one loss, always computed).
            generator: draws the grid index of each sample when ``steps > 1``; must
                live on ``z_1``'s device (unused for ``steps = 1``).

        Returns:
            ``LossOutput(losses={model: loss}, metrics={})``, loss the batch mean of the
            per-sample distances, a 0-dim tensor.
        """
        if self.model not in models:
            raise GenkitError(f"distillation needs a model named {self.model!r}; got {sorted(models)}")
        if not isinstance(batch, Pairs):
            raise GenkitError(f"distillation trains on Pairs(z_0, z_1) from a teacher, got {type(batch).__name__}")
        z_0, z_1 = batch
        if not (isinstance(z_0, Tensor) and isinstance(z_1, Tensor)) or z_0.shape != z_1.shape or z_0.dim() < 2:
            raise GenkitError("distillation Pairs need z_0 and z_1 tensors of the same shape (B, ...)")
        n = z_1.shape[0]
        student = models[self.model]
        if self.steps == 1:
            t = torch.zeros((n,), device=z_1.device, dtype=z_1.dtype)
            v = student(z_0, t)
            _check_shape(v, z_1)
            d = self._distance(z_0 + v, z_1)
        else:
            i = torch.randint(0, self.steps, (n,), generator=generator, device=z_1.device)
            t = i.to(z_1.dtype) / self.steps
            ps = self.path.sample(z_0, z_1, t)
            v = student(ps.x_t, t)
            _check_shape(v, z_1)
            d = self._distance(v, ps.dx_t)
        return LossOutput(losses={self.model: d.mean()}, metrics={})

    def __repr__(self) -> str:
        return (
            f"Distillation(steps={self.steps}, loss={self.loss!r}, huber_c={self.huber_c}, "
            f"distance={self.distance!r}, model={self.model!r})"
        )


def _check_shape(v: Tensor, x: Tensor) -> None:
    if v.shape != x.shape:
        raise GenkitError(f"the student returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
