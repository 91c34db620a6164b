"""Closed-form velocity fields: the oracles that tests (and toy demos) compare against.

Source ``x_0 ~ N(0, I)`` throughout; ``x_t = alpha_t x_1 + sigma_t x_0`` for a schedule
from :mod:`genkit.paths`. The exact (marginal) velocity is the posterior mean of the
conditional velocity (SPEC 1(c), 2(a)), ``v(x, t) = d_alpha_t x_1_hat + d_sigma_t eps_hat``
with ``x_1_hat = E[x_1 | x_t = x]`` and ``eps_hat = (x - alpha_t x_1_hat) / sigma_t``.

* Finite-atom data ``P(x_1 = a_i) = pi_i`` (SPEC 1(e)4, 2(e)4, 10): :func:`atoms_posterior_mean`,
  :func:`atoms_velocity`.
* Isotropic Gaussian data ``x_1 ~ N(mu, sigma^2 I)``, any schedule: :func:`gaussian_posterior_mean`,
  :func:`gaussian_velocity`; its flow is ``x_t = alpha_t mu + sqrt(alpha_t^2 sigma^2 + sigma_t^2) z``.
* The same under rectified flow (linear schedule), SPEC 2(e)1 and 2(e)3: :func:`gaussian_rf_velocity`,
  :func:`gaussian_rf_map`, :func:`gaussian_rf2_velocity`, written in closed form so they are finite
  at ``t = 0`` and ``t = 1``.

In the Gaussian functions ``sigma`` is the data's standard deviation, not the schedule's ``sigma_t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genkit.errors import GenkitError
from genkit.parameterization import convert
from genkit.paths import Schedule, expand_as

__all__ = [
    "atoms_posterior_mean",
    "atoms_velocity",
    "gaussian_posterior_mean",
    "gaussian_rf2_velocity",
    "gaussian_rf_map",
    "gaussian_rf_velocity",
    "gaussian_velocity",
]


def atoms_posterior_mean(x_t: Tensor, t: Tensor, atoms: Tensor, weights: Tensor, schedule: Schedule) -> Tensor:
    """``E[x_1 | x_t]`` for data on finitely many atoms.

    The posterior over atoms is ``softmax_i(log pi_i + log N(x_t; alpha_t a_i, sigma_t^2 I))``.
    Needs ``sigma_t > 0`` (``t < 1``).

    Args:
        x_t: ``(B, ...)`` points.
        t: ``(B,)`` times.
        atoms: ``(K, ...)`` the atoms ``a_i`` (same trailing shape as ``x_t``).
        weights: ``(K,)`` non-negative probabilities ``pi_i`` (normalised here).
        schedule: the path's schedule.

    Returns:
        ``(B, ...)`` posterior mean ``sum_i w_i(x_t) a_i``.
    """
    if atoms.dim() < 1 or atoms.shape[1:] != x_t.shape[1:]:
        raise GenkitError(f"atoms must have shape (K, ...) = (K, {tuple(x_t.shape[1:])}), got {tuple(atoms.shape)}")
    if weights.shape != atoms.shape[:1]:
        raise GenkitError(f"weights must have shape (K,) = ({atoms.shape[0]},), got {tuple(weights.shape)}")
    if t.shape != x_t.shape[:1]:
        raise GenkitError(f"t must have shape (B,) = ({x_t.shape[0]},), got {tuple(t.shape)}")
    c = schedule(t)
    x = x_t.flatten(1)  # (B, D)
    a = atoms.flatten(1).to(x)  # (K, D)
    alpha, var = c.alpha_t[:, None], (c.sigma_t**2)[:, None]  # (B, 1)
    # -||x - alpha a_i||^2 / (2 var) without the ||x||^2 term, which is the same for every atom.
    log_lik = (alpha * (x @ a.T) - 0.5 * alpha**2 * (a**2).sum(1)) / var  # (B, K)
    w = torch.softmax(torch.log(weights.to(x)) + log_lik, dim=1)
    return (w @ a).view_as(x_t)


def atoms_velocity(x: Tensor, t: Tensor, atoms: Tensor, weights: Tensor, schedule: Schedule) -> Tensor:
    """Exact marginal velocity for finite-atom data under the Gaussian path of ``schedule``.

    ``v = d_alpha_t x_1_hat + d_sigma_t (x - alpha_t x_1_hat) / sigma_t`` with ``x_1_hat`` from
    :func:`atoms_posterior_mean`. Needs ``sigma_t > 0`` (``t < 1``).

    Args:
        x: ``(B, ...)`` points.
        t: ``(B,)`` times.
        atoms: ``(K, ...)`` atoms.
        weights: ``(K,)`` probabilities.
        schedule: the path's schedule.

    Returns:
        ``(B, ...)`` velocity.
    """
    x_1_hat = atoms_posterior_mean(x, t, atoms, weights, schedule)
    return convert(x_1_hat, x, t, schedule, src="x_1", dst="velocity")


def gaussian_posterior_mean(x_t: Tensor, t: Tensor, mu: float | Tensor, sigma: float, schedule: Schedule) -> Tensor:
    """``E[x_1 | x_t]`` for ``x_1 ~ N(mu, sigma^2 I)``, ``x_0 ~ N(0, I)`` independent.

    ``x_t ~ N(alpha_t mu, (alpha_t^2 sigma^2 + sigma_t^2) I)`` and
    ``E[x_1 | x_t] = mu + alpha_t sigma^2 (x_t - alpha_t mu) / (alpha_t^2 sigma^2 + sigma_t^2)``.

    Args:
        x_t: ``(B, ...)`` points.
        t: ``(B,)`` times.
        mu: data mean, a float or a tensor broadcastable to ``x_t[0]``.
        sigma: data standard deviation (> 0).
        schedule: the path's schedule.

    Returns:
        ``(B, ...)`` posterior mean.
    """
    c = schedule(t)
    alpha, sigma_t = expand_as(c.alpha_t, x_t), expand_as(c.sigma_t, x_t)
    gain = alpha * sigma**2 / (alpha**2 * sigma**2 + sigma_t**2)
    return mu + gain * (x_t - alpha * mu)


def gaussian_velocity(x: Tensor, t: Tensor, mu: float | Tensor, sigma: float, schedule: Schedule) -> Tensor:
    """Exact velocity from ``N(0, I)`` to ``N(mu, sigma^2 I)`` under the path of ``schedule``.

    Built from :func:`gaussian_posterior_mean`; needs ``sigma_t > 0`` (``t < 1``). Its flow is
    ``x_t = alpha_t mu + sqrt(alpha_t^2 sigma^2 + sigma_t^2) x_0``.

    Args:
        x: ``(B, ...)`` points.
        t: ``(B,)`` times.
        mu: data mean, a float or a tensor broadcastable to ``x[0]``.
        sigma: data standard deviation.
        schedule: the path's schedule.

    Returns:
        ``(B, ...)`` velocity.
    """
    x_1_hat = gaussian_posterior_mean(x, t, mu, sigma, schedule)
    return convert(x_1_hat, x, t, schedule, src="x_1", dst="velocity")


def gaussian_rf_velocity(x: Tensor, t: Tensor, mu: float | Tensor, sigma: float) -> Tensor:
    """Rectified-flow velocity from ``N(0, I)`` to ``N(mu, sigma^2 I)`` (independent coupling, SPEC 2(e)1).

    ``v(x, t) = mu + (t sigma^2 - (1 - t)) / s_t^2 * (x - t mu)`` with ``s_t^2 = (1 - t)^2 + t^2 sigma^2``;
    finite on all of ``[0, 1]``. Trajectories are ``Z_t = t mu + s_t Z_0``.

    Args:
        x: ``(B, ...)`` points.
        t: ``(B,)`` times.
        mu: data mean, a float or a tensor broadcastable to ``x[0]``.
        sigma: data standard deviation.

    Returns:
        ``(B, ...)`` velocity.
    """
    t = expand_as(t, x)
    s2 = (1 - t) ** 2 + t**2 * sigma**2
    return mu + (t * sigma**2 - (1 - t)) / s2 * (x - t * mu)


def gaussian_rf_map(z_0: Tensor, mu: float | Tensor, sigma: float) -> Tensor:
    """End point of the Gaussian rectified flow: ``Z_1 = mu + sigma Z_0``.

    ``z_0: (B, ...)`` source samples; returns ``(B, ...)``.
    """
    return mu + sigma * z_0


def gaussian_rf2_velocity(x: Tensor, t: Tensor, mu: float | Tensor, sigma: float) -> Tensor:
    """2-rectified-flow velocity on the pairs ``(Z_0, mu + sigma Z_0)`` (SPEC 2(e)3).

    ``v(x, t) = mu + (sigma - 1)(x - t mu) / ((1 - t) + t sigma)``: trajectories are straight,
    so one Euler step from ``t = 0`` lands exactly on :func:`gaussian_rf_map`.

    Args:
        x: ``(B, ...)`` points.
        t: ``(B,)`` times.
        mu: data mean, a float or a tensor broadcastable to ``x[0]``.
        sigma: data standard deviation (> 0).

    Returns:
        ``(B, ...)`` velocity.
    """
    t = expand_as(t, x)
    return mu + (sigma - 1) * (x - t * mu) / ((1 - t) + t * sigma)
