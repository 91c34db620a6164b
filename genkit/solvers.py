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

__all__ = ["FIXED_STEP_METHODS", "METHODS", "Field", "Method", "Trajectory", "integrate", "time_grid"]

Method = Literal["euler", "midpoint", "rk4", "dopri5"]
METHODS: tuple[str, ...] = get_args(Method)
# Methods that step exactly on the grid; the others choose their own steps.
FIXED_STEP_METHODS: frozenset[str] = frozenset({"euler", "midpoint", "rk4"})

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
    states at the grid times. The state is float64 if ``x`` is float64 and float32
    otherwise; the field's output (bf16 under autocast, say) is cast to it. The solve
    is differentiable unless the caller wraps it in ``torch.no_grad()``.

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
    batch = x.shape[0]
    nfe = 0

    def func(t: Tensor, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
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
