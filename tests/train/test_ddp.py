"""Data parallel on CPU: torchrun --nproc_per_node=2 (gloo) trains the toy recipe."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun_toy(tmp_path, args):
    """The toy recipe under torchrun with 2 ranks (gloo) into ``tmp_path/run``; checks what holds for every
    such run, and returns the run folder and each rank's record (see ddp_worker.py): tensors, then facts."""
    side, out = tmp_path / "side", tmp_path / "run"
    side.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(side),
           "--preset", "toy", "--out", str(out), "--device", "cpu", "--train.no-tensorboard", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(str(side / "rank0.safetensors")), load_file(str(side / "rank1.safetensors"))
    f0, f1 = (json.loads((side / f"rank{r}.json").read_text()) for r in (0, 1))
    params = [k for k in r0 if k.startswith("param.")]
    assert params and all(torch.equal(r0[k], r1[k]) for k in params)  # identical weights on both ranks

    # each rank reads its own data: the Trainer's stream is built for its rank and hands out other batches
    assert (f0["stream_rank"], f1["stream_rank"]) == (0, 1)
    assert f0["step"] == f1["step"] and r0["batches"].shape == r1["batches"].shape
    assert len(r0["batches"]) == f0["step"] == f0["stream_state"]["index"] == f1["stream_state"]["index"]
    assert all(not torch.equal(a, b) for a, b in zip(r0["batches"], r1["batches"]))
    assert not torch.equal(r0["batches"][0], r0["batches"][1])  # and moves on every step

    # only rank 0 writes: the spy saw rank 0's checkpoints and metrics, and nothing at all from rank 1
    assert any(w.startswith("save_checkpoint") for w in f0["writes"]), f0["writes"]
    assert any("metrics.jsonl" in w for w in f0["writes"]), f0["writes"]
    assert f1["writes"] == []
    return out, r0, r1


@pytest.mark.slow
def test_torchrun_two_ranks_identical_params_and_rank0_files(tmp_path):
    out, r0, _ = torchrun_toy(tmp_path, ["--train.steps", "30", "--train.batch-size", "64", "--train.log-every", "10",
                                          "--train.checkpoint-every", "10", "--train.sample-every", "15",
                                          "--sample.n-eval", "200", "--sample.steps", "10", "--sample.n-snapshot", "100"])
    assert r0["batches"].shape == (30, 32, 2)  # 30 steps of 64 / 2 ranks

    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]  # written once: only rank 0 logs
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000010", "step_00000020", "step_00000030"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["final.png", "step_00000015.png", "step_00000030.png", "trajectories.png"]
    assert json.loads((out / "eval.json").read_text())["step"] == 30
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "eval.json", "metrics.jsonl", "samples"]


@pytest.mark.slow
def test_torchrun_time_limit_stops_both_ranks_at_the_same_step(tmp_path):
    # (identical weights on both ranks, checked by torchrun_toy, mean the same number of steps)
    out, _, _ = torchrun_toy(tmp_path, ["--train.steps", "1000000", "--train.time-limit", "0.02", "--train.batch-size", "64",
                                        "--train.log-every", "1000000", "--train.checkpoint-every", "1000000",
                                        "--train.sample-every", "0", "--sample.n-eval", "100", "--sample.steps", "2",
                                        "--sample.n-snapshot", "50"])
    (ckpt_dir,) = (out / "checkpoints").iterdir()
    step = int(ckpt_dir.name.split("_")[1])
    assert 0 < step < 1000000 and step % 10 == 0  # the ranks agree on stopping every 10 steps
