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
    python3 -m genkit.bench.suite speed       # timeout_s 600: about two calls (benchmarks, then pytest -m gpu)
    python3 -m genkit.bench.suite mnist       # timeout_s 600: about three calls of the same command
    python3 -m genkit.bench.suite cifar       # timeout_s 600: about four calls of the same command
    python3 -m genkit.bench.suite gans-mnist  # timeout_s 600: about three calls of the same command
    python3 -m genkit.bench.suite gans-cifar  # timeout_s 600: about four calls (some 35 minutes; with
                                              # --cifar-gan-minutes 4, about three)

A call that exits 3 stopped at its deadline: repeat the same command at once, while the machine is
still held (the work folder, checkpoints included, lives on that machine only).

A 30-minute GPU session is best spent as ONE background chain (this is how the 2026-11-23 session
ran speed, then mnist, in 22 minutes of one machine): the first call starts the parts in a process
session of their own (it outlives the call, not the machine), later calls only wait and copy::

    setsid nohup bash -c 'python3 -m genkit.bench.suite speed --keep-going --deadline-minutes 9 --out runs/o-speed;
      python3 -m genkit.bench.suite mnist --keep-going --deadline-minutes 14 --out runs/o-mnist' > runs/gpu.log 2>&1 &
    sleep 560; cp runs/o-*/* "$OUT"/; tail -5 runs/gpu.log   # every call within 30 s of the last one's end

``--parallel N`` runs up to N steps at once, each as soon as the steps it needs are done (a stage its
teacher, an evaluation its run and the classifier; the speed benchmarks always run alone). Small
networks leave the GPU idle for much of each step (the 2026-11-23 profile found even the 35.7M UNet's
batch-128 step host-bound), so several runs can share it; how much each one lost shows in its
steps/s. Their seconds are then seconds under shared load (the summary says so); ``gans-*`` compare
their runs at equal seconds under the same load. Two parts can run side by side from the same work
folder once the classifier they share is done::

    python3 -m genkit.bench.suite mnist --only mnist-classifier
    python3 -m genkit.bench.suite mnist --parallel 2 & python3 -m genkit.bench.suite gans-mnist --parallel 4

``--keep-going`` goes on after a failed step (a step that needs it is not started); ``--only STEP...``
runs some steps of a part (a step whose needs are not done is not started). Every call
must follow the previous one within the machine's idle window (30 s), or the machine goes back with
the work folder; copy the summaries to $OUT in every call.

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
``--cifar-gan-minutes``) on the same data (no flips, batch 64: ``GAN_BATCH``) with all checkpoints
kept; networks, Adam settings and update ratios stay each recipe's (MonoFlow 1:1, ReFlow-GAN and
WGAN-GP 5:1). Checkpoints fall on the same generator steps in every run: every ``k`` generator
steps, ``k`` the guessed generator steps of the slowest run (from ``--rates.*``, the guessed Trainer
steps per second, and each recipe's update ratio) over ``--gan-points``, rounded to a whole number; a
faster run gets more checkpoints, and about ``--gan-points`` sample grids. A FID-C step per run
evaluates the checkpoints its ``fid_curve.json`` lacks among about 2 x ``--gan-points`` of them (every
checkpoint up to 1.25 times the slowest run's guessed generator steps, evenly spaced ones beyond, always
the latest: ``--curve-points``, ``--curve-dense-until``), and ``genkit.eval.compare`` tables and plots
the curves at equal generator steps and equal seconds (the table is in the summary). The FID-C classifier is the mnist or cifar
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

import dataclasses
import math
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

from genkit.bench import suite_report
from genkit.bench.suite_runner import Runner
from genkit.errors import GenkitError
from genkit.train.checkpoint import read_json_object
from genkit.train.trainer import CompileMode

PROG = "python -m genkit.bench.suite"
Part = Literal["speed", "mnist", "cifar", "gans-mnist", "gans-cifar"]
DATASETS: dict[str, Literal["mnist", "cifar"]] = {"mnist": "mnist", "cifar": "cifar", "gans-mnist": "mnist",
                                                  "gans-cifar": "cifar"}
"""the data set of each part that trains (speed has none)"""
PRESETS = {"mnist": "mnist", "cifar": "cifar10"}
"""the recipes' preset of each data set"""
GAN_RECIPES = ("genkit.recipes.monoflow", "genkit.recipes.reflow_gan")
GAN_BATCH = 64
"""the batch of every run of a gans part (the presets: MonoFlow 128, ReFlow-GAN/WGAN-GP 64), so that each
generator step and each critic step sees as many samples in every run"""
GAN_DENSE_MARGIN = 1.25
"""a gans part's FID-C curves evaluate every checkpoint up to this many times the slowest run's guessed generator
steps (--rates.*), so that every run has the checkpoint of the equal-steps comparison even if the slowest runs faster"""
GAN_CURVE_POINTS = 2
"""a gans part's FID-C curve evaluates about this many times --gan-points checkpoints (--curve-points), however many
a fast run has: each point is a full FID-C (10,000 samples)"""
EXIT = {"done": 0, "failed": 1, "error": 2, "deadline": 3}
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Expect:
    """Expected minutes on the GPU, for the deadline guard only (adjust them from a summary's wall times).

    Measured on one H100 on 2026-11-23 (the summary's wall times): a first mnist flow command spent
    2.4 min outside training (1.6 compiling, 0.8 start and final evaluation), a later one 0.8 (the
    compiled code cached); 20k mnist teacher pairs (rk4, 25 steps) 1.7 min; an mnist FID-C command at
    NFE 1 2 10 100 1.6 to 1.75 min; the mnist classifier 0.6 min; the three speed benchmarks 5.5,
    1.3 and 1.8 min (the first before both sides shared one compiled model), the GPU tests 2.2 min."""

    overhead: float = 2.0
    """a training command outside its training loop: start, data loading, compiling, final evaluation"""
    pairs: float = 2.0
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
    """Guessed Trainer steps per second of the GAN recipes on the GPU at batch ``GAN_BATCH`` (ReFlow-GAN's also
    for WGAN-GP: the same networks), for checkpoint intervals only: adjust them from a summary's steps/s."""

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
    keep_going: bool = False
    """after a failed step, go on with the steps that do not need it; exit 1 at the end"""
    only: tuple[str, ...] = ()
    """run only these steps of the part (names as --dry-run prints them; empty: all)"""
    parallel: int = 1
    """steps running at once: each starts when the steps it needs are done, in plan order; the speed
    benchmarks still run alone. Above 1, the commands' output goes to their logs only"""
    classifier_minutes: float = 3.0
    """training minutes of the FID-C classifier at most (its preset's steps end it first on MNIST, in
    about 0.6 min on the H100; the CIFAR-10 preset's 20,000 steps would take longer than FID-C needs)"""
    compile_mode: CompileMode = "default"
    """--train.compile-mode of the flow training commands (mnist, cifar): reduce-overhead replays CUDA graphs"""
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
    """checkpoints the slowest GAN run should get at its --rates.* guess (a faster one gets more on the same
    generator steps); each FID-C curve evaluates about twice as many at most"""
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
    """test images for bits/dim (default 0: all 10000; --smoke 8); the evaluation resumes batch by batch
    after a deadline, so the whole test set is reached over several calls if need be"""
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


FULL = Scale(6.0, 3.5, 2.5, 20.0, 20_000, 10_000, (1, 2, 10, 100), (1, 10, 100), 0, 4.0, 6.0)
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
    needs: tuple[str, ...] = ()
    """the steps that must be done before this one starts (its teacher, its run, the classifier)"""
    solo: bool = False
    """runs alone, even under --parallel (a benchmark whose timing another job would disturb)"""

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
    return Step(name, "genkit.eval.fid", args, cfg.expect.fid_cifar if cfg.part == "cifar" else cfg.expect.fid, run=run,
                needs=(run.name, classifier.name))  # run folders are named as the steps that write them


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
    return Step(run.name, "genkit.recipes.classifier", args, cfg.expect.overhead, run=run, train=cfg.classifier_minutes)


def _flow(cfg: SuiteConfig, name: str, preset: str, stage: str, minutes: float, data: tuple[str, ...],
          teacher: Path | None = None) -> Step:
    run = cfg.work / name
    unet = ("--model.unet-channels", *(("8", "8") if preset == "mnist" else ("8", "8", "8"))) if cfg.smoke else ()
    pairs = () if teacher is None else ("--teacher", str(teacher), "--pairs.n", str(scale(cfg).pairs),
                                        *(SMOKE_PAIRS if cfg.smoke else ()))
    mode = () if cfg.compile_mode == "default" else ("--train.compile-mode", cfg.compile_mode)
    if preset == "cifar10" and not cfg.smoke:
        # the preset's EMA (0.9999, a 10k-step horizon) is for 200k-step runs; a 20-minute run has some
        # 20k-40k steps, and its samples would still average in the first minutes' weights
        mode += ("--train.ema-decay", "0.999")
    args = ("--preset", preset, "--stage", stage, "--out", str(run), *pairs, *data, "--train.steps", str(cfg.max_steps),
            *mode, *unet, *(SMOKE_FLOW if cfg.smoke else ()))
    return Step(name, "genkit.recipes.reflow", args, cfg.expect.overhead, run=run, train=minutes, pairs=teacher is not None,
                needs=() if teacher is None else (teacher.name,))


def trainer_steps_per_generator_step(recipe: str, args: Sequence[str]) -> int:
    """Trainer steps per generator step of a GAN recipe's command: the generator's update ratio in the
    recipe's own set-up (``players``) of its resolved config."""
    from genkit.cli import parse_config

    if recipe == "monoflow":
        from genkit.recipes.monoflow import MonoFlowConfig, players

        return players(parse_config(MonoFlowConfig, "monoflow", args)).update_every.get("generator", 1)
    from genkit.recipes.reflow_gan import ReflowGANConfig, players

    return players(parse_config(ReflowGANConfig, "reflow_gan", args)).update_every.get("generator", 1)


def _gans(cfg: SuiteConfig, classifier: Path, data: tuple[str, ...]) -> list[Step]:
    """Each GAN run for the part's minutes, with its FID-C curve; then their comparison.

    Checkpoints fall on the same generator steps in every run (every ``k`` generator steps, ``k`` the
    guessed generator steps of the slowest run over ``--gan-points``, rounded to a whole number), so the
    comparison at equal generator steps compares checkpoints of exactly equal generator steps; a faster
    run gets more checkpoints. Its FID-C curve evaluates every checkpoint up to :data:`GAN_DENSE_MARGIN`
    times the slowest run's guessed generator steps (where the equal-steps budget falls) and beyond them
    evenly spaced ones, always the latest (the equal-time point): about ``GAN_CURVE_POINTS x --gan-points``
    in all, however fast the run. Sample grids: about ``--gan-points`` per run. Every run trains on the same data: its
    preset's (the GAN presets agree, no flips) with the batch :data:`GAN_BATCH`. What stays each
    recipe's own: networks, Adam settings and update ratio (MonoFlow 1:1, the critics 5:1).
    """
    ds = DATASETS[cfg.part]
    minutes = scale(cfg).mnist_gan_minutes if ds == "mnist" else scale(cfg).cifar_gan_minutes
    runs = [(f"monoflow-{h}", "monoflow", ("--objective.h", h)) for h in cfg.monoflow_h]
    runs += [(kind, "reflow_gan", ("--objective.kind", kind)) for kind in ("reflow_gan", "wgan_gp")]
    base = {name: ("--preset", PRESETS[ds], *objective, *data, "--train.batch-size", str(GAN_BATCH),
                   *(SMOKE_GAN if cfg.smoke else ())) for name, _, objective in runs}
    ratio = {name: trainer_steps_per_generator_step(recipe, base[name]) for name, recipe, _ in runs}
    gen_steps = {name: getattr(cfg.rates, f"{recipe}_{ds}") * 60 * minutes / ratio[name] for name, recipe, _ in runs}
    # generator steps between checkpoints, the same whole number in every run (a fraction would drift the grids apart)
    k = max(1, round(min(gen_steps.values()) / cfg.gan_points))
    # every checkpoint up to a little beyond the slowest run's guessed generator steps: the equal-steps point
    dense = math.ceil(GAN_DENSE_MARGIN * min(gen_steps.values()) / k) * k
    steps: list[Step] = []
    for name, recipe, _ in runs:
        run = cfg.work / f"{ds}-{name.replace('_', '-')}"
        every = k * ratio[name]
        grids = every * max(1, round(gen_steps[name] / k / cfg.gan_points))
        args = (*base[name][:2], "--out", str(run), *base[name][2:], "--train.steps", str(cfg.max_steps),
                "--train.keep-checkpoints", "0", "--train.checkpoint-every", str(every),
                "--train.sample-every", str(grids))
        fid = _fid(cfg, f"{run.name}-fid", run, classifier, None, floor=not steps)  # the data floor once
        thin = ("--curve-points", str(GAN_CURVE_POINTS * cfg.gan_points), "--curve-dense-until", str(dense * ratio[name]))
        steps += [Step(run.name, f"genkit.recipes.{recipe}", args, cfg.expect.overhead, run=run, train=minutes),
                  dataclasses.replace(fid, args=(*fid.args, *thin))]
    out = cfg.work / f"{ds}-gans-compare"
    args = ("--runs", *(str(s.run) for s in steps if s.train is not None), "--out", str(out))
    curves = tuple(s.name for s in steps if s.train is None)
    return [*steps, Step(out.name, "genkit.eval.compare", args, cfg.expect.compare, run=out, needs=curves)]


def plan(cfg: SuiteConfig) -> list[Step]:
    """The part's steps, in order (each may need the ones before it)."""
    s, e, dev = scale(cfg), cfg.expect, ("--device", cfg.device)
    if cfg.part == "speed":
        smoke = {"trainer-overhead": ("--cases", "mlp", "--steps", "20", "--warmup", "5", "--repeats", "1"),
                 "sampling": (*SMOKE_UNET, "--nfe", "1", "2", "--batch-size", "4", "--batches", "2", "--no-compile"),
                 "pairs-memory": (*SMOKE_UNET, "--pairs", "8", "16", "--batch-size", "8", "--shard-size", "8",
                                  "--steps", "2")}
        smoke["trainer-overhead-cudagraphs"] = (*smoke["trainer-overhead"], "--compile-mode", "reduce-overhead")
        full = {"trainer-overhead": ("--cases", "unet", "--batch-sizes", "128", "512"),
                "trainer-overhead-cudagraphs": ("--cases", "unet", "--batch-sizes", "128", "512",
                                                "--compile-mode", "reduce-overhead"),
                "sampling": (), "pairs-memory": ("--pairs", "10000", "100000")}
        module = {"trainer-overhead-cudagraphs": "genkit.bench.trainer_overhead"}
        benches = [Step(f"speed-{name}", module.get(name, f"genkit.bench.{name.replace('-', '_')}"), (*args, *dev), e.bench,
                        solo=True) for name, args in (smoke if cfg.smoke else full).items()]
        # last, so that a failing check does not cost the numbers (skipped without CUDA)
        return [*benches, Step("speed-gpu-tests", "pytest", ("-q", "-m", "gpu", "tests/test_gpu.py"), e.bench, solo=True)]
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
    return [clf, flow, Step("cifar-rf-nll", "genkit.eval.nll", nll, e.nll, run=flow.run, needs=(flow.name,)),
            _fid(cfg, "cifar-rf-fid", flow.run, clf.run, s.cifar_nfe, floor=True)]


def select(steps: list[Step], only: Sequence[str]) -> list[Step]:
    """The steps named in ``only`` (all if empty), in the plan's order."""
    names = [step.name for step in steps]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise GenkitError(f"--only: no step {', '.join(unknown)} in this part (its steps: {', '.join(names)})")
    return [step for step in steps if not only or step.name in only]


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
    if not cfg.classifier_minutes > 0:
        raise GenkitError(f"--classifier-minutes must be > 0, got {cfg.classifier_minutes}")
    if not cfg.deadline_minutes > 0:
        raise GenkitError(f"--deadline-minutes must be > 0, got {cfg.deadline_minutes}")
    for name, minimum in (("pairs", 1), ("fid_n", 2), ("nll_n", 0)):
        _check_count(f"--{name.replace('_', '-')}", getattr(s, name), minimum)
    _check_count("--max-steps", cfg.max_steps, 1)
    _check_count("--gan-points", cfg.gan_points, 1)
    _check_count("--parallel", cfg.parallel, 1)
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


# ---- the runner of this command ------------------------------------------------------------------------
class Suite(Runner):
    """The runner (genkit.bench.suite_runner) with this command's data and report (genkit.bench.suite_report)."""

    def prepare_data(self) -> str:
        return prepare_data(self.cfg)

    def machine_info(self) -> dict[str, str]:
        return suite_report.machine_info(self.cfg.device)

    def summarize(self) -> dict:
        dataset, s = DATASETS.get(self.cfg.part), scale(self.cfg)
        return suite_report.summarize(self, dataset=dataset, nfe=s.mnist_nfe if dataset == "mnist" else s.cifar_nfe,
                                      gan_recipes=GAN_RECIPES)

    def markdown(self, summary: dict) -> str:
        return suite_report.markdown(summary)


# ---- the command ------------------------------------------------------------------------------------
def out_dir(cfg: SuiteConfig) -> Path:
    if cfg.out is not None:
        return cfg.out
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else cfg.work / "out"


def main(argv: Sequence[str] | None = None) -> int:
    cfg = tyro.cli(SuiteConfig, args=argv, prog=PROG, description=__doc__.split("\n\n")[0])
    check(cfg)
    steps = select(plan(cfg), cfg.only)
    if cfg.dry_run:
        print(prepare_data(cfg, dry_run=True))
        for step in steps:
            done = read_json_object(Path(cfg.work) / "steps" / f"{step.name}.json").get("status") == "done"
            limit = None if step.train is None else (step.train or cfg.deadline_minutes)
            after = f" (after {', '.join(step.needs)})" if cfg.parallel > 1 and step.needs else ""
            print(f"{step.name}{' (done, would skip)' if done else ''}{after}: {step.command(limit)}")
        print(f"results: {out_dir(cfg)}/results-{cfg.part}.tar.gz, summary-{cfg.part}.json, summary-{cfg.part}.md")
        return 0
    return EXIT[Suite(cfg, steps, out_dir(cfg), plan=plan(cfg)).run()]


if __name__ == "__main__":
    from genkit.cli import run_main

    sys.exit(run_main(main))
