"""Small convolutional VQ-VAE: an encoder to a 4x smaller grid of D-vectors, a quantizer, a decoder back.

28x28x1 images (MNIST) become a 7x7 grid, 32x32x3 (CIFAR-10) an 8x8 grid; any size divisible by 4 works.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.quantizers.vq import QuantizerOutput, VectorQuantizer

__all__ = ["VQVAE", "VQDecoder", "VQEncoder", "VQVAEOutput"]


class _Residual(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``: shape-preserving, ``(B, C, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class VQEncoder(nn.Module):
    """``x: (B, C, H, W)`` -> ``z: (B, dim, H/4, W/4)``: two stride-2 4x4 convolutions, a residual block,
    a 1x1 projection to ``dim`` channels (the VQ-VAE paper's encoder, narrowed)."""

    def __init__(self, in_channels: int, dim: int, *, channels: tuple[int, int] = (32, 64)) -> None:
        super().__init__()
        _check_sizes(in_channels, dim, channels)
        c1, c2 = channels
        self.in_channels = in_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, stride=2, padding=1), nn.ReLU(),  # H/2
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # H/4
            _Residual(c2), nn.ReLU(),
            nn.Conv2d(c2, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] % 4 or x.shape[3] % 4:
            raise GenkitError(f"the VQ encoder expects images (B, {self.in_channels}, H, W) with H and W divisible "
                              f"by 4, got {tuple(x.shape)}: use a model built for these images")
        return self.net(x)


class VQDecoder(nn.Module):
    """``q: (B, dim, h, w)`` -> ``x_hat: (B, C, 4h, 4w)`` (unbounded; images live in [-1, 1])."""

    def __init__(self, out_channels: int, dim: int, *, channels: tuple[int, int] = (32, 64)) -> None:
        super().__init__()
        _check_sizes(out_channels, dim, channels)
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(dim, c2, 3, padding=1),
            _Residual(c2), nn.ReLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(),  # 2h
            nn.ConvTranspose2d(c1, out_channels, 4, stride=2, padding=1),  # 4h
        )

    def forward(self, q: Tensor) -> Tensor:
        return self.net(q)


def _check_sizes(image_channels: int, dim: int, channels: tuple[int, ...]) -> None:
    if len(channels) != 2 or min(image_channels, dim, *channels) < 1:
        raise GenkitError(f"VQ networks need positive sizes and two channel widths, got image channels "
                          f"{image_channels}, dim {dim}, channels {tuple(channels)}")


@dataclass(frozen=True)
class VQVAEOutput:
    reconstruction: Tensor
    """``(B, C, H, W)``"""
    quantizer: QuantizerOutput
    """the quantizer's output on the encoder's grid ``(B, D, H/4, W/4)``"""


class VQVAE(nn.Module):
    """Encoder, quantizer and decoder as one module (one optimizer, one EMA copy, one checkpoint file)."""

    def __init__(self, encoder: nn.Module, quantizer: VectorQuantizer, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder

    def forward(self, x: Tensor) -> VQVAEOutput:
        """``x: (B, C, H, W)`` -> reconstruction and the quantizer's output."""
        q = self.quantizer(self.encoder(x))
        return VQVAEOutput(self.decoder(q.quantized), q)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` from code indices ``(B, H/4, W/4)`` int64."""
        return self.decoder(self.quantizer.lookup(indices))
