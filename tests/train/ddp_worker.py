"""Run by tests/train/test_ddp.py under torchrun: the real reflow recipe, plus a record of each rank
in a side folder (argv[1]):

- ``rank<r>.safetensors``: the final parameters (``param.*``) and every batch the Trainer drew from
  its own data stream (``batches``, in the order consumed);
- ``rank<r>.json``: the rank that stream was built for, its final state, the Trainer's final step,
  and every write into the run folder (``--out``) this process made: Python-level opens for writing,
  renames, mkdir and removals (an audit hook: whoever calls them), plus each call of a writer that
  bypasses Python's ``open`` (safetensors, ``torch.save``), of genkit's checkpoint writers, of the
  metrics logger with a file or TensorBoard writer behind it, and of the plots. Rank 0's list shows
  that the spy sees the writes; rank 1's must be empty.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from genkit import plots
from genkit.cli import run_main
from genkit.recipes import reflow
from genkit.train import Trainer
from genkit.train import checkpoint as ckpt
from genkit.train import logging as train_logging

side = Path(sys.argv[1])
rank = int(os.environ["RANK"])
argv = sys.argv[2:]
out = os.path.realpath(argv[argv.index("--out") + 1])
writes: list[str] = []
record: dict = {}

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_CHANGES = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree", "os.symlink", "os.link",
            "os.utime", "os.chmod"}  # audit events that change the file system (os.replace raises os.rename)


def _under_out(path) -> bool:
    if not isinstance(path, str | bytes | os.PathLike):
        return False  # a file descriptor
    p = os.path.abspath(os.fsdecode(path))  # (string operations only: no audit events from inside the hook)
    return p == out or p.startswith(out + os.sep)


def audit(event, args):
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        if writing and _under_out(path):
            writes.append(f"open {os.fsdecode(path)} {mode or flags}")
    elif event in _CHANGES and any(_under_out(a) for a in args[:2]):
        writes.append(f"{event} {args[:2]}")


sys.addaudithook(audit)


def spy(owner, name, *, when=lambda *args: True):
    """Record each call of ``owner.name`` (for which ``when(*args)`` holds)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if when(*args):
            writes.append(f"{name} {[str(a) for a in args if isinstance(a, str | os.PathLike)]}")
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


for writer in ("save_checkpoint", "write_json_atomic", "save_model"):  # (save_model: safetensors, not open())
    spy(ckpt, writer)
# trainer.pt is written by C++, not through open() (torch.distributed's object collectives torch.save into
# in-memory buffers: only a file counts)
spy(ckpt.torch, "save", when=lambda obj, f, *args: isinstance(f, str | os.PathLike))
spy(reflow, "update_eval")
for writer in ("save_image_grid", "save_scatter", "save_trajectories"):
    spy(plots, writer)


def active(self, *args):
    """The metrics logger has a file or a TensorBoard writer behind it."""
    return self._file is not None or self._tb is not None


original_open = train_logging.MetricsLogger.open


def logger_open(self, *args):
    original_open(self, *args)
    if active(self):
        writes.append("MetricsLogger.open")


train_logging.MetricsLogger.open = logger_open
spy(train_logging.MetricsLogger, "log", when=active)


class RecordingStream:
    """The Trainer's own stream, keeping each batch it hands out."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __next__(self):
        batch = next(self.inner)
        self.batches.append(batch.detach().cpu().clone())
        return batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


original_fit = Trainer.fit


def recording_fit(self):
    stream = self.data = RecordingStream(self.data)
    result = original_fit(self)
    record.update(stream_rank=stream.inner.rank, stream_state=stream.state_dict(), step=result.step)
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in self.models["model"].state_dict().items()}
    tensors["batches"] = torch.stack(stream.batches)
    save_file(tensors, str(side / f"rank{rank}.safetensors"))
    return result


Trainer.fit = recording_fit
code = run_main(reflow.main, argv)
(side / f"rank{rank}.json").write_text(json.dumps({**record, "writes": writes}, indent=1))
sys.exit(code)
