"""How much slower is a Trainer step than a bare hand-written loop doing the same math?

    python -m genkit.bench.trainer_overhead                 # toy MLP on CPU (+ the UNet if CUDA is there)
    python -m genkit.bench.trainer_overhead --cases unet --batch-sizes 128 512

Both sides run flow matching on the straight-line path with Adam (fused on CUDA) and an
EMA update per step, on the same pre-generated batches; on CUDA both use bf16 autocast
and, with ``--compile``, ``torch.compile`` in ``--compile-mode``. Both sides train one model,
compiled once (each side has its own optimizer and EMA), so they run the same compiled code.
Each case alternates bare / Trainer ``--repeats`` times and reports the median throughput of
each, the Trainer's overhead in percent (of the medians) and its smallest and largest value
over the repeats (pairwise): a spread wider than the target means the machine's noise decides.
Prints one JSON line per case, then a table.

    python -m genkit.bench.trainer_overhead --cases unet --batch-sizes 128 --compile-mode reduce-overhead

On the H100 the default mode's UNet step at batch 128 is bound by its ~2,000 kernel launches
(host time about twice the GPU time): CUDA graphs (reduce-overhead) remove them.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from genkit.objectives.flow_matching import FlowMatching
from genkit.paths import AffinePath, LinearSchedule
from genkit.train import TrainConfig, Trainer
from genkit.train.ema import EMA
from genkit.train.optim import adam
from genkit.train.trainer import CompileMode

Case = Literal["mlp", "unet"]


@dataclass(frozen=True)
class BenchConfig:
    cases: tuple[Case, ...] = ("mlp", "unet")
    """cases to run; unet is skipped without CUDA"""
    batch_sizes: tuple[int, ...] = (128,)
    """UNet batch sizes (the MLP uses 512)"""
    steps: int = 50
    """timed steps per repeat"""
    warmup: int = 10
    """untimed steps first (compilation happens here)"""
    repeats: int = 5
    compile: bool = True
    """torch.compile the model on CUDA (both sides)"""
    compile_mode: CompileMode = "default"
    """torch.compile's mode: reduce-overhead and max-autotune replay CUDA graphs (see TrainConfig)"""
    device: str = "auto"


class CycleStream:
    """Cycles through pre-generated batches (no data cost on either side)."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches, self.i = batches, 0

    def __next__(self) -> torch.Tensor:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self) -> dict[str, int]:
        return {"i": self.i}

    def load_state_dict(self, state) -> None:
        self.i = int(state["i"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model: nn.Module, batches: list[torch.Tensor], steps: int, warmup: int, bf16: bool) -> float:
    """Seconds for `steps` hand-written steps (after `warmup`): the reference."""
    device = batches[0].device
    opt = adam(model.parameters(), lr=1e-4)
    ema = EMA(model, decay=0.999)
    gen = torch.Generator(device=device).manual_seed(0)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # as the Trainer does (a no-op without CUDA graphs)
        x_1 = batches[i % len(batches)]
        x_0 = torch.randn(x_1.shape, generator=gen, device=device)
        t = torch.rand(x_1.shape[0], generator=gen, device=device)
        tb = t.view(-1, *([1] * (x_1.dim() - 1)))
        with autocast():
            v = model(tb * x_1 + (1 - tb) * x_0, t)
            loss = ((v.float() - (x_1 - x_0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model, i)
    _sync(device)
    return time.perf_counter() - t0


def trainer_loop(model: nn.Module, batches: list[torch.Tensor], steps: int, warmup: int, bf16: bool) -> float:
    """Seconds for `steps` Trainer steps (after `warmup`), timed by a callback."""
    device = batches[0].device
    opt = adam(model.parameters(), lr=1e-4)
    marks: dict[str, float] = {}

    def clock(trainer: Trainer) -> None:
        if trainer.step in (warmup, warmup + steps):
            _sync(device)
            marks[str(trainer.step)] = time.perf_counter()

    cfg = TrainConfig(steps=warmup + steps, batch_size=batches[0].shape[0], precision="bf16" if bf16 else "fp32",
                      log_every=10**9, sample_every=0, checkpoint_every=0, tensorboard=False, progress=False)
    Trainer({"model": model}, {"model": opt}, FlowMatching(AffinePath(LinearSchedule())), CycleStream(batches), cfg,
            run_dir=None, recipe="bench", run_config={}, callbacks=[clock]).fit()
    return marks[str(warmup + steps)] - marks[str(warmup)]


def build(case: Case, device: torch.device, compile_: bool, mode: CompileMode = "default") -> tuple[nn.Module, tuple[int, ...]]:
    if case == "mlp":
        from genkit.nn.mlp import VelocityMLP

        model, shape = VelocityMLP(2, hidden=256, depth=3), (2,)
    else:
        from genkit.nn.unet import ddpm_cifar10_unet

        model, shape = ddpm_cifar10_unet(), (3, 32, 32)
    model = model.to(device)
    if compile_:
        model.compile(mode=None if mode == "default" else mode)
    return model, shape


def run_case(case: Case, batch: int, cfg: BenchConfig, device: torch.device) -> dict:
    bf16 = device.type == "cuda"
    compile_ = cfg.compile and device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    # one model, compiled once, trained in turn by both sides (each with its own optimizer and EMA):
    # both run the same compiled code, and the compilation is paid once
    model, shape = build(case, device, compile_, cfg.compile_mode)
    batches = [torch.randn(batch, *shape, generator=gen).to(device) for _ in range(4)]
    bare, ours = [], []
    for _ in range(cfg.repeats):
        bare.append(bare_loop(model, batches, cfg.steps, cfg.warmup, bf16))
        ours.append(trainer_loop(model, batches, cfg.steps, cfg.warmup, bf16))
    n_params = sum(p.numel() for p in model.parameters())
    bare_s, ours_s = statistics.median(bare), statistics.median(ours)
    ratios = sorted(100 * (o / b - 1) for b, o in zip(bare, ours, strict=True))  # repeat by repeat
    return {
        "case": case, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "params_M": round(n_params / 1e6, 2), "batch": batch, "bf16": bf16, "compile": compile_,
        "bare_img_per_s": round(batch * cfg.steps / bare_s, 1), "trainer_img_per_s": round(batch * cfg.steps / ours_s, 1),
        "overhead_pct": round(100 * (ours_s / bare_s - 1), 2),
        "overhead_pct_min": round(ratios[0], 2), "overhead_pct_max": round(ratios[-1], 2),
        "compile_mode": cfg.compile_mode if compile_ else None, "steps": cfg.steps, "repeats": cfg.repeats,
    }


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(BenchConfig, args=argv, prog="python -m genkit.bench.trainer_overhead")
    from genkit.cli import resolve_device

    device = resolve_device(cfg.device)
    rows = []
    for case in cfg.cases:
        if case == "unet" and device.type != "cuda":
            print("unet: skipped (needs CUDA)", file=sys.stderr)
            continue
        for batch in (512,) if case == "mlp" else cfg.batch_sizes:
            row = run_case(case, batch, cfg, device)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'case':6} {'batch':>5} {'bare img/s':>11} {'trainer img/s':>14} {'overhead':>9} {'per repeat':>17}  device")
    for r in rows:
        spread = f"{r['overhead_pct_min']:.1f}..{r['overhead_pct_max']:.1f}%"
        print(f"{r['case']:6} {r['batch']:>5} {r['bare_img_per_s']:>11.1f} {r['trainer_img_per_s']:>14.1f} "
              f"{r['overhead_pct']:>8.2f}% {spread:>17}  {r['device']}")
    return 0


if __name__ == "__main__":
    from genkit.cli import run_main

    sys.exit(run_main(main))
