"""Shared checks of the recipe tests: two run folders' latest checkpoints are bit-identical."""

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
