"""Conversions between what a network predicts: velocity, eps, x_1 or score.

On an affine path ``x_t = alpha_t x_1 + sigma_t eps`` (:mod:`genkit.paths`; ``eps``
is the source sample x_0) a network's output at ``(x_t, t)`` estimates one of

* ``"velocity"``: ``v = d_alpha_t x_1 + d_sigma_t eps`` (flow matching),
* ``"eps"``: the source sample ``eps`` (DDPM),
* ``"x_1"``: the data ``x_1``,
* ``"score"``: ``grad log p_t(x_t) = -eps / sigma_t`` (needs a Gaussian source N(0, I)).

Since ``x_t`` is known, each of these fixes the canonical pair ``(x_1, eps)`` and is
fixed by it; every conversion goes through that pair (:func:`to_x1_eps`,
:func:`from_x1_eps`, :func:`convert`) instead of one function per pair of kinds. The
relations are linear, so they hold for posterior means too: converting the regression
optimum of one kind gives the regression optimum of another. Only ``"score"`` assumes
a Gaussian source; the other three hold for any source and coupling.

Where a conversion is singular (division by zero):

* ``x_1 <- eps / score`` divides by ``alpha_t``: singular at ``t = 0`` (VP: ``alpha_0 > 0``, not singular).
* ``eps <- x_1`` and ``score <-> anything`` divide by ``sigma_t``: singular at ``t = 1``.
* ``velocity -> (x_1, eps)`` divides by ``det = alpha_t d_sigma_t - sigma_t d_alpha_t``:
  ``det = -1`` (linear), ``-pi/2`` (cosine), ``-n t^(n-1)`` (polynomial: singular at ``t = 0``
  for ``n > 1``), ``-d_alpha_t / sigma_t`` (VP: infinite at ``t = 1``, where ``d_sigma_t = -inf``).

All are regular on the open interval ``(0, 1)`` for the built-in schedules.

:class:`ScheduleTransfer` reuses a velocity field trained under one schedule to sample
under another.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from genkit.errors import GenkitError
from genkit.paths import Coefficients, Schedule, expand_as
from genkit.solvers import Field

__all__ = [
    "PREDICTIONS",
    "Prediction",
    "ScheduleTransfer",
    "as_velocity",
    "convert",
    "from_x1_eps",
    "to_x1_eps",
]

Prediction = Literal["velocity", "eps", "x_1", "score"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)

_EDGE = 2.0**-20  # ScheduleTransfer keeps its times in [_EDGE, 1 - _EDGE] (exact in float32)


def to_x1_eps(kind: Prediction, pred: Tensor, x_t: Tensor, t: Tensor, schedule: Schedule) -> tuple[Tensor, Tensor]:
    """The pair ``(x_1_hat, eps_hat)`` consistent with a prediction and ``x_t``.

    Args:
        kind: what ``pred`` is, one of :data:`PREDICTIONS`.
        pred: ``(B, ...)`` the prediction.
        x_t: ``(B, ...)`` the point on the path where it was made.
        t: ``(B,)`` times.
        schedule: the path's schedule.

    Returns:
        ``(x_1_hat, eps_hat)``, both ``(B, ...)``, with ``x_t = alpha_t x_1_hat + sigma_t eps_hat``.
    """
    _check(kind, pred, x_t, t)
    return _to_x1_eps(kind, pred, x_t, _expanded(schedule(t), x_t))


def from_x1_eps(kind: Prediction, x_1_hat: Tensor, eps_hat: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """The prediction of kind ``kind`` that corresponds to ``(x_1_hat, eps_hat)``.

    Args:
        kind: one of :data:`PREDICTIONS`.
        x_1_hat: ``(B, ...)`` data estimate.
        eps_hat: ``(B, ...)`` source estimate.
        t: ``(B,)`` times.
        schedule: the path's schedule.

    Returns:
        ``(B, ...)``: ``d_alpha_t x_1_hat + d_sigma_t eps_hat`` for ``"velocity"``,
        ``eps_hat``, ``x_1_hat``, or ``-eps_hat / sigma_t`` for ``"score"``.
    """
    _check(kind, x_1_hat, eps_hat, t)
    return _from_x1_eps(kind, x_1_hat, eps_hat, _expanded(schedule(t), x_1_hat))


def convert(pred: Tensor, x_t: Tensor, t: Tensor, schedule: Schedule, *, src: Prediction, dst: Prediction) -> Tensor:
    """Re-express a prediction of kind ``src`` made at ``(x_t, t)`` as kind ``dst``.

    Args:
        pred: ``(B, ...)`` prediction of kind ``src``.
        x_t: ``(B, ...)`` point on the path.
        t: ``(B,)`` times.
        schedule: the path's schedule.
        src, dst: kinds, each one of :data:`PREDICTIONS`.

    Returns:
        ``(B, ...)`` prediction of kind ``dst`` (``pred`` itself if ``src == dst``).
    """
    _check(src, pred, x_t, t)
    _check_kind(dst)
    if src == dst:
        return pred
    c = _expanded(schedule(t), x_t)
    x_1_hat, eps_hat = _to_x1_eps(src, pred, x_t, c)
    return _from_x1_eps(dst, x_1_hat, eps_hat, c)


class _AsVelocity:
    """``field(x, t) = convert(net(x, t), x, t, schedule, src=kind, dst="velocity")``."""

    def __init__(self, net: Field, kind: Prediction, schedule: Schedule) -> None:
        _check_kind(kind)
        self.net, self.kind, self.schedule = net, kind, schedule

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return convert(self.net(x, t), x, t, self.schedule, src=self.kind, dst="velocity")

    def __repr__(self) -> str:
        return f"as_velocity({self.net!r}, {self.kind!r}, {self.schedule!r})"


def as_velocity(net: Field, kind: Prediction, schedule: Schedule) -> Field:
    """Wrap a network ``net(x: (B, ...), t: (B,)) -> (B, ...)`` that predicts ``kind`` as a velocity field.

    The result is a ``field(x, t)`` for :func:`genkit.solvers.integrate`; it inherits the
    singularities of the conversion (module docstring), e.g. an ``"eps"`` network gives
    a velocity that divides by ``alpha_t``, so start its integration at ``t > 0``.
    """
    return _AsVelocity(net, kind, schedule)


class ScheduleTransfer:
    """Sample with a velocity field trained under one schedule as if trained under another.

    For a Gaussian source, the path of the ``trained`` schedule ``(alpha, sigma)`` and the
    ``target`` schedule ``(abar, sbar)`` share the same data law and differ by a time change
    and a scale: with ``t_r`` chosen so the signal-to-noise ratios match,
    ``alpha(t_r) / sigma(t_r) = abar(r) / sbar(r)``, and ``k_r = abar(r) / alpha(t_r) = sbar(r) / sigma(t_r)``
    (computed stably as ``(abar + sbar) / (alpha + sigma)``), the target interpolant is
    ``y_r = k_r x_{t_r}`` pair by pair. Differentiating in ``r`` and taking the posterior mean:

        ``v_target(y, r) = (k_r' / k_r) y + k_r t_r' v_trained(y / k_r, t_r)``

    with ``t_r' = (dabar sbar - dsbar abar) / (k_r^2 (dalpha sigma - dsigma alpha))`` (ratio
    of log-SNR slopes) and ``k_r' = (dabar + dsbar - k_r t_r' (dalpha + dsigma)) / (alpha + sigma)``,
    trained coefficients at ``t_r``, target ones at ``r``.

    ``t_r`` is found by vectorised bisection on ``[0, 1]`` (the trained log-SNR must increase
    with ``t``). Target SNRs outside the trained schedule's range are clamped to its end
    points, where the identity no longer holds: e.g. a VP-trained field (``alpha_0 ~ 6.6e-3``)
    cannot serve a linear target at ``r < ~6.6e-3``.

    End points: ``r`` and ``t_r`` are clamped to ``[2^-20, 1 - 2^-20]`` before use, because the
    coefficients may be singular at 0 or 1 (VP's ``d_sigma_1 = -inf`` made every sample NaN,
    even for the identity transfer VP -> VP). The field at ``r = 1`` is thus the (finite) one at
    ``r = 1 - 2^-20``. A field trained under ``PolynomialSchedule(n > 1)`` is ill-conditioned near
    ``r = 0``: ``t_r' ~ 1 / (n t_r^(n-1))`` is large there (512 at ``r = 2^-20`` for ``n = 2`` and a
    linear target) and amplifies the network's error at small ``t``.

    Args:
        field: ``field(x: (B, ...), t: (B,)) -> (B, ...)`` velocity trained under ``trained``.
        trained: the schedule the field was trained with.
        target: the schedule to sample with.
    """

    def __init__(self, field: Field, trained: Schedule, target: Schedule) -> None:
        self.field, self.trained, self.target = field, trained, target

    def __call__(self, x: Tensor, r: Tensor) -> Tensor:
        """Target-schedule velocity at ``x: (B, ...)``, ``r: (B,)``; returns ``(B, ...)``."""
        _check(None, x, x, r)
        r = r.clamp(_EDGE, 1.0 - _EDGE)  # see "End points" above
        tb = self.target(r)
        t_r = self.matched_time(r).clamp(_EDGE, 1.0 - _EDGE)
        tr = self.trained(t_r)
        k = (tb.alpha_t + tb.sigma_t) / (tr.alpha_t + tr.sigma_t)
        dt_dr = (tb.d_alpha_t * tb.sigma_t - tb.d_sigma_t * tb.alpha_t) / (
            k**2 * (tr.d_alpha_t * tr.sigma_t - tr.d_sigma_t * tr.alpha_t)
        )
        dk_dr = (tb.d_alpha_t + tb.d_sigma_t - k * dt_dr * (tr.d_alpha_t + tr.d_sigma_t)) / (tr.alpha_t + tr.sigma_t)
        v = self.field(x / expand_as(k, x), t_r)
        return expand_as(dk_dr / k, x) * x + expand_as(k * dt_dr, x) * v

    @torch.no_grad()
    def matched_time(self, r: Tensor) -> Tensor:
        """Trained-schedule times ``t_r: (B,)`` whose SNR equals the target's at ``r: (B,)``."""
        tb = self.target(r)
        lo, hi = torch.zeros_like(r), torch.ones_like(r)
        # The sign of alpha(t) sbar - sigma(t) abar is that of SNR(t) - SNRbar(r), monotone in t
        # (and free of division at the end points). Halve until the bracket is below resolution.
        for _ in range(round(-math.log2(torch.finfo(r.dtype).eps)) + 4):
            mid = 0.5 * (lo + hi)
            c = self.trained(mid)
            above = c.alpha_t * tb.sigma_t - c.sigma_t * tb.alpha_t > 0
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return 0.5 * (lo + hi)

    def __repr__(self) -> str:
        return f"ScheduleTransfer({self.field!r}, trained={self.trained!r}, target={self.target!r})"


def _to_x1_eps(kind: str, pred: Tensor, x_t: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    # Solve x_t = alpha x_1 + sigma eps together with the relation that defines `kind`.
    if kind == "x_1":
        return pred, (x_t - c.alpha_t * pred) / c.sigma_t
    if kind in ("eps", "score"):
        eps = pred if kind == "eps" else -c.sigma_t * pred
        return (x_t - c.sigma_t * eps) / c.alpha_t, eps
    # velocity: [[alpha, sigma], [d_alpha, d_sigma]] @ (x_1, eps) = (x_t, v), Cramer's rule.
    det = c.alpha_t * c.d_sigma_t - c.sigma_t * c.d_alpha_t
    return (c.d_sigma_t * x_t - c.sigma_t * pred) / det, (c.alpha_t * pred - c.d_alpha_t * x_t) / det


def _from_x1_eps(kind: str, x_1_hat: Tensor, eps_hat: Tensor, c: Coefficients) -> Tensor:
    if kind == "x_1":
        return x_1_hat
    if kind == "eps":
        return eps_hat
    if kind == "score":
        return -eps_hat / c.sigma_t
    return c.d_alpha_t * x_1_hat + c.d_sigma_t * eps_hat


def _expanded(c: Coefficients, x: Tensor) -> Coefficients:
    return Coefficients(*(expand_as(v, x) for v in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t)))


def _check_kind(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise GenkitError(f"unknown prediction kind {kind!r}; choose one of {', '.join(PREDICTIONS)}")


def _check(kind: str | None, a: Tensor, b: Tensor, t: Tensor) -> None:
    if kind is not None:
        _check_kind(kind)
    if a.shape != b.shape:
        raise GenkitError(f"prediction and x_t must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if t.dim() != 1 or a.dim() < 1 or t.shape[0] != a.shape[0]:
        raise GenkitError(f"t must have shape (B,) = ({a.shape[0] if a.dim() else '?'},), got {tuple(t.shape)}")
