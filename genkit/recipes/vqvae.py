"""VQ-VAE with a choice of gradient rule (straight-through or the rotation trick) and codebook (plain or SimVQ).

    python -m genkit.recipes.vqvae --preset mnist --out runs/vqvae-mnist
    python -m genkit.recipes.vqvae --preset mnist --quantizer.gradient rotation --out runs/vqvae-mnist-rot
    python -m genkit.recipes.vqvae --preset mnist --quantizer.codebook linear --out runs/vqvae-mnist-simvq
    python -m genkit.recipes.vqvae --preset cifar10 --quantizer.num-codes 1024

A small conv encoder maps each image to a 4x smaller grid of D-vectors (7x7 for 28x28, 8x8 for
32x32), each replaced by its nearest of K codes (genkit.quantizers.VectorQuantizer), decoded back;
trained with reconstruction MSE + codebook + commitment terms (genkit.objectives.vq.VQVAELoss)
through the shared Trainer. The run folder holds config.json, metrics.jsonl (losses, batch code
perplexity and usage), checkpoints/, samples/ (grids of test images over their reconstructions:
each pair of rows is originals, then reconstructions) and eval.json (test-split reconstruction MSE
and PSNR, code usage, perplexity and dead codes of the EMA weights). The same command with the same
``--out`` resumes.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genkit.cli import load_network, open_run, parse_config, report_stop, run_main, run_recipe, to_jsonable
from genkit.data.images import ImageStream, load_images, to_float
from genkit.errors import GenkitError
from genkit.eval.codebook import code_histogram, codebook_stats
from genkit.nn.vq_nets import VQVAE, VQDecoder, VQEncoder
from genkit.objectives.vq import VQVAELoss
from genkit.quantizers.gradients import RotationVariant
from genkit.quantizers.vq import CodebookKind, GradientRule, VectorQuantizer
from genkit.recipes.reflow import OptimConfig
from genkit.train import TrainConfig, Trainer, distributed
from genkit.train.logging import update_eval
from genkit.train.optim import adam

RECIPE = "vqvae"
DATASETS = ("mnist", "fashion-mnist", "cifar10", "imagefolder")
GRID_ROW = 8  # images per row of the sample grids


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    """mnist, fashion-mnist, cifar10, imagefolder (evaluated on the test split; for imagefolder root/test,
    or the training images themselves if root has no test folder); height and width divisible by 4"""
    root: Path = Path("data")
    """image data root (torchvision layout), or the ImageFolder directory"""
    download: bool = True
    """let torchvision download missing image sets (needs network)"""
    hflip: bool = False
    """random horizontal flips of training images"""


@dataclass(frozen=True)
class ModelConfig:
    channels: tuple[int, int] = (32, 64)
    """encoder/decoder widths at 1/2 and 1/4 resolution"""
    dim: int = 16
    """D: size of each latent vector and code"""


@dataclass(frozen=True)
class QuantizerConfig:
    num_codes: int = 512
    """K: codebook size"""
    gradient: GradientRule = "ste"
    """how the decoder's gradient crosses the quantizer: straight-through or the rotation trick"""
    rotation: RotationVariant = "scaled"
    """rotation-trick variant: scaled (lambda R z, the paper) or tangent (||q|| R z_hat, the VQGAN script)"""
    codebook: CodebookKind = "plain"
    """plain learned codes, or SimVQ's linear map on frozen random codes (C W)"""
    bias: bool = False
    """SimVQ: affine map C W + b (the official code) instead of the paper's C W"""
    train_codes: bool = False
    """SimVQ: train C as well as W"""
    codebook_weight: float = 1.0
    """weight of mean((q - sg[z])^2), which trains the codebook (SPEC's beta)"""
    commitment_weight: float = 0.25
    """weight of mean((z - sg[q])^2), which trains the encoder (SPEC's gamma; the VQ-VAE paper's beta)"""


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 500
    """test images per forward pass"""
    n_grid: int = 32
    """test images shown (over their reconstructions) in each sample grid"""


@dataclass(frozen=True)
class VQVAEConfig:
    """VQ-VAE (straight-through or rotation-trick gradients; plain or SimVQ codebook)."""

    preset: str | None = None
    """preset from recipes/vqvae/<name>.toml (applied before other flags)"""
    out: Path = Path("runs/vqvae")
    """run folder; running again with the same folder resumes"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    dry_run: bool = False
    """print the resolved config and exit"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=5000, batch_size=128, sample_every=1000, checkpoint_every=1000)
    )
    eval: EvalConfig = field(default_factory=EvalConfig)


def check_config(cfg: VQVAEConfig) -> None:
    if cfg.data.dataset not in DATASETS:
        raise GenkitError(f"unknown dataset '{cfg.data.dataset}' (known: {', '.join(DATASETS)})")
    q, m = cfg.quantizer, cfg.model
    if q.num_codes < 1 or m.dim < 1 or min(m.channels) < 1:
        raise GenkitError(f"--quantizer.num-codes, --model.dim and --model.channels must be >= 1, got {q.num_codes}, "
                          f"{m.dim}, {list(m.channels)}")
    if q.codebook_weight < 0 or q.commitment_weight < 0:
        raise GenkitError("--quantizer.codebook-weight and --quantizer.commitment-weight must be >= 0")
    if cfg.eval.batch_size < 1 or cfg.eval.n_grid < 1:
        raise GenkitError("--eval.batch-size and --eval.n-grid must be >= 1")


def build_net(model: ModelConfig, quantizer: QuantizerConfig, shape: Sequence[int]) -> VQVAE:
    """The VQ-VAE of a run for images of ``shape = (C, H, W)``; H and W must be divisible by 4."""
    c, h, w = shape
    if h % 4 or w % 4:
        raise GenkitError(f"the VQ-VAE downsamples by 4: image height and width must be divisible by 4, got {h}x{w}; "
                          "resize the images")
    q = quantizer
    vq = VectorQuantizer(q.num_codes, model.dim, gradient=q.gradient, codebook=q.codebook, rotation=q.rotation,
                         bias=q.bias, train_codes=q.train_codes)
    return VQVAE(VQEncoder(c, model.dim, channels=model.channels), vq, VQDecoder(c, model.dim, channels=model.channels))


# ---- pictures and metrics -------------------------------------------------------------------------------
def psnr(mse: float, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / mse)``; images in [-1, 1] span 2
    (the same value as on [0, 1] images with their MSE / 4)."""
    return 10.0 * math.log10(data_range**2 / mse) if mse > 0 else math.inf


def save_reconstructions(net: VQVAE, images: Tensor, path: Path, device: torch.device) -> None:
    """A grid of uint8 ``images: (N, C, H, W)``: rows of up to 8 originals, each over its reconstructions."""
    from genkit.plots import save_image_grid

    with torch.no_grad():
        x = to_float(images.to(device))
        x_hat = net(x).reconstruction.float().clamp(-1, 1)
    rows = [t for lo in range(0, len(x), GRID_ROW) for t in (x[lo : lo + GRID_ROW], x_hat[lo : lo + GRID_ROW])]
    nrow = min(GRID_ROW, len(x))
    padded = [torch.cat([r, r.new_full((nrow - len(r), *r.shape[1:]), -1.0)]) for r in rows]  # black fill
    save_image_grid(torch.cat(padded).cpu(), path, nrow=nrow)


@torch.no_grad()
def evaluate(net: VQVAE, images: Tensor, *, batch_size: int, device: torch.device) -> dict[str, Any]:
    """Test reconstruction MSE (reconstructions clamped to [-1, 1]) and PSNR of the whole split, and the
    codebook statistics of all its latent vectors. ``images: (N, C, H, W)`` uint8."""
    squared, pixels = 0.0, 0
    counts = torch.zeros(net.quantizer.num_codes)
    for lo in range(0, len(images), batch_size):
        x = to_float(images[lo : lo + batch_size].to(device))
        out = net(x)
        squared += float((out.reconstruction.float().clamp(-1, 1) - x).pow(2).sum())
        pixels += x.numel()
        counts += code_histogram(out.quantizer.indices.cpu(), net.quantizer.num_codes)
    mse = squared / pixels
    stats = codebook_stats(counts)
    return {"test_recon_mse": mse, "test_psnr": psnr(mse), "n_test": len(images), "num_codes": stats.num_codes,
            "codes_used": stats.used, "code_usage": stats.usage, "perplexity": stats.perplexity,
            "dead_codes": stats.dead}


# ---- loading a finished run ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedVQVAE:
    net: VQVAE
    config: VQVAEConfig
    shape: tuple[int, ...]
    step: int


def load_vqvae(run_dir: str | Path, *, device: str | torch.device = "cpu", ema: bool = True,
               step: int | None = None) -> LoadedVQVAE:
    """A VQ-VAE run's network (eval mode, frozen) from its run folder: the latest checkpoint or ``step``."""
    run = open_run(run_dir, RECIPE, VQVAEConfig, step=step)
    net = build_net(run.config.model, run.config.quantizer, run.shape)
    return LoadedVQVAE(load_network(run, RECIPE, "model", net, ema=ema, device=device), run.config, run.shape, run.step)


# ---- the command ------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(VQVAEConfig, RECIPE, argv, description=__doc__.split("\n\n")[0])
    check_config(cfg)
    return run_recipe(cfg, run)


def run(cfg: VQVAEConfig, device: torch.device, info: distributed.DistInfo) -> int:
    images = load_images(cfg.data.dataset, root=cfg.data.root, split="train", download=cfg.data.download)
    shape = tuple(images.shape[1:])
    test = load_images(cfg.data.dataset, root=cfg.data.root, split="test", download=cfg.data.download)
    if tuple(test.shape[1:]) != shape:
        raise GenkitError(f"the test images are {tuple(test.shape[1:])}, the training images {shape}: use one size")
    torch.manual_seed(cfg.seed)  # the one global seed: model initialisation (SimVQ's frozen codes included)
    net = build_net(cfg.model, cfg.quantizer, shape).to(device)
    card = {"recipe": RECIPE, "shape": list(shape), **to_jsonable(dataclasses.replace(cfg, dry_run=False))}
    data = ImageStream(images, cfg.train.micro_batch_size(info.world_size), seed=cfg.seed, rank=info.rank,
                       world_size=info.world_size, hflip=cfg.data.hflip, device=device)
    opt = adam(net.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    objective = VQVAELoss(codebook_weight=cfg.quantizer.codebook_weight, commitment_weight=cfg.quantizer.commitment_weight)
    grid = test[: cfg.eval.n_grid]

    def snapshot(ema: dict, step: int) -> None:
        save_reconstructions(ema["model"], grid, cfg.out / "samples" / f"step_{step:08d}.png", device)

    trainer = Trainer({"model": net}, {"model": opt}, objective, data, cfg.train, run_dir=cfg.out, recipe=RECIPE,
                      run_config=card, seed=cfg.seed, dist=info, snapshot=snapshot)
    result = trainer.fit()
    if result.interrupted:
        return report_stop(result, info)
    if info.is_main:
        m = evaluate(trainer.ema["model"].module, test, batch_size=cfg.eval.batch_size, device=device)
        update_eval(cfg.out, {**result.eval_fields(), "weights": "ema", **m})
        print(f"done: step {result.step}; test reconstruction MSE {m['test_recon_mse']:.5f} "
              f"(PSNR {m['test_psnr']:.2f} dB), {m['codes_used']}/{m['num_codes']} codes used, perplexity "
              f"{m['perplexity']:.1f}; results in {cfg.out}")
    distributed.barrier(info)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
