"""Does generating reflow pairs keep memory flat as the number of pairs grows?

    python -m genkit.bench.pairs_memory                          # cifar10 UNet, 10k and 100k pairs, Euler 4 steps
    python -m genkit.bench.pairs_memory --pairs 10000 100000 --steps 4 --method rk4

For each ``--pairs`` value a fresh Python process (``--child``) builds a random-weights UNet
teacher of ``--preset`` (on CUDA compiled and in bf16 autocast, as the reflow recipe runs it;
``--no-compile``: eager), writes the pairs with :func:`genkit.pairs.generate_pairs` into a
temporary folder (deleted afterwards) and reports its peak host memory, peak GPU memory
(``torch.cuda.max_memory_allocated``, 0 on the CPU), the wall time and pairs/s (a compiled
teacher is compiled before the timing starts: ``compile_seconds``). A fresh process per size
keeps the peaks apart.

Peak host memory is the process's high-water resident set: ``VmHWM`` of
``/proc/self/status`` on Linux, else ``ru_maxrss``. (``ru_maxrss`` of a process started by
another one also counts the parent's peak at the time of the fork/exec, so it would report
the parent's memory whenever that is larger.) It includes what importing torch and building
(and compiling) the teacher took, reported alone as ``host_setup_MiB``. Prints one JSON line
per size, then a table and the growth of both peaks from the smallest to the largest size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from genkit.bench.sampling import Preset
from genkit.pairs import StoreDtype
from genkit.solvers import Method

PROG = "genkit.bench.pairs_memory"


@dataclass(frozen=True)
class BenchConfig:
    preset: Preset = "cifar10"
    """UNet preset of the random-weights teacher; also sets the image shape"""
    pairs: tuple[int, ...] = (10_000, 100_000)
    """numbers of pairs, one fresh process each"""
    batch_size: int = 1000
    shard_size: int = 10_000
    steps: int = 4
    """solver steps (memory does not depend on them; time does)"""
    method: Method = "euler"
    dtype: StoreDtype = "float32"
    """dtype of the stored pairs"""
    compile: bool = True
    """torch.compile the teacher, as the reflow recipe does (CUDA only)"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    unet_channels: tuple[int, ...] = ()
    """override the UNet's block_out_channels, as in the reflow recipe (empty: the preset's)"""
    unet_layers: int = 0
    """override the UNet's layers_per_block (0: the preset's)"""
    image_size: int = 0
    """image height = width (0: the preset's)"""
    seed: int = 0
    tmp_root: Path | None = None
    """where the temporary pairs folders go (default: the system's temporary folder)"""
    child: bool = False
    """internal: measure the single --pairs value in this process and print its JSON line"""


def host_peak_mib() -> float:
    """This process's peak resident memory in MiB (``VmHWM`` on Linux, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def warm_up(teacher, shape: tuple[int, ...], batch_size: int, device: torch.device) -> float:
    """Seconds of one untimed Euler step on a full batch: compiles the teacher before the timing starts."""
    from genkit.sampling import ODESampler

    start = time.perf_counter()
    with torch.no_grad():  # the same call as generate_pairs makes: no recompilation later
        ODESampler(teacher, shape, method="euler", steps=1, device=device).solve(
            torch.zeros((batch_size, *shape), device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(cfg: BenchConfig, n: int, folder: Path) -> dict:
    """Generate ``n`` pairs into ``folder`` with a random-weights UNet teacher; one result row.

    Run it in a fresh process: the host peak is the process's whole life. A compiled teacher is
    compiled first (``compile_seconds``), outside the timed generation, so that ``seconds`` and
    ``pairs_per_s`` compare with an eager teacher's; a recipe pays the compilation once per run.
    """
    from genkit.bench.sampling import device_name, unet_field
    from genkit.pairs import generate_pairs
    from genkit.cli import resolve_device
    from genkit.precision import autocast_field
    from genkit.sampling import compile_for_sampling, compiles_for_sampling

    device = resolve_device(cfg.device)
    net, shape = unet_field(cfg.preset, seed=cfg.seed, unet_channels=cfg.unet_channels, unet_layers=cfg.unet_layers,
                            image_size=cfg.image_size)
    net = net.to(device).eval()
    teacher = autocast_field(compile_for_sampling(net, device, enabled=cfg.compile), device, "bf16")
    compiled = compiles_for_sampling(device, cfg.compile)
    first_batch = min(cfg.batch_size, cfg.shard_size, n)  # the shape generate_pairs starts with
    compile_seconds = warm_up(teacher, shape, first_batch, device) if compiled else 0.0
    setup = host_peak_mib()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    info = generate_pairs(
        teacher, folder, n=n, shape=shape, seed=cfg.seed, method=cfg.method,
        steps=cfg.steps, batch_size=cfg.batch_size, shard_size=cfg.shard_size, device=device, dtype=cfg.dtype,
        teacher=f"random-weights {cfg.preset} UNet (genkit.bench.pairs_memory)", progress=False,
    )
    seconds = time.perf_counter() - start  # generate_pairs copies every batch to the host: no sync needed
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {
        "pairs": n, "preset": cfg.preset, "shape": list(shape), "device": device_name(device),
        "bf16": device.type == "cuda", "compile": compiled, "compile_seconds": round(compile_seconds, 2),
        "method": cfg.method, "steps": cfg.steps, "nfe": info.nfe,
        "batch": cfg.batch_size, "shard_size": cfg.shard_size, "shards": info.num_shards, "dtype": cfg.dtype,
        "disk_MiB": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 1),
        "host_setup_MiB": round(setup, 1), "host_peak_MiB": round(host_peak_mib(), 1),
        "gpu_peak_MiB": round(gpu, 1), "seconds": round(seconds, 3), "pairs_per_s": round(n / seconds, 1),
    }


def child_argv(cfg: BenchConfig, n: int, tmp_root: str) -> list[str]:
    """Command-line flags that make a ``--child`` process measure ``n`` pairs with ``cfg``'s settings."""
    argv = ["--child", "--pairs", str(n), "--tmp-root", tmp_root, "--preset", cfg.preset,
            "--batch-size", str(cfg.batch_size), "--shard-size", str(cfg.shard_size), "--steps", str(cfg.steps),
            "--method", cfg.method, "--dtype", cfg.dtype, "--compile" if cfg.compile else "--no-compile",
            "--device", cfg.device,
            "--unet-layers", str(cfg.unet_layers), "--image-size", str(cfg.image_size), "--seed", str(cfg.seed)]
    if cfg.unet_channels:  # empty means the preset's, which is also the child's default
        argv += ["--unet-channels", *map(str, cfg.unet_channels)]
    return argv


def run_child(cfg: BenchConfig, n: int) -> dict:
    """Measure ``n`` pairs in a fresh ``python -m genkit.bench.pairs_memory --child`` process."""
    from genkit.errors import GenkitError

    with tempfile.TemporaryDirectory(prefix="genkit-pairs-bench-", dir=cfg.tmp_root) as tmp:
        proc = subprocess.run([sys.executable, "-m", PROG, *child_argv(cfg, n, tmp)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr)
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise GenkitError(f"the child process for {n} pairs failed (exit {proc.returncode}): {last}")
    return json.loads(lines[-1])


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    from genkit.data.toy import _check_count
    from genkit.errors import GenkitError

    cfg = tyro.cli(BenchConfig, args=argv, prog=f"python -m {PROG}")
    if not cfg.pairs:
        raise GenkitError("--pairs needs at least one number of pairs, e.g. --pairs 10000 100000")
    for n in cfg.pairs:
        _check_count("each --pairs", n, 1)
    if cfg.child:
        if len(cfg.pairs) != 1:
            raise GenkitError(f"--child measures one number of pairs, got --pairs {' '.join(map(str, cfg.pairs))}")
        with tempfile.TemporaryDirectory(prefix="pairs-", dir=cfg.tmp_root) as tmp:
            row = measure(cfg, cfg.pairs[0], Path(tmp) / "pairs")
        print(json.dumps(row), flush=True)
        return 0
    rows = []
    for n in cfg.pairs:
        row = run_child(cfg, n)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'pairs':>8} {'shards':>6} {'host peak MiB':>14} {'(setup)':>8} {'GPU peak MiB':>13} {'seconds':>9} "
          f"{'pairs/s':>9}  device")
    for r in rows:
        print(f"{r['pairs']:>8} {r['shards']:>6} {r['host_peak_MiB']:>14.1f} {r['host_setup_MiB']:>8.1f} "
              f"{r['gpu_peak_MiB']:>13.1f} {r['seconds']:>9.2f} {r['pairs_per_s']:>9.1f}  {r['device']}")
    if len(rows) > 1:
        lo, hi = min(rows, key=lambda r: r["pairs"]), max(rows, key=lambda r: r["pairs"])
        gpu = f"x{hi['gpu_peak_MiB'] / lo['gpu_peak_MiB']:.3f}" if lo["gpu_peak_MiB"] else "n/a (CPU)"
        print(f"\n{hi['pairs'] / lo['pairs']:g}x the pairs: host peak x{hi['host_peak_MiB'] / lo['host_peak_MiB']:.3f} "
              f"({hi['host_peak_MiB'] - lo['host_peak_MiB']:+.1f} MiB), GPU peak {gpu}")
    return 0


if __name__ == "__main__":
    from genkit.cli import run_main

    sys.exit(run_main(main))
