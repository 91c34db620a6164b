"""What the reflow recipe measures and draws: teacher pairs, snapshots, final metrics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from genkit.data.toy import TOY_DATASETS, sample_toy
from genkit.eval.distances import energy_distance
from genkit.eval.straightness import straightness
from genkit.recipes.reflow import LoadedRun, ReflowConfig, main_sampler_steps, make_sampler, teacher_identity
from genkit.precision import autocast_field
from genkit.sampling import compile_for_sampling
from genkit.seeding import derive_seed
from genkit.train import distributed
from genkit.train.distributed import DistInfo

GRID = 64  # images per sample grid


def _noise(n: int, shape: tuple[int, ...], seed: int, purpose: str, device: torch.device) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(derive_seed(seed, purpose))
    return torch.randn((n, *shape), generator=gen, device=device)


def make_pairs(teacher: LoadedRun, cfg: ReflowConfig, out: Path, device: torch.device,
               info: DistInfo = DistInfo()):
    """Simulate (or finish simulating) the teacher's pairs into ``out``; returns ``PairsInfo``.

    Called on every rank: rank ``r`` of ``info.world_size`` simulates the shards ``k`` with
    ``k % world_size == r``. The teacher runs compiled on CUDA unless ``--pairs.no-compile``
    (see :func:`genkit.sampling.compile_for_sampling`), in bf16 unless the precision is fp32.
    """
    from genkit.pairs import generate_pairs

    p = cfg.pairs
    teacher_net = compile_for_sampling(teacher.field, device, enabled=p.compile)
    return generate_pairs(
        autocast_field(teacher_net, device, cfg.train.precision), out, n=p.n, shape=teacher.shape, seed=cfg.seed,
        method=p.method, steps=p.steps, batch_size=p.batch_size, shard_size=p.shard_size, device=device,
        dtype=getattr(torch, p.dtype), teacher=teacher_identity(cfg.teacher, teacher.step),
        progress=cfg.train.progress and info.is_main, rank=info.rank, world_size=info.world_size,
        barrier=lambda: distributed.barrier(info),
    )


def pairs_metrics(info) -> dict:
    """What eval.json records about a stage's teacher pairs (a ``genkit.pairs.PairsInfo``): their number,
    the teacher's NFE in total and per pair, the solver, and the wall time of every process that made them."""
    return {"pairs_n": info.n, "pairs_nfe": info.nfe, "pairs_nfe_per_pair": info.nfe_per_pair,
            "pairs_method": info.method, "pairs_steps": info.steps, "pairs_seconds": info.seconds}


def snapshot_fn(cfg: ReflowConfig, shape: tuple[int, ...], device: torch.device):
    """Periodic picture of the EMA model's samples: a scatter plot (2-D) or an image grid."""
    from genkit.plots import save_image_grid, save_scatter

    method, steps = main_sampler_steps(cfg)

    def snapshot(ema: Mapping[str, nn.Module], step: int) -> None:
        net = autocast_field(ema["model"], device, cfg.train.precision)
        n = cfg.sample.n_snapshot if len(shape) == 1 else min(GRID, cfg.sample.n_snapshot)
        x_0 = _noise(n, shape, cfg.seed, "snapshot", device)
        with torch.no_grad():
            x = make_sampler(net, shape, method, steps, device).solve(x_0).x.cpu()
        path = cfg.out / "samples" / f"step_{step:08d}.png"
        if len(shape) == 1:
            save_scatter(x, path, title=f"{cfg.data.dataset}, step {step}")
        else:
            save_image_grid(x.clamp(-1, 1), path)

    return snapshot


def evaluate(net: nn.Module, cfg: ReflowConfig, shape: tuple[int, ...], device: torch.device, step: int) -> dict:
    """Final metrics of the EMA flow (a flat dict for eval.json) and the final pictures."""
    field = autocast_field(net, device, cfg.train.precision)
    method, steps = main_sampler_steps(cfg)
    samples_dir = cfg.out / "samples"
    s = cfg.sample
    x_0 = _noise(s.n_eval if len(shape) == 1 else GRID, shape, cfg.seed, "eval", device)
    with torch.no_grad():
        main = make_sampler(field, shape, method, steps, device).solve(x_0, keep=min(steps, 100) + 1)
        by_nfe = {k: make_sampler(field, shape, "euler", k, device).solve(x_0).x.float().cpu() for k in s.nfe}
    st = straightness(field, _noise(s.n_straightness, shape, cfg.seed, "straightness", device), steps=s.steps)
    result = {"step": step, "stage": cfg.stage, "solver": method, "nfe": main.nfe, "weights": "ema",
              "seed": cfg.seed, "straightness": st.value, "straightness_nfe": st.nfe, "transport_cost": st.cost}
    if len(shape) == 1:
        result |= _toy_metrics(main, by_nfe, cfg, samples_dir)
    else:
        from genkit.nn.unet import export_diffusers
        from genkit.plots import save_image_grid

        for k, x in by_nfe.items():
            save_image_grid(x.clamp(-1, 1), samples_dir / f"nfe_{k:03d}.png")
        save_image_grid(main.x.float().cpu().clamp(-1, 1), samples_dir / "final.png")
        export_diffusers(net, cfg.out / "diffusers")  # loads with UNet2DModel.from_pretrained
    return result


def _toy_metrics(main, by_nfe: Mapping[int, torch.Tensor], cfg: ReflowConfig, samples_dir: Path) -> dict:
    """Energy distances of 2-D samples to held-out data, with the data-vs-data floor; plots."""
    from genkit.plots import save_scatter, save_trajectories

    assert cfg.data.dataset in TOY_DATASETS
    n = cfg.sample.n_eval
    held_out = sample_toy(cfg.data.dataset, n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "heldout")))
    other = sample_toy(cfg.data.dataset, n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "heldout2")))
    samples = main.x.float().cpu()
    out = {"n": n, "energy_distance": float(energy_distance(samples, held_out)),
           "energy_distance_data_floor": float(energy_distance(other, held_out))}
    for k, x in by_nfe.items():
        out[f"energy_distance_euler{k}"] = float(energy_distance(x, held_out))
    title = f"{cfg.data.dataset}: {cfg.stage}, NFE {main.nfe}"
    save_scatter(samples, samples_dir / "final.png", reference=held_out, title=title)
    save_trajectories(main.xs.float().cpu(), samples_dir / "trajectories.png",
                      title=f"{cfg.data.dataset}: trajectories t: 0 -> 1")
    return out


def summary(metrics: Mapping[str, object]) -> str:
    parts = [f"straightness {metrics['straightness']:.4g}"]
    if "energy_distance" in metrics:
        parts.append(f"energy distance {metrics['energy_distance']:.5f} (data floor {metrics['energy_distance_data_floor']:.5f})")
    if "pairs_n" in metrics:
        parts.append(f"{metrics['pairs_n']} teacher pairs at {metrics['pairs_nfe_per_pair']:g} NFE each "
                     f"({metrics['pairs_seconds']:.1f} s)")
    return ", ".join(parts)
