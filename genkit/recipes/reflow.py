"""Rectified flow (flow matching on the straight-line path) through the shared Trainer.

    python -m genkit.recipes.reflow --preset toy                  # 2-D data, CPU, < 3 minutes
    python -m genkit.recipes.reflow --preset toy --out runs/x --train.steps 500
    torchrun --nproc_per_node=2 -m genkit.recipes.reflow --preset toy   # data parallel, same command

Writes into ``--out``: config.json, metrics.jsonl, checkpoints/, samples/ (scatter and
trajectory plots), eval.json (energy distance of EMA samples to held-out data, next to
the same distance between two independent data samples: the floor). Running the same
command again with the same ``--out`` resumes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from genkit.cli import parse_config, print_config, run_main, to_jsonable
from genkit.data.toy import TOY_DATASETS, ToyStream, sample_toy
from genkit.errors import GenkitError
from genkit.eval.distances import energy_distance
from genkit.objectives.flow_matching import FlowMatching
from genkit.paths import AffinePath, LinearSchedule
from genkit.sampling import ODESampler
from genkit.seeding import derive_seed
from genkit.solvers import Method
from genkit.train import TrainConfig, Trainer
from genkit.train import distributed
from genkit.train.checkpoint import write_json_atomic
from genkit.train.logging import update_eval

RECIPE = "reflow"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "8gaussians"
    """toy data set: 8gaussians, moons, checkerboard, spirals"""


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 256
    depth: int = 3


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


@dataclass(frozen=True)
class SampleConfig:
    method: Method = "euler"
    steps: int = 100
    """solver steps (fixed-step methods)"""
    n_eval: int = 2000
    """samples for the final metric (and as many held-out data points)"""
    n_snapshot: int = 1000


@dataclass(frozen=True)
class ReflowConfig:
    """Rectified flow: N(0, I) -> data along x_t = t x_1 + (1 - t) x_0."""

    preset: str | None = None
    """preset from recipes/reflow/<name>.toml (applied before other flags)"""
    out: Path = Path("runs/reflow")
    """run folder; running again with the same folder resumes"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    dry_run: bool = False
    """print the resolved config and exit"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=4000, batch_size=512, log_every=100,
                                                                    sample_every=1000, checkpoint_every=1000))
    sample: SampleConfig = field(default_factory=SampleConfig)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = f"cuda:{distributed.env_local_rank()}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GenkitError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenkitError(f"device '{name}' requested but CUDA is not available: use --device cpu")
    return device


def build_field(cfg: ReflowConfig) -> nn.Module:
    from genkit.nn.mlp import VelocityMLP

    return VelocityMLP(2, hidden=cfg.model.hidden, depth=cfg.model.depth)


def make_sampler(field: nn.Module, cfg: ReflowConfig, device: torch.device) -> ODESampler:
    return ODESampler(field, (2,), method=cfg.sample.method, steps=cfg.sample.steps, device=device)


def snapshot_fn(cfg: ReflowConfig, device: torch.device):
    from genkit.plots import save_scatter

    samples_dir = cfg.out / "samples"

    def snapshot(ema: Mapping[str, nn.Module], step: int) -> None:
        gen = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "snapshot"))
        x = make_sampler(ema["model"], cfg, device).sample(cfg.sample.n_snapshot, generator=gen)
        samples_dir.mkdir(parents=True, exist_ok=True)
        save_scatter(x.cpu(), samples_dir / f"step_{step:08d}.png", title=f"{cfg.data.dataset}, step {step}")

    return snapshot


def evaluate(field: nn.Module, cfg: ReflowConfig, device: torch.device, step: int) -> dict:
    """Energy distance of EMA samples to held-out data, with the data-vs-data floor; plots."""
    from genkit.plots import save_scatter, save_trajectories

    n = cfg.sample.n_eval
    held_out = sample_toy(cfg.data.dataset, n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "heldout")))
    other = sample_toy(cfg.data.dataset, n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "heldout2")))
    sampler = make_sampler(field, cfg, device)
    x_0 = torch.randn(n, 2, generator=torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "eval")), device=device)
    with torch.no_grad():
        traj = sampler.solve(x_0, keep=cfg.sample.steps + 1 if cfg.sample.method != "dopri5" else 50)
    samples = traj.x.float().cpu()
    result = {
        "step": step,
        "energy_distance": float(energy_distance(samples, held_out)),
        "energy_distance_data_floor": float(energy_distance(other, held_out)),
        "n": n,
        "solver": cfg.sample.method,
        "nfe": traj.nfe,
        "weights": "ema",
        "seed": cfg.seed,
    }
    samples_dir = cfg.out / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    title = f"{cfg.data.dataset}: rectified flow, {cfg.sample.method} NFE {traj.nfe}"
    save_scatter(samples, samples_dir / "final.png", reference=held_out, title=title)
    save_trajectories(traj.xs.float().cpu(), samples_dir / "trajectories.png", title=f"{cfg.data.dataset}: trajectories t: 0 -> 1")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(ReflowConfig, RECIPE, argv, description=__doc__.split("\n\n")[0])
    if cfg.data.dataset not in TOY_DATASETS:
        raise GenkitError(f"unknown dataset '{cfg.data.dataset}' for this recipe (known: {', '.join(sorted(TOY_DATASETS))})")
    if cfg.dry_run:
        print_config(cfg)
        return 0
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    info = distributed.init(device)
    try:
        torch.manual_seed(cfg.seed)  # the one global seed: model initialisation
        field = build_field(cfg).to(device)
        opt = torch.optim.Adam(field.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        data = ToyStream(cfg.data.dataset, cfg.train.micro_batch_size(info.world_size), seed=cfg.seed, rank=info.rank, device=device)
        if info.is_main:
            cfg.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cfg.out / "config.json", {"recipe": RECIPE, **to_jsonable(cfg)})
        trainer = Trainer(
            {"model": field}, {"model": opt}, FlowMatching(AffinePath(LinearSchedule())), data, cfg.train,
            run_dir=cfg.out, recipe=RECIPE, run_config=to_jsonable(dataclasses.replace(cfg, dry_run=False)),
            seed=cfg.seed, dist=info, snapshot=snapshot_fn(cfg, device),
        )
        result = trainer.fit()
        if result.interrupted:
            if info.is_main:
                print(f"stopped at step {result.step}; checkpoint {result.checkpoint}. Run the same command to resume.",
                      file=sys.stderr)
            return 130
        if info.is_main:
            metrics = evaluate(trainer.ema["model"].module, cfg, device, result.step)
            update_eval(cfg.out, metrics)
            print(f"done: step {result.step}, energy distance {metrics['energy_distance']:.5f} "
                  f"(data floor {metrics['energy_distance_data_floor']:.5f}); results in {cfg.out}")
        distributed.barrier(info)
        return 0
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(run_main(main))
