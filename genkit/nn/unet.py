"""A velocity field over diffusers' ``UNet2DModel``.

diffusers' UNet embeds its timestep sinusoidally with frequencies tuned for integer
steps in [0, 1000); genkit's time is t in [0, 1], so the adapter feeds ``time_scale * t``
(999 by default, as the Rectified Flow reference code does).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

# google/ddpm-cifar10-32: the 35.7M-parameter DDPM UNet of Ho et al. (2020) for 32x32 images.
DDPM_CIFAR10_32: dict[str, Any] = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)


class UNetField(nn.Module):
    """``field(x, t) = unet(x, time_scale * t).sample``; x: (B, C, H, W), t: (B,)."""

    def __init__(self, unet: nn.Module, *, time_scale: float = 999.0) -> None:
        super().__init__()
        self.unet = unet
        self.time_scale = time_scale

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, self.time_scale * t).sample


def ddpm_cifar10_unet(**overrides: Any) -> UNetField:
    """The google/ddpm-cifar10-32 architecture (random weights) as a velocity field."""
    from diffusers import UNet2DModel  # heavy: imported only when a UNet is built

    return UNetField(UNet2DModel(**(DDPM_CIFAR10_32 | overrides)))
