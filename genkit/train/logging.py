"""Metrics to ``metrics.jsonl`` (one JSON object per log step) and TensorBoard."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a resumed run repeats those steps)."""
    if not path.is_file():
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)


class MetricsLogger:
    """Appends ``{"step": s, **values}`` lines to ``metrics.jsonl``; mirrors to TensorBoard.

    Disabled loggers (``enabled=False``, e.g. on ranks other than 0) write nothing.
    """

    def __init__(self, run_dir: Path | None, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled and run_dir is not None
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir is not None else None
        self._tb = None
        self._want_tb = tensorboard
        self._file = None

    def open(self, resume_step: int) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a")
        if self._want_tb:
            from torch.utils.tensorboard import SummaryWriter  # heavy: imported only when used

            self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled or self._file is None:
            return
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def in_family(key: str, family: str) -> bool:
    """Whether eval.json's ``key`` belongs to the evaluation ``family`` (``fid_inception``, ``nll``):
    the key is the family's name or starts with it and ``_``."""
    return key == family or key.startswith(family + "_")


def update_eval(run_dir: str | Path, values: Mapping[str, object], *, family: str | None = None) -> dict:
    """Merge ``values`` into the run's flat ``eval.json`` (created if missing); returns the result.

    A recipe's own evaluation adds its keys and keeps the others. An evaluation of a ``family``
    (FID of one feature extractor, NLL) replaces the whole family: every key :func:`in_family` goes
    first (an earlier evaluation's NFEs, floor, settings), so each family's keys describe one
    evaluation. No ``values``: the file is left alone.
    """
    from genkit.train.checkpoint import write_json_atomic

    path = Path(run_dir) / "eval.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if not values:
        return old
    kept = {k: v for k, v in old.items() if family is None or not in_family(k, family)}
    merged = kept | dict(values)
    write_json_atomic(path, merged)
    return merged
