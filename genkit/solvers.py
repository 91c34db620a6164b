"""ODE solvers: a thin layer over :func:`torchdiffeq.odeint` with genkit's conventions.

genkit fields are called ``field(x, t)`` with ``x: (B, ...)`` and ``t: (B,)``;
torchdiffeq calls ``func(t, y)`` with a scalar ``t``. :func:`integrate` adapts one
to the other, counts function evaluations (NFE), and keeps the integration state
in full precision whatever the field returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from genkit.errors import GenkitError

__all__ = [
    "DIVERGENCES", "EVALUATIONS_PER_STEP", "FIXED_STEP_METHODS", "METHODS", "PROBES", "Divergence", "Field", "LogLikelihood", "Method",
    "Probe", "Trajectory", "integrate", "log_likelihood", "time_grid",
]

Method = Literal["euler", "midpoint", "rk4", "dopri5"]
METHODS: tuple[str, ...] = get_args(Method)
# Methods that step exactly on the grid; the others choose their own steps.
FIXED_STEP_METHODS: frozenset[str] = frozenset({"euler", "midpoint", "rk4"})
EVALUATIONS_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2, "rk4": 4}
"""Field evaluations per step of each fixed-step method (``Trajectory.nfe`` counts them)."""

Field = Callable[[Tensor, Tensor], Tensor]
"""A velocity field ``field(x: (B, ...), t: (B,)) -> (B, ...)``."""


@dataclass(frozen=True)
class Trajectory:
    """States of an integration.

    ``xs: (T, B, ...)`` holds the state at each reported time (``xs[0]`` is the start);
    ``nfe`` is the number of field evaluations the solve used.
    """

    xs: Tensor
    nfe: int

    @property
    def x(self) -> Tensor:
        """The final state, ``(B, ...)``."""
        return self.xs[-1]


def time_grid(
    steps: int,
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform grid of ``steps`` intervals from ``t0`` to ``t1``: shape ``(steps + 1,)``.

    ``t1 < t0`` gives a decreasing grid (likelihood integrates 1 -> 0). The end points
    are exact. ``dtype`` defaults to float32; pass float64 for high-accuracy checks.
    """
    if steps < 1:
        raise GenkitError(f"steps must be >= 1, got {steps}")
    if t0 == t1:
        raise GenkitError(f"the grid needs t0 != t1, got t0 = t1 = {t0}")
    return torch.linspace(t0, t1, steps + 1, device=device, dtype=dtype)


def integrate(
    field: Field,
    x: Tensor,
    grid: Tensor,
    *,
    method: Method = "euler",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    save_at: Tensor | None = None,
) -> Trajectory:
    """Solve ``dx/dt = field(x, t)`` from ``grid[0]`` to ``grid[-1]``.

    Fixed-step methods (``euler``, ``midpoint``, ``rk4``) take exactly one step per
    grid interval; ``dopri5`` is adaptive (``atol``, ``rtol``) and only reports its
    states at the grid times. The field is only evaluated at times between ``grid[0]``
    and ``grid[-1]``: ``dopri5``'s last step ends exactly on ``grid[-1]`` instead of
    overshooting it (a trained network never saw ``t > 1``). The state is float64 if
    ``x`` is float64 and float32 otherwise; the field's output (bf16 under autocast,
    say) is cast to it. The solve is differentiable unless the caller wraps it in
    ``torch.no_grad()``.

    Args:
        field: velocity ``field(x: (B, ...), t: (B,)) -> (B, ...)``.
        x: ``(B, ...)`` state at ``grid[0]``.
        grid: ``(T,)`` strictly monotone times (see :func:`time_grid`).
        method: one of :data:`METHODS`.
        atol, rtol: tolerances of the adaptive method (ignored by fixed-step ones).
        save_at: optional ``(K,)`` times at which to report states instead of the
            whole grid, starting at ``grid[0]`` and ending at ``grid[-1]``. Fixed-step
            methods still step on ``grid`` and interpolate linearly between grid points
            (exact at grid points); this keeps memory at K states for long solves.

    Returns:
        :class:`Trajectory` with ``xs: (T, B, ...)`` (or ``(K, B, ...)``) and ``nfe``.
    """
    from torchdiffeq import odeint  # keep `import genkit.solvers` light

    if method not in METHODS:
        raise GenkitError(f"unknown solver method {method!r}; choose one of {', '.join(METHODS)}")
    if x.dim() < 1 or not x.is_floating_point():
        raise GenkitError(f"x must be a floating-point tensor of shape (B, ...), got {x.dtype} {tuple(x.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    grid = _check_grid(grid, "grid").to(device=x.device, dtype=dtype)
    times = grid
    options: dict = {}
    if save_at is not None:
        times = _check_grid(save_at, "save_at").to(device=x.device, dtype=dtype)
        if times[0] != grid[0] or times[-1] != grid[-1]:
            raise GenkitError("save_at must start at grid[0] and end at grid[-1]")
        if method in FIXED_STEP_METHODS:
            # torchdiffeq steps on the constructed grid and reports at `times`.
            options["grid_constructor"] = lambda func, y0, t: grid
    if method not in FIXED_STEP_METHODS:
        # An adaptive step may otherwise overshoot the end and interpolate back, evaluating the
        # field past it (t up to ~1.3 forwards, ~-0.3 backwards): make the last step land on it.
        options["step_t"] = grid[-1:]
    lo, hi = torch.aminmax(grid)
    batch = x.shape[0]
    nfe = 0

    def func(t: Tensor, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        # Steps stay within the grid; only dopri5's initial step-size probe may reach past it.
        t = t.clamp(lo, hi)
        return field(y, t.expand(batch)).to(dtype)

    xs = odeint(func, x, times, method=method, atol=atol, rtol=rtol, options=options)
    return Trajectory(xs=xs, nfe=nfe)


def _check_grid(grid: Tensor, name: str) -> Tensor:
    if not isinstance(grid, Tensor) or grid.dim() != 1 or grid.numel() < 2:
        raise GenkitError(f"{name} must be a 1-D tensor of at least 2 times")
    if not grid.is_floating_point():
        grid = grid.to(torch.float32)
    diff = grid[1:] - grid[:-1]
    if not (bool((diff > 0).all()) or bool((diff < 0).all())):
        raise GenkitError(f"{name} must be strictly increasing or strictly decreasing")
    return grid


# --- ODE log-likelihood: the instantaneous change of variables, integrated 1 -> 0 ---------

Divergence = Literal["exact", "hutchinson"]
Probe = Literal["rademacher", "gaussian"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)
PROBES: tuple[str, ...] = get_args(Probe)


@dataclass(frozen=True)
class LogLikelihood:
    """Log-density of data under a flow, in nats.

    ``log_prob = prior_logp + delta``, each ``(B,)`` in the state dtype: ``prior_logp`` is
    ``log N(x_0; 0, I)`` at the noise ``x_0: (B, ...)`` the data flows back to, and
    ``delta = -int_0^1 div v(x_t, t) dt`` is the log-volume change along the trajectory.
    ``nfe`` counts field evaluations (each one is followed by the divergence's backward passes).
    """

    log_prob: Tensor
    prior_logp: Tensor
    delta: Tensor
    x_0: Tensor
    nfe: int


def log_likelihood(
    field: Field,
    x_1: Tensor,
    *,
    divergence: Divergence,
    probe: Probe = "rademacher",
    num_probes: int = 1,
    method: Method = "dopri5",
    steps: int = 100,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> LogLikelihood:
    """``log p_1(x_1)`` of the flow that pushes ``N(0, I)`` (t = 0) along ``field`` to t = 1.

    Instantaneous change of variables: ``d/dt log p_t(x_t) = -div v(x_t, t)``, so
    ``log p_1(x_1) = log N(x_0; 0, I) - int_0^1 div v(x_t, t) dt`` with ``x_t`` the trajectory
    through ``x_1``. The state ``[x, l]`` solves ``d/dt [x, l] = [v(x, t), div v(x, t)]`` from
    ``t = 1`` (``x = x_1``, ``l = 0``) down to ``t = 0`` with :func:`integrate`, which ends at
    ``x = x_0`` and ``l = int_1^0 div v dt = delta``.

    Divergence:

    * ``"exact"``: the trace of the Jacobian, one backward pass per dimension (small ``D``).
    * ``"hutchinson"``: ``div v ~ mean_k eps_k^T (dv/dx) eps_k``, one vector-Jacobian product per
      probe. The ``num_probes`` probes ``eps_k: (B, ...)`` (``"rademacher"`` +-1, or
      ``"gaussian"``) are drawn once per call from ``generator`` and held fixed along the whole
      trajectory, so ``delta`` is an unbiased estimate of the exact one on the same solver steps
      (for fixed-step methods; ``dopri5`` may pick slightly different steps). ``log_prob`` is then
      an unbiased estimate of ``log p``, not a bound. Rademacher probes have lower variance.

    Precision: the state (and so the divergence's accumulation) is float64 if ``x_1`` is float64
    and float32 otherwise, even when the field runs in bf16 under autocast. The field must treat
    batch rows independently (no batch statistics): row ``b``'s divergence is read from the
    gradient of a sum over the batch.

    Gradients: when grad mode is on, the result is differentiable (the divergence is built with
    ``create_graph``), like :func:`integrate`. Under ``torch.no_grad()`` grad is enabled only
    inside each field evaluation to take the divergence, and everything is detached before
    the solver sees it, so no graph is kept across steps.

    Args:
        field: velocity ``field(x: (B, ...), t: (B,)) -> (B, ...)``.
        x_1: ``(B, ...)`` data points.
        divergence: ``"exact"`` or ``"hutchinson"``.
        probe: Hutchinson probe distribution (ignored by ``"exact"``).
        num_probes: Hutchinson probes averaged per evaluation (``>= 1``).
        method: solver (see :data:`METHODS`); ``dopri5`` with ``rtol = atol = 1e-5`` is the
            reference setting.
        steps: grid intervals for fixed-step methods (ignored by ``dopri5``).
        atol, rtol: tolerances of ``dopri5``.
        generator: draws the Hutchinson probes (on ``x_1``'s device).

    Returns:
        :class:`LogLikelihood` with ``log_prob: (B,)`` in nats.
    """
    import math

    if divergence not in DIVERGENCES:
        raise GenkitError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise GenkitError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise GenkitError(f"num_probes must be an integer >= 1, got {num_probes!r}")
    if method not in METHODS:
        raise GenkitError(f"unknown solver method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(x_1, Tensor) or x_1.dim() < 2 or not x_1.is_floating_point() or x_1.shape[0] == 0:
        raise GenkitError("x_1 must be a non-empty floating-point tensor of shape (B, ...)")
    dtype = torch.float64 if x_1.dtype == torch.float64 else torch.float32
    x_1 = x_1.to(dtype)
    shape, batch = x_1.shape, x_1.shape[0]
    num_dims = x_1[0].numel()
    probes = None
    if divergence == "hutchinson":
        size = (num_probes, *shape)
        if probe == "rademacher":
            probes = torch.randint(0, 2, size, generator=generator, device=x_1.device).to(dtype) * 2 - 1
        else:
            probes = torch.randn(size, generator=generator, device=x_1.device, dtype=dtype)
    differentiable = torch.is_grad_enabled()

    def augmented(y: Tensor, t: Tensor) -> Tensor:
        x = y[:, :-1].reshape(shape)
        with torch.enable_grad():
            if not (differentiable and x.requires_grad):
                x = x.detach().requires_grad_(True)
            v = field(x, t)
            div = _divergence(v, x, probes, create_graph=differentiable)
        if not differentiable:
            v, div = v.detach(), div.detach()
        return torch.cat([v.reshape(batch, -1).to(dtype), div[:, None]], dim=1)

    y_1 = torch.cat([x_1.reshape(batch, -1), x_1.new_zeros(batch, 1)], dim=1)
    ends = time_grid(1, t0=1.0, t1=0.0, device=x_1.device, dtype=dtype)
    grid = time_grid(steps, t0=1.0, t1=0.0, device=x_1.device, dtype=dtype) if method in FIXED_STEP_METHODS else ends
    # Report only the two end states: a fixed-step solve keeps no per-step states.
    traj = integrate(augmented, y_1, grid, method=method, atol=atol, rtol=rtol, save_at=ends)
    y_0 = traj.x
    x_0, delta = y_0[:, :-1].reshape(shape), y_0[:, -1]
    prior_logp = -0.5 * y_0[:, :-1].pow(2).sum(1) - 0.5 * num_dims * math.log(2 * math.pi)
    return LogLikelihood(log_prob=prior_logp + delta, prior_logp=prior_logp, delta=delta, x_0=x_0, nfe=traj.nfe)


def _divergence(v: Tensor, x: Tensor, probes: Tensor | None, *, create_graph: bool) -> Tensor:
    """``div_x v: (B,)`` in ``x``'s dtype: exact if ``probes`` is None, else Hutchinson with ``probes: (K, B, ...)``."""
    if v.shape != x.shape:
        raise GenkitError(f"the field returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}; they must match")
    if not v.requires_grad:  # v does not depend on x at all
        return x.new_zeros(x.shape[0])

    def vjp(w: Tensor, *, last: bool) -> Tensor:  # w^T dv/dx, (B, ...) in x's dtype
        # The graph is kept only while another product follows (or for create_graph): a network
        # compiled with torch.compile (AOTAutograd) allows one backward per forward by default.
        (g,) = torch.autograd.grad(
            v, x, grad_outputs=w.to(v.dtype), retain_graph=create_graph or not last, create_graph=create_graph,
            allow_unused=True,
        )
        return torch.zeros_like(x) if g is None else g.to(x.dtype)

    if probes is None:
        div = x.new_zeros(x.shape[0])
        num_dims = x[0].numel()
        for i in range(num_dims):
            # A fresh one-hot each time: with create_graph the VJP's graph may keep it.
            one_hot = torch.zeros_like(x).flatten(1)
            one_hot[:, i] = 1
            div = div + vjp(one_hot.view_as(x), last=i == num_dims - 1).flatten(1)[:, i]
        return div
    div = x.new_zeros(x.shape[0])
    for k, eps in enumerate(probes):
        eps = eps.to(v.dtype).to(x.dtype)  # the probe exactly as the VJP sees it
        div = div + (vjp(eps, last=k == len(probes) - 1) * eps).flatten(1).sum(1)
    return div / probes.shape[0]
