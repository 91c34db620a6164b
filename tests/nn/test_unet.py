"""The diffusers UNet adapter: shapes, time scaling, presets, size checks, diffusers round trip."""

import time

import pytest
import torch

from genkit.errors import GenkitError
from genkit.nn.unet import UNET_PRESETS, UNetField, build_unet, export_diffusers, load_diffusers

# A tiny two-level UNet (one halving) for fast CPU tests.
TINY = dict(
    block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)


def tiny(size=16, channels=3):
    torch.manual_seed(0)
    return build_unet("cifar10", image_size=size, channels=channels, **TINY).eval()


def test_tiny_unet_keeps_the_shape():
    field = tiny()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert field(x, torch.tensor([0.1, 0.9])).shape == x.shape


def test_mnist_preset_keeps_the_shape():
    torch.manual_seed(0)
    field = build_unet("mnist").eval()
    assert 5e6 < sum(p.numel() for p in field.parameters()) < 10e6
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert field(x, torch.rand(2, generator=torch.Generator().manual_seed(1))).shape == x.shape


def test_time_is_scaled_to_ddpm_steps():
    field = tiny()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.25, 0.5])
    with torch.no_grad():
        assert torch.equal(field(x, t), field.unet(x, 999.0 * t).sample)
        other = UNetField(field.unet, time_scale=1.0)
        assert torch.equal(other(x, t), field.unet(x, t).sample)


def test_bad_image_size_and_unknown_preset():
    with pytest.raises(GenkitError, match="image size 30 cannot be halved 3 times by the 'cifar10' UNet: use a size divisible by 8") as err:
        build_unet("cifar10", image_size=30)
    assert "\n" not in str(err.value)
    with pytest.raises(GenkitError, match="mnist, cifar10"):
        build_unet("imagenet")
    with pytest.raises(GenkitError, match="down_block_types"):
        build_unet("mnist", block_out_channels=(32, 64))
    with pytest.raises(GenkitError, match="divisible by 2"):
        tiny()(torch.zeros(1, 3, 15, 16), torch.zeros(1))


def test_export_to_diffusers_round_trip(tmp_path):
    from diffusers import UNet2DModel

    field = tiny(size=8, channels=1)
    export_diffusers(field, tmp_path / "unet")
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "unet").iterdir())
    unet = UNet2DModel.from_pretrained(str(tmp_path / "unet")).eval()
    loaded = load_diffusers(tmp_path / "unet").eval()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        assert torch.equal(unet(x, 999.0 * t).sample, field(x, t))
        assert torch.equal(loaded(x, t), field(x, t))
    with pytest.raises(GenkitError, match="config.json"):
        load_diffusers(tmp_path / "missing")


def test_cifar10_preset_has_the_ddpm_parameter_count():
    start = time.perf_counter()
    with torch.device("meta"):
        field = build_unet("cifar10")
    if time.perf_counter() - start > 5:
        pytest.skip("building the 35.7M UNet on the meta device took over 5 s")
    assert sum(p.numel() for p in field.parameters()) == 35_746_307
    assert set(UNET_PRESETS) >= {"mnist", "cifar10"}
