"""Small fully connected networks for toy (2-D) generators, critics and velocity fields."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from genkit.errors import GenkitError

__all__ = ["ACTIVATIONS", "MLP", "Activation", "VelocityMLP", "timestep_embedding"]

Activation = Literal["silu", "relu", "leaky_relu", "gelu", "tanh"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


class MLP(nn.Module):
    """Plain MLP: ``depth`` hidden layers of width ``hidden``, then a linear output. No norm layers.

    ``forward(x: (B, in_dim)) -> (B, out_dim)``. ``depth=0`` is a single linear map.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 256,
        depth: int = 3,
        activation: Activation = "silu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise GenkitError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if min(in_dim, out_dim, hidden) < 1 or depth < 0:
            raise GenkitError(
                f"MLP needs positive dims and depth >= 0, got in_dim={in_dim}, out_dim={out_dim}, "
                f"hidden={hidden}, depth={depth}"
            )
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, in_dim) -> (B, out_dim)``."""
        return self.net(x)


def timestep_embedding(t: Tensor, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of times ``t: (B,)`` in ``[0, 1]``: returns ``(B, dim)``.

    Features are ``cos(scale * t * f_k)`` and ``sin(scale * t * f_k)`` with frequencies
    ``f_k = max_period ** (-k / (dim / 2))``, the transformer/DDPM embedding applied to
    ``scale * t`` (RF feeds ``999 t`` to its networks); ``dim`` must be even.
    """
    if dim < 2 or dim % 2:
        raise GenkitError(f"the time-embedding size must be even and >= 2, got {dim}")
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / half)
    angles = scale * t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class VelocityMLP(nn.Module):
    """Velocity field for flat data: ``forward(x: (B, dim), t: (B,)) -> (B, dim)``.

    ``t`` is embedded with :func:`timestep_embedding` (``time_dim`` features) and
    concatenated to ``x`` before an :class:`MLP` (``hidden``, ``depth``, SiLU).
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 3, time_dim: int = 32) -> None:
        super().__init__()
        if time_dim < 2 or time_dim % 2:
            raise GenkitError(f"time_dim must be even and >= 2, got {time_dim}")
        self.dim, self.time_dim = dim, time_dim
        self.net = MLP(dim + time_dim, dim, hidden=hidden, depth=depth, activation="silu")

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x: (B, dim)``, ``t: (B,)`` -> velocity ``(B, dim)`` in ``x``'s dtype."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise GenkitError(f"VelocityMLP({self.dim}) expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise GenkitError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = timestep_embedding(t, self.time_dim).to(x.dtype)
        return self.net(torch.cat([x, emb], dim=1))
