"""The GPU benchmarks run end to end on the CPU with a tiny UNet and report what they promise."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from genkit.errors import GenkitError

# A 3-level UNet with 8 channels (26k parameters) on cifar10-shaped images: cheap on the CPU.
TINY = ["--preset", "cifar10", "--unet-channels", "8", "8", "8", "--unet-layers", "1", "--device", "cpu"]


def json_rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_sampling_reports_throughput_per_nfe(capsys):
    from genkit.bench import sampling

    argv = [*TINY, "--image-size", "16", "--nfe", "1", "3", "--batch-size", "4", "--batches", "2", "--no-compile"]
    assert sampling.main(argv) == 0
    out = capsys.readouterr().out
    rows = json_rows(out)
    assert [r["nfe"] for r in rows] == [1, 3]
    for r in rows:
        assert r["nfe_counted"] == r["nfe"]  # Euler with k steps evaluates the field k times
        assert r["shape"] == [3, 16, 16] and r["batch"] == 4 and r["batches"] == 2
        assert r["bf16"] is False and r["compile"] is False and r["device"].startswith("cpu")
        assert r["img_per_s"] > 0 and r["seconds"] > 0
        # ms per evaluation per image and images/s describe the same time: their product is 1000 / NFE
        assert r["ms_per_nfe_img"] * r["img_per_s"] * r["nfe"] == pytest.approx(1000, rel=1e-2)
    assert "ms/NFE/img" in out  # the table follows the JSON lines


def test_sampling_rejects_zero_nfe():
    from genkit.bench import sampling

    with pytest.raises(GenkitError, match="nfe"):
        sampling.main([*TINY, "--nfe", "0"])


def test_unet_field_is_seeded_and_leaves_the_global_rng_alone():
    import torch

    from genkit.bench.sampling import unet_field

    state = torch.random.get_rng_state()
    (a, shape), (b, _), (c, _) = (unet_field("mnist", seed=s, unet_channels=(8, 8), unet_layers=1) for s in (3, 3, 4))
    assert shape == (1, 28, 28)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_pairs_memory_child_gets_every_setting(tmp_path):
    import tyro

    from genkit.bench.pairs_memory import BenchConfig, child_argv

    cfg = BenchConfig(preset="mnist", pairs=(5, 50), batch_size=7, shard_size=9, steps=3, method="rk4",
                      dtype="float16", compile=False, device="cpu", unet_channels=(8, 16), unet_layers=1, image_size=16,
                      seed=4)
    parsed = tyro.cli(BenchConfig, args=child_argv(cfg, 50, str(tmp_path)))
    assert parsed == dataclasses.replace(cfg, pairs=(50,), child=True, tmp_root=Path(tmp_path))
    assert tyro.cli(BenchConfig, args=child_argv(BenchConfig(), 50, str(tmp_path))).compile  # the default, passed on


def _measure_tiny_pairs(tmp_path, **settings) -> dict:
    from genkit.bench.pairs_memory import BenchConfig, measure

    cfg = BenchConfig(pairs=(6,), batch_size=3, shard_size=6, steps=1, device="cpu", unet_channels=(8, 8, 8),
                      unet_layers=1, image_size=16, **settings)
    return measure(cfg, 6, tmp_path / "pairs")


def test_pairs_memory_never_compiles_on_the_cpu(tmp_path, compile_forbidden):
    row = _measure_tiny_pairs(tmp_path)  # --compile is the default
    assert row["compile"] is False and row["compile_seconds"] == 0 and row["nfe"] == 2


@pytest.mark.parametrize("compile_", [True, False])
def test_pairs_memory_compiles_the_teacher_once_on_cuda(tmp_path, compile_spy, compile_):
    row = _measure_tiny_pairs(tmp_path, compile=compile_)
    assert row["compile"] is compile_ and len(compile_spy) == int(compile_)
    assert (row["compile_seconds"] > 0) is compile_  # the warm-up before the timing


@pytest.mark.slow
def test_pairs_memory_host_peak_stays_flat(capsys, tmp_path, monkeypatch):
    from genkit.bench import pairs_memory

    # One thread per child process: on a small shared CPU this is faster than oversubscribed
    # threads, and the peak of a run varies less (a few MiB between identical runs).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    small, large, shard, batch = 100, 1500, 50, 25
    argv = [*TINY, "--pairs", str(small), str(large), "--shard-size", str(shard), "--batch-size", str(batch),
            "--steps", "1", "--tmp-root", str(tmp_path)]
    assert pairs_memory.main(argv) == 0
    out = capsys.readouterr().out
    rows = json_rows(out)
    pair_mib = 2 * 3 * 32 * 32 * 4 / 2**20  # x_0 and x_1 in float32
    assert [r["pairs"] for r in rows] == [small, large]
    for r in rows:
        n = r["pairs"]
        assert r["shards"] == math.ceil(n / shard) and r["nfe"] == n // batch  # Euler, 1 step per batch
        assert r["disk_MiB"] == pytest.approx(n * pair_mib, abs=0.06)  # rounded to 0.1 MiB; headers are bytes
        assert r["gpu_peak_MiB"] == 0.0 and r["pairs_per_s"] > 0
        assert r["host_peak_MiB"] >= r["host_setup_MiB"] > 0
    assert list(tmp_path.iterdir()) == []  # the temporary pairs folders are gone
    # Holding every pair on the host would lift the large run's peak by at least the extra pairs'
    # bytes (32.8 MiB); streaming holds one shard (1.2 MiB), so the peaks differ only by allocator
    # noise (under 5 MiB between identical runs). Half the extra bytes separates the two.
    extra = (large - small) * pair_mib
    growth = rows[1]["host_peak_MiB"] - rows[0]["host_peak_MiB"]
    assert growth < extra / 2, f"host peak grew {growth:.1f} MiB from {small} to {large} pairs: {out}"
    assert "host peak" in out


def test_step_profile_times_and_profiles_both_sides(capsys):
    from genkit.bench import step_profile

    assert step_profile.main(["--rounds", "1", "--steps", "3", "--profiled-steps", "2", "--rows", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("ms/step: bare") == 1 and "torch.compile:" in out
    assert "\nbare: host" in out and "\nTrainer: host" in out
    assert out.count("(CPU: no GPU kernels or launches)") == 2 and "nan" not in out  # on a GPU: kernels, launches


def test_trainer_overhead_reports_the_spread_over_repeats(capsys):
    from genkit.bench import trainer_overhead

    argv = ["--cases", "mlp", "--steps", "5", "--warmup", "1", "--repeats", "3", "--compile-mode", "reduce-overhead"]
    assert trainer_overhead.main(argv) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["overhead_pct_min"] <= row["overhead_pct"] <= row["overhead_pct_max"]
    assert row["repeats"] == 3 and row["compile_mode"] is None  # nothing is compiled on the CPU
