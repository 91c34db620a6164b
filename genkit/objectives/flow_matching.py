"""Flow matching (rectified flow) objective: regress a velocity on a path's target.

SPEC section 2(b): ``L = E_{t, (x_0, x_1)} || v(x_t, t) - dx_t ||^2`` where
``(x_0, x_1)`` comes from a coupling of ``N(0, I)`` with the data (independent, or
minibatch OT, see :mod:`genkit.couplings`) or is given as :class:`Pairs` (reflow: pairs
``(Z_0, Z_1)`` simulated by the previous flow), and ``t`` from a time sampler:

* :class:`UniformTime` — ``U[t_min, 1]`` (RF uses ``t_min = 1e-3``);
* :class:`LogitNormalTime` — ``t = sigmoid(N(mean, std^2))`` (Esser et al. 2024);
* :class:`UShapedTime` — density ``∝ cosh(a (t - 1/2))`` on ``[0, 1]`` (Lee et al. 2024,
  "Improving the training of rectified flows"), more weight near both ends.

All of them return times in ``[0, 1)``: a draw that rounds to 1 becomes the largest float below 1
(at ``t = 1`` VP's ``d_sigma_t = -inf`` makes the loss infinite).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from genkit.couplings import COUPLINGS, Coupling, Pairs
from genkit.errors import GenkitError
from genkit.objectives.base import LossOutput
from genkit.paths import AffinePath

__all__ = [
    "TIME_SAMPLERS",
    "FlowMatching",
    "LogitNormalTime",
    "TimeSampler",
    "UShapedTime",
    "UniformTime",
    "flow_matching_loss",
]


def flow_matching_loss(v: Tensor, dx_t: Tensor) -> Tensor:
    """Mean over the batch of the mean over dimensions of ``(v - dx_t)^2``.

    ``v, dx_t: (B, ...)``; returns a 0-dim tensor.
    """
    return (v - dx_t).pow(2).flatten(1).mean(1).mean()


# ----------------------------------------------------------------------------- time samplers


class TimeSampler(Protocol):
    """Draws ``n`` training times in ``[0, 1)``: returns ``(n,)`` on ``device`` in ``dtype``."""

    def __call__(
        self, n: int, *, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
    ) -> Tensor: ...


@dataclass(frozen=True)
class UniformTime:
    """``t ~ U[t_min, 1]``: one ``torch.rand((n,))`` draw mapped to ``t_min + (1 - t_min) u``."""

    t_min: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.t_min < 1.0:
            raise GenkitError(f"t_min must be in [0, 1), got {self.t_min}")

    def __call__(
        self, n: int, *, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """``(n,)`` times in ``[t_min, 1)``."""
        u = torch.rand((n,), generator=generator, device=device, dtype=dtype)
        return _below_one(self.t_min + (1.0 - self.t_min) * u)  # rounds to 1 for t_min >= 0.5


@dataclass(frozen=True)
class LogitNormalTime:
    """``t = sigmoid(mean + std * eps)``, ``eps ~ N(0, 1)``: density peaked inside ``(0, 1)``."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not (self.std > 0.0 and math.isfinite(self.std) and math.isfinite(self.mean)):
            raise GenkitError(f"logit-normal times need a finite mean and std > 0, got {self.mean}, {self.std}")

    def __call__(
        self, n: int, *, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """``(n,)`` times in ``[0, 1)`` (the open interval up to rounding)."""
        eps = torch.randn((n,), generator=generator, device=device, dtype=dtype)
        return _below_one(torch.sigmoid(self.mean + self.std * eps))  # float32 sigmoid is 1 above ~17


@dataclass(frozen=True)
class UShapedTime:
    """Density ``p(t) = a cosh(a (t - 1/2)) / (2 sinh(a / 2))`` on ``[0, 1]`` (Lee et al. 2024, a = 4).

    Sampled by the closed-form inverse CDF: with ``F(t) = (sinh(a (t - 1/2)) + sinh(a/2)) / (2 sinh(a/2))``,
    ``t = 1/2 + asinh((2u - 1) sinh(a/2)) / a`` for ``u ~ U[0, 1]``. ``p(0) / p(1/2) = cosh(a/2)``.
    """

    a: float = 4.0

    def __post_init__(self) -> None:
        if not (self.a > 0.0 and math.isfinite(self.a)):
            raise GenkitError(f"the U-shaped time density needs a > 0, got {self.a}")

    def __call__(
        self, n: int, *, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """``(n,)`` times in ``[0, 1)``."""
        u = torch.rand((n,), generator=generator, device=device, dtype=dtype)
        t = 0.5 + torch.asinh((2.0 * u - 1.0) * math.sinh(self.a / 2.0)) / self.a
        return _below_one(t.clamp(min=0.0))  # rounding only: u = 1 - 2^-24 gives 1 in float32


def _below_one(t: Tensor) -> Tensor:
    """``t`` with entries that rounded up to 1 set to the largest float below 1 (``1 - eps / 2``)."""
    return t.clamp(max=1.0 - torch.finfo(t.dtype).eps / 2)


TIME_SAMPLERS: dict[str, type] = {
    "uniform": UniformTime,
    "logit_normal": LogitNormalTime,
    "u_shaped": UShapedTime,
}
"""Time-sampler classes by name, for recipe configs."""


# ----------------------------------------------------------------------------- objective


class FlowMatching:
    """Conditional flow matching from ``N(0, I)`` (or given pairs) to the data (an ``Objective``).

    Args:
        path: the path whose conditional velocity is the regression target.
        model: key of the velocity network in ``models`` and of the returned loss.
        t_min: shorthand for ``time=UniformTime(t_min)`` (the RF code uses 1e-3); give
            either ``t_min`` or ``time``, not both.
        time: the time sampler (default ``UniformTime(t_min)``).
        coupling: how drawn noise is paired with a data batch: ``"independent"`` or
            ``"ot"`` (minibatch optimal transport); unused for a :class:`Pairs` batch.
    """

    def __init__(
        self,
        path: AffinePath,
        *,
        model: str = "model",
        t_min: float = 0.0,
        time: TimeSampler | None = None,
        coupling: Coupling = "independent",
    ) -> None:
        if time is not None and t_min != 0.0:
            raise GenkitError("give either t_min or time (e.g. time=UniformTime(t_min)), not both")
        if coupling not in COUPLINGS:
            raise GenkitError(f"unknown coupling {coupling!r}; choose one of {', '.join(COUPLINGS)}")
        self.path = path
        self.model = model
        self.time: TimeSampler = UniformTime(t_min) if time is None else time
        self.coupling = coupling

    @property
    def t_min(self) -> float:
        """Lower end of the uniform time range (0 for other time samplers)."""
        return self.time.t_min if isinstance(self.time, UniformTime) else 0.0

    def __call__(
        self,
        models: Mapping[str, nn.Module],
        batch: Any,
        *,
        need: frozenset[str],
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """Flow-matching loss on a batch.

        Args:
            models: must hold the velocity network under ``self.model``, called as
                ``v(x_t: (B, ...), t: (B,)) -> (B, ...)``.
            batch: :class:`Pairs` ``(x_0, x_1)``, both ``(B, ...)``, used as given; or data
                ``x_1: (B, ...)`` or a ``(x_1, ...)`` tuple/list (labels ignored), which is
                paired with noise by ``self.coupling``.
            need: optimizer names the Trainer will step; this objective has only one
                loss and always computes it.
            generator: draws ``x_0`` (not for :class:`Pairs`) then ``t``; must live on
                ``x_1``'s device.

        Returns:
            ``LossOutput(losses={model: loss}, metrics={})``, loss a 0-dim tensor.
        """
        if self.model not in models:
            raise GenkitError(f"flow matching needs a model named {self.model!r}; got {sorted(models)}")
        if isinstance(batch, Pairs):
            x_0, x_1 = _pairs(batch)
        else:
            x_0, x_1 = COUPLINGS[self.coupling](_data(batch), generator=generator)
        t = self.time(x_1.shape[0], generator=generator, device=x_1.device, dtype=x_1.dtype)
        ps = self.path.sample(x_0, x_1, t)
        v = models[self.model](ps.x_t, t)
        if v.shape != x_1.shape:
            raise GenkitError(f"the velocity model returned shape {tuple(v.shape)}, expected {tuple(x_1.shape)}")
        # A bf16 output (autocast) is promoted to the target's float32 by the subtraction.
        loss = flow_matching_loss(v, ps.dx_t)
        return LossOutput(losses={self.model: loss}, metrics={})

    def __repr__(self) -> str:
        return f"FlowMatching({self.path!r}, model={self.model!r}, time={self.time!r}, coupling={self.coupling!r})"


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


def _pairs(batch: Pairs) -> tuple[Tensor, Tensor]:
    x_0, x_1 = batch
    for name, x in (("x_0", x_0), ("x_1", x_1)):
        if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
            raise GenkitError(f"Pairs.{name} must be a float tensor of shape (B, ...)")
    if x_0.shape != x_1.shape:
        raise GenkitError(f"Pairs x_0 and x_1 must have the same shape, got {tuple(x_0.shape)} and {tuple(x_1.shape)}")
    return x_0, x_1
