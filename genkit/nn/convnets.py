"""A small image classifier CNN whose penultimate layer serves as a feature extractor (FID-C)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from genkit.errors import GenkitError

__all__ = ["ClassifierCNN"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions with GroupNorm + ReLU, then 2x2 max pooling (halves H and W)."""
    # up to 8 groups of >= 4 channels: one channel per group (instance norm) would erase
    # each image's per-channel mean, e.g. its overall brightness
    groups = math.gcd(8, max(1, c_out // 4))
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU(),
        nn.MaxPool2d(2),
    )


class ClassifierCNN(nn.Module):
    """Conv blocks -> global average pool -> ``features`` (Linear + ReLU) -> linear head.

    GroupNorm, not BatchNorm: no running statistics, so a batch of one image gets the
    same features as it would inside any other batch.

    Args:
        in_channels: image channels C (1 for MNIST-like sets, 3 for CIFAR-10).
        num_classes: size of the head's output.
        channels: output channels of each conv block (each block halves H and W).
        feature_dim: width of the penultimate layer returned by :meth:`features`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: tuple[int, ...] = (32, 64, 128),
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        if min(in_channels, num_classes, feature_dim) < 1 or not channels or min(channels) < 1:
            raise GenkitError(
                f"ClassifierCNN needs positive sizes, got in_channels={in_channels}, num_classes={num_classes}, "
                f"channels={tuple(channels)}, feature_dim={feature_dim}"
            )
        widths = (in_channels, *channels)
        self.blocks = nn.Sequential(*(_block(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.project = nn.Sequential(nn.Linear(channels[-1], feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)
        self.in_channels = in_channels
        self.feature_dim = feature_dim

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: ``x: (B, C, H, W)`` float in [-1, 1] -> ``(B, feature_dim)``."""
        return self.project(self.blocks(x).mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits: ``x: (B, C, H, W)`` float in [-1, 1] -> ``(B, num_classes)``."""
        return self.head(self.features(x))
