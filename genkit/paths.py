"""Probability paths between a source x_0 (t = 0) and data x_1 (t = 1).

An affine path interpolates ``x_t = alpha_t * x_1 + sigma_t * x_0``; a *schedule*
gives ``(alpha_t, sigma_t)`` and their time derivatives. Rectified flow is the
linear schedule ``alpha_t = t, sigma_t = 1 - t`` (SPEC section 2).

Schedules are plain callables ``schedule(t) -> Coefficients`` so that new ones
are added without touching :class:`AffinePath`. Built in: :class:`LinearSchedule`,
:class:`CosineSchedule`, :class:`VPSchedule`, :class:`PolynomialSchedule`, and
:class:`CustomSchedule` for any pair of callables (derivatives by autograd).
All of them follow genkit's convention: pure source at ``t = 0``
(``alpha_0 = 0, sigma_0 = 1``; VP only approximately) and pure data at ``t = 1``
(``alpha_1 = 1, sigma_1 = 0``).

Conversions between velocity / eps / x_1 / score predictions live in
:mod:`genkit.parameterization`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from genkit.errors import GenkitError

__all__ = [
    "SCHEDULES",
    "AffinePath",
    "Coefficients",
    "CosineSchedule",
    "CustomSchedule",
    "LinearSchedule",
    "PathSample",
    "PolynomialSchedule",
    "Schedule",
    "VPSchedule",
    "expand_as",
    "make_schedule",
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


@dataclass(frozen=True)
class LinearSchedule:
    """Rectified-flow schedule: ``alpha_t = t``, ``sigma_t = 1 - t``.

    Derivatives are ``d_alpha_t = 1`` and ``d_sigma_t = -1``.
    """

    def __call__(self, t: Tensor) -> Coefficients:
        """Coefficients at ``t: (B,)``; each returned field is ``(B,)``, same dtype as ``t``."""
        _check_times(t)
        one = t.new_ones(t.shape)
        return Coefficients(alpha_t=t, sigma_t=1.0 - t, d_alpha_t=one, d_sigma_t=-one)


@dataclass(frozen=True)
class CosineSchedule:
    """Trigonometric (variance-preserving) schedule: ``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)``.

    ``alpha_t^2 + sigma_t^2 = 1`` for every ``t``; ``d_alpha_t = (pi / 2) sigma_t`` and
    ``d_sigma_t = -(pi / 2) alpha_t``. ``sigma_t`` is computed as ``sin(pi (1 - t) / 2)``
    so that ``sigma_1 = 0`` exactly in floating point.
    """

    def __call__(self, t: Tensor) -> Coefficients:
        """Coefficients at ``t: (B,)``; each returned field is ``(B,)``, same dtype as ``t``."""
        _check_times(t)
        half_pi = 0.5 * math.pi
        alpha, sigma = torch.sin(half_pi * t), torch.sin(half_pi * (1.0 - t))
        return Coefficients(alpha_t=alpha, sigma_t=sigma, d_alpha_t=half_pi * sigma, d_sigma_t=-half_pi * alpha)


@dataclass(frozen=True)
class VPSchedule:
    """Variance-preserving SDE schedule (DDPM / score-SDE linear beta) in genkit time.

    With DDPM time ``s = 1 - t`` (data at ``s = 0``) and ``beta(s) = beta_min + s (beta_max - beta_min)``:
    ``alpha_t = exp(-1/2 int_0^s beta) = exp(-(beta_min s + (beta_max - beta_min) s^2 / 2) / 2)`` and
    ``sigma_t = sqrt(1 - alpha_t^2)``; ``d_alpha_t = alpha_t beta(s) / 2``,
    ``d_sigma_t = -alpha_t d_alpha_t / sigma_t``.

    Endpoints: ``alpha_1 = 1, sigma_1 = 0`` exactly, but the source end is only
    approximately pure noise: ``alpha_0 = exp(-(beta_min + beta_max) / 4)``
    (``exp(-5.025) ~ 6.6e-3`` for the defaults) and ``sigma_0 = sqrt(1 - alpha_0^2)``
    (``1 - 2.2e-5``). ``d_sigma_t`` diverges like ``(1 - t)^{-1/2}`` at ``t = 1``
    (it is ``-inf`` there), so sample training times in ``[0, 1)``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.beta_min <= self.beta_max) or self.beta_max <= 0.0:
            raise GenkitError(
                f"VPSchedule needs 0 <= beta_min <= beta_max and beta_max > 0, "
                f"got beta_min={self.beta_min}, beta_max={self.beta_max}"
            )

    def __call__(self, t: Tensor) -> Coefficients:
        """Coefficients at ``t: (B,)``; each returned field is ``(B,)``, same dtype as ``t``."""
        _check_times(t)
        s = 1.0 - t
        log_alpha = -0.5 * (self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2)
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(-torch.expm1(2.0 * log_alpha))  # 1 - alpha^2 without cancellation near t = 1
        d_alpha = 0.5 * alpha * (self.beta_min + s * (self.beta_max - self.beta_min))
        return Coefficients(alpha_t=alpha, sigma_t=sigma, d_alpha_t=d_alpha, d_sigma_t=-alpha * d_alpha / sigma)


@dataclass(frozen=True)
class PolynomialSchedule:
    """``alpha_t = t^n``, ``sigma_t = 1 - t^n`` (``n = 1`` is the linear schedule).

    ``d_alpha_t = n t^(n-1) = -d_sigma_t``; for ``n < 1`` it is infinite at ``t = 0``,
    for ``n > 1`` it vanishes there (so velocity -> (x_1, eps) conversions are
    singular at ``t = 0``, see :mod:`genkit.parameterization`).
    """

    n: float = 2.0

    def __post_init__(self) -> None:
        if not self.n > 0:
            raise GenkitError(f"PolynomialSchedule needs an exponent n > 0, got n={self.n}")

    def __call__(self, t: Tensor) -> Coefficients:
        """Coefficients at ``t: (B,)``; each returned field is ``(B,)``, same dtype as ``t``."""
        _check_times(t)
        alpha = t**self.n
        d_alpha = self.n * t ** (self.n - 1.0)
        return Coefficients(alpha_t=alpha, sigma_t=1.0 - alpha, d_alpha_t=d_alpha, d_sigma_t=-d_alpha)


class CustomSchedule:
    """A schedule from two callables ``alpha(t)``, ``sigma(t)``; derivatives by autograd.

    Each callable maps ``t: (B,)`` to ``(B,)`` elementwise (entry ``i`` may depend
    on ``t[i]`` only) with differentiable torch ops. The values keep ``t``'s autograd
    graph; the derivatives are computed on a detached copy with ``create_graph=False``
    (so they are constants for the caller's autograd) and work under ``torch.no_grad()`` and
    ``torch.inference_mode()``.
    Follow genkit's convention ``alpha_0 = 0, sigma_0 = 1, alpha_1 = 1, sigma_1 = 0``;
    the log signal-to-noise ratio ``log(alpha_t / sigma_t)`` should increase with ``t``.
    """

    def __init__(self, alpha: Callable[[Tensor], Tensor], sigma: Callable[[Tensor], Tensor]) -> None:
        self.alpha = alpha
        self.sigma = sigma

    def __call__(self, t: Tensor) -> Coefficients:
        """Coefficients at ``t: (B,)``; each returned field is ``(B,)``."""
        _check_times(t)
        # inference_mode(False): under torch.inference_mode() enable_grad() alone records no graph,
        # and the derivatives silently came out as zeros. The clone is a normal (non-inference) tensor.
        with torch.inference_mode(False), torch.enable_grad():
            leaf = t.detach().clone().requires_grad_(True)
            a, s = self._values(leaf)
            d_alpha = _elementwise_derivative(a, leaf, retain_graph=True)
            d_sigma = _elementwise_derivative(s, leaf, retain_graph=False)
        if t.requires_grad and torch.is_grad_enabled():
            alpha_t, sigma_t = self._values(t)  # values differentiable in the caller's t
        else:
            alpha_t, sigma_t = a.detach(), s.detach()
        return Coefficients(alpha_t=alpha_t, sigma_t=sigma_t, d_alpha_t=d_alpha, d_sigma_t=d_sigma)

    def _values(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a, s = self.alpha(t), self.sigma(t)
        for name, v in (("alpha", a), ("sigma", s)):
            if not isinstance(v, Tensor) or v.shape != t.shape:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise GenkitError(
                    f"CustomSchedule's {name}(t) must return a tensor shaped like t {tuple(t.shape)}, got {got}"
                )
        return a, s

    def __repr__(self) -> str:
        return f"CustomSchedule(alpha={self.alpha!r}, sigma={self.sigma!r})"


def _elementwise_derivative(y: Tensor, t: Tensor, *, retain_graph: bool) -> Tensor:
    """``dy_i/dt_i`` for an elementwise ``y: (B,)`` of ``t: (B,)`` (zeros if ``y`` is constant)."""
    if not y.requires_grad:
        return torch.zeros_like(t)
    # Entry i depends on t[i] only, so the gradient of the sum is the elementwise derivative.
    (dy,) = torch.autograd.grad(y.sum(), t, retain_graph=retain_graph, materialize_grads=True)
    return dy


SCHEDULES: dict[str, Callable[[], Schedule]] = {
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "vp": VPSchedule,
    "polynomial": PolynomialSchedule,
}
"""Named schedules with their default parameters (explicit dispatch for configs)."""


def make_schedule(name: str) -> Schedule:
    """The schedule called ``name`` (a key of :data:`SCHEDULES`) with default parameters."""
    try:
        factory = SCHEDULES[name]
    except KeyError:
        raise GenkitError(f"unknown schedule {name!r}; choose one of {', '.join(sorted(SCHEDULES))}") from None
    return factory()


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
