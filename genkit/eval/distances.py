"""Sample-based distances between point clouds (used to judge 2-D toy models)."""

from __future__ import annotations

import torch
from torch import Tensor

from genkit.errors import GenkitError

__all__ = ["energy_distance"]


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """Energy distance between two samples, the V-statistic.

    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with every expectation an average over all
    pairs, ``i = j`` included. The V-statistic is ``>= 0`` and is ``0`` exactly when the
    two samples are equal as multisets. Its expectation exceeds the population value
    by ``E|X - X'| / N + E|Y - Y'| / M``.

    Args:
        x: ``(N, d)`` samples.
        y: ``(M, d)`` samples (same ``d``).

    Returns:
        A 0-dim float64 tensor, differentiable in ``x`` and ``y``. Computed in float64
        on ``x``'s device; memory is ``O((N + M)^2)``.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise GenkitError(
            f"energy_distance expects (N, d) and (M, d) tensors, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise GenkitError("energy_distance needs at least one sample in each set")
    x = x.to(torch.float64)
    y = y.to(device=x.device, dtype=torch.float64)
    # The direct difference, not the |a|^2 + |b|^2 - 2ab shortcut, which is inexact for close points.
    mode = "donot_use_mm_for_euclid_dist"
    xy = torch.cdist(x, y, compute_mode=mode).mean()
    xx = torch.cdist(x, x, compute_mode=mode).mean()
    yy = torch.cdist(y, y, compute_mode=mode).mean()
    # Rounding can leave a tiny negative value for (near-)equal sets; the V-statistic is >= 0.
    return (2.0 * xy - xx - yy).clamp_min(0.0)
