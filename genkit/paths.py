"""Probability paths between a source x_0 (t = 0) and data x_1 (t = 1).

An affine path interpolates ``x_t = alpha_t * x_1 + sigma_t * x_0``; a *schedule*
gives ``(alpha_t, sigma_t)`` and their time derivatives. Rectified flow is the
linear schedule ``alpha_t = t, sigma_t = 1 - t`` (SPEC section 2).

Schedules are plain callables ``schedule(t) -> Coefficients`` so that new ones
(cosine, variance preserving, ...) are added without touching :class:`AffinePath`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from genkit.errors import GenkitError

__all__ = [
    "AffinePath",
    "Coefficients",
    "LinearSchedule",
    "PathSample",
    "Schedule",
    "expand_as",
]


@dataclass(frozen=True)
class Coefficients:
    """Schedule values at a batch of times; every field has shape ``(B,)``.

    ``alpha_t`` multiplies the data x_1, ``sigma_t`` the source x_0, and
    ``d_alpha_t``, ``d_sigma_t`` are their derivatives in ``t``.
    """

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor


class Schedule(Protocol):
    """Maps times ``t: (B,)`` to :class:`Coefficients` (each ``(B,)``)."""

    def __call__(self, t: Tensor) -> Coefficients: ...


class LinearSchedule:
    """Rectified-flow schedule: ``alpha_t = t``, ``sigma_t = 1 - t``.

    Derivatives are ``d_alpha_t = 1`` and ``d_sigma_t = -1``.
    """

    def __call__(self, t: Tensor) -> Coefficients:
        """Coefficients at ``t: (B,)``; each returned field is ``(B,)``, same dtype as ``t``."""
        _check_times(t)
        one = t.new_ones(t.shape)
        return Coefficients(alpha_t=t, sigma_t=1.0 - t, d_alpha_t=one, d_sigma_t=-one)

    def __repr__(self) -> str:
        return "LinearSchedule()"


@dataclass(frozen=True)
class PathSample:
    """A point on the path and its conditional velocity.

    ``x_t: (B, ...)`` is the interpolant; ``dx_t: (B, ...)`` is ``d/dt x_t`` for the
    fixed pair ``(x_0, x_1)`` (the flow-matching regression target).
    """

    x_t: Tensor
    dx_t: Tensor


class AffinePath:
    """``x_t = alpha_t * x_1 + sigma_t * x_0`` for a :class:`Schedule`.

    The conditional velocity is ``dx_t = d_alpha_t * x_1 + d_sigma_t * x_0``.
    """

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor) -> PathSample:
        """Interpolate between a source and a data batch.

        Args:
            x_0: ``(B, ...)`` source samples (noise or any prior), the state at t = 0.
            x_1: ``(B, ...)`` data samples, the state at t = 1.
            t: ``(B,)`` times in ``[0, 1]``.

        Returns:
            :class:`PathSample` with ``x_t`` and ``dx_t``, both ``(B, ...)``.
        """
        if x_0.shape != x_1.shape:
            raise GenkitError(
                f"x_0 and x_1 must have the same shape, got {tuple(x_0.shape)} and {tuple(x_1.shape)}"
            )
        _check_times(t, batch=x_1.shape[0])
        c = self.schedule(t)
        alpha_t, sigma_t = expand_as(c.alpha_t, x_1), expand_as(c.sigma_t, x_1)
        d_alpha_t, d_sigma_t = expand_as(c.d_alpha_t, x_1), expand_as(c.d_sigma_t, x_1)
        return PathSample(
            x_t=alpha_t * x_1 + sigma_t * x_0,
            dx_t=d_alpha_t * x_1 + d_sigma_t * x_0,
        )

    def __repr__(self) -> str:
        return f"AffinePath({self.schedule!r})"


def expand_as(c: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample values ``c: (B,)`` to ``(B, 1, ..., 1)`` so they broadcast against ``x: (B, ...)``."""
    return c.reshape(c.shape[0], *([1] * (x.dim() - 1)))


def _check_times(t: Tensor, batch: int | None = None) -> None:
    if t.dim() != 1:
        raise GenkitError(f"t must have shape (B,), got {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        raise GenkitError(f"t has {t.shape[0]} entries but the batch has {batch} samples")
