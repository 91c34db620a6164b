"""Rectified flow, reflow and distillation through the shared Trainer.

    python -m genkit.recipes.reflow --preset toy                       # 1-RF on 2-D data, CPU, ~1 minute
    python -m genkit.recipes.reflow --preset mnist --out runs/mnist-1rf
    python -m genkit.recipes.reflow --preset mnist --stage reflow --teacher runs/mnist-1rf --out runs/mnist-2rf
    python -m genkit.recipes.reflow --preset mnist --stage distill --teacher runs/mnist-2rf --out runs/mnist-2rf-d1
    torchrun --nproc_per_node=2 -m genkit.recipes.reflow --preset toy   # data parallel, same command

Stages (SPEC section 2): ``rf`` trains a flow from N(0, I) to the data; ``reflow`` simulates
pairs (Z_0, Z_1) with the teacher run's EMA flow, streams them to ``<out>/pairs`` (resumable;
under torchrun each rank simulates its share of the shards) and retrains on them, warm-started
from the teacher's EMA weights; ``distill`` trains a one-step (or ``--distill.steps k``) student
on the teacher's pairs. The teacher is the latest checkpoint of
a finished run (one with eval.json) unless ``--teacher-step N`` picks a checkpoint; a stage
that resumes keeps the teacher step it started from. Every stage writes its own run folder:
config.json (with the teacher it points at), metrics.jsonl, checkpoints/, samples/ (plots or
image grids at several NFE), eval.json (straightness, NFE, the pairs' count, NFE and time, and
on 2-D data the energy distance to held-out data next to the data-vs-data floor). The same
command with the same ``--out`` resumes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from genkit.cli import load_network, open_run, parse_config, report_stop, run_main, run_recipe, to_jsonable
from genkit.data.images import ImageStream, load_images
from genkit.data.toy import TOY_DATASETS, ToyStream
from genkit.errors import GenkitError
from genkit.objectives.distillation import Distillation
from genkit.objectives.flow_matching import TIME_SAMPLERS, FlowMatching
from genkit.paths import SCHEDULES, AffinePath, make_schedule
from genkit.solvers import Method
from genkit.train import TrainConfig, Trainer
from genkit.train import checkpoint as ckpt
from genkit.train import distributed
from genkit.train.logging import update_eval
from genkit.train.optim import adam

RECIPE = "reflow"
IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10", "imagefolder")
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "8gaussians"
    """2-D: 8gaussians, moons, checkerboard, spirals; images: mnist, fashion-mnist, cifar10, imagefolder"""
    root: Path = Path("data")
    """image data root (torchvision layout), or the ImageFolder directory"""
    download: bool = True
    """let torchvision download missing image sets (needs network)"""
    hflip: bool = False
    """random horizontal flips of images"""


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 256
    """MLP width (2-D data)"""
    depth: int = 3
    """MLP hidden layers (2-D data)"""
    unet: str = "auto"
    """UNet preset for images: mnist, cifar10, or auto (mnist for 28x28 sets, else cifar10)"""
    unet_channels: tuple[int, ...] = ()
    """override the UNet's block_out_channels (attention at the second level)"""
    unet_layers: int = 0
    """override the UNet's layers_per_block (0: the preset's)"""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


@dataclass(frozen=True)
class FlowConfig:
    schedule: str = "linear"
    """path schedule: linear (rectified flow), cosine, vp, polynomial"""
    time: str = "uniform"
    """training-time sampler: uniform, logit_normal, u_shaped"""
    coupling: Literal["independent", "ot"] = "independent"
    """noise-data pairing for stage rf (minibatch OT or independent)"""


@dataclass(frozen=True)
class PairsConfig:
    n: int = 20_000
    """number of teacher pairs (Z_0, Z_1) for stages reflow and distill"""
    method: Method = "rk4"
    steps: int = 50
    batch_size: int = 1000
    shard_size: int = 10_000
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    compile: bool = True
    """torch.compile the teacher while simulating the pairs (CUDA only; the CPU always runs eagerly)"""


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 1
    """student steps: 1 = one-step map x_1 = x_0 + v(x_0, 0)"""
    loss: Literal["l2", "pseudo_huber"] = "l2"


@dataclass(frozen=True)
class SampleConfig:
    method: Method = "euler"
    steps: int = 100
    """solver steps for snapshots and the main metric (fixed-step methods)"""
    nfe: tuple[int, ...] = (1, 2, 10, 100)
    """Euler step counts at which the final samples are drawn and judged"""
    n_eval: int = 2000
    """samples for the final metrics (2-D: and as many held-out points)"""
    n_snapshot: int = 1000
    """samples per snapshot (images: a grid of up to 64)"""
    n_straightness: int = 500


@dataclass(frozen=True)
class ReflowConfig:
    """Rectified flow: N(0, I) -> data along x_t = t x_1 + (1 - t) x_0; reflow; distillation."""

    preset: str | None = None
    """preset from recipes/reflow/<name>.toml (applied before other flags)"""
    out: Path = Path("runs/reflow")
    """run folder; running again with the same folder resumes"""
    stage: Literal["rf", "reflow", "distill"] = "rf"
    teacher: Path | None = None
    """run folder of the previous stage (stages reflow and distill)"""
    teacher_step: int | None = None
    """the teacher's checkpoint step (default: the one this --out was started from, else the latest of a
    finished teacher)"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    dry_run: bool = False
    """print the resolved config and exit"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=4000, batch_size=512))
    sample: SampleConfig = field(default_factory=SampleConfig)


# ---- building blocks ------------------------------------------------------------------------------
def check_config(cfg: ReflowConfig) -> None:
    """Every check that needs no file: bad options fail before any pair is simulated or step trained."""
    known = sorted(TOY_DATASETS) + list(IMAGE_SETS)
    if cfg.data.dataset not in known:
        raise GenkitError(f"unknown dataset '{cfg.data.dataset}' (known: {', '.join(known)})")
    if cfg.flow.schedule not in SCHEDULES:
        raise GenkitError(f"unknown schedule '{cfg.flow.schedule}' (known: {', '.join(SCHEDULES)})")
    if cfg.flow.time not in TIME_SAMPLERS:
        raise GenkitError(f"unknown time sampler '{cfg.flow.time}' (known: {', '.join(TIME_SAMPLERS)})")
    if cfg.stage == "rf" and (cfg.teacher is not None or cfg.teacher_step is not None):
        raise GenkitError("--teacher and --teacher-step are for --stage reflow or distill: add the --stage, "
                          "or leave them out to train a 1-rectified flow")
    if cfg.stage != "rf" and cfg.teacher is None:
        raise GenkitError(f"stage '{cfg.stage}' needs --teacher RUN_DIR (the run folder of the previous stage)")
    if cfg.teacher is not None and cfg.out.resolve() == cfg.teacher.resolve():
        raise GenkitError(f"--out {cfg.out} is the teacher's run folder: give this stage a folder of its own")
    s, p = cfg.sample, cfg.pairs
    counts = [("--sample.steps", s.steps, 1), ("--sample.n-eval", s.n_eval, 1), ("--sample.n-snapshot", s.n_snapshot, 1),
              ("--sample.n-straightness", s.n_straightness, 1), ("--pairs.n", p.n, 1), ("--pairs.steps", p.steps, 1),
              ("--pairs.batch-size", p.batch_size, 1), ("--pairs.shard-size", p.shard_size, 1),
              ("--distill.steps", cfg.distill.steps, 1)]
    if cfg.teacher_step is not None:
        counts.append(("--teacher-step", cfg.teacher_step, 0))
    for flag, value, least in counts:
        if value < least:
            raise GenkitError(f"{flag} must be >= {least}, got {value}")
    if not s.nfe or min(s.nfe) < 1:
        raise GenkitError(f"--sample.nfe needs one or more Euler step counts >= 1, got {list(s.nfe)}")
    o = cfg.optim
    if not (math.isfinite(o.lr) and o.lr >= 0):
        raise GenkitError(f"--optim.lr must be a number >= 0, got {o.lr}")
    if not (math.isfinite(o.weight_decay) and o.weight_decay >= 0):
        raise GenkitError(f"--optim.weight-decay must be a number >= 0, got {o.weight_decay}")
    if not all(0 <= b < 1 for b in o.betas):
        raise GenkitError(f"--optim.betas must be two numbers in [0, 1), got {list(o.betas)}")


def load_train_images(cfg: ReflowConfig) -> torch.Tensor:
    """uint8 (N, C, H, W) training images of the configured set."""
    return load_images(cfg.data.dataset, root=cfg.data.root, split="train", download=cfg.data.download)


def build_field(model: ModelConfig, shape: tuple[int, ...]) -> nn.Module:
    """The velocity network for samples of ``shape``: an MLP for vectors, a UNet for images."""
    if len(shape) == 1:
        from genkit.nn.mlp import VelocityMLP

        return VelocityMLP(shape[0], hidden=model.hidden, depth=model.depth)
    from genkit.nn.unet import build_unet

    preset = model.unet if model.unet != "auto" else ("mnist" if shape[-1] == 28 else "cifar10")
    overrides: dict = {}
    if model.unet_channels:
        levels = len(model.unet_channels)
        down = ["AttnDownBlock2D" if i == 1 else "DownBlock2D" for i in range(levels)]
        overrides |= dict(block_out_channels=tuple(model.unet_channels), down_block_types=tuple(down),
                          up_block_types=tuple(t.replace("Down", "Up") for t in reversed(down)),
                          norm_num_groups=min(32, math.gcd(*model.unet_channels)))
    if model.unet_layers:
        overrides["layers_per_block"] = model.unet_layers
    return build_unet(preset, image_size=shape[-1], channels=shape[0], **overrides)


def make_sampler(net: nn.Module, shape: tuple[int, ...], method: str, steps: int, device: torch.device):
    from genkit.sampling import ODESampler

    return ODESampler(net, shape, method=method, steps=steps, device=device)


@dataclass(frozen=True)
class LoadedRun:
    """A finished (or running) run's EMA flow, ready to sample: the hook the evaluation CLIs use."""

    field: nn.Module
    config: ReflowConfig
    shape: tuple[int, ...]
    step: int

    @property
    def data(self) -> DataConfig:
        return self.config.data

    def sampler(self, *, method: str | None = None, steps: int | None = None, device: torch.device | None = None):
        """An :class:`~genkit.sampling.ODESampler` (the run's solver settings unless given)."""
        s = self.config.sample
        return make_sampler(self.field, self.shape, method or s.method, steps or s.steps,
                            device or next(self.field.parameters()).device)

    def density(self, **options):
        """A :class:`~genkit.eval.density.FlowDensity` (options as in ``genkit.solvers.log_likelihood``)."""
        from genkit.eval.density import FlowDensity

        return FlowDensity(self.field, self.shape, **options)


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu", ema: bool = True,
             step: int | None = None) -> LoadedRun:
    """Rebuild a reflow run's network from its config.json and load the (EMA) weights of checkpoint
    ``step`` (``None``: the latest)."""
    run = open_run(run_dir, RECIPE, ReflowConfig, step=step)
    net = load_network(run, RECIPE, "model", build_field(run.config.model, run.shape), ema=ema, device=device)
    return LoadedRun(net, run.config, run.shape, run.step)


def teacher_identity(teacher: str | Path, step: int) -> str:
    """How a stage's pairs name their teacher (pairs.json's ``teacher``): its absolute run folder and step."""
    return f"{Path(teacher).resolve()} (step {step}, EMA)"


def recorded_teacher(out: Path) -> tuple[Path, int] | None:
    """The teacher (absolute run folder, checkpoint step) a stage's run folder ``out`` was started from:
    from its config.json, else from its pairs' manifest (pairs are made before config.json is written);
    ``None`` for a new folder."""
    from genkit.pairs import MANIFEST

    card = ckpt.read_json_object(out / "config.json")
    if card.get("teacher") and isinstance(card.get("teacher_checkpoint_step"), int):
        return Path(card["teacher"]).resolve(), card["teacher_checkpoint_step"]
    found = re.fullmatch(r"(.*) \(step (\d+), EMA\)", str(ckpt.read_json_object(out / "pairs" / MANIFEST).get("teacher", "")))
    return (Path(found[1]).resolve(), int(found[2])) if found else None


def chosen_teacher_step(cfg: ReflowConfig) -> int | None:
    """The teacher checkpoint a stage uses: ``--teacher-step``, else the step its ``--out`` was started from
    (so that a resumed stage keeps its pairs when the teacher has trained on), else ``None`` (the latest)."""
    assert cfg.teacher is not None
    recorded = recorded_teacher(cfg.out)
    if recorded is None:
        return cfg.teacher_step
    path, step = recorded
    if path != cfg.teacher.resolve():
        raise GenkitError(f"{cfg.out} was made from teacher {path}, not {cfg.teacher.resolve()}: pass --teacher {path}, "
                          "or use another --out")
    if cfg.teacher_step is not None and cfg.teacher_step != step:
        raise GenkitError(f"{cfg.out} was made from teacher step {step}, not {cfg.teacher_step}: leave out --teacher-step "
                          "(or pass that step), or use another --out")
    return step


def load_teacher(cfg: ReflowConfig, shape: tuple[int, ...], device: torch.device) -> LoadedRun:
    """The teacher run's EMA flow at :func:`chosen_teacher_step`; refuses a distilled student, an unfinished
    teacher (unless a step is chosen) and a teacher of other data."""
    assert cfg.teacher is not None
    step = chosen_teacher_step(cfg)
    teacher = load_run(cfg.teacher, device=device, step=step)
    if teacher.config.stage == "distill":
        raise GenkitError(f"teacher {cfg.teacher} is a distilled student (stage distill): use an rf or reflow run "
                          "as the teacher")
    if step is None:  # the latest checkpoint: only of a finished run (a time-limited one writes eval.json too)
        evaluated = ckpt.read_json_object(cfg.teacher / "eval.json").get("step")
        if evaluated != teacher.step:
            state = "no eval.json" if evaluated is None else f"its eval.json is of step {evaluated}"
            raise GenkitError(f"teacher {cfg.teacher} has not finished training (latest checkpoint step {teacher.step}, "
                              f"{state}): run its command again to finish it, or pick a checkpoint with --teacher-step")
    theirs, mine = teacher.config.data, cfg.data
    other_root = theirs.dataset == "imagefolder" and theirs.root.resolve() != mine.root.resolve()
    if theirs.dataset != mine.dataset or teacher.shape != shape or other_root:
        def name(d: DataConfig) -> str:
            return f"{d.dataset} at {d.root}" if other_root else d.dataset

        raise GenkitError(
            f"teacher {cfg.teacher} was trained on {name(theirs)} {list(teacher.shape)}, not {name(mine)} "
            f"{list(shape)}: use a teacher of the same dataset"
        )
    return teacher


def pairs_complete(pairs_dir: Path) -> bool:
    """Whether ``pairs_dir`` holds every shard its manifest names (:func:`genkit.pairs.check_pairs` passes)."""
    from genkit.pairs import check_pairs

    try:
        check_pairs(pairs_dir)
    except GenkitError:
        return False
    return True


def warm_start(student: nn.Module, teacher: LoadedRun) -> None:
    """Initialise the student with the teacher's EMA weights (same architecture required)."""
    want = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in teacher.field.state_dict().items()}
    if want != have:
        key = next((k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)), "?")
        raise GenkitError(
            f"teacher network differs from this stage's ('{key}': {have.get(key)} vs {want.get(key)}): "
            "use the teacher's --model options"
        )
    student.load_state_dict(teacher.field.state_dict())


def build_objective(cfg: ReflowConfig):
    if cfg.stage == "distill":
        return Distillation(steps=cfg.distill.steps, loss=cfg.distill.loss)
    return FlowMatching(AffinePath(make_schedule(cfg.flow.schedule)), time=TIME_SAMPLERS[cfg.flow.time](),
                        coupling=cfg.flow.coupling)


def main_sampler_steps(cfg: ReflowConfig) -> tuple[str, int]:
    """The sampler a stage is judged with: a distilled k-step student uses k Euler steps."""
    return ("euler", cfg.distill.steps) if cfg.stage == "distill" else (cfg.sample.method, cfg.sample.steps)


# ---- the command ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(ReflowConfig, RECIPE, argv, description=__doc__.split("\n\n")[0])
    check_config(cfg)
    return run_recipe(cfg, run)


def run(cfg: ReflowConfig, device: torch.device, info: distributed.DistInfo) -> int:
    from genkit.recipes import reflow_eval

    if cfg.teacher is not None:  # config.json points at the teacher wherever the next command runs from
        cfg = dataclasses.replace(cfg, teacher=cfg.teacher.resolve())
    objective = build_objective(cfg)  # (its errors come before any pair is simulated)
    micro = cfg.train.micro_batch_size(info.world_size)
    images = None if cfg.data.dataset in TOY_DATASETS else load_train_images(cfg)
    shape = (2,) if images is None else tuple(images.shape[1:])
    torch.manual_seed(cfg.seed)  # the one global seed: model initialisation
    net = build_field(cfg.model, shape).to(device)
    card = {"recipe": RECIPE, "shape": list(shape), **to_jsonable(dataclasses.replace(cfg, dry_run=False))}
    if cfg.stage == "rf":
        data = (ToyStream(cfg.data.dataset, micro, seed=cfg.seed, rank=info.rank, device=device) if images is None
                else ImageStream(images, micro, seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                                 hflip=cfg.data.hflip, device=device))
    else:
        from genkit.pairs import PairStream

        pairs_dir = cfg.out / "pairs"
        if ckpt.latest_checkpoint(cfg.out / "checkpoints") is not None and pairs_complete(pairs_dir):
            # a resumed stage needs no teacher (its checkpoint may be pruned by now), only the same one named
            card["teacher_checkpoint_step"] = chosen_teacher_step(cfg)
        else:
            teacher = load_teacher(cfg, shape, device)
            card["teacher_checkpoint_step"] = teacher.step
            try:  # every rank simulates its share of the shards
                reflow_eval.make_pairs(teacher, cfg, pairs_dir, device, info)
            except KeyboardInterrupt:  # (the Trainer's Ctrl-C handling starts with fit)
                if info.is_main:
                    print(f"stopped while simulating the teacher's pairs; complete shards are kept in {pairs_dir}. "
                          "Run the same command to resume.", file=sys.stderr)
                return 130  # the exit status of a stop, as report_stop's
            if ckpt.latest_checkpoint(cfg.out / "checkpoints") is None:
                warm_start(net, teacher)
            del teacher
        data = PairStream(pairs_dir, micro, seed=cfg.seed, rank=info.rank, world_size=info.world_size, device=device)
    opt = adam(net.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    trainer = Trainer(
        {"model": net}, {"model": opt}, objective, data, cfg.train,
        run_dir=cfg.out, recipe=RECIPE, run_config=card, seed=cfg.seed, dist=info,
        snapshot=reflow_eval.snapshot_fn(cfg, shape, device),
    )
    result = trainer.fit()
    if result.interrupted:
        return report_stop(result, info)
    if info.is_main:
        metrics = reflow_eval.evaluate(trainer.ema["model"].module, cfg, shape, device, result.step)
        if cfg.stage != "rf":
            metrics |= reflow_eval.pairs_metrics(data.info)
        update_eval(cfg.out, metrics | result.eval_fields())
        print(f"done: step {result.step}; {reflow_eval.summary(metrics)}; results in {cfg.out}")
    distributed.barrier(info)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
