"""Shared pieces of the recipe tests: a fake MNIST on disk, and a check that two run folders' latest
checkpoints are bit-identical."""

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genkit.train import checkpoint as ckpt


def assert_same_values(a, b, where):
    """Equal nested state: tensors torch.equal (dtype and shape included), everything else ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_values(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_values(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_same_checkpoints(run_a, run_b):
    """The latest checkpoints of two run folders hold bit-identical weights (every model and its EMA) and
    trainer state (optimizers, LR schedules, EMA counts, data position, torch's RNG state), wall time aside.
    (Python's and numpy's global RNG states are saved too, but not comparable here: the recipes do not seed
    them, and tyro's command-line parsing draws from Python's, so two runs in one process see different ones.)"""
    a, b = (ckpt.latest_checkpoint(run / "checkpoints") for run in (run_a, run_b))
    assert a.name == b.name
    files = sorted(p.name for p in a.glob("*.safetensors"))
    assert files and files == sorted(p.name for p in b.glob("*.safetensors"))
    assert any(".ema." in f for f in files) and any(".ema." not in f for f in files)
    for f in files:
        assert_same_values(load_file(str(a / f)), load_file(str(b / f)), f)
    sa, sb = ckpt.load_trainer_state(a), ckpt.load_trainer_state(b)
    assert sa.keys() == sb.keys()
    for key in sorted(set(sa) - {"train_seconds", "rng"}):
        assert_same_values(sa[key], sb[key], key)
    assert_same_values([r["torch"] for r in sa["rng"]], [r["torch"] for r in sb["rng"]], "rng.torch")


@pytest.fixture
def same_checkpoints():
    """:func:`assert_same_checkpoints`, for the tests of this folder."""
    return assert_same_checkpoints


def write_fake_mnist(root: Path, train: torch.Tensor, test: torch.Tensor,
                     train_labels: torch.Tensor | None = None, test_labels: torch.Tensor | None = None) -> Path:
    """Write uint8 images (N, 28, 28) and labels (N,) (zeros when None) as the IDX files torchvision's MNIST
    reads from ``root/MNIST/raw`` (big-endian int32 header, magic 2051 for images, 2049 for labels)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, images, labels in (("train", train, train_labels), ("t10k", test, test_labels)):
        n, h, w = images.shape
        labels = torch.zeros(n, dtype=torch.uint8) if labels is None else labels.to(torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4i", 2051, n, h, w) + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 2049, n) + labels.numpy().tobytes())
    return root


def brightness_task(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two balanced classes of 28x28 noise: pixels uniform on {0..159} (class 0) or {96..255} (class 1).

    Single pixels overlap heavily, but an image's mean (79.5 vs 175.5, sd 46 / 28 = 1.7) separates
    the classes perfectly: a classifier that learned anything gets close to 100%.
    """
    labels = torch.arange(n, dtype=torch.uint8) % 2
    low = torch.randint(0, 160, (n, 28, 28), generator=generator)
    return (low + 96 * labels.view(-1, 1, 1).long()).to(torch.uint8), labels


def write_brightness_mnist(root: Path, n_train: int, n_test: int, generator: torch.Generator) -> Path:
    """:func:`write_fake_mnist` of :func:`brightness_task` images and labels, the training split drawn first."""
    (train, train_labels), (test, test_labels) = brightness_task(n_train, generator), brightness_task(n_test, generator)
    return write_fake_mnist(root, train, test, train_labels, test_labels)


@pytest.fixture(scope="session")
def brightness_mnist():
    """:func:`write_brightness_mnist`, for the tests of this folder."""
    return write_brightness_mnist


@pytest.fixture(scope="session")
def fake_mnist():
    """:func:`write_fake_mnist`, for the tests of this folder."""
    return write_fake_mnist


@pytest.fixture(scope="session")
def two_brightness_classes():
    """:func:`brightness_task`, for the tests of this folder."""
    return brightness_task
