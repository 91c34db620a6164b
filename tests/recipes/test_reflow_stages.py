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


# ---- the teacher a stage uses ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A finished 20-step rf run (checkpoints at steps 10 and 20, eval.json of step 20); copy it to change it."""
    rf = tmp_path_factory.mktemp("teacher") / "rf"
    assert run_main(reflow.main, ["--out", str(rf), "--train.steps", "20", *FAST, "--train.checkpoint-every", "10"]) == 0
    return rf


def copy_of(run_dir, tmp_path):
    import shutil

    return shutil.copytree(run_dir, tmp_path / "rf")


def test_reflow_warm_starts_from_the_teacher_ema_and_reports_its_pairs(capsys, tmp_path, teacher_run):
    """With lr 0 the student's raw weights after a step are its initial ones: the teacher's EMA weights."""
    rf2 = tmp_path / "rf2"
    code, err = run(["--stage", "reflow", "--teacher", str(teacher_run), "--out", str(rf2), "--train.steps", "1",
                     "--optim.lr", "0", *FAST, *PAIRS], capsys)
    assert code == 0, err
    student = reflow.load_run(rf2, ema=False).field.state_dict()
    ema, raw = (reflow.load_run(teacher_run, ema=e).field.state_dict() for e in (True, False))
    assert all(torch.equal(student[k], ema[k]) for k in student)
    assert not all(torch.equal(student[k], raw[k]) for k in student)
    ev = json.loads((rf2 / "eval.json").read_text())
    # 300 pairs in shards of 150, batches of 100 -> 4 batches; rk4 with 8 steps: 32 evaluations per trajectory
    assert {k: ev[k] for k in ("pairs_n", "pairs_nfe", "pairs_nfe_per_pair", "pairs_method", "pairs_steps")} == {
        "pairs_n": 300, "pairs_nfe": 4 * 32, "pairs_nfe_per_pair": 32, "pairs_method": "rk4", "pairs_steps": 8}
    assert ev["pairs_seconds"] > 0


def test_stage_keeps_its_teacher_step_when_the_teacher_trains_on(capsys, tmp_path, teacher_run, monkeypatch):
    """rf (step 20) -> rf2 stopped by Ctrl-C during its pairs -> rf trained on to step 30 -> the same rf2
    command (with the teacher now given as an absolute path) resumes from step 20's pairs, and keeps doing so."""
    import genkit.pairs

    rf, rf2 = copy_of(teacher_run, tmp_path), tmp_path / "rf2"
    monkeypatch.chdir(tmp_path)
    write_shard = genkit.pairs._write_shard

    def ctrl_c_at_second_shard(out, k, *args):
        if k == 1:
            raise KeyboardInterrupt
        write_shard(out, k, *args)

    monkeypatch.setattr(genkit.pairs, "_write_shard", ctrl_c_at_second_shard)
    def stage(teacher, steps=2, *flags):
        return run(["--stage", "reflow", "--teacher", teacher, "--out", str(rf2), "--train.steps", str(steps), *FAST,
                    *PAIRS, *flags], capsys)

    code, err = stage("rf")  # relative
    assert code == 130 and err.count("\n") == 1 and "Run the same command to resume" in err and "Traceback" not in err
    assert sorted(p.name for p in (rf2 / "pairs").iterdir()) == ["pairs.json", "shard_00000.safetensors"]
    monkeypatch.setattr(genkit.pairs, "_write_shard", write_shard)

    assert run(["--out", str(rf), "--train.steps", "30", *FAST, "--train.checkpoint-every", "10"], capsys)[0] == 0
    code, err = stage(str(rf))  # absolute; the step comes from pairs.json
    assert code == 0, err
    card = json.loads((rf2 / "config.json").read_text())
    assert card["teacher"] == str(rf) and card["teacher_checkpoint_step"] == 20
    ev = json.loads((rf2 / "eval.json").read_text())
    assert ev["pairs_n"] == 300 and ev["pairs_nfe"] == 4 * 32  # the shard of the stopped process counts too
    code, err = stage("rf", 4)  # the step comes from config.json
    assert code == 0, err
    assert json.loads((rf2 / "config.json").read_text())["teacher_checkpoint_step"] == 20
    # the teacher's step-20 checkpoint pruned: the resumed stage needs no teacher weights any more
    import shutil

    shutil.rmtree(rf / "checkpoints" / "step_00000020")
    code, err = stage("rf", 6)
    assert code == 0, err
    assert json.loads((rf2 / "config.json").read_text())["teacher_checkpoint_step"] == 20
    err = one_line(*stage("rf", 6, "--teacher-step", "30"))
    assert "made from teacher step 20" in err
    # a new stage takes the latest checkpoint of the (finished) teacher
    code, err = run(["--stage", "reflow", "--teacher", "rf", "--out", "rf3", "--train.steps", "1", *FAST, *PAIRS], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "rf3" / "config.json").read_text())["teacher_checkpoint_step"] == 30


def test_unfinished_and_distilled_teachers_are_refused(capsys, tmp_path, teacher_run):
    rf = copy_of(teacher_run, tmp_path)
    argv = ["--stage", "reflow", "--teacher", str(rf), "--train.steps", "1", *FAST, *PAIRS]
    (rf / "eval.json").unlink()  # as if it were still training
    err = one_line(*run([*argv, "--out", str(tmp_path / "a")], capsys))
    assert "has not finished training" in err and "--teacher-step" in err
    code, err = run([*argv, "--out", str(tmp_path / "b"), "--teacher-step", "10"], capsys)  # a chosen checkpoint
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "config.json").read_text())["teacher_checkpoint_step"] == 10
    card = json.loads((rf / "config.json").read_text())
    (rf / "config.json").write_text(json.dumps(card | {"stage": "distill"}))
    err = one_line(*run([*argv, "--out", str(tmp_path / "c"), "--teacher-step", "20"], capsys))
    assert "distilled student" in err


def test_teacher_of_another_image_folder_is_refused(tmp_path, monkeypatch):
    from pathlib import Path

    cfg = reflow.parse_config(reflow.ReflowConfig, "reflow", ["--stage", "reflow", "--teacher", str(tmp_path / "t"),
                                                              "--teacher-step", "4", "--data.dataset", "imagefolder",
                                                              "--data.root", "b"])
    for root, refused in (("a", True), (str(Path.cwd() / "b"), False)):
        teacher_cfg = reflow.parse_config(reflow.ReflowConfig, "reflow", ["--data.dataset", "imagefolder", "--data.root", root])
        loaded = reflow.LoadedRun(torch.nn.Linear(1, 1), teacher_cfg, (3, 8, 8), step=4)
        monkeypatch.setattr(reflow, "load_run", lambda *a, loaded=loaded, **k: loaded)
        if refused:
            with pytest.raises(reflow.GenkitError, match="imagefolder at a .* not imagefolder at b"):
                reflow.load_teacher(cfg, (3, 8, 8), torch.device("cpu"))
        else:  # the same folder, given as an absolute path
            assert reflow.load_teacher(cfg, (3, 8, 8), torch.device("cpu")) is loaded


def test_options_are_checked_before_any_pair_or_step(capsys, tmp_path, teacher_run):
    out = tmp_path / "d0"
    err = one_line(*run(["--stage", "distill", "--teacher", str(teacher_run), "--out", str(out), "--distill.steps", "0",
                         *FAST, *PAIRS], capsys))
    assert "--distill.steps" in err and not out.exists()
    err = one_line(*run(["--teacher", str(teacher_run), "--out", str(out), *FAST], capsys))  # --stage left out
    assert "--stage" in err and not out.exists()
    err = one_line(*run(["--stage", "reflow", "--teacher", str(teacher_run), "--out", str(teacher_run), *FAST], capsys))
    assert "teacher's run folder" in err


@pytest.mark.parametrize("flag, value", [("--sample.nfe", "0"), ("--sample.n-eval", "0"), ("--sample.n-snapshot", "0"),
                                         ("--sample.n-straightness", "0"), ("--sample.steps", "0"), ("--optim.lr", "-1"),
                                         ("--pairs.n", "0"), ("--teacher-step", "-1")])
def test_bad_numbers_fail_the_dry_run(capsys, tmp_path, flag, value):
    stage = ["--stage", "reflow", "--teacher", str(tmp_path / "t")] if flag in ("--pairs.n", "--teacher-step") else []
    err = one_line(*run([*stage, "--out", str(tmp_path / "x"), flag, value, "--dry-run"], capsys))
    assert flag in err


@pytest.mark.slow
def test_torchrun_ranks_share_the_pair_simulation(capsys, tmp_path, teacher_run):
    """Under torchrun (2 ranks, gloo) rank r simulates shards k = r mod 2; the pairs are those of one process."""
    import subprocess
    import sys

    from safetensors import safe_open
    from safetensors.torch import load_file

    argv = ["--stage", "reflow", "--teacher", str(teacher_run), "--train.steps", "2", *FAST, *PAIRS]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "genkit.recipes.reflow", *argv, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run([*argv, "--out", str(tmp_path / "one")], capsys)[0] == 0
    for k, rank in enumerate(["0", "1"]):
        name = f"shard_{k:05d}.safetensors"
        with safe_open(str(tmp_path / "ddp" / "pairs" / name), framework="pt") as f:
            assert f.metadata()["rank"] == rank
        a, b = (load_file(str(tmp_path / d / "pairs" / name)) for d in ("ddp", "one"))
        assert a.keys() == b.keys() and all(torch.equal(a[x], b[x]) for x in a)
    assert json.loads((tmp_path / "ddp" / "eval.json").read_text())["pairs_nfe"] == 4 * 32
