"""A velocity field over diffusers' ``UNet2DModel``: presets, an image-size check, diffusers interop.

diffusers' UNet embeds its timestep sinusoidally with frequencies tuned for DDPM step
indices in [0, 1000); genkit's time is t in [0, 1], so the adapter feeds
``time_scale * t`` (999 by default, as the Rectified Flow reference code does).
diffusers is imported only when a UNet is built or loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from genkit.errors import GenkitError

__all__ = [
    "DDPM_CIFAR10_32", "UNET_PRESETS", "UNetField", "build_unet", "ddpm_cifar10_unet", "export_diffusers",
    "load_diffusers",
]

# google/ddpm-cifar10-32: the 35.7M-parameter DDPM UNet of Ho et al. (2020) for 32x32 images.
DDPM_CIFAR10_32: dict[str, Any] = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)

# A small UNet for 28x28 one-channel images (6.5M parameters): 28 -> 14 -> 7, attention at 14x14.
MNIST_28: dict[str, Any] = dict(
    sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
    block_out_channels=(64, 128, 128),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)

UNET_PRESETS: dict[str, dict[str, Any]] = {"mnist": MNIST_28, "cifar10": DDPM_CIFAR10_32}
"""``UNet2DModel`` keyword arguments by preset name (see :func:`build_unet`)."""


class UNetField(nn.Module):
    """``field(x, t) = unet(x, time_scale * t)``; ``x: (B, C, H, W)``, ``t: (B,)`` -> ``(B, C, H, W)``.

    ``time_scale`` (999 by default) maps genkit's t in [0, 1] onto the DDPM step indices
    diffusers' sinusoidal time embedding is tuned for. The UNet is called with
    ``return_dict=False`` (no output dataclass: cheaper and friendlier to ``torch.compile``).
    """

    def __init__(self, unet: nn.Module, *, time_scale: float = 999.0) -> None:
        super().__init__()
        self.unet = unet
        self.time_scale = time_scale
        levels = len(getattr(getattr(unet, "config", None), "block_out_channels", (0,)))
        self._factor = 2 ** (levels - 1)  # H and W must survive this many halvings

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.shape[-1] % self._factor or x.shape[-2] % self._factor:
            raise GenkitError(
                f"images of size {x.shape[-2]}x{x.shape[-1]} cannot be halved {self._factor.bit_length() - 1} "
                f"times by this UNet: use sizes divisible by {self._factor}"
            )
        return self.unet(x, self.time_scale * t, return_dict=False)[0]


def build_unet(
    preset: str, *, image_size: int | None = None, channels: int | None = None, **overrides: Any
) -> UNetField:
    """A randomly initialised ``UNet2DModel`` of ``preset`` as a :class:`UNetField`.

    Args:
        preset: a key of :data:`UNET_PRESETS` (``"mnist"``, ``"cifar10"``).
        image_size: height = width of the images (default: the preset's ``sample_size``).
        channels: image channels, in and out (default: the preset's).
        overrides: any other ``UNet2DModel`` argument, e.g. ``block_out_channels=(32, 64)``
            (then give ``down_block_types`` / ``up_block_types`` of the same length too).

    Raises:
        GenkitError: unknown preset; block types that do not match ``block_out_channels``;
            an image size the UNet cannot halve ``len(block_out_channels) - 1`` times.
    """
    from diffusers import UNet2DModel  # heavy: imported only when a UNet is built

    if preset not in UNET_PRESETS:
        raise GenkitError(f"unknown UNet preset {preset!r}; choose one of {', '.join(UNET_PRESETS)}")
    config = UNET_PRESETS[preset] | overrides
    if image_size is not None:
        config["sample_size"] = image_size
    if channels is not None:
        config["in_channels"] = config["out_channels"] = channels
    levels = len(config["block_out_channels"])
    for key in ("down_block_types", "up_block_types"):
        if len(config[key]) != levels:
            raise GenkitError(
                f"block_out_channels has {levels} levels but {key} has {len(config[key])}: "
                f"pass {key} with {levels} entries too"
            )
    sizes = config["sample_size"]
    factor = 2 ** (levels - 1)
    for size in sizes if isinstance(sizes, (tuple, list)) else (sizes,):
        if size % factor:
            raise GenkitError(
                f"image size {size} cannot be halved {levels - 1} times by the {preset!r} UNet: "
                f"use a size divisible by {factor} or fewer levels (block_out_channels)"
            )
    return UNetField(UNet2DModel(**config))


def ddpm_cifar10_unet(**overrides: Any) -> UNetField:
    """The google/ddpm-cifar10-32 architecture (random weights) as a velocity field."""
    return build_unet("cifar10", **overrides)


def export_diffusers(field: UNetField, path: str | Path) -> None:
    """Save ``field.unet`` with ``save_pretrained`` (config.json + safetensors) into folder ``path``.

    ``diffusers.UNet2DModel.from_pretrained(path)`` (or :func:`load_diffusers`) loads it back.
    The time scale is not saved: genkit's convention is 999 * t.
    """
    from diffusers import UNet2DModel

    unet = getattr(field, "unet", None)
    if not isinstance(unet, UNet2DModel):
        raise GenkitError(f"export_diffusers needs a UNetField over a diffusers UNet2DModel, got {type(field).__name__}")
    unet.save_pretrained(str(path), safe_serialization=True)


def load_diffusers(path: str | Path, *, time_scale: float = 999.0) -> UNetField:
    """A :class:`UNetField` over ``UNet2DModel.from_pretrained(path)`` (a local folder)."""
    from diffusers import UNet2DModel

    if not (Path(path) / "config.json").is_file():
        raise GenkitError(f"{path} holds no config.json: point at a folder written by export_diffusers or save_pretrained")
    return UNetField(UNet2DModel.from_pretrained(str(path)), time_scale=time_scale)
