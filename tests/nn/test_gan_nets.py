"""GAN networks: shapes, output range, the BatchNorm check for gradient-penalty critics, the sampler."""

import pytest
import torch
from torch import nn

from genkit.errors import GenkitError
from genkit.sampling import GeneratorSampler
from genkit.nn.gan_nets import (
    DCGANDiscriminator, DCGANGenerator, MLPCritic, ResNetCritic, check_no_batchnorm, dcgan_levels,
    mlp_generator,
)
from genkit.sampling import Sampler


@pytest.mark.parametrize(("channels", "size", "width"), [(1, 28, 32), (3, 32, 64), (3, 8, 8)])
def test_dcgan_shapes_and_range(channels, size, width):
    torch.manual_seed(0)
    g = DCGANGenerator(100, channels, image_size=size, width=width)
    z = 3.0 * torch.randn(2, 100)  # large z: Tanh must still bound the output
    x = g(z)
    assert x.shape == (2, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0
    for norm in ("batch", "layer", "group", "none"):
        d = DCGANDiscriminator(channels, image_size=size, width=width, norm=norm)
        assert d(x).shape == (2,)


def test_dcgan_levels_and_bad_size():
    assert dcgan_levels(28) == (7, 2) and dcgan_levels(32) == (4, 3) and dcgan_levels(8) == (4, 1)
    with pytest.raises(GenkitError, match="image size 9"):
        DCGANGenerator(10, 1, image_size=9)
    with pytest.raises(GenkitError, match="unknown normalisation"):
        DCGANDiscriminator(1, image_size=28, norm="instance")


def test_dcgan_init_is_normal_002():
    torch.manual_seed(0)
    g = DCGANGenerator(100, 3, image_size=32, width=64)
    w = torch.cat([m.weight.detach().flatten() for m in g.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.02) < 1e-3  # ~3.4M draws of N(0, 0.02)
    bn = torch.cat([m.weight.detach() for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(bn.mean()) - 1.0) < 0.01


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_resnet_critic_shape(channels, size):
    torch.manual_seed(0)
    d = ResNetCritic(channels, width=16)
    assert d(torch.randn(2, channels, size, size)).shape == (2,)
    with pytest.raises(GenkitError, match="multiples of 4"):
        d(torch.randn(2, channels, 30, 30))


def test_toy_players():
    torch.manual_seed(0)
    g, d = mlp_generator(8, 2, hidden=16, depth=2), MLPCritic(2, hidden=16, depth=2)
    x = g(torch.randn(5, 8))
    assert x.shape == (5, 2) and d(x).shape == (5,)


def test_check_no_batchnorm():
    with pytest.raises(GenkitError, match="BatchNorm") as e:
        check_no_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), "gradient penalty")
    assert "\n" not in str(e.value) and "gradient penalty" in str(e.value)
    with pytest.raises(GenkitError, match="BatchNorm"):
        check_no_batchnorm(DCGANDiscriminator(1, image_size=28, width=8, norm="batch"), "gradient penalty")
    for critic in (DCGANDiscriminator(3, image_size=32, width=8, norm="layer"),
                   DCGANDiscriminator(3, image_size=32, width=8, norm="group"),
                   DCGANDiscriminator(3, image_size=32, width=8, norm="none"),
                   ResNetCritic(3, width=8), MLPCritic(2, hidden=8, depth=1)):
        check_no_batchnorm(critic, "gradient penalty")  # passes


def test_layer_norm_critic_treats_samples_independently():
    """Why BatchNorm is refused: a GP critic's output for one sample must not depend on the others."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    ok, bad = DCGANDiscriminator(3, image_size=32, width=8, norm="layer"), DCGANDiscriminator(3, image_size=32, width=8)
    torch.testing.assert_close(ok(x)[:2], ok(x[:2]))
    assert not torch.allclose(bad(x)[:2], bad(x[:2]))


def test_generator_sampler():
    torch.manual_seed(0)
    g = DCGANGenerator(16, 1, image_size=8, width=4).train()
    sampler = GeneratorSampler(g, 16, "cpu", batch_size=3)
    assert isinstance(sampler, Sampler)
    a = sampler.sample(7, generator=torch.Generator().manual_seed(1))
    b = sampler.sample(7, generator=torch.Generator().manual_seed(1))
    assert a.shape == (7, 1, 8, 8) and not a.requires_grad and torch.equal(a, b)
    assert g.training  # mode restored
    z = torch.randn(7, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sampler.sample_from_noise(z), a)  # same noise, same samples, in chunks of 3
    with torch.no_grad():
        torch.testing.assert_close(g.eval()(z), a)  # eval mode: BatchNorm running statistics
    with pytest.raises(GenkitError, match="z must have shape"):
        sampler.sample_from_noise(torch.randn(2, 5))
