"""An image classifier whose penultimate layer is the feature space of FID-C.

    python -m genkit.recipes.classifier --preset mnist --out runs/classifier-mnist
    python -m genkit.recipes.classifier --preset fashion-mnist
    python -m genkit.recipes.classifier --preset cifar10
    torchrun --nproc_per_node=2 -m genkit.recipes.classifier --preset cifar10   # data parallel

A small CNN (genkit.nn.convnets.ClassifierCNN) trained with cross-entropy through the shared
Trainer on (image, label) batches. The run folder holds config.json, metrics.jsonl (loss and
batch accuracy), checkpoints/ and eval.json (test-split accuracy of the EMA weights).
``genkit.eval.features.ClassifierFeatures(run_folder)`` then serves its features for FID-C.
The same command with the same ``--out`` resumes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genkit.cli import parse_config, report_stop, run_main, run_recipe, to_jsonable
from genkit.recipes.reflow import OptimConfig
from genkit.data.images import ImageStream, load_images, load_labels, to_float
from genkit.errors import GenkitError
from genkit.nn.convnets import ClassifierCNN
from genkit.objectives.base import LossOutput
from genkit.train import TrainConfig, Trainer
from genkit.train import checkpoint as ckpt
from genkit.train import distributed
from genkit.train.logging import update_eval
from genkit.train.optim import adam

RECIPE = "classifier"
DATASETS = ("mnist", "fashion-mnist", "cifar10", "imagefolder")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    """mnist, fashion-mnist, cifar10, imagefolder (test accuracy on the test split; for imagefolder
    root/test, or the training images themselves if root has no test folder)"""
    root: Path = Path("data")
    """image data root (torchvision layout), or the ImageFolder directory"""
    download: bool = True
    """let torchvision download missing image sets (needs network)"""
    hflip: bool = False
    """random horizontal flips of training images"""


@dataclass(frozen=True)
class ModelConfig:
    channels: tuple[int, ...] = (32, 64, 128)
    """output channels of each conv block (each halves the resolution)"""
    feature_dim: int = 128
    """width of the penultimate layer: the FID-C feature dimension"""


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 1000
    """images per forward pass when measuring test accuracy"""


@dataclass(frozen=True)
class ClassifierConfig:
    """Image classifier (cross-entropy) whose features serve FID-C."""

    preset: str | None = None
    """preset from recipes/classifier/<name>.toml (applied before other flags)"""
    out: Path = Path("runs/classifier")
    """run folder; running again with the same folder resumes"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    dry_run: bool = False
    """print the resolved config and exit"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=3000, batch_size=256, sample_every=0, checkpoint_every=1000)
    )
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---- data -------------------------------------------------------------------------------------------
class LabelledStream:
    """An :class:`ImageStream` of ``images`` that also yields each batch's ``labels: (N,)``.

    Batches are ``(x: (B, C, H, W) float in [-1, 1], y: (B,) int64)``; the order, flips,
    sharding and ``state_dict`` are the wrapped ImageStream's, and the labels follow the
    same indices (``ImageStream.epoch_indices``).
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, **stream_args: Any) -> None:
        if labels.shape != (len(images),):
            raise GenkitError(f"need one label per image: {len(images)} images, labels {tuple(labels.shape)}")
        self.images = ImageStream(images, batch_size, **stream_args)
        self.labels = labels.to(device=self.images.device, dtype=torch.long)
        self._order_epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __iter__(self) -> LabelledStream:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        epoch, index, b = self.images.epoch, self.images.index, self.images.batch_size
        x = next(self.images)
        if self._order_epoch != epoch:
            self._order, self._order_epoch = self.images.epoch_indices(epoch).to(self.labels.device), epoch
        return x, self.labels[self._order[index * b : (index + 1) * b]]

    def state_dict(self) -> dict[str, int]:
        return self.images.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.images.load_state_dict(state)


# ---- objective and metrics ------------------------------------------------------------------------------
class CrossEntropy:
    """Classification objective: ``batch = (x: (B, C, H, W), y: (B,))``, loss under optimizer ``model``."""

    def __call__(
        self,
        models: Mapping[str, nn.Module],
        batch: tuple[Tensor, Tensor],
        *,
        need: frozenset[str] = frozenset({"model"}),
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        x, y = batch
        logits = models["model"](x).float()
        loss = F.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        return LossOutput({"model": loss}, {"train_accuracy": accuracy.detach()})


@torch.no_grad()
def evaluate(net: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int, device: torch.device) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``net`` on uint8 ``images: (N, C, H, W)`` with ``labels: (N,)``."""
    correct, loss = 0, 0.0
    for lo in range(0, len(images), batch_size):
        x = to_float(images[lo : lo + batch_size].to(device))
        y = labels[lo : lo + batch_size].to(device)
        logits = net(x).float()
        correct += int((logits.argmax(dim=1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    return {"accuracy": correct / len(images), "loss": loss / len(images)}


# ---- loading a finished run (the hook ClassifierFeatures uses) ------------------------------------------
@dataclass(frozen=True)
class LoadedClassifier:
    net: ClassifierCNN
    dataset: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    step: int


def build_net(model: Mapping[str, Any], shape: Sequence[int], num_classes: int) -> ClassifierCNN:
    """The network of a run from its ``model`` settings (as in config.json), image ``shape`` and class count."""
    return ClassifierCNN(shape[0], num_classes, channels=tuple(model["channels"]), feature_dim=int(model["feature_dim"]))


def load_classifier(path: str | Path, *, device: str | torch.device = "cpu", ema: bool = True) -> LoadedClassifier:
    """A classifier run's network (eval mode, frozen) from its run folder or one checkpoint folder."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():  # a run folder: its latest checkpoint
        found = ckpt.latest_checkpoint(path / "checkpoints")
        if found is None:
            raise GenkitError(
                f"{path} holds no classifier checkpoint: pass a trained run folder of "
                "python -m genkit.recipes.classifier or one of its checkpoints/step_* folders"
            )
        path = found
    card = ckpt.read_card(path)
    if card["recipe"] != RECIPE:
        raise GenkitError(f"{path} is a checkpoint of recipe '{card['recipe']}', not '{RECIPE}': point at a classifier run")
    config = card["config"]
    shape = tuple(config["shape"])
    net = build_net(config["model"], shape, len(config["classes"]))
    ckpt.check_compatible(path, recipe=RECIPE, models={"model": net})
    ckpt.load_weights(path, "model", net, ema=ema)
    net = net.to(device).eval().requires_grad_(False)
    return LoadedClassifier(net, config["data"]["dataset"], shape, tuple(config["classes"]), int(card["step"]))


# ---- the command ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(ClassifierConfig, RECIPE, argv, description=__doc__.split("\n\n")[0])
    if cfg.data.dataset not in DATASETS:
        raise GenkitError(f"unknown dataset '{cfg.data.dataset}' (known: {', '.join(DATASETS)})")
    return run_recipe(cfg, run)


def _split(cfg: ClassifierConfig, split: str, classes: Sequence[str] | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """uint8 images, labels and class names of ``split``; labels numbered by ``classes`` if given (the train
    split's: an ImageFolder test split may hold only some of them)."""
    d = cfg.data
    images = load_images(d.dataset, root=d.root, split=split, download=d.download)
    labels, classes = load_labels(d.dataset, root=d.root, split=split, classes=classes)
    return images, labels, classes


def run(cfg: ClassifierConfig, device: torch.device, info: distributed.DistInfo) -> int:
    images, labels, classes = _split(cfg, "train")
    if cfg.data.dataset == "imagefolder":  # a test class the training images lack: refused before training
        load_labels(cfg.data.dataset, root=cfg.data.root, split="test", classes=classes)
    shape = tuple(images.shape[1:])
    torch.manual_seed(cfg.seed)  # the one global seed: model initialisation
    net = build_net(to_jsonable(cfg.model), shape, len(classes)).to(device)
    card = {"recipe": RECIPE, "shape": list(shape), "classes": classes,
            **to_jsonable(dataclasses.replace(cfg, dry_run=False))}
    data = LabelledStream(images, labels, cfg.train.micro_batch_size(info.world_size), seed=cfg.seed,
                          rank=info.rank, world_size=info.world_size, hflip=cfg.data.hflip, device=device)
    opt = adam(net.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    trainer = Trainer({"model": net}, {"model": opt}, CrossEntropy(), data, cfg.train, run_dir=cfg.out,
                      recipe=RECIPE, run_config=card, seed=cfg.seed, dist=info)
    result = trainer.fit()
    if result.interrupted:
        return report_stop(result, info)
    if info.is_main:
        test_images, test_labels, _ = _split(cfg, "test", classes)
        m = evaluate(trainer.ema["model"].module, test_images, test_labels, batch_size=cfg.eval.batch_size, device=device)
        update_eval(cfg.out, {**result.eval_fields(), "weights": "ema", "test_accuracy": m["accuracy"],
                              "test_loss": m["loss"], "n_test": len(test_images), "feature_dim": cfg.model.feature_dim})
        print(f"done: step {result.step}; test accuracy {m['accuracy']:.4f} on {len(test_images)} images; "
              f"results in {cfg.out}")
    distributed.barrier(info)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
