"""Deep InfoMax (Su's variant, SPEC §7): unsupervised image features by mutual information.

    python -m genkit.recipes.infomax --preset cifar10 --out runs/infomax-cifar10
    python -m genkit.recipes.infomax --preset mnist
    torchrun --nproc_per_node=2 -m genkit.recipes.infomax --preset cifar10   # data parallel

A conv encoder (genkit.nn.infomax_nets) with a Gaussian code and two critics (global and local) is
trained on unlabelled training images with genkit.objectives.infomax.DeepInfoMax through the shared
Trainer. The run folder holds config.json, metrics.jsonl (the three loss terms, the JS estimates, the
code's mean and std), checkpoints/, samples/ (nearest neighbours in code space of a few test images
among the training images, cosine and Euclidean) and eval.json: k-NN and linear-probe accuracy of the
code (posterior mean of the EMA encoder) on the test split, fit on the training split's codes and
labels. The same command with the same ``--out`` resumes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from genkit.cli import load_network, open_run, parse_config, report_stop, run_main, run_recipe, to_jsonable
from genkit.data.images import ImageStream, load_images, load_labels, to_float
from genkit.errors import GenkitError
from genkit.eval.probes import Metric, knn_accuracy, linear_probe, nearest_neighbours
from genkit.eval.runs import subset_description, subset_indices
from genkit.nn.infomax_nets import InfoMaxEncoder, build_infomax_models
from genkit.objectives.infomax import DeepInfoMax, GlobalInput, Negatives
from genkit.recipes.classifier import DATASETS, DataConfig
from genkit.recipes.reflow import OptimConfig
from genkit.train import TrainConfig, Trainer, distributed
from genkit.train.logging import update_eval
from genkit.train.optim import adam

RECIPE = "infomax"


@dataclass(frozen=True)
class ModelConfig:
    channels: tuple[int, ...] = (64, 128, 256)
    """output channels of each [conv, BatchNorm, LeakyReLU, max-pool] block; the last block's output is the
    local feature map"""
    z_dim: int = 256
    """code size (the feature dimension)"""
    critic_hidden: int = 256
    """width of the critics' three hidden layers"""


@dataclass(frozen=True)
class DIMConfig:
    alpha: float = 0.5
    """weight of the global mutual-information term"""
    beta: float = 1.5
    """weight of the local (per feature-map location) term"""
    gamma: float = 0.01
    """weight of the prior term mean KL(p(z|x) || N(0, I))"""
    global_input: GlobalInput = "code"
    """what stands for the image in the global pair: the code itself (reference code) or the flattened
    feature map (the blog's text)"""
    negatives: Negatives = "derangement"
    """in-batch negatives: a derangement (no image paired with its own code) or randperm (reference code)"""


@dataclass(frozen=True)
class EvalConfig:
    k: int = 10
    """neighbours voting in the k-NN accuracy, and shown per query in samples/"""
    queries: int = 10
    """test images whose nearest training images samples/ shows"""
    batch_size: int = 1000
    """images per forward pass when computing codes"""
    max_train: int = 0
    """training images whose codes the probes fit on and the grids show (0: all; else a fixed seeded subset,
    genkit.eval.runs.subset_indices)"""
    baseline: bool = True
    """also score the untrained encoder (this seed's initialisation) with the same probes: eval.json's
    untrained_* fields, the baseline a learned code has to beat"""


@dataclass(frozen=True)
class InfoMaxConfig:
    """Deep InfoMax (Su's variant): unsupervised features, judged by k-NN and linear probes."""

    preset: str | None = None
    """preset from recipes/infomax/<name>.toml (applied before other flags)"""
    out: Path = Path("runs/infomax")
    """run folder; running again with the same folder resumes"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    dry_run: bool = False
    """print the resolved config and exit"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dim: DIMConfig = field(default_factory=DIMConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=10000, batch_size=64, sample_every=0, checkpoint_every=1000)
    )
    eval: EvalConfig = field(default_factory=EvalConfig)


def check_config(cfg: InfoMaxConfig) -> None:
    """Every check that needs no file: bad options fail before data is read or a step trained."""
    if cfg.data.dataset not in DATASETS:
        raise GenkitError(f"unknown dataset '{cfg.data.dataset}' (known: {', '.join(DATASETS)})")
    for flag, value in (("--model.z-dim", cfg.model.z_dim), ("--model.critic-hidden", cfg.model.critic_hidden),
                        ("--eval.k", cfg.eval.k), ("--eval.queries", cfg.eval.queries),
                        ("--eval.batch-size", cfg.eval.batch_size)):
        if value < 1:
            raise GenkitError(f"{flag} must be >= 1, got {value}")
    if cfg.eval.max_train < 0:
        raise GenkitError(f"--eval.max-train must be >= 0 (0: all), got {cfg.eval.max_train}")
    if cfg.train.batch_size < 2:
        raise GenkitError(f"--train.batch-size must be >= 2 (negatives come from the batch), got {cfg.train.batch_size}")
    DeepInfoMax(cfg.dim.alpha, cfg.dim.beta, cfg.dim.gamma, global_input=cfg.dim.global_input,
                negatives=cfg.dim.negatives)  # its own checks of the weights and choices


# ---- codes and their evaluation -----------------------------------------------------------------------
def probe_scores(train_codes: Tensor, train_labels: Tensor, test_codes: Tensor, test_labels: Tensor, *, k: int,
                 device: torch.device) -> tuple[dict[str, float], float]:
    """k-NN accuracies (cosine, Euclidean) and the linear-probe accuracy of codes ``(N, z_dim)`` fitted on the
    training codes and scored on the test codes (``knn_cosine_accuracy``, ``knn_euclidean_accuracy``,
    ``linear_probe_accuracy``), and the chance accuracy of the test labels (the most frequent class's share)."""
    scores = {f"knn_{metric}_accuracy": knn_accuracy(train_codes, train_labels, test_codes, test_labels, k=k,
                                                     metric=metric, chunk_size=256).accuracy
              for metric in ("cosine", "euclidean")}
    probe = linear_probe(train_codes.to(device), train_labels, test_codes.to(device), test_labels)
    return {**scores, "linear_probe_accuracy": probe.accuracy}, probe.chance


@torch.no_grad()
def encode(encoder: InfoMaxEncoder, images: Tensor, *, batch_size: int, device: torch.device) -> Tensor:
    """Codes (posterior means) of uint8 ``images: (N, C, H, W)``: ``(N, z_dim)`` float32 on the CPU.

    ``encoder`` should be in eval mode (BatchNorm running statistics), as the EMA copy is."""
    return torch.cat([encoder.features(to_float(images[lo : lo + batch_size].to(device))).float().cpu()
                      for lo in range(0, len(images), batch_size)])


def _retrieval_grid(queries: Tensor, query_codes: Tensor, images: Tensor, codes: Tensor, k: int,
                    metric: Metric, path: Path) -> None:
    """One row per query: the query image, then its ``k`` nearest training images in code space."""
    from genkit.plots import save_image_grid

    nearest = nearest_neighbours(query_codes, codes, k, metric=metric).indices  # (Q, k)
    rows = torch.cat([queries[:, None], images[nearest]], dim=1)  # (Q, 1 + k, C, H, W)
    save_image_grid(to_float(rows.flatten(0, 1)), path, nrow=k + 1)  # (Q * (1 + k), C, H, W)


def evaluate(encoder: InfoMaxEncoder, train_images: Tensor, cfg: InfoMaxConfig,
             device: torch.device) -> dict[str, float | int | str]:
    """Probe accuracies of the code on the test split (fit on ``train_images``, the run's uint8 training split
    ``(N, C, H, W)``, and its labels), those of the untrained encoder (``untrained_*``, if
    ``cfg.eval.baseline``), and the retrieval grids."""
    d = cfg.data
    train_labels, classes = load_labels(d.dataset, root=d.root, split="train")
    test_images = load_images(d.dataset, root=d.root, split="test", download=d.download)
    test_labels, _ = load_labels(d.dataset, root=d.root, split="test", classes=classes)
    total = len(train_images)
    subset = subset_description(total, cfg.eval.max_train or total)
    keep = subset_indices(total, cfg.eval.max_train or total)  # None: all of them
    if keep is not None:
        train_images, train_labels = train_images[keep], train_labels[keep]
    k = min(cfg.eval.k, len(train_images))
    train_codes = encode(encoder, train_images, batch_size=cfg.eval.batch_size, device=device)
    test_codes = encode(encoder, test_images, batch_size=cfg.eval.batch_size, device=device)
    scores, chance = probe_scores(train_codes, train_labels, test_codes, test_labels, k=k, device=device)
    results: dict[str, float | int | str] = {**scores, "chance_accuracy": chance, "knn_k": k,
        "n_train": len(train_images), "train_subset": subset, "n_test": len(test_images),
        "feature_dim": train_codes.shape[1], "code_mean": float(test_codes.mean()), "code_std": float(test_codes.std())}
    if cfg.eval.baseline:
        init = untrained_encoder(cfg, tuple(train_images.shape[1:])).to(device)
        init_train = encode(init, train_images, batch_size=cfg.eval.batch_size, device=device)
        init_test = encode(init, test_images, batch_size=cfg.eval.batch_size, device=device)
        scores, _ = probe_scores(init_train, train_labels, init_test, test_labels, k=k, device=device)
        results |= {f"untrained_{name}": value for name, value in scores.items()}
    q = subset_indices(len(test_images), cfg.eval.queries)  # the same queries in every run
    q = torch.arange(len(test_images)) if q is None else q
    for metric in ("cosine", "euclidean"):
        _retrieval_grid(test_images[q], test_codes[q], train_images, train_codes, k, metric,
                        cfg.out / "samples" / f"neighbours_{metric}.png")
    return results


# ---- loading a finished run ------------------------------------------------------------------------
def build_models(cfg: InfoMaxConfig, shape: Sequence[int]) -> dict[str, nn.Module]:
    m = cfg.model
    return build_infomax_models(tuple(shape), channels=tuple(m.channels), z_dim=m.z_dim,
                                critic_hidden=m.critic_hidden, global_input=cfg.dim.global_input)


def untrained_encoder(cfg: InfoMaxConfig, shape: Sequence[int]) -> InfoMaxEncoder:
    """The encoder a run of ``cfg`` starts from (its seed's initialisation; eval mode, frozen), for baselines.

    Builds the models from torch's global generator seeded with ``cfg.seed``, as the recipe does, inside
    ``torch.random.fork_rng`` so the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder = build_models(cfg, shape)["encoder"].eval()
    return encoder.requires_grad_(False)


def load_encoder(run_dir: str | Path, *, device: str | torch.device = "cpu", ema: bool = True) -> InfoMaxEncoder:
    """The trained encoder of an infomax run folder (eval mode, frozen); ``encoder.features(x)`` gives codes."""
    run = open_run(run_dir, RECIPE, InfoMaxConfig)
    encoder = build_models(run.config, run.shape)["encoder"]
    return load_network(run, RECIPE, "encoder", encoder, ema=ema, device=device)


# ---- the command ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(InfoMaxConfig, RECIPE, argv, description=__doc__.split("\n\n")[0])
    check_config(cfg)
    return run_recipe(cfg, run)


def run(cfg: InfoMaxConfig, device: torch.device, info: distributed.DistInfo) -> int:
    d = cfg.data
    images = load_images(d.dataset, root=d.root, split="train", download=d.download)
    shape = tuple(images.shape[1:])
    torch.manual_seed(cfg.seed)  # the one global seed: model initialisation
    models = {n: m.to(device) for n, m in build_models(cfg, shape).items()}
    card = {"recipe": RECIPE, "shape": list(shape), **to_jsonable(dataclasses.replace(cfg, dry_run=False))}
    data = ImageStream(images, cfg.train.micro_batch_size(info.world_size), seed=cfg.seed, rank=info.rank,
                       world_size=info.world_size, hflip=d.hflip, device=device)
    params = [p for m in models.values() for p in m.parameters()]  # encoder and critics minimise one loss
    opt = adam(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    objective = DeepInfoMax(cfg.dim.alpha, cfg.dim.beta, cfg.dim.gamma, global_input=cfg.dim.global_input,
                            negatives=cfg.dim.negatives)
    trainer = Trainer(models, {"model": opt}, objective, data, cfg.train, run_dir=cfg.out, recipe=RECIPE,
                      run_config=card, seed=cfg.seed, dist=info)
    result = trainer.fit()
    if result.interrupted:
        return report_stop(result, info)
    if info.is_main:
        m = evaluate(trainer.ema["encoder"].module, images, cfg, device)  # the training images read above
        update_eval(cfg.out, {**result.eval_fields(), "weights": "ema", **m})
        print(f"done: step {result.step}; k-NN (cosine, k={m['knn_k']}) accuracy {m['knn_cosine_accuracy']:.4f}, "
              f"linear probe {m['linear_probe_accuracy']:.4f} on {m['n_test']} test images "
              f"(chance {m['chance_accuracy']:.4f}{_untrained_note(m)}); results in {cfg.out}")
    distributed.barrier(info)
    return 0


def _untrained_note(m: dict) -> str:
    if "untrained_linear_probe_accuracy" not in m:
        return ""
    return (f"; untrained encoder: k-NN {m['untrained_knn_cosine_accuracy']:.4f}, "
            f"linear {m['untrained_linear_probe_accuracy']:.4f}")


if __name__ == "__main__":
    sys.exit(run_main(main))
