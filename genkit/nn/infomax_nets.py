"""Networks of Deep InfoMax (SPEC §7d): a conv encoder with a local feature map and a Gaussian code,
and the global (MLP) and local (1x1-conv) critics.

Reference CIFAR-10 encoder (bojone/infomax): 3 x [Conv3x3 (64, 128, 256), BatchNorm, LeakyReLU(0.2),
MaxPool 2] -> feature map ``C`` (4x4x256) -> 2 x [Conv3x3 256, BN, LeakyReLU 0.2] -> global max-pool
-> Dense for ``mu`` and Dense for ``logvar``. Critics: MLP ``in -> 256 -> 256 -> 256 -> 1`` (ReLU) and
the same layers as 1x1 convolutions per location.
"""

from __future__ import annotations

from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.nn.mlp import MLP
from genkit.objectives.infomax import EncoderOutput, GlobalInput

__all__ = ["InfoMaxEncoder", "LocalCritic", "build_infomax_models"]


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]


class InfoMaxEncoder(nn.Module):
    """``forward(x: (B, C_in, H, W)) -> EncoderOutput(fmap (B, channels[-1], h, w), mu (B, z_dim),
    logvar (B, z_dim))`` with ``h = H // 2**len(channels)`` (one 2x2 max-pool per block).

    Args:
        in_channels: image channels (1 for MNIST, 3 for CIFAR-10).
        image_size: ``(H, W)``; each must leave ``h, w >= 1`` after the pools.
        channels: output channels of each [conv, BN, LeakyReLU, max-pool] block.
        z_dim: code size.
        head_convs: [conv 3x3, BN, LeakyReLU] layers between the feature map and the global max-pool.

    BatchNorm as in the reference: in ``eval()`` mode it uses running statistics, so a feature does not
    depend on the rest of its batch.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], *, channels: tuple[int, ...] = (64, 128, 256),
                 z_dim: int = 256, head_convs: int = 2) -> None:
        super().__init__()
        if min(in_channels, z_dim) < 1 or not channels or min(channels) < 1 or head_convs < 0:
            raise GenkitError(f"InfoMaxEncoder needs positive sizes, got in_channels={in_channels}, "
                              f"channels={tuple(channels)}, z_dim={z_dim}, head_convs={head_convs}")
        h, w = (s // 2 ** len(channels) for s in image_size)
        if min(h, w) < 1:
            raise GenkitError(f"{image_size[0]}x{image_size[1]} images are too small for {len(channels)} pooling "
                              f"blocks: use fewer --model.channels (at most log2 of the image size)")
        widths = (in_channels, *channels)
        self.blocks = nn.Sequential(*(m for a, b in zip(widths[:-1], widths[1:]) for m in (*_conv_bn(a, b), nn.MaxPool2d(2))))
        c = channels[-1]
        self.head = nn.Sequential(*(m for _ in range(head_convs) for m in _conv_bn(c, c)))
        self.to_mu, self.to_logvar = nn.Linear(c, z_dim), nn.Linear(c, z_dim)
        self.in_channels, self.z_dim, self.fmap_shape = in_channels, z_dim, (c, h, w)

    def forward(self, x: Tensor) -> EncoderOutput:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise GenkitError(f"InfoMaxEncoder expects images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        fmap = self.blocks(x)                              # (B, c, h, w)
        pooled = self.head(fmap).amax(dim=(2, 3))          # global max-pool: (B, c)
        return EncoderOutput(fmap, self.to_mu(pooled), self.to_logvar(pooled))

    def features(self, x: Tensor) -> Tensor:
        """The downstream feature, the posterior mean: ``x: (B, C_in, H, W) -> (B, z_dim)``."""
        return self.forward(x).mu


class LocalCritic(nn.Module):
    """An MLP applied at every location by 1x1 convolutions: ``(B, in_dim, h, w) -> (B, 1, h, w)``."""

    def __init__(self, in_dim: int, hidden: int = 256, depth: int = 3) -> None:
        super().__init__()
        if min(in_dim, hidden) < 1 or depth < 0:
            raise GenkitError(f"LocalCritic needs positive sizes, got in_dim={in_dim}, hidden={hidden}, depth={depth}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Conv2d(width, hidden, 1), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Conv2d(width, 1, 1))

    def forward(self, pairs: Tensor) -> Tensor:
        return self.net(pairs)


def build_infomax_models(shape: tuple[int, int, int], *, channels: tuple[int, ...] = (64, 128, 256), z_dim: int = 256,
                         critic_hidden: int = 256, global_input: GlobalInput = "code") -> dict[str, nn.Module]:
    """The three models :class:`~genkit.objectives.infomax.DeepInfoMax` trains, for images of ``shape = (C, H, W)``.

    The global critic's input is ``[anchor, z]``: ``2 * z_dim`` wide for ``global_input="code"``,
    ``c*h*w + z_dim`` for ``"image_embedding"`` (the flattened feature map); the local critic's is
    ``z_dim + c``.
    """
    encoder = InfoMaxEncoder(shape[0], (shape[1], shape[2]), channels=channels, z_dim=z_dim)
    c, h, w = encoder.fmap_shape
    anchor = {"code": z_dim, "image_embedding": c * h * w}
    if global_input not in anchor:
        raise GenkitError(f"unknown global_input {global_input!r}: use 'code' or 'image_embedding'")
    return {
        "encoder": encoder,
        "global_critic": MLP(anchor[global_input] + z_dim, 1, hidden=critic_hidden, depth=3, activation="relu"),
        "local_critic": LocalCritic(z_dim + c, hidden=critic_hidden, depth=3),
    }
