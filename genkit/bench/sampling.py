"""How fast does a UNet flow sample? Images/s of Euler with k steps (NFE = k).

    python -m genkit.bench.sampling                            # cifar10 UNet (35.7M), NFE 1 10 100, batch 500
    python -m genkit.bench.sampling --preset mnist --nfe 1 2 4 8 --batch-size 1000

The UNet of ``--preset`` has random weights (speed does not depend on them). On CUDA the
network runs in bf16 autocast (and, with ``--compile``, ``torch.compile``) while the solver
state stays float32 — the way the reflow recipe samples; on CPU everything is float32. Each
case solves one untimed warm-up batch (compilation, autotuning, allocator), then
``--batches`` timed batches of pre-drawn noise between CUDA synchronisations, and reports
images/s and milliseconds per network evaluation per image. Prints one JSON line per NFE,
then a table.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Preset = Literal["cifar10", "mnist"]


@dataclass(frozen=True)
class BenchConfig:
    preset: Preset = "cifar10"
    """UNet preset (genkit.nn.unet.UNET_PRESETS); also sets the image shape"""
    nfe: tuple[int, ...] = (1, 10, 100)
    """Euler steps per sample, one network evaluation each: one case per value"""
    batch_size: int = 500
    batches: int = 4
    """timed batches per case (after one untimed warm-up batch)"""
    compile: bool = True
    """torch.compile the UNet (CUDA only)"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    unet_channels: tuple[int, ...] = ()
    """override the UNet's block_out_channels, as in the reflow recipe (empty: the preset's)"""
    unet_layers: int = 0
    """override the UNet's layers_per_block (0: the preset's)"""
    image_size: int = 0
    """image height = width (0: the preset's)"""
    seed: int = 0
    """seeds the random weights and the noise"""


def unet_field(
    preset: Preset, *, seed: int, unet_channels: tuple[int, ...] = (), unet_layers: int = 0, image_size: int = 0
) -> tuple[nn.Module, tuple[int, ...]]:
    """A random-weights UNet velocity field of ``preset`` (with the reflow recipe's overrides) and its image shape.

    The shape is ``(C, S, S)``: the preset's channels, and ``image_size`` or the preset's size.
    The network is built on the CPU by :func:`genkit.recipes.reflow.build_field`, its weights
    drawn from ``seed`` (the caller's global RNG state is left as it was).
    """
    from genkit.data.toy import _check_count
    from genkit.nn.unet import UNET_PRESETS
    from genkit.recipes.reflow import ModelConfig, build_field

    _check_count("unet_layers", unet_layers, 0)
    _check_count("image_size", image_size, 0)
    unet = UNET_PRESETS[preset]
    shape = (unet["in_channels"], image_size or unet["sample_size"], image_size or unet["sample_size"])
    model = ModelConfig(unet=preset, unet_channels=tuple(unet_channels), unet_layers=unet_layers)
    with torch.random.fork_rng(devices=[]):  # build_field initialises from the global CPU RNG
        torch.manual_seed(seed)
        net = build_field(model, shape)
    return net, shape


def device_name(device: torch.device) -> str:
    """``"NVIDIA H100 80GB HBM3"`` or ``"cpu x16"`` (CPU threads): the machine a row was measured on."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(field, shape: tuple[int, ...], nfe: int, cfg: BenchConfig, device: torch.device) -> dict:
    """Time ``cfg.batches`` Euler solves of ``nfe`` steps (after one warm-up solve); one result row."""
    from genkit.sampling import ODESampler

    sampler = ODESampler(field, shape, method="euler", steps=nfe, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    noise = [torch.randn((cfg.batch_size, *shape), generator=gen, device=device) for _ in range(cfg.batches + 1)]
    counted = 0
    with torch.no_grad():
        sampler.solve(noise[0])  # warm-up
        _sync(device)
        start = time.perf_counter()
        for x_0 in noise[1:]:
            counted += sampler.solve(x_0).nfe
        _sync(device)
        seconds = time.perf_counter() - start
    images = cfg.batch_size * cfg.batches
    return {
        "nfe": nfe, "nfe_counted": counted // cfg.batches, "batch": cfg.batch_size, "batches": cfg.batches,
        "seconds": round(seconds, 4), "img_per_s": round(images / seconds, 2),
        "ms_per_nfe_img": float(f"{1000 * seconds / (images * nfe):.4g}"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    from genkit.data.toy import _check_count
    from genkit.errors import GenkitError
    from genkit.cli import resolve_device
    from genkit.precision import autocast_field
    from genkit.sampling import compile_for_sampling, compiles_for_sampling

    cfg = tyro.cli(BenchConfig, args=argv, prog="python -m genkit.bench.sampling")
    _check_count("batch_size", cfg.batch_size, 1)
    _check_count("batches", cfg.batches, 1)
    if not cfg.nfe:
        raise GenkitError("--nfe needs at least one number of steps, e.g. --nfe 1 10 100")
    for k in cfg.nfe:
        _check_count("each --nfe", k, 1)
    device = resolve_device(cfg.device)
    net, shape = unet_field(cfg.preset, seed=cfg.seed, unet_channels=cfg.unet_channels, unet_layers=cfg.unet_layers,
                            image_size=cfg.image_size)
    net = net.to(device).eval()
    params_m = round(sum(p.numel() for p in net.parameters()) / 1e6, 3)
    compile_ = compiles_for_sampling(device, cfg.compile)
    bf16 = device.type == "cuda"
    # compiled and bf16 on CUDA, float32 solver state: as the evaluation paths sample
    field = autocast_field(compile_for_sampling(net, device, enabled=cfg.compile), device, "bf16")
    rows = []
    for k in cfg.nfe:
        row = {"preset": cfg.preset, "shape": list(shape), "params_M": params_m, "device": device_name(device),
               "bf16": bf16, "compile": compile_} | run_case(field, shape, k, cfg, device)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'preset':8} {'NFE':>5} {'batch':>6} {'img/s':>11} {'ms/NFE/img':>11}  device")
    for r in rows:
        print(f"{r['preset']:8} {r['nfe']:>5} {r['batch']:>6} {r['img_per_s']:>11.1f} {r['ms_per_nfe_img']:>11.4g}  "
              f"{r['device']}{' bf16' if r['bf16'] else ''}{' compiled' if r['compile'] else ''}")
    return 0


if __name__ == "__main__":
    from genkit.cli import run_main

    sys.exit(run_main(main))
