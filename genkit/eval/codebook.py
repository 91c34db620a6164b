"""How a VQ codebook is used: code histogram, usage fraction, perplexity, dead codes.

Pure functions of a code histogram ``counts: (K,)`` (how often each of the K codes was selected).
The tensor functions return 0-dim tensors on the histogram's device (no host sync: usable as
training metrics every step); :func:`codebook_stats` gathers them as plain numbers for eval.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genkit.errors import GenkitError

__all__ = ["CodebookStats", "code_histogram", "codebook_stats", "dead_codes", "perplexity", "usage_fraction"]


def code_histogram(indices: Tensor, num_codes: int) -> Tensor:
    """Counts ``(K,)`` float32 of each code in ``indices`` (int64, any shape, values in ``[0, K)``).

    On the CPU an index outside ``[0, K)`` is a one-line error; on CUDA the check would cost a host
    sync, and the scatter's own device assert catches it instead.
    """
    if num_codes < 1:
        raise GenkitError(f"num_codes must be >= 1, got {num_codes}")
    if indices.dtype != torch.long:
        raise GenkitError(f"code indices must be int64, got {indices.dtype}")
    flat = indices.reshape(-1)  # (N,): every selected code
    if flat.device.type == "cpu" and flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_codes):
        raise GenkitError(f"code indices must lie in [0, {num_codes}), got [{int(flat.min())}, {int(flat.max())}]")
    counts = torch.zeros(num_codes, dtype=torch.float32, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))


def _check_counts(counts: Tensor) -> None:
    if counts.dim() != 1 or counts.numel() < 1:
        raise GenkitError(f"a code histogram is (K,) with K >= 1, got shape {tuple(counts.shape)}")


def usage_fraction(counts: Tensor) -> Tensor:
    """Fraction of the K codes selected at least once: ``counts: (K,)`` -> 0-dim, in ``[0, 1]``."""
    _check_counts(counts)
    return (counts > 0).float().mean()


def perplexity(counts: Tensor) -> Tensor:
    """``exp(H(p))`` of the code distribution ``p = counts / sum(counts)`` (``0 log 0 = 0``), 0-dim.

    Equals the number of used codes when they are used equally often, 1 when a single code takes
    everything; 0 for an empty histogram (no selections).
    """
    _check_counts(counts)
    total = counts.sum()
    p = counts.float() / total.clamp_min(1e-30)
    entropy = -torch.special.xlogy(p, p).sum()  # nats; xlogy(0, 0) = 0
    return torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy))


def dead_codes(counts: Tensor) -> Tensor:
    """Indices ``(M,)`` int64 of the codes never selected (``counts == 0``), ascending."""
    _check_counts(counts)
    return torch.nonzero(counts == 0).flatten()


@dataclass(frozen=True)
class CodebookStats:
    num_codes: int
    used: int
    """codes selected at least once"""
    usage: float
    """used / num_codes"""
    perplexity: float
    """exp(entropy) of the code distribution, in [1, used] (0 when nothing was selected)"""
    dead: int
    """codes never selected: num_codes - used"""


def codebook_stats(counts: Tensor) -> CodebookStats:
    """Every statistic above of one histogram ``counts: (K,)``, as plain numbers."""
    _check_counts(counts)
    dead = int((counts == 0).sum())
    return CodebookStats(len(counts), len(counts) - dead, float(usage_fraction(counts)), float(perplexity(counts)), dead)
