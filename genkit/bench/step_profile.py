"""Where does a training step's time go? The host and GPU time of bare and Trainer steps.

    python -m genkit.bench.step_profile                                  # UNet, batch 128 (CUDA), else MLP
    python -m genkit.bench.step_profile --batch-size 128 --compile-mode reduce-overhead

One model (``genkit.bench.trainer_overhead.build``: the DDPM CIFAR-10 UNet on CUDA, compiled; the toy
MLP on CPU) is trained in turn by the bare loop and the Trainer of ``genkit.bench.trainer_overhead``.
After warm-up (compilation) it prints the wall milliseconds per step of each side for ``--rounds``
rounds, torch.compile's graph and graph-break counters, then for ``--profiled-steps`` steps of each
side under ``torch.profiler``: the busiest operations by host (self CPU) time, the GPU kernel time per
step and the kernel launches per step. A step whose wall time is well above its GPU time is bound by
the host (Python and kernel launches): the case for CUDA graphs (``--compile-mode reduce-overhead``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from genkit.bench.trainer_overhead import bare_loop, build, trainer_loop
from genkit.train.trainer import CompileMode

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC", "cudaGraphLaunch")


@dataclass(frozen=True)
class ProfileConfig:
    batch_size: int = 128
    """batch of the UNet (the MLP on CPU uses 64)"""
    rounds: int = 2
    """timed rounds of each side (wall time, no profiler)"""
    steps: int = 30
    """steps per timed round"""
    profiled_steps: int = 8
    """steps of each side under the profiler (after 2 untimed ones)"""
    compile_mode: CompileMode = "default"
    """torch.compile's mode on CUDA"""
    rows: int = 22
    """rows of each profiler table"""


def main(argv: Sequence[str] | None = None) -> int:
    import tyro
    from torch.profiler import ProfilerActivity, profile

    cfg = tyro.cli(ProfileConfig, args=argv, prog="python -m genkit.bench.step_profile")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch = cfg.batch_size if cuda else 64
    torch.manual_seed(0)
    model, shape = build("unet" if cuda else "mlp", device, cuda, cfg.compile_mode)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(batch, *shape, generator=gen).to(device) for _ in range(4)]
    bare_loop(model, batches, 2, 3, cuda)  # compiles
    trainer_loop(model, batches, 2, 3, cuda)
    for _ in range(cfg.rounds):
        b = bare_loop(model, batches, cfg.steps, 2, cuda)
        t = trainer_loop(model, batches, cfg.steps, 2, cuda)
        print(f"ms/step: bare {1000 * b / cfg.steps:.2f}, Trainer {1000 * t / cfg.steps:.2f}", flush=True)
    from torch._dynamo.utils import counters

    print("torch.compile:", {k: dict(v) for k, v in counters.items() if k in ("graph_break", "stats", "frames")})
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n = cfg.profiled_steps + 2  # the loops' 2 untimed steps are profiled too
    for name, loop in (("bare", bare_loop), ("Trainer", trainer_loop)):
        with profile(activities=activities) as prof:
            loop(model, batches, cfg.profiled_steps, 2, cuda)
        events = prof.key_averages()
        print(f"\n== {name}: {n} steps, by host time\n"
              + events.table(sort_by="self_cpu_time_total", row_limit=cfg.rows, max_name_column_width=60))
        host_ms = sum(e.self_cpu_time_total for e in events) / 1000 / n
        host = f"{name}: host {host_ms:.2f} ms/step (under the profiler)"
        if not cuda:
            print(f"{host} (CPU: no GPU kernels or launches)", flush=True)
            continue
        gpu_ms = sum(e.self_device_time_total for e in events) / 1000 / n
        launches = sum(e.count for e in events if e.key in LAUNCHES) / n
        print(f"{host}, GPU kernels {gpu_ms:.2f} ms/step, {launches:.0f} launches/step", flush=True)
    return 0


if __name__ == "__main__":
    from genkit.cli import run_main

    sys.exit(run_main(main))
