"""The GPU session's one command: the existing CLIs chained into the measurements the open issues ask for.

    python -m genkit.bench.suite speed        # Trainer overhead, sampling speed, pairs memory (no training)
    python -m genkit.bench.suite mnist        # FID-C classifier; 1-RF -> 2-RF -> distilled; FID-C at NFE 1 2 10 100
    python -m genkit.bench.suite cifar        # FID-C classifier; 1-RF for 20 training minutes; bits/dim; FID-C
    python -m genkit.bench.suite gans-mnist   # MonoFlow (h identity, log_sigmoid), ReFlow-GAN, WGAN-GP: 4 min each;
                                              # FID-C at every checkpoint; compared at equal generator steps and time
    python -m genkit.bench.suite gans-cifar   # the same four GANs on CIFAR-10, 6 training minutes each
    python -m genkit.bench.suite mnist --dry-run                  # the planned commands; nothing runs
    python -m genkit.bench.suite mnist --smoke --work /tmp/suite  # the whole chain, tiny sizes (CPU, about a minute)

On the GPU machine, from the repository root (``.whl`` and ``.data`` are git-ignored; ``make device-kit``
fills them here: carry both; results come back only through $OUT)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    python3 -m genkit.bench.suite speed       # timeout_s 600: one call
    python3 -m genkit.bench.suite mnist       # timeout_s 600: about three calls of the same command
    python3 -m genkit.bench.suite cifar       # timeout_s 600: about four calls of the same command
    python3 -m genkit.bench.suite gans-mnist  # timeout_s 600: about three calls of the same command
    python3 -m genkit.bench.suite gans-cifar  # timeout_s 600: about four calls (some 35 minutes; with
                                              # --cifar-gan-minutes 4, about three)

A call that exits 3 stopped at its deadline: repeat the same command at once, while the machine is
still held (the work folder, checkpoints included, lives on that machine only).

A part longer than one command can also run in the background, started by the first call in a
process session of its own (which outlives the call, not the machine)::

    setsid nohup python3 -m genkit.bench.suite mnist --deadline-minutes 25 --out runs/suite/out > runs/suite.log 2>&1 &
    sleep 560; tail -3 runs/suite.log                      # later calls, each within 30 s of the last
    sleep 500; cp runs/suite/out/* "$OUT"/                 # the last call fetches the results

Every call must follow the previous one within the machine's idle window (30 s), or the machine goes
back with the work folder.

Each step runs ``python -m <module> ...`` as a subprocess (``PYTHONUNBUFFERED=1``), its output
tee'd into ``<work>/logs/<step>.log``, and leaves ``<work>/steps/<step>.json`` (status, commands,
wall times, the JSON lines it printed). A step whose file says ``done`` is skipped, so the same
command after a kill or a deadline continues where it stopped (trainers resume from their
checkpoints; delete a step's file to run it again). Training steps get ``--train.time-limit``: the
trainer's budget of training minutes, summed over resumes (``--rf-minutes`` ...; pair generation,
start-up and the final evaluation come on top). ``--smoke`` also runs every command with
``OMP_NUM_THREADS=1`` (unless set): tiny networks run fastest on one thread. The mnist defaults, 6 + 3.5 + 2.5 training minutes plus two pair generations, are meant to fit
the issue's 15 minutes.

The gans parts (issue 5) train each GAN for the same minutes (``--mnist-gan-minutes``,
``--cifar-gan-minutes``) with all checkpoints kept, ``--train.checkpoint-every`` (and the sample grids'
``--train.sample-every``) set to the recipe's guessed steps per second (``--rates.*``) times its
training seconds over ``--gan-points``; a FID-C step per run evaluates the checkpoints its
``fid_curve.json`` lacks, and ``genkit.eval.compare`` tables and plots the curves at equal generator
steps and equal seconds (the table is in the summary). The FID-C classifier is the mnist or cifar
part's (same step, same folder): trained once per work folder.

Time guard: the suite stops ``--deadline-minutes`` after it started (default 9.5: one command may run
10 minutes). It does not start a step that is expected to end later (``--expect.*``: guesses until
measured; each step's wall time is in the summary), it lowers a training step's time limit to what is
left, and a step still running at the deadline gets SIGTERM (a trainer checkpoints and exits) and,
20 s later, SIGKILL. After every step and at the end, also after a failure, the results are packed
into ``--out`` (default ``$OUT`` if set, else ``<work>/out``): ``results-<part>.tar.gz`` (eval.json,
config.json, metrics.jsonl, fid_curve.json, comparison.json and .md, PNGs of the run folders and their
``samples/``, logs, step files; no checkpoints, TensorBoard or pairs), ``summary-<part>.json`` and ``summary-<part>.md`` (the numbers,
the exact commands, device, torch version, date), and the markdown is printed last. Exit status:
0 all steps done, 3 stopped at the deadline (run the same command again), 1 a step failed,
2 bad input or missing data.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import tyro

from genkit.errors import GenkitError

PROG = "python -m genkit.bench.suite"
Part = Literal["speed", "mnist", "cifar", "gans-mnist", "gans-cifar"]
DATASETS: dict[str, Literal["mnist", "cifar"]] = {"mnist": "mnist", "cifar": "cifar", "gans-mnist": "mnist",
                                                  "gans-cifar": "cifar"}
"""the data set of each part that trains (speed has none)"""
PRESETS = {"mnist": "mnist", "cifar": "cifar10"}
"""the recipes' preset of each data set"""
GAN_RECIPES = ("genkit.recipes.monoflow", "genkit.recipes.reflow_gan")
Outcome = Literal["done", "deadline", "failed", "error", "interrupted"]
EXIT = {"done": 0, "failed": 1, "error": 2, "deadline": 3}
GRACE_S = 20.0  # from SIGTERM (a trainer checkpoints) to SIGKILL
TAR_LIMIT = 15 * 2**20  # the GPU tool brings back files of at most 16 MB
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Expect:
    """Expected minutes on the GPU, for the deadline guard only (guesses: adjust them from a summary's wall times)."""

    overhead: float = 1.0
    """a training command outside its training loop: start, data loading, final evaluation"""
    pairs: float = 1.5
    """generating one stage's teacher pairs (stages reflow and distill), on top of overhead"""
    min_train: float = 1.0
    """the least training worth starting a training command for"""
    fid: float = 2.0
    """one mnist FID-C command (N samples at every NFE, reference statistics), or one GAN run's FID-C curve"""
    fid_cifar: float = 4.0
    """the cifar FID-C command (a 35.7M UNet: about 6x the work per sample of the mnist one)"""
    nll: float = 5.0
    """the bits/dim command"""
    bench: float = 3.0
    """one speed benchmark"""
    compare: float = 0.5
    """the comparison of the GAN runs' FID-C curves (a table and a plot)"""


@dataclass(frozen=True)
class Rates:
    """Guessed Trainer steps per second of the GAN recipes on the GPU (ReFlow-GAN's also for WGAN-GP: the
    same networks), for checkpoint intervals only: adjust them from a summary's steps/s."""

    monoflow_mnist: float = 150.0
    reflow_gan_mnist: float = 120.0
    monoflow_cifar: float = 120.0
    reflow_gan_cifar: float = 60.0


@dataclass(frozen=True)
class SuiteConfig:
    """Chain the existing CLIs into the measurements of one part; resumable, under a deadline."""

    part: tyro.conf.Positional[Part]
    """speed (benchmarks, no training), mnist (reflow chain + FID-C), cifar (1-RF, bits/dim, FID-C),
    gans-mnist / gans-cifar (MonoFlow, ReFlow-GAN, WGAN-GP: FID-C curves compared)"""
    work: Path = Path("runs/suite")
    """work folder: run folders, logs/, steps/ (the same folder resumes)"""
    out: Path | None = None
    """where the tarball and summaries go (default: $OUT if set, else <work>/out)"""
    shared: Path = Path(".data")
    """offline archives: <shared>/mnist/*.gz and <shared>/cifar10_jpg.tar.gz (a copy of ../shared/data)"""
    data_root: Path = Path("data")
    """MNIST root (torchvision layout <root>/MNIST/raw), unpacked from --shared if missing"""
    cifar_root: Path = Path("data/cifar10")
    """CIFAR-10 ImageFolder (<root>/train, <root>/test), unpacked from --shared if missing"""
    smoke: bool = False
    """tiny sizes everywhere (CPU rehearsal of the whole part)"""
    dry_run: bool = False
    """print the planned commands and exit"""
    deadline_minutes: float = 9.5
    device: str = "auto"
    """passed to every command: auto, cpu, cuda, cuda:N"""
    rf_minutes: float | None = None
    """mnist 1-RF training minutes (default 6; --smoke 0.02)"""
    reflow_minutes: float | None = None
    """mnist 2-RF training minutes (default 3.5; --smoke 0.02)"""
    distill_minutes: float | None = None
    """mnist distillation training minutes (default 2.5; --smoke 0.02)"""
    cifar_minutes: float | None = None
    """cifar 1-RF training minutes (default 20; --smoke 0.02)"""
    mnist_gan_minutes: float | None = None
    """gans-mnist training minutes of each GAN run (default 4; --smoke 0.02)"""
    cifar_gan_minutes: float | None = None
    """gans-cifar training minutes of each GAN run (default 6; --smoke 0.02)"""
    monoflow_h: tuple[str, ...] = ("identity", "log_sigmoid")
    """the gans parts' MonoFlow runs: one per h (identity, log_sigmoid, softplus, arcsinh, exp)"""
    gan_points: int = 10
    """checkpoints (FID-C curve points) each GAN run should get, if it runs at its --rates.* guess"""
    rates: Rates = field(default_factory=Rates)
    max_steps: int = 1_000_000
    """--train.steps of the training stages and GAN runs: the minutes end them first"""
    pairs: int | None = None
    """mnist teacher pairs per stage (default 20000; --smoke 32)"""
    fid_n: int | None = None
    """FID samples (default 10000; --smoke 32)"""
    mnist_nfe: tuple[int, ...] | None = None
    """Euler steps at which mnist FID-C is measured (default 1 2 10 100; --smoke 1 2)"""
    cifar_nfe: tuple[int, ...] | None = None
    """Euler steps at which cifar FID-C is measured (default 1 10 100; --smoke 1 2)"""
    nll_n: int | None = None
    """test images for bits/dim (default 2000, 0: all 10000; --smoke 8)"""
    nll_batch_size: int = 500
    expect: Expect = field(default_factory=Expect)


@dataclass(frozen=True)
class Scale:
    """The sizes --smoke shrinks (FULL or SMOKE); a value given on the command line wins."""

    rf_minutes: float
    reflow_minutes: float
    distill_minutes: float
    cifar_minutes: float
    pairs: int
    fid_n: int
    mnist_nfe: tuple[int, ...]
    cifar_nfe: tuple[int, ...]
    nll_n: int
    mnist_gan_minutes: float
    cifar_gan_minutes: float


FULL = Scale(6.0, 3.5, 2.5, 20.0, 20_000, 10_000, (1, 2, 10, 100), (1, 10, 100), 2000, 4.0, 6.0)
SMOKE = Scale(0.02, 0.02, 0.02, 0.02, 32, 32, (1, 2), (1, 2), 8, 0.02, 0.02)

# --smoke flags, appended after each command's own (tyro: the last value wins)
SMOKE_LOOP = ("--train.batch-size", "16", "--train.log-every", "5", "--train.no-tensorboard", "--train.no-progress")
SMOKE_TRAIN = (*SMOKE_LOOP, "--train.checkpoint-every", "100")
SMOKE_GAN = (*SMOKE_LOOP, "--model.latent-dim", "8", "--model.g-width", "4", "--model.d-width", "4")
SMOKE_CLASSIFIER = (*SMOKE_TRAIN, "--train.steps", "8", "--model.channels", "8", "16", "--model.feature-dim", "16",
                    "--eval.batch-size", "64")
SMOKE_FLOW = (*SMOKE_TRAIN, "--model.unet-layers", "1", "--train.no-compile", "--train.warmup-steps", "0",
              "--train.sample-every", "0", "--sample.steps", "4", "--sample.nfe", "1", "2", "--sample.n-snapshot", "8",
              "--sample.n-straightness", "8")
SMOKE_PAIRS = ("--pairs.method", "euler", "--pairs.steps", "2", "--pairs.batch-size", "16", "--pairs.shard-size", "16")
SMOKE_UNET = ("--preset", "cifar10", "--unet-channels", "8", "8", "8", "--unet-layers", "1", "--image-size", "16")


@dataclass(frozen=True)
class Step:
    """One command of a part. ``train`` is set for training commands only: their training minutes
    (0: until the recipe's steps), passed as ``--train.time-limit`` (lowered to what the deadline leaves)."""

    name: str
    module: str
    args: tuple[str, ...]
    minutes: float
    """expected minutes: the whole command, or for training the part outside the training loop"""
    run: Path | None = None
    """the run folder it writes (training) or evaluates"""
    train: float | None = None
    pairs: bool = False
    """generates teacher pairs before training"""

    def argv(self, time_limit: float | None = None) -> list[str]:
        limit = [] if time_limit is None else ["--train.time-limit", f"{time_limit:.4g}"]
        return ["-m", self.module, *self.args, *limit]

    def command(self, time_limit: float | None = None) -> str:
        return shlex.join(["python", *self.argv(time_limit)])


# ---- the plan ---------------------------------------------------------------------------------------
def scale(cfg: SuiteConfig) -> Scale:
    base = SMOKE if cfg.smoke else FULL
    given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Scale) if getattr(cfg, f.name) is not None}
    return dataclasses.replace(base, **given)


def _fid(cfg: SuiteConfig, name: str, run: Path, classifier: Path, nfe: tuple[int, ...] | None, *, floor: bool) -> Step:
    """FID-C of a flow at each of ``nfe``, or (``nfe`` None) of a GAN at each checkpoint its fid_curve.json lacks."""
    how = ("--checkpoints", "missing") if nfe is None else ("--nfe", *map(str, nfe))
    args = ("--run", str(run), "--features", "classifier", "--classifier", str(classifier), "--ref", "test",
            "--n", str(scale(cfg).fid_n), *how, "--device", cfg.device, *(("--floor",) if floor else ()))
    return Step(name, "genkit.eval.fid", args, cfg.expect.fid_cifar if cfg.part == "cifar" else cfg.expect.fid, run=run)


def _data(cfg: SuiteConfig) -> tuple[str, ...]:
    """The data flags of the part's training and FID commands."""
    dev = ("--device", cfg.device)
    if DATASETS[cfg.part] == "mnist":
        return ("--data.root", str(cfg.data_root), "--data.no-download", *dev)
    return ("--data.dataset", "imagefolder", "--data.root", str(cfg.cifar_root), "--data.no-download", *dev)


def _classifier(cfg: SuiteConfig, data: tuple[str, ...]) -> Step:
    """The FID-C classifier of the part's data set: one step and folder, shared by the parts that use it."""
    run = cfg.work / f"{DATASETS[cfg.part]}-classifier"
    args = ("--preset", PRESETS[DATASETS[cfg.part]], "--out", str(run), *data, *(SMOKE_CLASSIFIER if cfg.smoke else ()))
    return Step(run.name, "genkit.recipes.classifier", args, cfg.expect.overhead, run=run, train=0.0)


def _flow(cfg: SuiteConfig, name: str, preset: str, stage: str, minutes: float, data: tuple[str, ...],
          teacher: Path | None = None) -> Step:
    run = cfg.work / name
    unet = ("--model.unet-channels", *(("8", "8") if preset == "mnist" else ("8", "8", "8"))) if cfg.smoke else ()
    pairs = () if teacher is None else ("--teacher", str(teacher), "--pairs.n", str(scale(cfg).pairs),
                                        *(SMOKE_PAIRS if cfg.smoke else ()))
    args = ("--preset", preset, "--stage", stage, "--out", str(run), *pairs, *data, "--train.steps", str(cfg.max_steps),
            *unet, *(SMOKE_FLOW if cfg.smoke else ()))
    return Step(name, "genkit.recipes.reflow", args, cfg.expect.overhead, run=run, train=minutes, pairs=teacher is not None)


def _gans(cfg: SuiteConfig, classifier: Path, data: tuple[str, ...]) -> list[Step]:
    """Each GAN run for the part's minutes, with its FID-C curve; then their comparison."""
    ds = DATASETS[cfg.part]
    minutes = scale(cfg).mnist_gan_minutes if ds == "mnist" else scale(cfg).cifar_gan_minutes
    runs = [(f"monoflow-{h}", "monoflow", ("--objective.h", h)) for h in cfg.monoflow_h]
    runs += [(kind, "reflow_gan", ("--objective.kind", kind)) for kind in ("reflow_gan", "wgan_gp")]
    steps: list[Step] = []
    for name, recipe, objective in runs:
        run = cfg.work / f"{ds}-{name.replace('_', '-')}"
        every = str(max(1, int(getattr(cfg.rates, f"{recipe}_{ds}") * 60 * minutes / cfg.gan_points)))
        args = ("--preset", PRESETS[ds], "--out", str(run), *objective, *data, "--train.steps", str(cfg.max_steps),
                "--train.keep-checkpoints", "0", "--train.checkpoint-every", every, "--train.sample-every", every,
                *(SMOKE_GAN if cfg.smoke else ()))
        steps += [Step(run.name, f"genkit.recipes.{recipe}", args, cfg.expect.overhead, run=run, train=minutes),
                  _fid(cfg, f"{run.name}-fid", run, classifier, None, floor=not steps)]  # the data floor once
    out = cfg.work / f"{ds}-gans-compare"
    args = ("--runs", *(str(s.run) for s in steps if s.train is not None), "--out", str(out))
    return [*steps, Step(out.name, "genkit.eval.compare", args, cfg.expect.compare, run=out)]


def plan(cfg: SuiteConfig) -> list[Step]:
    """The part's steps, in order (each may need the ones before it)."""
    s, e, dev = scale(cfg), cfg.expect, ("--device", cfg.device)
    if cfg.part == "speed":
        smoke = {"trainer-overhead": ("--cases", "mlp", "--steps", "20", "--warmup", "5", "--repeats", "1"),
                 "sampling": (*SMOKE_UNET, "--nfe", "1", "2", "--batch-size", "4", "--batches", "2", "--no-compile"),
                 "pairs-memory": (*SMOKE_UNET, "--pairs", "8", "16", "--batch-size", "8", "--shard-size", "8",
                                  "--steps", "2")}
        full = {"trainer-overhead": ("--cases", "unet", "--batch-sizes", "128", "512"), "sampling": (),
                "pairs-memory": ("--pairs", "10000", "100000")}
        return [Step(f"speed-{name}", f"genkit.bench.{name.replace('-', '_')}", (*args, *dev), e.bench)
                for name, args in (smoke if cfg.smoke else full).items()]
    data = _data(cfg)
    clf = _classifier(cfg, data)
    if cfg.part.startswith("gans-"):
        return [clf, *_gans(cfg, clf.run, data)]
    if cfg.part == "mnist":
        steps = [clf]
        teacher = None
        for stage, minutes in (("rf", s.rf_minutes), ("reflow", s.reflow_minutes), ("distill", s.distill_minutes)):
            flow = _flow(cfg, f"mnist-{stage}", "mnist", stage, minutes, data, teacher)
            steps += [flow, _fid(cfg, f"mnist-{stage}-fid", flow.run, clf.run, s.mnist_nfe, floor=stage == "rf")]
            teacher = flow.run
        return steps
    flow = _flow(cfg, "cifar-rf", "cifar10", "rf", s.cifar_minutes, data)
    nll = ("--run", str(flow.run), "--split", "test", "--k", "1", "--method", "dopri5", "--rtol", "1e-5", "--atol", "1e-5",
           "--batch-size", str(cfg.nll_batch_size), "--n", str(s.nll_n), *dev)
    return [clf, flow, Step("cifar-rf-nll", "genkit.eval.nll", nll, e.nll, run=flow.run),
            _fid(cfg, "cifar-rf-fid", flow.run, clf.run, s.cifar_nfe, floor=True)]


def check(cfg: SuiteConfig) -> None:
    from genkit.data.toy import _check_count
    from genkit.objectives.gan import H_FUNCTIONS

    s = scale(cfg)
    for name in ("rf_minutes", "reflow_minutes", "distill_minutes", "cifar_minutes", "mnist_gan_minutes",
                 "cifar_gan_minutes"):
        if not getattr(s, name) > 0:
            raise GenkitError(f"--{name.replace('_', '-')} must be > 0, got {getattr(s, name)}")
    for f in dataclasses.fields(Rates):
        if not getattr(cfg.rates, f.name) > 0:
            raise GenkitError(f"--rates.{f.name.replace('_', '-')} must be > 0, got {getattr(cfg.rates, f.name)}")
    if not cfg.monoflow_h:
        raise GenkitError("--monoflow-h needs at least one h, e.g. identity log_sigmoid")
    for h in cfg.monoflow_h:
        if h not in H_FUNCTIONS or cfg.monoflow_h.count(h) > 1:
            raise GenkitError(f"--monoflow-h: '{h}' is {'listed twice' if h in H_FUNCTIONS else 'unknown'} "
                              f"(known: {', '.join(H_FUNCTIONS)})")
    if not cfg.deadline_minutes > 0:
        raise GenkitError(f"--deadline-minutes must be > 0, got {cfg.deadline_minutes}")
    for name, minimum in (("pairs", 1), ("fid_n", 2), ("nll_n", 0)):
        _check_count(f"--{name.replace('_', '-')}", getattr(s, name), minimum)
    _check_count("--max-steps", cfg.max_steps, 1)
    _check_count("--gan-points", cfg.gan_points, 1)
    _check_count("--nll-batch-size", cfg.nll_batch_size, 1)
    for name in ("mnist_nfe", "cifar_nfe"):
        if not getattr(s, name):
            raise GenkitError(f"--{name.replace('_', '-')} needs at least one number of steps, e.g. 1 10 100")
        for k in getattr(s, name):
            _check_count(f"each --{name.replace('_', '-')}", k, 1)


# ---- data ---------------------------------------------------------------------------------------------
def prepare_data(cfg: SuiteConfig, *, dry_run: bool = False) -> str:
    """Unpack the part's data set from ``--shared`` if its root lacks it; one line saying what was done."""
    if DATASETS.get(cfg.part) == "mnist":
        raw = cfg.data_root / "MNIST" / "raw"
        missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
        if not missing:
            return f"MNIST: {raw} is there"
        sources = [cfg.shared / "mnist" / f"{f}.gz" for f in missing]
        absent = [str(p) for p in sources if not p.is_file()]
        if absent:
            raise GenkitError(f"MNIST not found: {raw} lacks {missing[0]} and {absent[0]} does not exist; copy "
                              f"../shared/data to {cfg.shared} (and carry it) or pass --data-root / --shared")
        if not dry_run:
            import gzip

            raw.mkdir(parents=True, exist_ok=True)
            for name, src in zip(missing, sources, strict=True):
                tmp = raw / f".{name}.tmp-{os.getpid()}"
                with gzip.open(src) as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                os.replace(tmp, raw / name)
        return f"MNIST: {'would unpack' if dry_run else 'unpacked'} {len(missing)} files from {cfg.shared / 'mnist'} into {raw}"
    if DATASETS.get(cfg.part) == "cifar":
        root = cfg.cifar_root
        if (root / "train").is_dir() and (root / "test").is_dir():
            return f"CIFAR-10: {root} is there"
        archive = cfg.shared / "cifar10_jpg.tar.gz"
        if not archive.is_file():
            raise GenkitError(f"CIFAR-10 not found: {root} lacks train/ and test/ and {archive} does not exist; copy "
                              f"../shared/data to {cfg.shared} (and carry it) or pass --cifar-root / --shared")
        if root.exists() and any(root.iterdir()):
            raise GenkitError(f"{root} exists but lacks train/ and test/: remove it, then run again to unpack {archive}")
        if not dry_run:
            _untar(archive, root)
        return f"CIFAR-10: {'would unpack' if dry_run else 'unpacked'} {archive} into {root}"
    return "no data needed"


def _untar(archive: Path, root: Path) -> None:
    """Unpack ``archive`` (one top folder holding train/ and test/) into ``root``, all or nothing."""
    import tarfile

    tmp = root.parent / f".untar-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        tops = list(tmp.iterdir())
        if len(tops) != 1 or not (tops[0] / "train").is_dir() or not (tops[0] / "test").is_dir():
            raise GenkitError(f"{archive} should hold one folder with train/ and test/, holds {sorted(p.name for p in tops)}")
        if root.exists():
            root.rmdir()  # empty (checked by the caller)
        os.replace(tops[0], root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- what a run folder says ---------------------------------------------------------------------------
def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def checkpoint_step(run: Path) -> int | None:
    from genkit.train.checkpoint import latest_checkpoint, read_card

    path = latest_checkpoint(run / "checkpoints")
    return None if path is None else int(read_card(path)["step"])


def trained_minutes(run: Path) -> float:
    """Training minutes the trainer counted up to the run's latest checkpoint (0 without one)."""
    from genkit.train.checkpoint import latest_checkpoint, load_trainer_state

    path = latest_checkpoint(run / "checkpoints")
    return 0.0 if path is None else float(load_trainer_state(path).get("train_seconds", 0.0)) / 60


def pairs_ready(run: Path) -> bool:
    from genkit.pairs import check_pairs

    try:
        check_pairs(run / "pairs")
    except GenkitError:
        return False
    return True


# ---- running steps ------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Suite:
    """Runs a part's steps under the deadline and packs the results after each one."""

    def __init__(self, cfg: SuiteConfig, steps: list[Step], out: Path) -> None:
        self.cfg, self.steps, self.out = cfg, steps, out
        self.t0 = time.monotonic()
        self.deadline = self.t0 + 60 * cfg.deadline_minutes
        self.this_run: dict[str, str] = {}  # step -> what happened in this invocation
        self.notes: list[str] = []
        self.outcome: Outcome = "interrupted"
        self.error = ""
        self.machine: dict[str, str] = {}

    def left(self) -> float:
        """Minutes to the deadline."""
        return (self.deadline - time.monotonic()) / 60

    def record_path(self, step: Step) -> Path:
        return self.cfg.work / "steps" / f"{step.name}.json"

    def record(self, step: Step) -> dict:
        return read_json(self.record_path(step))

    def say(self, message: str) -> None:
        print(f"[suite {self.left():5.2f} min left] {message}", flush=True)

    # -- one invocation of the whole part
    def run(self) -> int:
        def stop(signum, frame):  # SIGTERM/SIGHUP: stop the running command, pack, exit
            raise SystemExit(128 + signum)

        old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            self.machine = machine_info(self.cfg.device)
            self.notes.append(prepare_data(self.cfg))
            self.say(self.notes[-1])
            self.outcome = self.run_steps()
        except GenkitError as e:
            self.outcome, self.error = "error", " ".join(str(e).split())
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            text = self.pack()
            if self.error:
                print(f"error: {self.error}", file=sys.stderr, flush=True)
            print(text, flush=True)
        return EXIT[self.outcome]

    def run_steps(self) -> Outcome:
        for step in self.steps:
            if self.record(step).get("status") == "done":
                self.this_run[step.name] = "skipped"
                self.say(f"{step.name}: done earlier, skipped ({self.record_path(step)})")
                continue
            outcome = self.run_training(step) if step.train is not None else self.run_once(step)
            self.pack()
            if outcome != "done":
                return outcome
        if all(v == "skipped" for v in self.this_run.values()):
            self.say(f"all {len(self.steps)} steps were done earlier: nothing to run")
        return "done"

    def refuse(self, step: Step, need: float) -> Outcome:
        self.this_run[step.name] = "refused"
        self.say(f"{step.name}: not started, it needs about {need:.2f} min and the deadline is nearer; "
                 "run the same command again to continue")
        return "deadline"

    def run_once(self, step: Step) -> Outcome:
        if self.left() < step.minutes:
            return self.refuse(step, step.minutes)
        rc, seconds, stdout, killed = self.execute(step, step.argv())
        rows = [json.loads(line) for line in stdout.splitlines() if _is_json(line)]
        status = "done" if rc == 0 and not killed else ("partial" if killed else "failed")
        self.save(step, status, step.command(), rc, seconds, rows=rows)
        return self.judge(step, status, rc, killed)

    def run_training(self, step: Step) -> Outcome:
        e, budget = self.cfg.expect, step.train
        trained = trained_minutes(step.run)
        reserve = step.minutes + (e.pairs if step.pairs and not pairs_ready(step.run) else 0.0)
        avail = self.left() - reserve
        want = max(budget - trained, 0.0) if budget else e.min_train
        if want > 0 and avail < min(want, e.min_train):
            return self.refuse(step, reserve + min(want, e.min_train))
        limit = trained + max(avail, 0.0)
        limit = min(budget, limit) if budget else limit
        rc, seconds, _, killed = self.execute(step, step.argv(limit))
        ev, ckpt_step = read_json(step.run / "eval.json"), checkpoint_step(step.run)
        if killed or rc != 0:
            status = "partial" if killed or rc == 130 else "failed"
        elif ev.get("step") != ckpt_step:
            status = "failed"
            self.notes.append(f"{step.name}: eval.json is at step {ev.get('step')}, the latest checkpoint at {ckpt_step}")
        elif not ev.get("time_limit_reached"):
            status = "done"  # the recipe's steps were reached
        elif budget and float(ev.get("train_seconds", 0.0)) >= 60 * budget - 0.1:
            status = "done"  # its training minutes are spent: the marker later steps wait for
        else:
            status = "partial"  # stopped at the deadline's time limit: continue next time
        self.save(step, status, step.command(limit), rc, seconds, time_limit=limit,
                  trained_step=ev.get("step"), train_seconds=ev.get("train_seconds"))
        if status == "partial":
            self.say(f"{step.name}: trained {trained_minutes(step.run):.2f} of "
                     f"{budget or 'its'} minutes before the deadline; run the same command again to continue")
            return "deadline"
        return self.judge(step, status, rc, killed)

    def judge(self, step: Step, status: str, rc: int, killed: bool) -> Outcome:
        if status == "done":
            return "done"
        if killed:
            self.say(f"{step.name}: stopped at the deadline; run the same command again")
            return "deadline"
        log = self.cfg.work / "logs" / f"{step.name}.log"
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith("=== ")]
        last = lines[-1] if lines else "(no output)"
        self.error = f"step {step.name} failed (exit {rc}): {last.strip()} (log: {log})"
        return "failed"

    def save(self, step: Step, status: str, command: str, rc: int, seconds: float, **extra) -> None:
        from genkit.train.checkpoint import write_json_atomic

        rec = self.record(step)
        runs = rec.get("invocations", []) + [{"command": command, "rc": rc, "seconds": round(seconds, 2), "date": _now()}]
        rec |= {"name": step.name, "status": status, "invocations": runs,
                "seconds_total": round(sum(r["seconds"] for r in runs), 2), **extra}
        self.record_path(step).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.record_path(step), rec)
        self.this_run[step.name] = status

    def execute(self, step: Step, argv: list[str]) -> tuple[int, float, str, bool]:
        """Run one command, tee'ing stdout and stderr into its log; (exit status, seconds, stdout, killed)."""
        log_path = self.cfg.work / "logs" / f"{step.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = shlex.join(["python", *argv])
        self.say(f"{step.name}: {command}")
        captured: list[str] = []
        lock = threading.Lock()
        with open(log_path, "ab") as log:
            log.write(f"\n=== {_now()} $ {command}\n".encode())
            log.flush()
            start = time.monotonic()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if self.cfg.smoke:  # tiny networks: one thread is fastest, and spares a shared CPU
                env.setdefault("OMP_NUM_THREADS", "1")
            # its own process group (the deadline signals the command and its children), same session (a
            # GPU tool that ends the session's processes when the command returns still ends these)
            proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=env, process_group=0)

            def pump(stream, sink, keep: bool) -> None:
                decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
                for chunk in iter(lambda: stream.read1(1 << 16), b""):
                    text = decode.decode(chunk)
                    with lock:
                        log.write(chunk)
                        log.flush()
                        sink.write(text)
                        sink.flush()
                    if keep:
                        captured.append(text)

            pumps = [threading.Thread(target=pump, args=(proc.stdout, sys.stdout, True), daemon=True),
                     threading.Thread(target=pump, args=(proc.stderr, sys.stderr, False), daemon=True)]
            for t in pumps:
                t.start()
            killed = False
            try:
                while True:
                    try:
                        proc.wait(timeout=1.0)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    now = time.monotonic()
                    if now > self.deadline and not killed:
                        self.say(f"{step.name}: deadline reached, SIGTERM")
                        _signal(proc, signal.SIGTERM)
                        killed = True
                    elif killed and now > self.deadline + GRACE_S:
                        _signal(proc, signal.SIGKILL)
            except BaseException:  # Ctrl-C or SIGTERM of the suite: stop the child too
                _signal(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal(proc, signal.SIGKILL)
                raise
            finally:
                for t in pumps:
                    t.join(timeout=5)
            seconds = time.monotonic() - start
            log.write(f"=== exit {proc.returncode} after {seconds:.1f} s\n".encode())
        return proc.returncode, seconds, "".join(captured), killed

    # -- results
    def pack(self) -> str:
        """Write summary-<part>.{json,md} and results-<part>.tar.gz into the out folder; returns the markdown."""
        from genkit.train.checkpoint import write_json_atomic

        summary = summarize(self)
        text = markdown(summary)
        part = self.cfg.part
        for folder in (self.cfg.work, self.out):
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / f"summary-{part}.json", summary)
            tmp = folder / f".summary-{part}.md.tmp"
            tmp.write_text(text)
            os.replace(tmp, folder / f"summary-{part}.md")
        dropped = write_tarball(self.out / f"results-{part}.tar.gz", self.files(), self.cfg.work)
        if dropped:
            self.say(f"results-{part}.tar.gz: left out {dropped} snapshot PNGs to stay under 16 MB")
        count = sum(1 for p in self.out.rglob("*") if p.is_file())
        if count > 8:
            self.say(f"warning: {self.out} holds {count} files; only 8 come back from the GPU machine")
        return text

    def files(self) -> list[Path]:
        work, found = self.cfg.work, []
        for run in dict.fromkeys(s.run for s in self.steps if s.run is not None):
            found += [run / n for n in ("eval.json", "config.json", "metrics.jsonl", "fid_curve.json", "comparison.json",
                                        "comparison.md") if (run / n).is_file()]
            found += sorted(run.glob("*.png")) + sorted((run / "samples").glob("*.png"))
        for step in self.steps:
            found += [p for p in (work / "logs" / f"{step.name}.log", self.record_path(step)) if p.is_file()]
        found += [work / f"summary-{self.cfg.part}.{ext}" for ext in ("json", "md")]
        return found


def _is_json(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """Signal the command's process group (it was started as a group of its own)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def write_tarball(path: Path, files: list[Path], base: Path) -> int:
    """Pack ``files`` (named relative to ``base``) into ``path`` atomically; returns how many snapshot PNGs
    (``samples/step_*.png``) were left out to keep it under :data:`TAR_LIMIT`."""
    import tarfile

    snapshots = [p for p in files if p.parent.name == "samples" and p.name.startswith("step_")]
    tmp = path.with_name(f".{path.name}.tmp")
    for drop in (0, len(snapshots) // 2, len(snapshots)):
        skip = set(snapshots[: drop]) if drop else set()  # oldest first: file names sort by step
        with tarfile.open(tmp, "w:gz") as tar:
            for p in files:
                if p not in skip and p.is_file():
                    tar.add(p, arcname=str(p.relative_to(base)))
        if tmp.stat().st_size <= TAR_LIMIT:
            break
    os.replace(tmp, path)
    return drop


# ---- summaries ----------------------------------------------------------------------------------------
def machine_info(device: str) -> dict[str, str]:
    import torch

    from genkit.bench.sampling import device_name
    from genkit.cli import resolve_device

    return {"device": device_name(resolve_device(device)), "torch": torch.__version__, "python": sys.executable}


STAGE_NAMES = {"rf": "1-RF", "reflow": "2-RF", "distill": "2-RF + distillation"}
FLOOR = "fid_classifier_floor_train_vs_test"


def summarize(suite: Suite) -> dict:
    cfg = suite.cfg
    steps = []
    for step in suite.steps:
        rec = suite.record(step)
        steps.append({"name": step.name, "status": rec.get("status", "not run"),
                      "this_invocation": suite.this_run.get(step.name, "not reached"),
                      "seconds_total": rec.get("seconds_total"), "commands": [r["command"] for r in rec.get("invocations", [])]})
    out = {"part": cfg.part, "status": {"done": "complete", "deadline": "incomplete"}.get(suite.outcome, suite.outcome),
           "error": suite.error, "smoke": cfg.smoke, **suite.machine, "date": _now(), "work": str(cfg.work),
           "deadline_minutes": cfg.deadline_minutes, "elapsed_minutes": round((time.monotonic() - suite.t0) / 60, 2),
           "notes": suite.notes, "steps": steps}
    by_name = {s.name: s for s in suite.steps}
    if cfg.part == "speed":
        out["results"] = {name.removeprefix("speed-"): suite.record(s).get("rows", []) for name, s in by_name.items()}
        return out
    prefix = DATASETS[cfg.part]
    evs = {s.name: read_json(s.run / "eval.json") for s in suite.steps if s.train is not None}
    clf = evs[f"{prefix}-classifier"]
    results: dict = {"classifier": {k: clf.get(k) for k in ("step", "test_accuracy", "n_test", "train_seconds")}}
    floors = [ev[FLOOR] for ev in evs.values() if FLOOR in ev]
    if floors:
        results["fid_floor_train_vs_test"] = floors[0]
    if cfg.part.startswith("gans-"):
        out["results"] = results | gan_results(suite, evs, by_name[f"{prefix}-gans-compare"].run)
        return out
    nfe = scale(cfg).mnist_nfe if prefix == "mnist" else scale(cfg).cifar_nfe
    results["stages"] = []
    for stage in ("rf", "reflow", "distill"):
        step = by_name.get(f"{prefix}-{stage}")
        if step is None:
            continue
        ev = evs[step.name]
        row = {"stage": stage, **_trained(suite, step, ev),
               "straightness": ev.get("straightness"), "transport_cost": ev.get("transport_cost"),
               "fid_classifier": {k: ev.get(f"fid_classifier_nfe{k}") for k in nfe},
               "fid_seconds": {k: ev.get(f"fid_classifier_seconds_nfe{k}") for k in nfe}, "fid_n": ev.get("fid_classifier_n")}
        if "nll_bpd" in ev:
            row |= {k: ev.get(k) for k in ("nll_bpd", "nll_bpd_stderr", "nll_n", "nll_seconds", "nll_solver", "nll_rtol")}
        results["stages"].append(row)
    out["results"] = results
    return out


def _trained(suite: Suite, step: Step, ev: dict) -> dict:
    """A training step's run, steps, training minutes (counted and budget) and command minutes."""
    return {"run": str(step.run), "step": ev.get("step"), "train_minutes": _div(ev.get("train_seconds"), 60),
            "budget_minutes": step.train, "wall_minutes": _div(suite.record(step).get("seconds_total"), 60)}


def gan_results(suite: Suite, evs: dict[str, dict], compare: Path) -> dict:
    """Each GAN run's training and FID-C curve, and their comparison (comparison.json, comparison.md)."""
    runs = []
    for step in suite.steps:
        if step.module not in GAN_RECIPES:
            continue
        ev, points = evs[step.name], read_json(step.run / "fid_curve.json").get("points", [])
        last = points[-1] if points else {}
        runs.append({"name": step.name, **_trained(suite, step, ev),
                     "steps_per_second": _div(ev.get("step"), ev.get("train_seconds") or None),
                     "checkpoint_every": read_json(step.run / "config.json").get("train", {}).get("checkpoint_every"),
                     "fid_points": len(points), "generator_steps": last.get("generator_steps"), "fid_last": last.get("fid"),
                     "fid_n": ev.get("fid_classifier_n")})
    table = compare / "comparison.md"
    return {"runs": runs, "comparison": read_json(compare / "comparison.json") or None,
            "comparison_table": table.read_text() if table.is_file() else None}


def _div(x, d: float | None):
    return None if x is None or d is None else x / d


def _f(x, spec: str = ".4g") -> str:
    return "–" if x is None else format(x, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


TRAIN_NOTE = ("train min: training minutes counted by the trainer (--train.time-limit); command min: wall time of "
              "the training command(s), with start-up, data and the final evaluation")
JPEG = "this CIFAR-10 is a JPEG re-encoding: no number here is comparable to published CIFAR-10 numbers"
CAVEATS = {"mnist": "the distilled student is trained for one step: NFE 1 is its number", "cifar": JPEG,
           "gans-mnist": "each GAN has its recipe's mnist preset (networks, batch, optimisers)", "gans-cifar": JPEG}


def _fid_notes(res: dict, n: int | None, caveat: str) -> tuple[str, str]:
    """(the FID-C floor line, the classifier line) under a part's table."""
    clf = res["classifier"]
    return ((f"FID-C floor (train vs test, N = {_f(n, 'd')}): {_f(res.get('fid_floor_train_vs_test'))}. FID-C uses "
             f"a genkit classifier's features: not comparable to Inception FID; {caveat}."),
            f"FID-C classifier: test accuracy {_f(clf.get('test_accuracy'))} after {_f(clf.get('step'), 'd')} steps.")


def markdown(summary: dict) -> str:
    """The summary as markdown: the numbers, then every command with its wall time, device and date."""
    part, res = summary["part"], summary.get("results", {})
    lines = [f"## genkit bench suite: {part}{' (smoke)' if summary['smoke'] else ''}: {summary['status']}", ""]
    if summary["error"]:
        lines += [f"error: {summary['error']}", ""]
    if part == "speed":
        cols = {"trainer-overhead": ("case", "batch", "bare_img_per_s", "trainer_img_per_s", "overhead_pct", "bf16",
                                     "compile"),
                "sampling": ("preset", "nfe", "batch", "img_per_s", "ms_per_nfe_img", "params_M", "bf16", "compile"),
                "pairs-memory": ("pairs", "shards", "host_peak_MiB", "gpu_peak_MiB", "seconds", "pairs_per_s")}
        for name, keys in cols.items():
            rows = res.get(name, [])
            lines += [f"{name} ({rows[0]['device'] if rows else 'not measured'}):", ""]
            lines += _table(keys, [[str(r.get(k, "–")) for k in keys] for r in rows]) + [""]
    elif part.startswith("gans-"):
        lines += [(res.get("comparison_table") or "No comparison yet: its step has not run.").rstrip(), ""]
        header = ["run", "Trainer steps", "generator steps", "train min", "command min", "steps/s", "checkpoint every",
                  "FID-C points", "last FID-C"]
        lines += _table(header, [[r["name"], _f(r["step"], "d"), _f(r["generator_steps"], "d"), _f(r["train_minutes"], ".2f"),
                                  _f(r["wall_minutes"], ".2f"), _f(r["steps_per_second"], ".1f"), _f(r["checkpoint_every"], "d"),
                                  str(r["fid_points"]), _f(r["fid_last"])] for r in res["runs"]]) + [""]
        n = next((r["fid_n"] for r in res["runs"] if r["fid_n"]), None)
        lines += [(f"{TRAIN_NOTE}; steps/s: Trainer steps per training second, what --rates.* guess (checkpoint "
                   "intervals follow from them); a ReFlow-GAN or WGAN-GP Trainer step is a critic step (5 per generator step)."),
                  *_fid_notes(res, n, CAVEATS[part]), ""]
    elif res:
        nfe = list(res["stages"][0]["fid_classifier"]) if res["stages"] else []
        header = ["stage", "steps", "train min", "command min", "straightness", *(f"FID-C NFE {k}" for k in nfe)]
        if part == "cifar":
            header += ["bits/dim (K=1)", "NLL images", "NLL s"]
        rows = []
        for r in res["stages"]:
            row = [STAGE_NAMES[r["stage"]], _f(r["step"], "d"), _f(r["train_minutes"], ".2f"), _f(r["wall_minutes"], ".2f"),
                   _f(r["straightness"]), *(_f(r["fid_classifier"][k]) for k in nfe)]
            if part == "cifar":
                bpd = "–" if r.get("nll_bpd") is None else f"{r['nll_bpd']:.4f} ± {r['nll_bpd_stderr']:.4f}"
                row += [bpd, _f(r.get("nll_n"), "d"), _f(r.get("nll_seconds"), ".1f")]
            rows.append(row)
        lines += _table(header, rows) + [""]
        n = next((r["fid_n"] for r in res["stages"] if r["fid_n"]), None)
        times = "; ".join(f"{STAGE_NAMES[r['stage']]} " + ", ".join(_f(r["fid_seconds"][k], ".1f") for k in nfe)
                          for r in res["stages"])
        floor, classifier = _fid_notes(res, n, CAVEATS[part])
        lines += [f"{TRAIN_NOTE} (and teacher pairs).", floor,
                  f"FID-C seconds for N = {_f(n, 'd')} samples at NFE {', '.join(map(str, nfe))}: {times}.", classifier, ""]
    rows = [[s["name"], s["status"], s["this_invocation"], _f(s["seconds_total"], ".1f"),
             "<br>".join(f"`{c}`" for c in s["commands"]) or "–"] for s in summary["steps"]]
    lines += _table(["step", "status", "this invocation", "wall s (all)", "commands"], rows) + [""]
    lines += [f"device {summary.get('device', '?')}, torch {summary.get('torch', '?')}, python = {summary.get('python', '?')}, "
              f"{summary['date']}; {summary['elapsed_minutes']} of {summary['deadline_minutes']} min used; "
              + "; ".join(summary["notes"])]
    return "\n".join(lines)


# ---- the command ------------------------------------------------------------------------------------
def out_dir(cfg: SuiteConfig) -> Path:
    if cfg.out is not None:
        return cfg.out
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else cfg.work / "out"


def main(argv: Sequence[str] | None = None) -> int:
    cfg = tyro.cli(SuiteConfig, args=argv, prog=PROG, description=__doc__.split("\n\n")[0])
    check(cfg)
    steps = plan(cfg)
    if cfg.dry_run:
        print(prepare_data(cfg, dry_run=True))
        for step in steps:
            done = read_json(Path(cfg.work) / "steps" / f"{step.name}.json").get("status") == "done"
            limit = None if step.train is None else (step.train or cfg.deadline_minutes)
            print(f"{step.name}{' (done, would skip)' if done else ''}: {step.command(limit)}")
        print(f"results: {out_dir(cfg)}/results-{cfg.part}.tar.gz, summary-{cfg.part}.json, summary-{cfg.part}.md")
        return 0
    return Suite(cfg, steps, out_dir(cfg)).run()


if __name__ == "__main__":
    from genkit.cli import run_main

    sys.exit(run_main(main))
