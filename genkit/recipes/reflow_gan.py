"""ReFlow-GAN: ReFlow with a learned source reduced to a critic (SPEC section 4), and WGAN-GP.

    python -m genkit.recipes.reflow_gan --preset toy                  # 8gaussians, CPU, about a minute
    python -m genkit.recipes.reflow_gan --preset mnist --out runs/reflow-gan-mnist
    python -m genkit.recipes.reflow_gan --preset cifar10 --objective.kind wgan_gp --out runs/wgan-gp-cifar10

Critic loss ``E_t[gp_weight (||grad D(x_t)|| - gp_center)^2] - E D(real) + E D(G(z))`` at per-sample
interpolates ``x_t = (1 - t) G(z) + t x_real``, ``t ~ U[0, 1]``; generator loss ``-E D(G(z))``.
``--objective.kind reflow_gan`` (default) uses Su's zero-centred penalty of weight 1/2;
``--objective.kind wgan_gp`` the two-sided penalty of weight 10 (Gulrajani et al., 2017);
``--objective.gp-weight`` / ``--objective.gp-center`` override either. Both train
``--objective.critic-steps`` (5) critic steps per generator step with Adam(lr 1e-4, betas (0, 0.9)),
as in the WGAN-GP paper (the post has no optimiser settings, SPEC 4(d)). The critic has no BatchNorm
(LayerNorm in the DCGAN critic, none in the ResNet critic); one with BatchNorm is refused, and so is
``--train.compile`` (the penalty's double backward is not supported by torch.compile).
Run folder as in :mod:`genkit.recipes.gan`. The same command with the same ``--out`` resumes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from genkit.cli import run_main
from genkit.errors import GenkitError
from genkit.objectives.gan import WGANGP, ReFlowGAN
from genkit.recipes import gan
from genkit.recipes.gan import DataConfig, GANModelConfig, GANOptimConfig, GANSampleConfig, LoadedGAN, Players
from genkit.train import TrainConfig

RECIPE = "reflow_gan"
OBJECTIVES = {"reflow_gan": ReFlowGAN, "wgan_gp": WGANGP}


@dataclass(frozen=True)
class ReflowGANObjectiveConfig:
    kind: Literal["reflow_gan", "wgan_gp"] = "reflow_gan"
    """reflow_gan: penalty 1/2 centred at 0 (SPEC 4); wgan_gp: penalty 10 centred at 1"""
    gp_weight: float | None = None
    """penalty weight (None: the kind's, 0.5 or 10)"""
    gp_center: float | None = None
    """target gradient norm of the penalty (None: the kind's, 0 or 1)"""
    critic_steps: int = 5
    """critic steps per generator step"""


@dataclass(frozen=True)
class ReflowGANConfig:
    """ReFlow-GAN / WGAN-GP: a critic with a gradient penalty at real-fake interpolates."""

    preset: str | None = None
    """preset from recipes/reflow_gan/<name>.toml (applied before other flags)"""
    out: Path = Path("runs/reflow_gan")
    """run folder; running again with the same folder resumes"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    dry_run: bool = False
    """print the resolved config and exit"""
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="mnist"))
    model: GANModelConfig = field(default_factory=lambda: GANModelConfig(g_width=32, d_width=32, d_norm="layer"))
    objective: ReflowGANObjectiveConfig = field(default_factory=ReflowGANObjectiveConfig)
    optim: GANOptimConfig = field(default_factory=lambda: GANOptimConfig(
        g_lr=1e-4, g_betas=(0.0, 0.9), d_lr=1e-4, d_betas=(0.0, 0.9)))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=50_000, batch_size=64))
    sample: GANSampleConfig = field(default_factory=GANSampleConfig)


def players(cfg: ReflowGANConfig) -> Players:
    o = cfg.objective
    if o.critic_steps < 1:
        raise GenkitError(f"--objective.critic-steps must be >= 1, got {o.critic_steps}")
    overrides = {k: v for k, v in (("gp_weight", o.gp_weight), ("gp_center", o.gp_center)) if v is not None}
    objective = OBJECTIVES[o.kind](latent_dim=cfg.model.latent_dim, **overrides)
    return Players(objective, "critic", {"generator": o.critic_steps}, penalty=True)


def main(argv: Sequence[str] | None = None) -> int:
    return gan.main(RECIPE, ReflowGANConfig, players, argv, description=__doc__.split("\n\n")[0])


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu", ema: bool = True,
             step: int | None = None) -> LoadedGAN:
    """A ReFlow-GAN / WGAN-GP run's (EMA) generator at checkpoint ``step`` (``None``: the latest);
    ``.sampler()`` draws ``(n, *shape)`` samples."""
    return gan.load_run(run_dir, RECIPE, ReflowGANConfig, device=device, ema=ema, step=step)


if __name__ == "__main__":
    sys.exit(run_main(main))
