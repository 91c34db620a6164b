"""What the GAN recipes share: config parts, networks, the training command, metrics, ``load_run``.

The recipes themselves (:mod:`genkit.recipes.monoflow`, :mod:`genkit.recipes.reflow_gan`) only
declare their config and turn it into :class:`Players`: the objective, the name of the second
player (``"discriminator"`` or ``"critic"``), the update ratio, and whether the critic is trained
with a gradient penalty. Everything else is here: a generator and a discriminator/critic
(:mod:`genkit.nn.gan_nets`), one Adam per player, the shared :class:`~genkit.train.Trainer`
(``--train.steps`` counts the steps of the player updated every step: critic steps under
``{"generator": 5}``), snapshots of the EMA generator (scatter plots on 2-D data, image grids
otherwise), and the final ``eval.json``.

Run folder: ``config.json`` (with ``recipe`` and ``shape``), ``metrics.jsonl`` (``loss/generator``
and ``loss/<critic>``), ``checkpoints/``, ``samples/``, ``eval.json``. On 2-D data eval.json holds the
energy distance of ``n_eval`` EMA-generator samples to as many held-out points next to the
data-vs-data floor and, on 8gaussians, mode coverage; on images a final grid is saved and FID
comes from :mod:`genkit.eval` through :func:`load_run`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import Tensor, nn

from genkit.cli import load_network, open_run, parse_config, report_stop, run_recipe, to_jsonable
from genkit.data.images import ImageStream, load_images
from genkit.data.toy import GAUSSIANS_RADIUS, GAUSSIANS_STD, TOY_DATASETS, ToyStream, sample_toy
from genkit.errors import GenkitError
from genkit.sampling import GeneratorSampler
from genkit.nn.gan_nets import (
    DCGANDiscriminator, DCGANGenerator, MLPCritic, Norm, ResNetCritic, check_no_batchnorm,
    mlp_generator,
)
from genkit.objectives.base import Objective
from genkit.recipes.reflow import IMAGE_SETS, DataConfig
from genkit.seeding import derive_seed
from genkit.train import TrainConfig, Trainer
from genkit.train import distributed
from genkit.train.logging import update_eval
from genkit.train.optim import adam

__all__ = [
    "DataConfig", "GANModelConfig", "GANOptimConfig", "GANSampleConfig", "LoadedGAN", "Players", "build_critic",
    "build_generator", "build_players", "ema_batchnorm", "evaluate", "load_run", "main", "mode_coverage",
]

GRID = 64  # images per sample grid


@dataclass(frozen=True)
class GANModelConfig:
    latent_dim: int = 100
    """size of the generator's noise z"""
    g_width: int = 64
    """generator width: DCGAN ngf (images) or MLP hidden width (2-D)"""
    d_width: int = 64
    """discriminator/critic width: DCGAN ndf, ResNet channels (images) or MLP hidden width (2-D)"""
    depth: int = 3
    """MLP hidden layers of both players (2-D data)"""
    critic: Literal["dcgan", "resnet"] = "dcgan"
    """image discriminator/critic: DCGAN convnet or the WGAN-GP paper's ResNet (no normalisation)"""
    d_norm: Norm = "batch"
    """normalisation in the DCGAN discriminator; not batch when a gradient penalty is used"""


@dataclass(frozen=True)
class GANOptimConfig:
    """One Adam per player."""

    g_lr: float = 1e-4
    g_betas: tuple[float, float] = (0.5, 0.999)
    d_lr: float = 2e-4
    d_betas: tuple[float, float] = (0.5, 0.999)


@dataclass(frozen=True)
class GANSampleConfig:
    n_eval: int = 2000
    """EMA-generator samples (and held-out points) for the final 2-D metrics"""
    n_snapshot: int = 1000
    """samples per snapshot (images: a grid of up to 64)"""
    bn_stats: Literal["recompute", "copied"] = "recompute"
    """BatchNorm statistics of the EMA generator: recompute = estimated for the EMA weights from
    bn_batches noise batches (standing statistics); copied = the training generator's running
    statistics, which belong to other weights"""
    bn_batches: int = 20
    """noise batches of 500 for --sample.bn-stats recompute"""


class GANRunConfig(Protocol):
    """The fields a GAN recipe's config has (besides its own ``objective`` section)."""

    out: Path
    seed: int
    device: str
    dry_run: bool
    data: DataConfig
    model: GANModelConfig
    optim: GANOptimConfig
    train: TrainConfig
    sample: GANSampleConfig


C = TypeVar("C")


@dataclass(frozen=True)
class Players:
    """A recipe's adversarial set-up.

    ``objective`` is called with models ``{"generator", critic}``; ``critic`` is the second player's
    model and optimizer name; ``update_every`` is the Trainer's update ratio (``{"generator": 5}``:
    five critic steps per generator step); ``penalty`` says the critic's loss has a gradient penalty
    (then BatchNorm is refused in it, and so is ``--train.compile``: the penalty back-propagates twice);
    ``toy_extra(out_dir, dataset, seed) -> dict`` adds figures and metrics at the end of a 2-D run.
    """

    objective: Objective
    critic: Literal["discriminator", "critic"]
    update_every: Mapping[str, int]
    penalty: bool
    toy_extra: Callable[[Path, str, int], dict] | None = None


# ---- networks -------------------------------------------------------------------------------------------
def _dcgan_critic(model: GANModelConfig, shape: tuple[int, ...]) -> nn.Module:
    return DCGANDiscriminator(shape[0], image_size=shape[1], width=model.d_width, norm=model.d_norm)


def _resnet_critic(model: GANModelConfig, shape: tuple[int, ...]) -> nn.Module:
    if shape[1] % 4 or shape[2] % 4:
        raise GenkitError(f"the ResNet critic needs an image size divisible by 4, got {shape[1]}x{shape[2]}: "
                          "use --model.critic dcgan")
    return ResNetCritic(shape[0], width=model.d_width)


IMAGE_CRITICS: dict[str, Callable[[GANModelConfig, tuple[int, ...]], nn.Module]] = {
    "dcgan": _dcgan_critic,
    "resnet": _resnet_critic,
}


def build_generator(model: GANModelConfig, shape: tuple[int, ...]) -> nn.Module:
    """``G: (B, latent_dim) -> (B, *shape)``: an MLP for vectors, a DCGAN generator for images."""
    if len(shape) == 1:
        return mlp_generator(model.latent_dim, shape[0], hidden=model.g_width, depth=model.depth)
    if shape[1] != shape[2]:
        raise GenkitError(f"the DCGAN networks need square images, got {shape[1]}x{shape[2]}: resize them")
    return DCGANGenerator(model.latent_dim, shape[0], image_size=shape[1], width=model.g_width)


def build_critic(model: GANModelConfig, shape: tuple[int, ...]) -> nn.Module:
    """``D: (B, *shape) -> (B,)``: an MLP for vectors, ``IMAGE_CRITICS[model.critic]`` for images."""
    if len(shape) == 1:
        return MLPCritic(shape[0], hidden=model.d_width, depth=model.depth)
    return IMAGE_CRITICS[model.critic](model, shape)


def build_players(model: GANModelConfig, shape: tuple[int, ...], *, penalty: bool) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator/critic) for samples of ``shape``; a GP critic is checked for BatchNorm."""
    generator, critic = build_generator(model, shape), build_critic(model, shape)
    if penalty:
        check_no_batchnorm(critic, "this objective trains the critic with a gradient penalty")
    return generator, critic


# ---- the command ----------------------------------------------------------------------------------------
def check_config(cfg: GANRunConfig) -> None:
    known = sorted(TOY_DATASETS) + list(IMAGE_SETS)
    if cfg.data.dataset not in known:
        raise GenkitError(f"unknown dataset '{cfg.data.dataset}' (known: {', '.join(known)})")
    if cfg.model.latent_dim < 1:
        raise GenkitError(f"--model.latent-dim must be >= 1, got {cfg.model.latent_dim}")
    if cfg.sample.n_eval < 1 or cfg.sample.n_snapshot < 1:
        raise GenkitError("--sample.n-eval and --sample.n-snapshot must be >= 1")


def main(recipe: str, config_cls: Callable[[], C], players: Callable[[C], Players], argv: Sequence[str] | None,
         description: str) -> int:
    """Parse, check (``players`` may raise on a bad objective setting), dry-run or train ``recipe``."""
    cfg = parse_config(config_cls, recipe, argv, description=description)
    check_config(cfg)
    setup = players(cfg)
    if setup.penalty and cfg.train.compile:
        raise GenkitError("--train.compile cannot train a critic with a gradient penalty (torch.compile's "
                          "aot_autograd has no double backward): run without --train.compile")
    return run_recipe(cfg, lambda cfg, device, info: _run(recipe, cfg, setup, device, info))


def _run(recipe: str, cfg: GANRunConfig, setup: Players, device: torch.device, info: distributed.DistInfo) -> int:
    micro = cfg.train.micro_batch_size(info.world_size)
    toy = cfg.data.dataset in TOY_DATASETS
    images = None if toy else load_images(cfg.data.dataset, root=cfg.data.root, split="train",
                                          download=cfg.data.download)
    shape = (2,) if images is None else tuple(images.shape[1:])
    torch.manual_seed(cfg.seed)  # the one global seed: network initialisation
    generator, critic = (m.to(device) for m in build_players(cfg.model, shape, penalty=setup.penalty))
    card = {"recipe": recipe, "shape": list(shape), "critic": setup.critic,
            **to_jsonable(dataclasses.replace(cfg, dry_run=False))}
    data = (ToyStream(cfg.data.dataset, micro, seed=cfg.seed, rank=info.rank, device=device) if images is None
            else ImageStream(images, micro, seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                             hflip=cfg.data.hflip, device=device))
    o = cfg.optim
    # the critic steps first: the generator's step then meets the critic just updated (the Trainer's order)
    optimizers = {setup.critic: adam(critic.parameters(), lr=o.d_lr, betas=o.d_betas),
                  "generator": adam(generator.parameters(), lr=o.g_lr, betas=o.g_betas)}
    trainer = Trainer(
        {"generator": generator, setup.critic: critic}, optimizers, setup.objective, data, cfg.train,
        run_dir=cfg.out, recipe=recipe, run_config=card, seed=cfg.seed, dist=info,
        update_every=setup.update_every, snapshot=_snapshot_fn(cfg, shape, device),
    )
    result = trainer.fit()
    if result.interrupted:
        return report_stop(result, info)
    if info.is_main:
        metrics = evaluate(trainer.ema["generator"].module, cfg, shape, device, result.step)
        if setup.toy_extra is not None and len(shape) == 1:
            metrics |= setup.toy_extra(cfg.out, cfg.data.dataset, cfg.seed)
        update_eval(cfg.out, metrics | result.eval_fields())
        print(f"done: step {result.step}; {summary(metrics)}; results in {cfg.out}")
    distributed.barrier(info)
    return 0


# ---- pictures and metrics -------------------------------------------------------------------------------
def _noise(n: int, latent_dim: int, seed: int, purpose: str) -> Tensor:
    """``(n, latent_dim)`` standard normal on the CPU: the same on every device."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(derive_seed(seed, purpose)))


def ema_batchnorm(generator: nn.Module, sample: GANSampleConfig, latent_dim: int, seed: int) -> nn.Module:
    """Give an EMA generator BatchNorm statistics of its own weights (``sample.bn_stats == "recompute"``).

    The EMA copy's BatchNorm buffers are the training generator's running statistics, measured on
    other weights. ``torch.optim.swa_utils.update_bn`` re-estimates them as plain averages over
    ``sample.bn_batches`` seeded noise batches of 500, in training mode and without gradients; the
    generator's mode is restored. A generator without BatchNorm is left alone. Returns ``generator``.
    """
    if sample.bn_stats == "copied" or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in generator.modules()):
        return generator
    if sample.bn_batches < 1:
        raise GenkitError(f"--sample.bn-batches must be >= 1 with --sample.bn-stats recompute, got {sample.bn_batches}")
    device = next(generator.parameters()).device
    noise = (_noise(500, latent_dim, seed, f"bn-stats-{i}").to(device) for i in range(sample.bn_batches))
    torch.optim.swa_utils.update_bn(noise, generator)
    return generator


def _snapshot_fn(cfg: GANRunConfig, shape: tuple[int, ...], device: torch.device):
    """Periodic picture of the EMA generator: a scatter plot (2-D) or an image grid, same noise each time."""
    from genkit.plots import save_image_grid, save_scatter

    n = cfg.sample.n_snapshot if len(shape) == 1 else min(GRID, cfg.sample.n_snapshot)
    z = _noise(n, cfg.model.latent_dim, cfg.seed, "snapshot")

    def snapshot(ema: Mapping[str, nn.Module], step: int) -> None:
        generator = ema_batchnorm(ema["generator"], cfg.sample, cfg.model.latent_dim, cfg.seed)
        x = GeneratorSampler(generator, cfg.model.latent_dim, device).sample_from_noise(z).cpu()
        path = cfg.out / "samples" / f"step_{step:08d}.png"
        if len(shape) == 1:
            save_scatter(x, path, title=f"{cfg.data.dataset}, step {step}")
        else:
            save_image_grid(x.clamp(-1, 1), path)

    return snapshot


def eight_gaussian_centres() -> Tensor:
    """``(8, 2)`` centres of the 8gaussians toy set (:mod:`genkit.data.toy`)."""
    angle = torch.arange(8, dtype=torch.float32) * (math.pi / 4.0)
    return GAUSSIANS_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


@dataclass(frozen=True)
class ModeCoverage:
    covered: int
    """modes holding at least ``min_share`` of their expected share ``n / K`` of near samples"""
    near_fraction: float
    """fraction of all samples within ``radius`` of some centre ("high-quality" samples)"""


def mode_coverage(samples: Tensor, centres: Tensor, *, radius: float, min_share: float = 0.25) -> ModeCoverage:
    """How many of ``K`` mixture modes a sample covers.

    A sample counts for the nearest centre if it lies within ``radius`` of it; a mode is covered when
    it gets at least ``min_share * n / K`` samples (``n`` samples, equal mixture weights).
    samples: ``(n, d)``; centres: ``(K, d)``.
    """
    dist, nearest = torch.cdist(samples.float(), centres.float()).min(dim=1)
    near = dist <= radius
    counts = torch.bincount(nearest[near], minlength=centres.shape[0])
    need = min_share * samples.shape[0] / centres.shape[0]
    return ModeCoverage(int((counts >= need).sum()), float(near.float().mean()))


def evaluate(generator: nn.Module, cfg: GANRunConfig, shape: tuple[int, ...], device: torch.device, step: int) -> dict:
    """Final metrics of the EMA generator (a flat dict for eval.json) and the final pictures."""
    generator = ema_batchnorm(generator, cfg.sample, cfg.model.latent_dim, cfg.seed)
    sampler = GeneratorSampler(generator, cfg.model.latent_dim, device)
    n = cfg.sample.n_eval if len(shape) == 1 else GRID
    x = sampler.sample_from_noise(_noise(n, cfg.model.latent_dim, cfg.seed, "eval")).cpu()
    result: dict[str, Any] = {"step": step, "weights": "ema", "bn_stats": cfg.sample.bn_stats, "seed": cfg.seed,
                              "generator_parameters": sum(p.numel() for p in generator.parameters())}
    if len(shape) == 1:
        result |= _toy_metrics(x, cfg)
    else:
        from genkit.plots import save_image_grid

        save_image_grid(x.clamp(-1, 1), cfg.out / "samples" / "final.png")
    return result


def _toy_metrics(samples: Tensor, cfg: GANRunConfig) -> dict:
    """Energy distance to held-out data next to the data-vs-data floor; 8gaussians mode coverage; plot."""
    from genkit.eval.distances import energy_distance
    from genkit.plots import save_scatter

    n, name = cfg.sample.n_eval, cfg.data.dataset
    held_out = sample_toy(name, n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "heldout")))
    other = sample_toy(name, n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "heldout2")))
    out: dict[str, Any] = {"n": n, "energy_distance": float(energy_distance(samples, held_out)),
                           "energy_distance_data_floor": float(energy_distance(other, held_out))}
    if name == "8gaussians":
        # within 3 std of a centre: 98.9% of the data (chi^2_2 tail e^{-4.5}); the balls do not overlap
        cov = mode_coverage(samples, eight_gaussian_centres(), radius=3 * GAUSSIANS_STD)
        data_cov = mode_coverage(held_out, eight_gaussian_centres(), radius=3 * GAUSSIANS_STD)
        out |= {"modes_covered": cov.covered, "modes_total": 8, "near_mode_fraction": cov.near_fraction,
                "near_mode_fraction_data": data_cov.near_fraction}
    save_scatter(samples, cfg.out / "samples" / "final.png", reference=held_out, title=f"{name}: EMA generator")
    return out


def summary(metrics: Mapping[str, Any]) -> str:
    if "energy_distance" not in metrics:
        return f"final grid in samples/final.png ({metrics['weights']} generator)"
    text = (f"energy distance {metrics['energy_distance']:.5f} "
            f"(data floor {metrics['energy_distance_data_floor']:.5f})")
    if "modes_covered" in metrics:
        text += f", modes covered {metrics['modes_covered']}/{metrics['modes_total']}"
    return text


# ---- the hook evaluation CLIs use -------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedGAN:
    """A GAN run's (EMA) generator, ready to sample."""

    generator: nn.Module
    config: Any
    shape: tuple[int, ...]
    step: int

    is_flow = False  # one forward pass per sample: no solver or NFE to choose

    @property
    def latent_dim(self) -> int:
        return self.config.model.latent_dim

    @property
    def data(self):
        return self.config.data

    def sampler(self, *, device: torch.device | None = None, batch_size: int = 500) -> GeneratorSampler:
        """``z ~ N(0, I) -> G(z)`` as a :class:`genkit.sampling.Sampler` (samples ``(n, *shape)``)."""
        device = device or next(self.generator.parameters()).device
        return GeneratorSampler(self.generator.to(device), self.latent_dim, device, batch_size=batch_size)


def load_run(run_dir: str | Path, recipe: str, config_cls: Callable[[], C], *, device: str | torch.device = "cpu",
             ema: bool = True, step: int | None = None) -> LoadedGAN:
    """Rebuild a GAN run's generator from its config.json and load the (EMA) weights of checkpoint
    ``step`` (a Trainer step; ``None``: the latest); EMA weights get BatchNorm statistics of their own
    (:func:`ema_batchnorm`, as the run's ``--sample.bn-stats`` says)."""
    run = open_run(run_dir, recipe, config_cls, step=step)
    generator = load_network(run, recipe, "generator", build_generator(run.config.model, run.shape), ema=ema, device=device)
    if ema:
        ema_batchnorm(generator, run.config.sample, run.config.model.latent_dim, run.config.seed)
    return LoadedGAN(generator, run.config, run.shape, run.step)
