"""Encoder and decoder networks of the VAE recipe: an MLP (the vMF-VAE post's, SPEC 5(d)) and a small CNN.

Encoders map images ``x: (B, C, H, W)`` in ``[-1, 1]`` to ``(B, out_dim)`` (the posterior's parameters);
decoders map codes ``z: (N, latent_dim)`` to ``(N, C, H, W)`` (Bernoulli logits or Gaussian means).
The CNNs take any ``H, W`` divisible by 4 (28x28 MNIST-like sets, 32x32 CIFAR-10).
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from genkit.errors import GenkitError

__all__ = ["ARCHS", "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "build_vae_nets"]

Arch = Literal["mlp", "conv"]


def _check_shape(shape: tuple[int, ...], arch: str) -> None:
    if len(shape) != 3 or min(shape) < 1:
        raise GenkitError(f"the VAE networks need an image shape (C, H, W), got {tuple(shape)}")
    if arch == "conv" and (shape[1] % 4 or shape[2] % 4):
        raise GenkitError(f"the conv VAE needs H and W divisible by 4, got {shape[1]}x{shape[2]}: use --model.arch mlp")


class MLPEncoder(nn.Module):
    """Flatten -> Linear(hidden) -> ReLU -> Linear(out_dim): ``(B, C, H, W) -> (B, out_dim)``."""

    def __init__(self, shape: tuple[int, int, int], out_dim: int, *, hidden: int = 256) -> None:
        super().__init__()
        _check_shape(shape, "mlp")
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """Linear(hidden) -> ReLU -> Linear(C*H*W) -> reshape: ``(N, latent_dim) -> (N, C, H, W)``."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], *, hidden: int = 256) -> None:
        super().__init__()
        _check_shape(shape, "mlp")
        self.shape = tuple(shape)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(shape)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.shape)  # (N, C*H*W) -> (N, C, H, W)


class ConvEncoder(nn.Module):
    """Two stride-2 4x4 convolutions (H/4 x W/4) -> Linear(hidden) -> ReLU -> Linear(out_dim).

    ``(B, C, H, W) -> (B, out_dim)``; ``channels``: the two convolutions' widths.
    """

    def __init__(self, shape: tuple[int, int, int], out_dim: int, *, channels: tuple[int, int] = (32, 64),
                 hidden: int = 256) -> None:
        super().__init__()
        _check_shape(shape, "conv")
        c, h, w = shape
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),  # (B, c2, H/4, W/4) -> (B, c2 * H/4 * W/4)
            nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU(), nn.Linear(hidden, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: Linear -> (c2, H/4, W/4) -> two stride-2 transposed convolutions.

    ``(N, latent_dim) -> (N, C, H, W)``; ``channels``: the encoder's widths (used in reverse).
    """

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], *, channels: tuple[int, int] = (32, 64),
                 hidden: int = 256) -> None:
        super().__init__()
        _check_shape(shape, "conv")
        c, h, w = shape
        c1, c2 = channels
        self.start = (c2, h // 4, w // 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(self.start)),
                                     nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.project(z).view(z.shape[0], *self.start))  # (N, c2*H/4*W/4) -> (N, c2, H/4, W/4)


def _mlp(shape, out_dim, latent_dim, hidden, channels):
    return MLPEncoder(shape, out_dim, hidden=hidden), MLPDecoder(latent_dim, shape, hidden=hidden)


def _conv(shape, out_dim, latent_dim, hidden, channels):
    return (ConvEncoder(shape, out_dim, channels=channels, hidden=hidden),
            ConvDecoder(latent_dim, shape, channels=channels, hidden=hidden))


ARCHS = {"mlp": _mlp, "conv": _conv}
"""arch name -> ``(shape, enc_out_dim, latent_dim, hidden, channels) -> (encoder, decoder)``."""


def build_vae_nets(arch: Arch, shape: tuple[int, int, int], *, enc_out_dim: int, latent_dim: int, hidden: int = 256,
                   channels: tuple[int, int] = (32, 64)) -> tuple[nn.Module, nn.Module]:
    """``(encoder, decoder)`` of architecture ``arch`` for images of ``shape`` (C, H, W)."""
    if arch not in ARCHS:
        raise GenkitError(f"unknown VAE architecture '{arch}' (known: {', '.join(ARCHS)})")
    if min(enc_out_dim, latent_dim, hidden) < 1 or len(channels) != 2 or min(channels) < 1:
        raise GenkitError(f"VAE network sizes must be positive, got latent_dim={latent_dim}, hidden={hidden}, "
                          f"channels={tuple(channels)}")
    return ARCHS[arch](tuple(shape), enc_out_dim, latent_dim, hidden, tuple(channels))
