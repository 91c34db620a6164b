"""Straightness of a flow's trajectories (SPEC section 2(a)).

``S(Z) = int_0^1 E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt``: zero exactly when every trajectory
is a straight line run at constant speed, in which case one Euler step is exact. Reflow
lowers it (``sum_k S(Z^k) <= E||X_1 - X_0||^2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genkit.errors import GenkitError
from genkit.solvers import Field, time_grid

__all__ = ["StraightnessResult", "straightness"]


@dataclass(frozen=True)
class StraightnessResult:
    """Straightness estimate of Euler trajectories; all values per dimension.

    ``value``: mean over samples of ``per_sample``. ``per_sample: (B,)`` float64 CPU.
    ``cost``: mean over samples and dimensions of ``(Z_1 - Z_0)^2`` (the transport cost).
    ``nfe``: field evaluations used (= ``steps``).
    """

    value: float
    per_sample: Tensor
    cost: float
    nfe: int


def straightness(field: Field, x_0: Tensor, *, steps: int = 100) -> StraightnessResult:
    """Estimate ``S`` by simulating Euler trajectories from ``x_0``.

    On the uniform grid ``t_i = i / steps`` the Euler states ``Z_{t_i}`` give
    ``Z_1 - Z_0 = mean_i v(Z_{t_i}, t_i)``, and the estimate is
    ``mean_i ||(Z_1 - Z_0) - v(Z_{t_i}, t_i)||^2`` averaged over samples, with ``||.||^2``
    the **mean over dimensions** (per-dimension units: multiply by the dimension for
    SPEC's sum-over-dimensions ``S``). It is the time-variance of the velocity along each
    trajectory, accumulated with Welford's update in float64, so it needs no memory per
    step and does not lose accuracy to cancellation for nearly straight flows.

    Args:
        field: velocity ``field(x: (B, ...), t: (B,)) -> (B, ...)``.
        x_0: ``(B, ...)`` starting points (noise samples); the state keeps ``x_0``'s
            dtype (float64 gives high-accuracy checks).
        steps: Euler steps (= NFE), ``>= 1``.

    Returns:
        :class:`StraightnessResult`. Runs under ``torch.no_grad()``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GenkitError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(x_0, Tensor) or x_0.dim() < 2 or not x_0.is_floating_point() or x_0.shape[0] == 0:
        raise GenkitError("x_0 must be a non-empty floating-point tensor of shape (B, ...)")
    batch = x_0.shape[0]
    grid = time_grid(steps, device=x_0.device, dtype=x_0.dtype)
    dt = 1.0 / steps
    with torch.no_grad():
        x = x_0.clone()
        mean = torch.zeros(x_0.shape, device=x_0.device, dtype=torch.float64)
        m2 = torch.zeros_like(mean)
        for i in range(steps):
            v = field(x, grid[i].expand(batch))
            if v.shape != x_0.shape:
                raise GenkitError(f"the field returned shape {tuple(v.shape)}, expected {tuple(x_0.shape)}")
            v64 = v.to(torch.float64)
            delta = v64 - mean
            mean += delta / (i + 1)
            m2 += delta * (v64 - mean)
            x = x + dt * v.to(x.dtype)
        # mean = (Z_1 - Z_0) exactly for Euler; m2 / steps = mean_i (v_i - mean)^2.
        per_sample = (m2 / steps).flatten(1).mean(1).cpu()
        cost = mean.pow(2).flatten(1).mean(1).mean().item()
    return StraightnessResult(value=per_sample.mean().item(), per_sample=per_sample, cost=cost, nfe=steps)
