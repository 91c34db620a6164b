"""The reflow recipe's stages (rf -> reflow -> distill) and its image path, end to end on the CPU."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genkit.cli import run_main
from genkit.recipes import reflow

FAST = ["--train.batch-size", "64", "--train.log-every", "10", "--train.checkpoint-every", "20",
        "--train.sample-every", "0", "--train.no-tensorboard", "--train.no-progress", "--device", "cpu",
        "--sample.n-eval", "200", "--sample.steps", "8", "--sample.nfe", "1", "4", "--sample.n-snapshot", "50",
        "--sample.n-straightness", "100", "--model.hidden", "32", "--model.depth", "2"]
PAIRS = ["--pairs.n", "300", "--pairs.steps", "8", "--pairs.batch-size", "100", "--pairs.shard-size", "150"]


def run(argv, capsys):
    code = run_main(reflow.main, argv)
    captured = capsys.readouterr()
    return code, captured.err


def one_line(code, err):
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.slow
def test_rf_then_reflow_then_distill(capsys, tmp_path):
    rf, rf2, d1 = tmp_path / "rf", tmp_path / "rf2", tmp_path / "d1"
    assert run(["--out", str(rf), "--train.steps", "40", *FAST], capsys)[0] == 0
    code, err = run(["--stage", "reflow", "--teacher", str(rf), "--out", str(rf2), "--train.steps", "20", *FAST, *PAIRS], capsys)
    assert code == 0, err
    card = json.loads((rf2 / "config.json").read_text())
    assert card["stage"] == "reflow" and card["teacher"] == str(rf) and card["teacher_checkpoint_step"] == 40
    assert sorted(p.name for p in (rf2 / "pairs").iterdir()) == ["pairs.json", "shard_00000.safetensors", "shard_00001.safetensors"]
    ev = json.loads((rf2 / "eval.json").read_text())
    assert ev["stage"] == "reflow" and ev["straightness"] >= 0 and "energy_distance_euler1" in ev
    code, err = run(["--stage", "distill", "--teacher", str(rf2), "--out", str(d1), "--train.steps", "20", *FAST, *PAIRS], capsys)
    assert code == 0, err
    ev = json.loads((d1 / "eval.json").read_text())
    assert ev["stage"] == "distill" and ev["nfe"] == 1 and ev["solver"] == "euler"


def test_stage_errors_are_one_line(capsys, tmp_path):
    rf = tmp_path / "rf"
    one_line(*run(["--stage", "reflow", "--out", str(tmp_path / "x"), *FAST], capsys))  # no teacher
    err = one_line(*run(["--stage", "reflow", "--teacher", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), *FAST], capsys))
    assert "not a run folder" in err
    assert run(["--out", str(rf), "--train.steps", "20", *FAST], capsys)[0] == 0
    err = one_line(*run(["--stage", "reflow", "--teacher", str(rf), "--data.dataset", "moons", "--out", str(tmp_path / "y"),
                         "--train.steps", "10", *FAST, *PAIRS], capsys))
    assert "teacher" in err and "8gaussians" in err  # a teacher of another dataset
    err = one_line(*run(["--stage", "reflow", "--teacher", str(rf), "--out", str(tmp_path / "z"), "--train.steps", "10",
                         *FAST, "--model.hidden", "48", *PAIRS], capsys))
    assert "teacher network differs" in err  # a teacher of another shape
    err = one_line(*run(["--flow.schedule", "sigmoid", "--out", str(tmp_path / "w"), *FAST], capsys))
    assert "unknown schedule 'sigmoid'" in err


def test_incomplete_pairs_folder_resumes(capsys, tmp_path):
    rf, rf2 = tmp_path / "rf", tmp_path / "rf2"
    assert run(["--out", str(rf), "--train.steps", "10", *FAST], capsys)[0] == 0
    argv = ["--stage", "reflow", "--teacher", str(rf), "--out", str(rf2), "--train.steps", "10", *FAST, *PAIRS]
    assert run(argv, capsys)[0] == 0
    first = (rf2 / "pairs" / "shard_00001.safetensors").read_bytes()
    (rf2 / "pairs" / "shard_00001.safetensors").unlink()  # as if the pair generation had been killed
    from genkit.errors import GenkitError
    from genkit.pairs import check_pairs

    with pytest.raises(GenkitError, match="1 of 2 shards"):
        check_pairs(rf2 / "pairs")
    assert run(argv, capsys)[0] == 0  # the same command finishes the folder
    from safetensors.torch import load

    a, b = load(first), load((rf2 / "pairs" / "shard_00001.safetensors").read_bytes())
    assert all(torch.equal(a[k], b[k]) for k in a)


def write_image_folder(root, n=24, size=8):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n // 2):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


@pytest.mark.slow
def test_image_run_with_tiny_unet(capsys, tmp_path):
    data, out = tmp_path / "imgs", tmp_path / "run"
    write_image_folder(data)
    argv = ["--data.dataset", "imagefolder", "--data.root", str(data), "--data.hflip", "--model.unet-channels", "16", "32",
            "--model.unet-layers", "1", "--out", str(out), "--train.steps", "4", "--train.batch-size", "8",
            "--train.log-every", "2", "--train.checkpoint-every", "2", "--train.sample-every", "2", "--train.no-tensorboard",
            "--train.no-progress", "--device", "cpu", "--sample.steps", "3", "--sample.nfe", "1", "2",
            "--sample.n-straightness", "4", "--sample.n-snapshot", "4"]
    code, err = run(argv, capsys)
    assert code == 0, err
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert names == ["final.png", "nfe_001.png", "nfe_002.png", "step_00000002.png", "step_00000004.png"]
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(str(out / "diffusers"))  # a genkit run's UNet loads with diffusers
    loaded = reflow.load_run(out)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    torch.testing.assert_close(unet(x, 999 * t).sample, loaded.field(x, t))
    assert loaded.sampler(steps=2).sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 3, 8, 8)


def test_image_size_the_unet_cannot_halve(capsys, tmp_path):
    data = tmp_path / "imgs"
    write_image_folder(data, n=4, size=10)
    err = one_line(*run(["--data.dataset", "imagefolder", "--data.root", str(data), "--model.unet-channels", "16", "32", "32",
                         "--out", str(tmp_path / "r"), "--train.steps", "1", "--train.batch-size", "2", "--device", "cpu"], capsys))
    assert "image size 10" in err


def _pairs_with_a_tiny_teacher(tmp_path, *flags):
    """``make_pairs`` as the reflow stage calls it, on the CPU, with a small MLP teacher; returns (cfg, teacher)."""
    from genkit.cli import parse_config
    from genkit.nn.mlp import VelocityMLP
    from genkit.recipes.reflow_eval import make_pairs

    cfg = parse_config(reflow.ReflowConfig, "reflow", ["--stage", "reflow", "--teacher", str(tmp_path / "teacher"),
                                                       "--train.no-progress", *PAIRS, *flags])
    teacher = reflow.LoadedRun(VelocityMLP(2, hidden=8, depth=1).eval(), cfg, (2,), step=0)
    assert make_pairs(teacher, cfg, tmp_path / "pairs", torch.device("cpu")).n == 300
    return cfg, teacher


def test_teacher_pairs_never_compile_on_the_cpu(tmp_path, compile_forbidden):
    cfg, _ = _pairs_with_a_tiny_teacher(tmp_path)
    assert cfg.pairs.compile  # the default


@pytest.mark.parametrize("flags", [(), ("--pairs.no-compile",)])
def test_teacher_pairs_compile_the_teacher_once_on_cuda(tmp_path, compile_spy, flags):
    cfg, teacher = _pairs_with_a_tiny_teacher(tmp_path, *flags)
    assert cfg.pairs.compile is (not flags)
    assert compile_spy == ([] if flags else [teacher.field])
