"""Generator and discriminator/critic networks for GANs, and a generator as a :class:`Sampler`.

* :class:`DCGANGenerator` / :class:`DCGANDiscriminator`: the DCGAN pair (Radford et al., 2016) as in
  MonoFlow's ``source/nets.py``, for any image size ``s * 2**k`` (``k >= 1``, ``s <= 7``): 28x28 starts
  from 7x7, 32x32 from 4x4. Initialised with :func:`dcgan_init` (conv weights ``N(0, 0.02)``).
* :class:`ResNetCritic`: the WGAN-GP paper's CIFAR-10 critic (residual blocks, mean-pool downsampling,
  no normalisation).
* :class:`MLPCritic`, :func:`mlp_generator`: 2-D toy players built from :class:`genkit.nn.mlp.MLP`.
* :func:`check_no_batchnorm`: a critic trained with a gradient penalty must not mix samples.

Every discriminator/critic returns logits of shape ``(B,)``; every image generator maps
``z: (B, latent_dim)`` to images ``(B, C, H, W)`` in ``[-1, 1]`` (Tanh output).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.nn.mlp import MLP, Activation

__all__ = [
    "NORMS", "DCGANDiscriminator", "DCGANGenerator", "MLPCritic", "Norm", "ResNetCritic",
    "check_no_batchnorm", "dcgan_init", "mlp_generator",
]

Norm = Literal["batch", "layer", "group", "none"]


def _groups(c: int) -> int:
    """Largest group count <= 32 dividing ``c`` (GroupNorm's usual 32 groups when possible)."""
    return math.gcd(32, c)


# "layer": GroupNorm with one group normalises each sample over (C, H, W), i.e. LayerNorm for conv
# features with a per-channel affine; like "group" and "none" it never mixes samples of a batch.
NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "layer": lambda c: nn.GroupNorm(1, c),
    "group": lambda c: nn.GroupNorm(_groups(c), c),
    "none": lambda c: nn.Identity(),
}


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation (``module.apply(dcgan_init)``): conv weights ``N(0, 0.02)``, zero biases;
    BatchNorm scales ``N(1, 0.02)``, shifts 0. Other layers keep their defaults."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def dcgan_levels(image_size: int) -> tuple[int, int]:
    """``(s, k)`` with ``image_size = s * 2**k``, ``s <= 7``, ``k >= 1`` (28 -> (7, 2), 32 -> (4, 3)).

    Raises GenkitError for sizes the DCGAN stack cannot halve down to ``s <= 7``.
    """
    s, k = image_size, 0
    while s > 7 and s % 2 == 0:
        s, k = s // 2, k + 1
    if k < 1 or s > 7 or image_size < 4:
        raise GenkitError(
            f"image size {image_size} is not s * 2^k with s <= 7 and k >= 1 (e.g. 8, 28, 32, 64): "
            "resize the images for the DCGAN networks"
        )
    return s, k


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise GenkitError(f"unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}")


class DCGANGenerator(nn.Module):
    """DCGAN generator: ``z: (B, latent_dim) -> (B, channels, image_size, image_size)`` in ``[-1, 1]``.

    ``z`` is projected by a transposed convolution to ``(width * 2**k, s, s)``, then ``k`` stride-2
    transposed convolutions double the resolution (BatchNorm + ReLU between, channels halving), the
    last one to ``channels``, then Tanh. ``width`` is DCGAN's ``ngf``.
    """

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 32, width: int = 64) -> None:
        super().__init__()
        if min(latent_dim, channels, width) < 1:
            raise GenkitError(f"DCGANGenerator needs positive sizes, got latent_dim={latent_dim}, "
                              f"channels={channels}, width={width}")
        s, k = dcgan_levels(image_size)
        c = width * 2**k
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, c, s, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim, self.shape = latent_dim, (channels, image_size, image_size)
        self.apply(dcgan_init)

    def forward(self, z: Tensor) -> Tensor:
        """``z: (B, latent_dim)`` -> images ``(B, C, H, W)`` in ``[-1, 1]``."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise GenkitError(f"the generator expects z of shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: images ``(B, channels, image_size, image_size)`` -> logits ``(B,)``.

    ``k`` stride-2 4x4 convolutions (channels ``width * 2**i``) with LeakyReLU(0.2), a normalisation
    after every one but the first, then an ``s x s`` convolution to one logit. ``norm="batch"`` is
    DCGAN's (and MonoFlow's) choice; a critic trained with a gradient penalty needs ``"layer"``,
    ``"group"`` or ``"none"`` (see :func:`check_no_batchnorm`).
    """

    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 64, norm: Norm = "batch") -> None:
        super().__init__()
        _check_norm(norm)
        if min(channels, width) < 1:
            raise GenkitError(f"DCGANDiscriminator needs positive sizes, got channels={channels}, width={width}")
        s, k = dcgan_levels(image_size)
        c = width
        layers: list[nn.Module] = [nn.Conv2d(channels, c, 4, 2, 1), nn.LeakyReLU(0.2)]
        for _ in range(k - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=norm == "none"), NORMS[norm](2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        layers.append(nn.Conv2d(c, 1, s, 1, 0))
        self.net = nn.Sequential(*layers)
        self.shape = (channels, image_size, image_size)
        self.apply(dcgan_init)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, C, H, W)`` in ``[-1, 1]`` -> logits ``(B,)``."""
        return self.net(x).reshape(x.shape[0])


class _ResBlock(nn.Module):
    """``shortcut(x) + conv(relu(conv(relu(x))))``, each branch mean-pooled by 2 when ``down``.

    ``first`` (the WGAN-GP "optimized" first block) skips the ReLU on the raw image. The shortcut is
    the identity when shapes agree, else a 1x1 convolution after the pooling.
    """

    def __init__(self, c_in: int, c_out: int, *, down: bool, first: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if (down or c_in != c_out) else nn.Identity()
        self.down, self.first = down, first

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        s = x
        if self.down:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return self.shortcut(s) + h


class ResNetCritic(nn.Module):
    """The WGAN-GP paper's CIFAR-10 ResNet critic: ``x: (B, C, H, W) -> (B,)``, no normalisation.

    Four residual blocks of ``width`` channels (the first two halve the resolution by mean pooling),
    ReLU, a global mean over space and a linear map to one value. ``H`` and ``W`` must be multiples
    of 4. PyTorch's default initialisation.
    """

    def __init__(self, channels: int = 3, width: int = 128) -> None:
        super().__init__()
        if min(channels, width) < 1:
            raise GenkitError(f"ResNetCritic needs positive sizes, got channels={channels}, width={width}")
        self.blocks = nn.Sequential(
            _ResBlock(channels, width, down=True, first=True), _ResBlock(width, width, down=True),
            _ResBlock(width, width, down=False), _ResBlock(width, width, down=False),
        )
        self.head = nn.Linear(width, 1)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, C, H, W)`` with H, W multiples of 4 -> ``(B,)``."""
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2] % 4 or x.shape[3] % 4:
            raise GenkitError(f"ResNetCritic expects (B, {self.channels}, H, W) with H, W multiples of 4, "
                              f"got {tuple(x.shape)}")
        h = F.relu(self.blocks(x)).mean(dim=(2, 3))
        return self.head(h).reshape(x.shape[0])


def mlp_generator(latent_dim: int, dim: int = 2, *, hidden: int = 256, depth: int = 3,
                  activation: Activation = "leaky_relu") -> MLP:
    """Toy generator ``z: (B, latent_dim) -> (B, dim)``: a plain :class:`MLP` (no norm, no output squashing)."""
    return MLP(latent_dim, dim, hidden=hidden, depth=depth, activation=activation)


class MLPCritic(nn.Module):
    """Toy discriminator/critic ``x: (B, dim) -> (B,)``: an :class:`MLP` with one output (no norm layers)."""

    def __init__(self, dim: int = 2, *, hidden: int = 256, depth: int = 3,
                 activation: Activation = "leaky_relu") -> None:
        super().__init__()
        self.net = MLP(dim, 1, hidden=hidden, depth=depth, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, dim)`` -> ``(B,)``."""
        return self.net(x).reshape(x.shape[0])


def check_no_batchnorm(module: nn.Module, why: str) -> None:
    """Raise GenkitError if ``module`` holds any BatchNorm layer (``why`` names the reason).

    A gradient penalty asks for ``grad_x D(x)`` of each sample alone; BatchNorm couples the
    samples of a batch, so the penalised gradient would not be the critic's (WGAN-GP, sec. 4).
    """
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise GenkitError(
                f"{why}, but the critic has a BatchNorm layer ('{name}': {type(m).__name__}) that couples the "
                "samples of a batch: use layer, group or no normalisation (--model.d-norm layer)"
            )
