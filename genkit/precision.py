"""Which precision a network runs in: the one rule every training and evaluation path follows.

``auto`` means bf16 autocast on CUDA and float32 elsewhere; ``fp32`` and ``bf16`` are explicit. A
network evaluated inside an ODE solver runs in bf16 while the solver's state stays float32
(:func:`autocast_field`); on the CPU it always runs in float32 (bf16 matrix work is slow there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Precision", "ResolvedPrecision", "autocast_field", "field_precision", "resolve_precision"]

Precision = Literal["auto", "fp32", "bf16"]
"""a precision setting: auto resolves by device"""
ResolvedPrecision = Literal["fp32", "bf16"]
"""what a network actually runs in"""


def resolve_precision(precision: Precision, device: torch.device) -> ResolvedPrecision:
    """``auto``: bf16 autocast on CUDA, float32 elsewhere; an explicit choice stands."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def field_precision(precision: Precision, device: torch.device) -> ResolvedPrecision:
    """What a network wrapped by :func:`autocast_field` runs in: bf16 only on CUDA, when asked for."""
    return "bf16" if device.type == "cuda" and resolve_precision(precision, device) == "bf16" else "fp32"


def autocast_field(net: Callable[[Tensor, Tensor], Tensor], device: torch.device, precision: Precision) -> Callable:
    """``net`` evaluated under bf16 autocast when :func:`field_precision` says bf16, else ``net`` itself:
    the caller's tensors (the solver state) keep their dtype, float32."""
    if field_precision(precision, device) != "bf16":
        return net

    def field(x: Tensor, t: Tensor) -> Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return net(x, t)

    return field
