"""python -m genkit.bench.suite: the GPU session's command, rehearsed on the CPU with fake data.

No MNIST or CIFAR-10 here: a fake ``--shared`` folder holds MNIST IDX .gz files of random images and
a tiny ``cifar10_jpg.tar.gz`` (3 classes of random 32x32 JPEGs), laid out as ../shared/data.
"""

import dataclasses
import gzip
import io
import itertools
import json
import math
import struct
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import tyro

from genkit.bench import suite
from genkit.cli import parse_config, run_main

N_IMAGES = 64  # per MNIST split
CLASSES = ("airplane", "cat", "ship")


def write_idx_gz(folder, prefix, images, labels):
    """Gzipped IDX files as torchvision reads them: big-endian int32 header, magic 2051 (images) / 2049 (labels)."""
    n, h, w = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4i", 2051, n, h, w) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">2i", 2049, n) + labels.tobytes())


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir()
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (N_IMAGES, 28, 28), dtype=np.uint8)
        write_idx_gz(root / "mnist", prefix, images, (np.arange(N_IMAGES) % 10).astype(np.uint8))
    from PIL import Image

    with tarfile.open(root / "cifar10_jpg.tar.gz", "w:gz") as tar:
        for split, per_class in (("train", 4), ("test", 2)):
            for c in CLASSES:
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
                    info = tarfile.TarInfo(f"cifar10/{split}/{c}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return root


@pytest.mark.slow
def test_mnist_smoke_runs_the_whole_chain_then_skips_it(shared, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["mnist", "--smoke", "--work", str(work), "--out", str(out), "--shared", str(shared),
            "--data-root", str(tmp_path / "data"), "--device", "cpu"]
    cmd = [sys.executable, "-m", "genkit.bench.suite", *argv]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()  # unpacked from --shared

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["results-mnist.tar.gz", "summary-mnist.json", "summary-mnist.md"]  # the GPU tool brings back 8
    assert (out / "results-mnist.tar.gz").stat().st_size < 16 * 2**20  # ... of at most 16 MB each
    summary = json.loads((out / "summary-mnist.json").read_text())
    assert summary["status"] == "complete" and summary["device"].startswith("cpu") and summary["torch"]
    res = summary["results"]
    stages = {r["stage"]: r for r in res["stages"]}
    assert list(stages) == ["rf", "reflow", "distill"]
    for r in stages.values():
        assert r["straightness"] >= 0 and r["step"] >= 1
        assert list(r["fid_classifier"]) == ["1", "2"]  # --smoke: NFE 1 and 2 (JSON keys are strings)
        assert all(math.isfinite(v) and v >= 0 for v in r["fid_classifier"].values())
        assert r["budget_minutes"] == suite.SMOKE.rf_minutes  # 0.02 for each smoke stage
        assert r["train_minutes"] >= r["budget_minutes"] - 1e-3  # ended by --train.time-limit, not by steps
    assert res["fid_floor_train_vs_test"] >= 0 and res["classifier"]["test_accuracy"] is not None

    with tarfile.open(out / "results-mnist.tar.gz") as tar:
        names = set(tar.getnames())
    for stage in ("rf", "reflow", "distill"):
        assert {f"mnist-{stage}/eval.json", f"mnist-{stage}/config.json", f"mnist-{stage}/metrics.jsonl",
                f"mnist-{stage}/samples/nfe_001.png", f"mnist-{stage}/fid_classifier_vs_nfe.png",
                f"logs/mnist-{stage}.log", f"steps/mnist-{stage}-fid.json"} <= names
    assert not any(part in name for name in names for part in ("checkpoints", "pairs/", "tensorboard", "diffusers"))

    md = (out / "summary-mnist.md").read_text()
    assert proc.stdout.rstrip().endswith(md.rstrip())  # the table is printed last
    assert "python -m genkit.recipes.reflow --preset mnist --stage distill" in md and "--train.time-limit" in md
    assert "| 2-RF + distillation |" in md

    start = time.monotonic()  # the same command again (in this process: cheaper): every step is done already
    assert run_main(suite.main, argv) == 0
    seconds, printed = time.monotonic() - start, capsys.readouterr().out
    assert "all 7 steps were done earlier: nothing to run" in printed
    assert printed.count("done earlier, skipped") == 7 and seconds < 10
    records = [json.loads(p.read_text()) for p in (work / "steps").glob("*.json")]
    assert len(records) == 7 and all(len(r["invocations"]) == 1 for r in records)
    assert json.loads((out / "summary-mnist.json").read_text())["results"] == res


def test_deadline_refuses_a_step_and_still_packs(shared, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["mnist", "--smoke", "--work", str(tmp_path / "w"), "--out", str(out), "--shared", str(shared),
            "--data-root", str(tmp_path / "data"), "--device", "cpu", "--deadline-minutes", "0.01"]
    assert run_main(suite.main, argv) == suite.EXIT["deadline"]
    printed = capsys.readouterr().out
    assert "mnist-classifier: not started" in printed and "run the same command again" in printed
    summary = json.loads((out / "summary-mnist.json").read_text())
    assert summary["status"] == "incomplete" and summary["steps"][0]["this_invocation"] == "refused"
    assert (out / "results-mnist.tar.gz").is_file() and not (tmp_path / "w" / "steps").exists()


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    argv = ["mnist", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--shared", str(tmp_path / "none"),
            "--data-root", str(tmp_path / "data"), "--device", "cpu"]
    assert run_main(suite.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MNIST not found") and err.count("\n") == 1 and str(tmp_path / "none") in err


def test_speed_dry_run_prints_the_benchmark_commands(tmp_path, capsys):
    assert run_main(suite.main, ["speed", "--dry-run", "--work", str(tmp_path / "w")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ("speed-trainer-overhead: python -m genkit.bench.trainer_overhead --cases unet --batch-sizes 128 512 "
            "--device auto") in lines
    assert "speed-sampling: python -m genkit.bench.sampling --device auto" in lines
    assert "speed-pairs-memory: python -m genkit.bench.pairs_memory --pairs 10000 100000 --device auto" in lines
    assert "speed-gpu-tests: python -m pytest -q -m gpu tests/test_gpu.py" in lines  # last: a failure costs no number
    assert not (tmp_path / "w").exists()  # nothing ran, nothing was written


def test_cifar_dry_run_plans_imagefolder_training_nll_and_fid(shared, tmp_path, capsys):
    root = tmp_path / "data" / "cifar10"
    argv = ["cifar", "--dry-run", "--work", str(tmp_path / "w"), "--shared", str(shared), "--cifar-root", str(root)]
    assert run_main(suite.main, argv) == 0
    out = capsys.readouterr().out
    assert f"would unpack {shared / 'cifar10_jpg.tar.gz'} into {root}" in out and not root.exists()
    data = f"--data.dataset imagefolder --data.root {root} --data.no-download"
    assert f"python -m genkit.recipes.classifier --preset cifar10 --out {tmp_path / 'w' / 'cifar-classifier'} {data}" in out
    assert f"--preset cifar10 --stage rf --out {tmp_path / 'w' / 'cifar-rf'} {data}" in out and "--train.time-limit 20" in out
    assert "python -m genkit.eval.nll --run" in out
    assert "--split test --k 1 --method dopri5 --rtol 1e-5 --atol 1e-5 --batch-size 500" in out
    assert "--nfe 1 10 100 --device auto --floor" in out


def test_cifar_archive_unpacks_into_the_image_folder(shared, tmp_path):
    root = tmp_path / "data" / "cifar10"
    cfg = suite.SuiteConfig(part="cifar", shared=shared, cifar_root=root)
    assert "unpacked" in suite.prepare_data(cfg)
    assert sorted(p.name for p in (root / "train").iterdir()) == list(CLASSES)
    assert len(list((root / "test" / "cat").glob("*.jpg"))) == 2
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".untar")]
    assert "is there" in suite.prepare_data(cfg)  # a second call leaves it alone


def test_gans_dry_run_plans_four_gans_their_curves_and_the_comparison(shared, tmp_path, capsys):
    work = tmp_path / "w"
    (work / "steps").mkdir(parents=True)  # the mnist part trained the classifier in this work folder
    (work / "steps" / "mnist-classifier.json").write_text(json.dumps({"name": "mnist-classifier", "status": "done"}))
    argv = ["gans-mnist", "--dry-run", "--work", str(work), "--shared", str(shared), "--data-root", str(tmp_path / "d")]
    assert run_main(suite.main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = ["monoflow-identity", "monoflow-log-sigmoid", "reflow-gan", "wgan-gp"]
    assert [ln.split(": ")[0] for ln in lines[1:-1]] == [
        "mnist-classifier (done, would skip)", *(f"mnist-{r}{fid}" for r in runs for fid in ("", "-fid")), "mnist-gans-compare"]
    commands = dict(ln.split(": ", 1) for ln in lines[1:-1])
    # guessed generator steps in 240 s: MonoFlow 150/s x 240 = 36,000, ReFlow-GAN/WGAN-GP 120/s x 240 / 5 = 5,760;
    # checkpoints every 5,760 / 10 = 576 generator steps in every run (576 or 5 x 576 = 2,880 Trainer steps);
    # grids about 10 per run (MonoFlow: every 6th checkpoint)
    for run, objective, every, grids in zip(runs, ("--objective.h identity", "--objective.h log_sigmoid",
                                                   "--objective.kind reflow_gan", "--objective.kind wgan_gp"),
                                            (576, 576, 2880, 2880), (3456, 3456, 2880, 2880)):
        recipe = "monoflow" if run.startswith("monoflow") else "reflow_gan"
        assert commands[f"mnist-{run}"] == (
            f"python -m genkit.recipes.{recipe} --preset mnist --out {work / f'mnist-{run}'} {objective} --data.root "
            f"{tmp_path / 'd'} --data.no-download --device auto --train.batch-size 64 --train.steps 1000000 --train.keep-checkpoints 0 "
            f"--train.checkpoint-every {every} --train.sample-every {grids} --train.time-limit 4")
        assert (f"--run {work / f'mnist-{run}'} --features classifier --classifier {work / 'mnist-classifier'} --ref test "
                "--n 10000 --checkpoints missing --device auto") in commands[f"mnist-{run}-fid"]
        # about 20 curve points: every checkpoint up to 1.25 x 5,760 = 7,200 generator steps (13 x 576), then thinned
        assert commands[f"mnist-{run}-fid"].endswith(f"--curve-points 20 --curve-dense-until {13 * every}")
    assert [run for run in runs if "--floor" in commands[f"mnist-{run}-fid"]] == ["monoflow-identity"]
    assert commands["mnist-gans-compare"] == ("python -m genkit.eval.compare --runs "
                                              + " ".join(str(work / f"mnist-{r}") for r in runs)
                                              + f" --out {work / 'mnist-gans-compare'}")
    for part in ("mnist", "cifar"):  # one classifier step per data set, whichever part runs it first
        assert suite.plan(suite.SuiteConfig(part=part))[0] == suite.plan(suite.SuiteConfig(part=f"gans-{part}"))[0]
    cifar = suite.plan(suite.SuiteConfig(part="gans-cifar", cifar_gan_minutes=3, gan_points=5))
    assert [s.train for s in cifar if s.module in suite.GAN_RECIPES] == [3, 3, 3, 3]
    # MonoFlow 120/s x 180 s = 21,600 generator steps, ReFlow-GAN 60/s x 180 / 5 = 2,160: every 432 of them
    assert "--train.checkpoint-every 432 --train.sample-every 4320" in cifar[1].command()
    assert "--train.checkpoint-every 2160 --train.sample-every 2160" in cifar[5].command()


@pytest.mark.parametrize(("flags", "error"), [(["--monoflow-h", "identity", "identity"], "'identity' is listed twice"),
                                              (["--monoflow-h", "logit"], "'logit' is unknown"),
                                              (["--gan-points", "0"], "--gan-points"),
                                              (["--rates.reflow-gan-cifar", "0"], "--rates.reflow-gan-cifar must be > 0")])
def test_gans_bad_settings_are_one_line_errors(flags, error, tmp_path, capsys):
    assert run_main(suite.main, ["gans-cifar", "--dry-run", "--work", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and error in err and err.count("\n") == 1


def test_gans_pack_puts_the_comparison_in_the_tarball_and_the_summary(tmp_path):
    """The packing of a gans part, on hand-made run folders (its --smoke chain takes about a minute: too long
    here); the comparison is made by the planned compare command, in-process."""
    from PIL import Image

    from genkit.eval import compare

    cfg = suite.SuiteConfig(part="gans-mnist", smoke=True, work=tmp_path / "w", out=tmp_path / "out")
    steps = suite.plan(cfg)
    gans = [s for s in steps if s.module in suite.GAN_RECIPES]
    settings = {"metric": "fid_classifier", "extractor": "classifier:fake", "ref": "mnist:test", "n": 32, "n_ref": 32,
                "solver": "generator", "weights": "ema", "precision": "fp32", "seed": 0, "nfe": None}
    for i, step in enumerate(gans):
        flags, monoflow = dict(zip(step.args, step.args[1:])), step.module.endswith("monoflow")
        objective = {"h": flags["--objective.h"]} if monoflow else {"kind": flags["--objective.kind"]}
        card = {"recipe": step.module.removeprefix("genkit.recipes."), "objective": objective,
                "train": {"checkpoint_every": int(flags["--train.checkpoint-every"])}}
        points = [{"step": k, "generator_steps": k if monoflow else k // 5, "train_seconds": 0.4 * k / 10,
                   "fid": 1.0 / (k + i), "sample_seconds": 0.1} for k in (10, 20, 30)]
        ev = {"step": 30, "train_seconds": 1.2, "time_limit_reached": True, "fid_classifier_n": 32,
              **({"fid_classifier_floor_train_vs_test": 0.5} if i == 0 else {})}
        (step.run / "samples").mkdir(parents=True)
        Image.new("L", (8, 8)).save(step.run / "samples" / "final.png")
        for name, value in (("config.json", card), ("eval.json", ev), ("fid_curve.json", {"settings": settings, "points": points})):
            (step.run / name).write_text(json.dumps(value))
    run = suite.Suite(cfg, steps, cfg.out)
    run.outcome = "done"
    assert "No comparison yet: its step has not run." in run.pack()
    assert compare.main(list(steps[-1].args)) == 0
    md = run.pack()

    with tarfile.open(cfg.out / "results-gans-mnist.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"mnist-gans-compare/comparison.{ext}" for ext in ("md", "json", "png")} <= names
    assert {f"{s.name}/{f}" for s in gans for f in ("fid_curve.json", "samples/final.png", "eval.json")} <= names
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    for label in ("MonoFlow h=identity", "MonoFlow h=log_sigmoid", "ReFlow-GAN", "WGAN-GP"):
        assert sum(ln.startswith(f"| {label} | ") for ln in rows) == 1  # the comparison table: a row per run
    summary = json.loads((cfg.out / "summary-gans-mnist.json").read_text())
    res = summary["results"]
    assert [r["name"] for r in res["runs"]] == [s.name for s in gans] and res["fid_floor_train_vs_test"] == 0.5
    assert all(r["steps_per_second"] == 25 and r["fid_points"] == 3 for r in res["runs"])
    assert [r["generator_steps"] for r in res["runs"]] == [30, 30, 6, 6]
    assert res["comparison_table"] in md and res["comparison"]["budgets"][0] == {"axis": "generator_steps", "value": 6,
                                                                                "read_up_to": 6}


def _parsers():
    from genkit.bench import pairs_memory, sampling, trainer_overhead
    from genkit.eval.compare import CompareConfig
    from genkit.eval.fid import FIDConfig
    from genkit.eval.nll import NLLConfig
    from genkit.recipes.classifier import ClassifierConfig
    from genkit.recipes.monoflow import MonoFlowConfig
    from genkit.recipes.reflow import ReflowConfig
    from genkit.recipes.reflow_gan import ReflowGANConfig

    return {
        "genkit.recipes.reflow": lambda a: parse_config(ReflowConfig, "reflow", a),
        "genkit.recipes.classifier": lambda a: parse_config(ClassifierConfig, "classifier", a),
        "genkit.recipes.monoflow": lambda a: parse_config(MonoFlowConfig, "monoflow", a),
        "genkit.recipes.reflow_gan": lambda a: parse_config(ReflowGANConfig, "reflow_gan", a),
        "genkit.eval.fid": lambda a: tyro.cli(FIDConfig, args=a),
        "genkit.eval.nll": lambda a: tyro.cli(NLLConfig, args=a),
        "genkit.eval.compare": lambda a: tyro.cli(CompareConfig, args=a),
        "genkit.bench.trainer_overhead": lambda a: tyro.cli(trainer_overhead.BenchConfig, args=a),
        "genkit.bench.sampling": lambda a: tyro.cli(sampling.BenchConfig, args=a),
        "genkit.bench.pairs_memory": lambda a: tyro.cli(pairs_memory.BenchConfig, args=a),
        "pytest": lambda a: a,  # the GPU tests: checked by the speed dry-run test
    }


@pytest.mark.parametrize("smoke", [False, True])
@pytest.mark.parametrize("part", ["speed", "mnist", "cifar", "gans-mnist", "gans-cifar"])
def test_every_planned_command_parses_with_its_own_cli(part, smoke, tmp_path):
    """No GPU minute lost to a typo: each command's flags go through the target module's own parser."""
    parsers = _parsers()
    cfg = suite.SuiteConfig(part=part, smoke=smoke, work=tmp_path)
    gan_runs = tuple(s.run for s in suite.plan(cfg) if s.module in suite.GAN_RECIPES)
    for step in suite.plan(cfg):
        limit = None if step.train is None else 1.5
        parsed = parsers[step.module](step.argv(limit)[2:])
        if step.train is not None:
            assert parsed.train.time_limit == 1.5 and parsed.out == step.run
        if step.module == "genkit.recipes.reflow" and part == "cifar":
            assert parsed.data.dataset == "imagefolder" and parsed.model.unet == "cifar10"
            assert parsed.train.ema_decay == (0.9999 if smoke else 0.999)  # smoke: the preset's
        if step.module == "genkit.recipes.reflow" and smoke:
            assert not parsed.train.compile and parsed.train.steps == cfg.max_steps
        if step.module == "genkit.eval.nll":
            assert (parsed.method, parsed.rtol, parsed.atol, parsed.k, parsed.split) == ("dopri5", 1e-5, 1e-5, 1, "test")
        if step.module in suite.GAN_RECIPES:  # all checkpoints kept, grids at some of them, the minutes end the run
            t = parsed.train
            assert t.keep_checkpoints == 0 and t.checkpoint_every >= 1 and t.steps == cfg.max_steps
            assert t.sample_every % t.checkpoint_every == 0
            assert parsed.data.dataset == ("imagefolder" if part == "gans-cifar" else "mnist")
            assert not smoke or parsed.model.g_width == parsed.model.d_width == 4  # tiny networks
        if step.module == "genkit.eval.fid" and step.run in gan_runs:
            assert parsed.checkpoints == "missing" and parsed.features == "classifier"
        if step.module == "genkit.eval.compare":
            assert parsed.runs == gan_runs and len(gan_runs) == 4 and parsed.out == step.run
        if step.module == "genkit.bench.trainer_overhead":
            assert parsed.compile_mode == ("reduce-overhead" if step.name.endswith("-cudagraphs") else "default")


def test_compile_mode_reaches_the_flow_training_commands_only(tmp_path):
    parse = _parsers()["genkit.recipes.reflow"]
    cfg = suite.SuiteConfig(part="mnist", work=tmp_path, compile_mode="reduce-overhead")
    flows = [step for step in suite.plan(cfg) if step.module == "genkit.recipes.reflow"]
    assert len(flows) == 3 and all(parse(step.argv(1.0)[2:]).train.compile_mode == "reduce-overhead" for step in flows)
    assert all("--train.compile-mode" not in step.args for step in suite.plan(cfg) if step not in flows)


def test_only_keeps_the_named_steps_in_plan_order(tmp_path, capsys):
    steps = suite.plan(suite.SuiteConfig(part="speed", work=tmp_path))
    assert [s.name for s in suite.select(steps, ["speed-gpu-tests", "speed-trainer-overhead-cudagraphs"])] == [
        "speed-trainer-overhead-cudagraphs", "speed-gpu-tests"]
    assert suite.select(steps, []) == steps
    assert run_main(suite.main, ["speed", "--dry-run", "--work", str(tmp_path), "--only", "speed-nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --only: no step speed-nope") and err.count("\n") == 1 and "speed-sampling" in err


def test_generator_steps_follow_the_recipes_own_update_ratios():
    """MonoFlow's particle form with several generator steps per discriminator step still updates the
    generator every Trainer step; WGAN-GP every critic_steps-th."""
    ratio = suite.trainer_steps_per_generator_step
    assert ratio("monoflow", ["--preset", "mnist"]) == 1
    assert ratio("monoflow", ["--preset", "mnist", "--objective.form", "particle", "--objective.g-steps", "3"]) == 1
    assert ratio("monoflow", ["--preset", "mnist", "--objective.d-steps", "2"]) == 2
    assert ratio("reflow_gan", ["--preset", "mnist", "--objective.kind", "wgan_gp"]) == 5


def _gan_grid(cfg, step):
    """(recipe, Trainer steps between checkpoints, Trainer steps per generator step) of a planned GAN run."""
    recipe = step.module.removeprefix("genkit.recipes.")
    every = _parsers()[step.module](step.argv(None)[2:]).train.checkpoint_every
    return recipe, every, suite.trainer_steps_per_generator_step(recipe, step.args)


def test_gan_checkpoints_fall_on_one_whole_number_of_generator_steps(tmp_path):
    """3.6 minutes: the slowest runs' guess, 120/s x 216 s / 5 = 5,184 generator steps over 10 points, is 518.4.
    Every run checkpoints every 518 generator steps (MonoFlow 518, the critics 5 x 518 = 2,590 Trainer steps),
    not MonoFlow 518 against the critics' 2,592 / 5 = 518.4, grids that drift apart (1,554 vs 1,555 at the third)."""
    cfg = suite.SuiteConfig(part="gans-mnist", work=tmp_path, mnist_gan_minutes=3.6)
    grids = [_gan_grid(cfg, s) for s in suite.plan(cfg) if s.module in suite.GAN_RECIPES]
    assert [ratio for _, _, ratio in grids] == [1, 1, 5, 5]
    assert {every / ratio for _, every, ratio in grids} == {518}


@pytest.mark.parametrize("speed", [0.75, 1.0, 1.15])
def test_gan_curves_are_bounded_and_share_the_equal_steps_checkpoint(speed, tmp_path):
    """gans-cifar: MonoFlow makes 10x the critics' generator steps (100 checkpoints on the shared grid). Each
    planned FID-C curve evaluates at most 2 x --gan-points checkpoints, the latest among them (the equal-time
    point), and every checkpoint of the shared grid up to the slowest runs' last one (they run at 0.75 to 1.15
    times their guessed rate; no requested checkpoint is missing): the comparison at equal generator steps
    then reads every run at the slowest runs' last grid checkpoint."""
    from genkit.eval import compare, fid

    cfg = suite.SuiteConfig(part="gans-cifar", work=tmp_path)
    steps = suite.plan(cfg)
    curves, slowest = [], []
    for train in (s for s in steps if s.module in suite.GAN_RECIPES):
        recipe, every, ratio = _gan_grid(cfg, train)
        final = int(getattr(cfg.rates, f"{recipe}_cifar") * (speed if ratio > 1 else 1) * 60 * train.train)
        available = [*range(every, final + 1, every), *([final] if final % every else [])]  # the last one off the grid
        fid_step = next(s for s in steps if s.name == f"{train.name}-fid")
        curve_cfg = tyro.cli(fid.FIDConfig, args=list(fid_step.argv(None)[2:]))
        picked = fid._curve_steps(curve_cfg, available, is_flow=False)
        assert curve_cfg.checkpoints == "missing" and (ratio > 1 or len(available) > 4 * cfg.gan_points)  # MonoFlow: ~100
        assert len(picked) <= 2 * cfg.gan_points and picked[-1] == available[-1] and set(picked) <= set(available)
        curves.append(compare.FIDCurve({}, tuple(compare.CurvePoint(s, s // ratio, s / ratio, 1.0, 0.0) for s in picked)))
        if ratio > 1:
            slowest.append(final // every * every // ratio)
    assert len(curves) == 4 and len(set(slowest)) == 1
    assert compare.equal_steps_budget(curves) == (slowest[0], True)


@pytest.mark.parametrize("smoke", [False, True])
@pytest.mark.parametrize("part", ["gans-mnist", "gans-cifar"])
def test_gan_runs_train_on_the_same_data(part, smoke, tmp_path):
    """The comparison's runs differ in objective, networks and optimiser only: same images, flips and batch."""
    parsers = _parsers()
    cfg = suite.SuiteConfig(part=part, smoke=smoke, work=tmp_path)
    configs = [parsers[s.module](s.argv(None)[2:]) for s in suite.plan(cfg) if s.module in suite.GAN_RECIPES]
    assert len(configs) == 4
    assert len({(c.data.dataset, str(c.data.root), c.data.hflip, c.train.batch_size) for c in configs}) == 1
    assert configs[0].train.batch_size == (16 if smoke else suite.GAN_BATCH)


@pytest.mark.parametrize("keep_going", [False, True])
def test_keep_going_runs_the_steps_after_a_failed_one(keep_going, tmp_path, capsys, monkeypatch):
    plan = suite.plan

    def broken_first_step(cfg):  # the first benchmark's module does not exist: its step fails
        first, *rest = plan(cfg)
        # the later steps only have to run and exit 0: their --help keeps this test short
        return [dataclasses.replace(first, module="genkit.bench.no_such_benchmark"),
                *(dataclasses.replace(step, args=("--help",)) for step in rest)]

    monkeypatch.setattr(suite, "plan", broken_first_step)
    work = tmp_path / "w"
    argv = ["speed", "--smoke", "--work", str(work), "--out", str(tmp_path / "o"), "--device", "cpu",
            "--keep-going" if keep_going else "--no-keep-going"]
    assert run_main(suite.main, argv) == suite.EXIT["failed"]
    status = {p.stem: json.loads(p.read_text())["status"] for p in (work / "steps").glob("*.json")}
    if keep_going:
        assert status == {"speed-trainer-overhead": "failed", "speed-trainer-overhead-cudagraphs": "done",
                          "speed-sampling": "done", "speed-pairs-memory": "done", "speed-gpu-tests": "done"}
    else:
        assert status == {"speed-trainer-overhead": "failed"}
    assert capsys.readouterr().err.count("step speed-trainer-overhead failed") == 1


# ---- --parallel: steps start when what they need is done ----------------------------------------------------------
def test_every_step_needs_the_steps_that_write_its_inputs():
    """Under --parallel the order comes from ``needs`` alone: a stage needs its teacher, an evaluation its run
    and the classifier, the comparison every curve; the speed benchmarks run alone."""
    needs = {s.name: set(s.needs) for s in suite.plan(suite.SuiteConfig(part="mnist"))}
    assert needs == {"mnist-classifier": set(), "mnist-rf": set(), "mnist-reflow": {"mnist-rf"},
                     "mnist-distill": {"mnist-reflow"},
                     **{f"mnist-{s}-fid": {f"mnist-{s}", "mnist-classifier"} for s in ("rf", "reflow", "distill")}}
    needs = {s.name: set(s.needs) for s in suite.plan(suite.SuiteConfig(part="cifar"))}
    assert needs == {"cifar-classifier": set(), "cifar-rf": set(), "cifar-rf-nll": {"cifar-rf"},
                     "cifar-rf-fid": {"cifar-rf", "cifar-classifier"}}
    steps = suite.plan(suite.SuiteConfig(part="gans-cifar"))
    fids = [s.name for s in steps if s.module == "genkit.eval.fid"]
    for fid in fids:
        assert set(next(s.needs for s in steps if s.name == fid)) == {fid.removesuffix("-fid"), "cifar-classifier"}
    assert set(steps[-1].needs) == set(fids) and len(fids) == 4
    assert all(not s.needs for s in steps if s.module in suite.GAN_RECIPES)
    assert all(s.solo and not s.needs for s in suite.plan(suite.SuiteConfig(part="speed")))
    assert not any(s.solo for part in ("mnist", "cifar", "gans-mnist") for s in suite.plan(suite.SuiteConfig(part=part)))


def step(name, needs=(), solo=False):
    """A planned step that runs nothing (_fake_plan replaces how steps run)."""
    return suite.Step(name, "m", (), 0.0, needs=needs, solo=solo)


def _fake_plan(monkeypatch, steps, seconds, fail=()):
    """Plan ``steps`` for the speed part and run each in-process: it sleeps ``seconds[name]`` and records when."""
    import threading

    spans, lock = {}, threading.Lock()

    def execute(self, step, argv):
        start = time.monotonic()
        time.sleep(seconds[step.name])
        with lock:
            spans[step.name] = (start, time.monotonic())
        (self.cfg.work / "logs").mkdir(parents=True, exist_ok=True)
        (self.cfg.work / "logs" / f"{step.name}.log").write_text("boom\n")
        return (1 if step.name in fail else 0), seconds[step.name], "", False

    monkeypatch.setattr(suite, "plan", lambda cfg: steps)
    monkeypatch.setattr(suite.Suite, "execute", execute)
    return spans


def test_parallel_starts_each_step_when_its_needs_are_done_and_solo_steps_alone(tmp_path, monkeypatch, capsys):
    steps = [step("a"), step("b", ("a",)), step("c"), step("d", solo=True), step("e", ("b", "c"))]
    spans = _fake_plan(monkeypatch, steps, {"a": 0.3, "b": 0.3, "c": 0.9, "d": 0.3, "e": 0.1})
    argv = ["speed", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--device", "cpu", "--parallel", "2"]
    assert run_main(suite.main, argv) == 0
    start = {k: v[0] for k, v in spans.items()}
    end = {k: v[1] for k, v in spans.items()}
    assert start["c"] < end["a"]  # a and c at once (c needs nothing)
    assert end["a"] <= start["b"] < end["c"]  # b as soon as a is done, beside c
    assert start["d"] >= max(end["b"], end["c"])  # solo: after everything running ...
    assert start["e"] >= end["d"]  # ... and nothing beside it
    summary = json.loads((tmp_path / "o" / "summary-speed.json").read_text())
    assert summary["parallel"] == 2 and all(s["status"] == "done" for s in summary["steps"])
    assert "up to 2 steps ran at once" in (tmp_path / "o" / "summary-speed.md").read_text()
    capsys.readouterr()

    # the same steps one at a time: plan order, no overlap
    spans.clear()
    assert run_main(suite.main, [*argv[:-2], "--work", str(tmp_path / "w1")]) == 0
    order = sorted(spans, key=lambda k: spans[k][0])
    assert order == list("abcde") and all(spans[x][1] <= spans[y][0] for x, y in itertools.pairwise(order))


@pytest.mark.parametrize("keep_going", [False, True])
def test_parallel_failure_leaves_out_what_needs_it(keep_going, tmp_path, monkeypatch, capsys):
    steps = [step("bad"), step("slow"), step("after-bad", ("bad",)), step("free")]
    _fake_plan(monkeypatch, steps, {"bad": 0.05, "slow": 0.5, "after-bad": 0.05, "free": 0.05}, fail={"bad"})
    work = tmp_path / "w"
    argv = ["speed", "--work", str(work), "--out", str(tmp_path / "o"), "--device", "cpu", "--parallel", "2",
            "--keep-going" if keep_going else "--no-keep-going"]
    assert run_main(suite.main, argv) == suite.EXIT["failed"]
    status = {p.stem: json.loads(p.read_text())["status"] for p in (work / "steps").glob("*.json")}
    summary = json.loads((tmp_path / "o" / "summary-speed.json").read_text())
    this = {s["name"]: s["this_invocation"] for s in summary["steps"]}
    if keep_going:  # what needs the failed step is not started; the rest runs
        assert status == {"bad": "failed", "slow": "done", "free": "done"}
        assert this["after-bad"] == "blocked" and "step after-bad not started: it needs bad" in summary["error"]
    else:  # no new starts after the failure; the running step ends by itself
        assert status == {"bad": "failed", "slow": "done"} and this["free"] == "not reached"
    assert "step bad failed (exit 1): boom" in capsys.readouterr().err


def test_only_a_step_whose_needs_are_not_done_is_not_started(tmp_path, monkeypatch, capsys):
    _fake_plan(monkeypatch, [step("run"), step("eval", ("run",))], {"run": 0.0, "eval": 0.0})
    argv = ["speed", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--device", "cpu", "--only", "eval"]
    assert run_main(suite.main, argv) == suite.EXIT["failed"]
    assert "step eval not started: it needs run, which is not done" in capsys.readouterr().err
    assert not (tmp_path / "w" / "steps" / "eval.json").exists()


def test_parallel_deadline_stops_every_running_command(tmp_path, monkeypatch, capsys):
    """Real commands (each sleeps a minute) under --parallel 2: the deadline SIGTERMs both."""
    sleep = ("-n", "1", "-r", "1", "-s", "import time; print('child says hi', flush=True)", "time.sleep(60)")
    steps = [suite.Step(name, "timeit", sleep, 0.0) for name in ("one", "two")]
    monkeypatch.setattr(suite, "plan", lambda cfg: steps)
    work = tmp_path / "w"
    argv = ["speed", "--work", str(work), "--out", str(tmp_path / "o"), "--device", "cpu", "--parallel", "2",
            "--deadline-minutes", "0.05"]
    start = time.monotonic()
    assert run_main(suite.main, argv) == suite.EXIT["deadline"]
    assert time.monotonic() - start < 20
    for name in ("one", "two"):
        rec = json.loads((work / "steps" / f"{name}.json").read_text())
        assert rec["status"] == "partial" and rec["invocations"][0]["seconds"] < 15
    printed = capsys.readouterr().out
    assert printed.count("deadline reached, SIGTERM") == 2
    # several commands at once: their output goes to their logs, not to the suite's
    assert "\nchild says hi" not in printed and "child says hi" in (work / "logs" / "one.log").read_text()


def test_parallel_dry_run_shows_what_each_step_waits_for(shared, tmp_path, capsys):
    argv = ["mnist", "--dry-run", "--work", str(tmp_path), "--shared", str(shared), "--data-root", str(tmp_path / "d"),
            "--parallel", "3"]
    assert run_main(suite.main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("mnist-reflow-fid (after mnist-reflow, mnist-classifier): python -m genkit.eval.fid")
               for ln in lines)
    assert any(ln.startswith("mnist-rf: python -m genkit.recipes.reflow") for ln in lines)
    assert run_main(suite.main, [*argv[:-1], "0"]) == 2
    assert "--parallel" in capsys.readouterr().err


@pytest.mark.parametrize("part", ["mnist", "cifar", "gans-mnist", "gans-cifar"])
def test_any_only_selection_packs_a_summary(part, tmp_path):
    """--only may leave out the classifier or the comparison whose folders the summary reads: packing (after
    every step) must not fail on that, nothing run yet or a step done."""
    cfg = suite.SuiteConfig(part=part, work=tmp_path / "w", out=tmp_path / "o")
    steps = suite.plan(cfg)
    for step in steps:
        run = suite.Suite(cfg, suite.select(steps, [step.name]), cfg.out)
        run.outcome = "done"
        assert f"## genkit bench suite: {part}" in run.pack()
        summary = json.loads((cfg.out / f"summary-{part}.json").read_text())
        assert [s["name"] for s in summary["steps"]] == [step.name]


def test_a_failing_summary_still_packs_the_results(tmp_path, monkeypatch):
    cfg = suite.SuiteConfig(part="mnist", work=tmp_path / "w", out=tmp_path / "o")
    steps = suite.plan(cfg)
    (steps[0].run).mkdir(parents=True)
    (steps[0].run / "eval.json").write_text("{}")

    def broken(self):
        raise KeyError("mnist-classifier")

    monkeypatch.setattr(suite.Suite, "summarize", broken)
    text = suite.Suite(cfg, steps, cfg.out).pack()
    assert "summary failed (KeyError: 'mnist-classifier')" in text
    assert json.loads((cfg.out / "summary-mnist.json").read_text())["status"] == "summary failed"
    with tarfile.open(cfg.out / "results-mnist.tar.gz") as tar:
        assert "mnist-classifier/eval.json" in tar.getnames()


def test_a_cut_short_bits_per_dim_comes_back_in_the_tarball(tmp_path):
    """A bits/dim evaluation stopped by the deadline keeps its finished batches (with their seconds) in the run
    folder; the tarball carries them, since the machine, and the run folder, are gone after the session."""
    from genkit.eval.nll import PROGRESS_FILE

    cfg = suite.SuiteConfig(part="cifar", work=tmp_path / "w", out=tmp_path / "o")
    steps = suite.plan(cfg)
    run = next(s.run for s in steps if s.name == "cifar-rf-nll")
    run.mkdir(parents=True)
    (run / PROGRESS_FILE).write_text(json.dumps({"settings": {}, "batches": {"0": {"log_prob": [1.0], "seconds": 2.0}}}))
    text = suite.Suite(cfg, steps, cfg.out).pack()
    with tarfile.open(cfg.out / "results-cifar.tar.gz") as tar:
        assert f"cifar-rf/{PROGRESS_FILE}" in tar.getnames()
    assert "cut short: 1 images in 2.0 s" in text  # and the summary says how far it got
    row = json.loads((cfg.out / "summary-cifar.json").read_text())["results"]["stages"][0]
    assert row["nll_partial"] == {"batches": 1, "images": 1, "seconds": 2.0, "nfe_per_batch": None}


def test_a_later_only_invocation_still_reports_the_steps_run_before(tmp_path):
    """``--only cifar-rf-nll`` after ``--only cifar-rf cifar-rf-fid``: the summary and the tarball still hold the
    run, its FID-C and its record (they are the same part's results), and the bits/dim lands in the run's row."""
    cfg = suite.SuiteConfig(part="cifar", work=tmp_path / "w", out=tmp_path / "o")
    plan = suite.plan(cfg)
    by_name = {s.name: s for s in plan}
    run = by_name["cifar-rf"].run
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"step": 40, "train_seconds": 60.0, "fid_classifier_nfe100": 12.5,
                                               "nll_bpd": 3.5, "nll_n": 10000, "nll_seconds": 400.0}))
    (cfg.work / "steps").mkdir(parents=True)
    (cfg.work / "steps" / "cifar-rf.json").write_text(json.dumps({"name": "cifar-rf", "status": "done", "invocations": []}))
    this = suite.select(plan, ["cifar-rf-nll"])
    runner = suite.Suite(cfg, this, cfg.out, plan=plan)
    assert [s.name for s in runner.reported()] == ["cifar-rf", "cifar-rf-nll"]  # (not the classifier nor the FID: no records)
    runner.outcome = "done"
    runner.pack()
    summary = json.loads((cfg.out / "summary-cifar.json").read_text())
    row = summary["results"]["stages"][0]
    assert row["stage"] == "rf" and row["nll_bpd"] == 3.5 and row["fid_classifier"]["100"] == 12.5
    with tarfile.open(cfg.out / "results-cifar.tar.gz") as tar:
        assert {"cifar-rf/eval.json", "steps/cifar-rf.json"} <= set(tar.getnames())
    # without the plan (an old caller), only this invocation's steps
    assert [s.name for s in suite.Suite(cfg, this, cfg.out).reported()] == ["cifar-rf-nll"]
