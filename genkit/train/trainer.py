"""The one training loop every genkit method shares.

The Trainer knows nothing about methods. Each step it steps the optimizers that are due
(an update ratio such as ``{"generator": 5}`` steps the generator every 5th step and the
critic every step) one after another, in the order of the ``optimizers`` mapping: for each
it asks the objective for that optimizer's loss, back-propagates it into that optimizer's
parameters only, averages gradients over ranks, clips and steps, before the next one's
loss is computed (alternating updates: a GAN's generator meets the critic its own step
has just updated, as in the papers' algorithms). Then it updates the EMA copies.

Around that: bf16 autocast, optional ``torch.compile``, gradient accumulation, LR warm-up,
a progress bar, ``metrics.jsonl`` + TensorBoard, periodic snapshots (sample grids), atomic
checkpoints with every RNG state, exact resume, a clean stop on Ctrl-C / SIGTERM
(checkpoint, then exit) or on a non-finite loss or weights (stop with the step number; the
last good checkpoint is kept), and an optional wall-clock budget (``time_limit``, counted
over resumes: equal-time comparisons, runs split across sessions).
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genkit.errors import GenkitError
from genkit.objectives.base import Objective
from genkit.precision import Precision, resolve_precision
from genkit.seeding import derive_seed
from genkit.train import checkpoint as ckpt
from genkit.train import distributed
from genkit.train.distributed import DistInfo
from genkit.train.ema import EMA
from genkit.train.logging import MetricsLogger

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
"""torch.compile modes; reduce-overhead and max-autotune replay CUDA graphs on CUDA"""


_DDP_STOP_CHECK = 10  # steps between the ranks' agreement on stopping (see Trainer._stop_flags)


def _python_rng_state() -> list[Any]:
    """``random.getstate()`` as plain values: ``[version, [625 ints], gauss_next]``."""
    version, internal, gauss_next = random.getstate()
    return [version, list(internal), gauss_next]


def _set_python_rng_state(state: Sequence[Any]) -> None:
    version, internal, gauss_next = state
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global (legacy ``np.random``) state as plain values and an int64 tensor of its 624 keys."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _set_numpy_rng_state(state: Mapping[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, int(state["pos"]), int(state["has_gauss"]),
                         float(state["cached_gaussian"])))


def _to_cpu(state: Any) -> Any:
    """``state`` with every tensor (in nested dicts, lists, tuples) moved to the CPU: gathered from every
    rank as Python objects, tensors must not carry one rank's GPU to another."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, Mapping):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_to_cpu(v) for v in state)
    return state


class _Clock:
    """Seconds of training: those before this ``fit`` plus the wall time since it began,
    less the time spent inside :meth:`paused` (snapshots, checkpoint writes)."""

    def __init__(self, before: float) -> None:
        self.before, self.t0 = before, time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.t0

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - t


@dataclass(frozen=True)
class TrainConfig:
    """The loop's settings, shared by every recipe (``--train.<field>`` on the CLI)."""

    steps: int = 5000
    """total optimizer steps of the run (a resumed run continues to this number)"""
    time_limit: float = 0.0
    """end the run after this many minutes of training, summed over resumes, even before
    ``steps`` (0: no limit); the run then ends as if it had reached ``steps``. Snapshots and
    checkpoint writes do not count, nor (with ``compile``) the first step of each set of updates
    in a process, where compilation happens: equal limits give equal time to the training steps"""
    batch_size: int = 256
    """global batch per step: split over ranks and accumulation micro-steps"""
    accumulate: int = 1
    """gradient-accumulation micro-steps per optimizer step"""
    grad_clip: float = 0.0
    """clip each optimizer's gradient norm to this value (0: off)"""
    warmup_steps: int = 0
    """linear LR warm-up over this many steps of each optimizer (0: off)"""
    ema_decay: float = 0.999
    ema_warmup: bool = True
    """EMA decay min(ema_decay, (1+n)/(10+n)) after n updates"""
    precision: Precision = "auto"
    """bf16 autocast for the forward pass; auto = bf16 on CUDA, fp32 on CPU"""
    compile: bool = False
    """torch.compile the models"""
    compile_mode: CompileMode = "default"
    """torch.compile's mode (with compile): reduce-overhead and max-autotune replay CUDA graphs, so a
    step costs two graph launches instead of one launch per kernel (about 2,000 for the CIFAR-10 UNet):
    for steps whose GPU work is shorter than their launches (small models or batches). default and
    max-autotune-no-cudagraphs launch kernel by kernel. CUDA graphs reuse a network's output memory
    at its next call: tested for one network called once per micro-step (the flow recipes); MonoFlow,
    which calls the generator twice in a step, keeps to the default mode, and the critic recipes
    (reflow_gan) cannot compile at all (their gradient penalty needs a double backward)"""
    log_every: int = 100
    sample_every: int = 1000
    """snapshot (sample grids) every this many steps (0: only at the end)"""
    checkpoint_every: int = 1000
    """write a checkpoint every this many steps (0: only at the end of the run and when it is stopped)"""
    keep_checkpoints: int = 3
    """how many of the newest checkpoints to keep (0: keep every checkpoint)"""
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        at_least = {"steps": 1, "batch_size": 1, "accumulate": 1, "log_every": 1, "grad_clip": 0, "warmup_steps": 0,
                    "time_limit": 0, "sample_every": 0, "checkpoint_every": 0, "keep_checkpoints": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value < low:
                flag = "--train." + name.replace("_", "-")
                raise GenkitError(f"{flag} must be >= {low}, got {value}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise GenkitError(f"--train.ema-decay must be in [0, 1), got {self.ema_decay}")

    def micro_batch_size(self, world_size: int = 1) -> int:
        """Per-process batch of one micro-step; a one-line error if it does not divide."""
        parts = world_size * self.accumulate
        if self.batch_size < parts or self.batch_size % parts:
            raise GenkitError(
                f"--train.batch-size {self.batch_size} must be a multiple of ranks x accumulate = "
                f"{world_size} x {self.accumulate}"
            )
        return self.batch_size // parts


@dataclass(frozen=True)
class TrainResult:
    step: int
    interrupted: bool
    """stopped by Ctrl-C / SIGTERM: run the same command again to continue"""
    checkpoint: Path | None
    time_limit_reached: bool = False
    """ended by ``TrainConfig.time_limit`` before ``steps`` (the run is complete)"""
    train_seconds: float = 0.0
    """wall time spent training (snapshots and checkpoint writes excluded), summed over resumes"""

    def eval_fields(self) -> dict[str, float | int | bool]:
        """What every recipe records about its training in ``eval.json``."""
        return {"step": self.step, "train_seconds": round(self.train_seconds, 1),
                "time_limit_reached": self.time_limit_reached}


class BatchStream(Protocol):
    """What the Trainer reads: an infinite iterator with a resumable position."""

    def __next__(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Trainer:
    """Trains ``models`` with ``optimizers`` on ``objective`` over the batches of ``data``.

    Args:
        models: networks by name, as the objective expects them (e.g. ``{"model": net}``).
        optimizers: by loss name; each owns the parameters its loss trains.
        objective: returns ``LossOutput.losses`` keyed by optimizer name.
        data: infinite batch stream yielding per-process micro-batches.
        run_dir: run folder (``None``: no files at all); checkpoints go to ``run_dir/checkpoints``.
        recipe, run_config: written into each checkpoint card, and ``run_config`` as
            ``run_dir/config.json`` when ``fit`` starts: after the resume check, so that a refused
            command (a checkpoint of another recipe or shape, or trained under a ``run_config`` that
            differs outside :data:`~genkit.train.checkpoint.RESUME_MAY_CHANGE`) leaves the folder as it was.
        update_every: optimizer name -> step that optimizer every k-th step (default 1).
        snapshot: called on rank 0 as ``snapshot(ema_models, step)`` every ``sample_every`` steps.
        callbacks: called as ``cb(trainer)`` after every step.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        objective: Objective,
        data: BatchStream,
        config: TrainConfig,
        *,
        run_dir: str | Path | None,
        recipe: str,
        run_config: Mapping[str, Any],
        seed: int = 0,
        dist: DistInfo = DistInfo(),
        update_every: Mapping[str, int] | None = None,
        snapshot: Callable[[Mapping[str, nn.Module], int], None] | None = None,
        callbacks: Sequence[Callable[[Trainer], None]] = (),
    ) -> None:
        self.models, self.optimizers, self.objective, self.data = dict(models), dict(optimizers), objective, data
        self.config, self.dist, self.seed = config, dist, seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.recipe, self.run_config = recipe, dict(run_config)
        self.update_every = {n: 1 for n in self.optimizers} | dict(update_every or {})
        self.snapshot, self.callbacks = snapshot, list(callbacks)
        self.step = 0
        self.train_seconds = 0.0  # wall time of training steps (not snapshots or saves), summed over resumes
        self.device = next(iter(self.models.values())).parameters().__next__().device
        self._check_update_every()

        distributed.broadcast_models(self.models, dist)  # identical start on every rank
        self.ema = {n: EMA(m, decay=config.ema_decay, warmup=config.ema_warmup) for n, m in self.models.items()}
        self._ema_updates = {n: 0 for n in self.models}
        self._params = {n: [p for g in o.param_groups for p in g["params"]] for n, o in self.optimizers.items()}
        self._owners = self._models_of_optimizers()
        self.lr_schedules = {n: self._warmup_schedule(o) for n, o in self.optimizers.items()}
        if config.compile:
            mode = None if config.compile_mode == "default" else config.compile_mode
            for m in self.models.values():
                m.compile(mode=mode)
        self._autocast = self._autocast_context()
        self._stop_requested = False
        # scalars of the steps since the last log (0-dim, on the device) and the step each came from:
        # kept as they are, so a step costs no operation and no sync; reduced when logging
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._pending_steps: dict[str, list[int]] = {}
        self._lr_used: dict[str, float] = {}  # optimizer -> the learning rate of its latest step

    # ---- set-up helpers -------------------------------------------------------------------
    def _check_update_every(self) -> None:
        for n, k in self.update_every.items():
            if n not in self.optimizers:
                raise GenkitError(f"update ratio names '{n}', which is not an optimizer ({sorted(self.optimizers)})")
            if k < 1:
                raise GenkitError(f"update ratio for '{n}' must be >= 1, got {k}")

    def _models_of_optimizers(self) -> dict[str, set[str]]:
        """optimizer name -> names of the models whose parameters it updates."""
        owner = {id(p): name for name, m in self.models.items() for p in m.parameters()}
        return {n: {owner[id(p)] for p in ps if id(p) in owner} for n, ps in self._params.items()}

    def _warmup_schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        w = self.config.warmup_steps
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / w) if w > 0 else 1.0)

    def _autocast_context(self) -> Callable[[], contextlib.AbstractContextManager]:
        if resolve_precision(self.config.precision, self.device) == "fp32":
            return contextlib.nullcontext
        return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to ``config.steps`` (resuming from the run folder's latest checkpoint)."""
        self._resume()
        if self.run_dir is not None and self.dist.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                ckpt.write_json_atomic(self.run_dir / "config.json", self.run_config)
            except OSError as e:  # a file in the way, no permission, a full disk
                raise GenkitError(f"cannot write the run folder {self.run_dir} ({e.strerror or e}): "
                                  "pass a folder you can write to") from None
        logger = MetricsLogger(self.run_dir, enabled=self.dist.is_main, tensorboard=self.config.tensorboard)
        logger.open(self.step)
        bar = tqdm(total=self.config.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s
                   disable=not (self.dist.is_main and self.config.progress))
        old_handlers = self._install_signal_handlers()
        saved: Path | None = None
        t_last, step_last = time.perf_counter(), self.step
        clock = _Clock(self.train_seconds)
        try:
            # (the budget left at the start is read from the checkpoint, identical on every rank)
            out_of_time = self._out_of_time(self.train_seconds)
            compiled: set[tuple[str, ...]] = set()
            while self.step < self.config.steps and not out_of_time:
                need = self._due()
                # torch.compile compiles the graphs of a set of updates the first time it is run (in each
                # process): that step is not counted as training time
                first = self.config.compile and need not in compiled
                with clock.paused() if first else contextlib.nullcontext():
                    self._train_step(need)
                compiled.add(need)
                self.step += 1
                bar.update(1)
                for cb in self.callbacks:
                    cb(self)
                stop, out_of_time = self._stop_flags(clock.seconds())
                last = self.step == self.config.steps or out_of_time
                if self.step % self.config.log_every == 0 or last:
                    now = time.perf_counter()
                    values = self._log_values((self.step - step_last) / max(now - t_last, 1e-9))
                    values["train_seconds"] = clock.seconds()
                    t_last, step_last = now, self.step
                    logger.log(self.step, values)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k.startswith("loss")})
                if self.snapshot is not None and self.dist.is_main and (
                    (self.config.sample_every and self.step % self.config.sample_every == 0) or last
                ):
                    with clock.paused():
                        self.snapshot({n: e.module for n, e in self.ema.items()}, self.step)
                if (self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0) or last or stop:
                    self.train_seconds = clock.seconds()
                    with clock.paused():
                        saved = self.save()
                if stop:
                    return TrainResult(self.step, True, saved, train_seconds=self.train_seconds)
            self.train_seconds = clock.seconds()
            return TrainResult(self.step, False, saved or self._latest(),
                               time_limit_reached=self.step < self.config.steps, train_seconds=self.train_seconds)
        finally:
            self._restore_signal_handlers(old_handlers)
            bar.close()
            logger.close()

    def _out_of_time(self, seconds: float) -> bool:
        return self.config.time_limit > 0 and seconds >= 60.0 * self.config.time_limit

    def _stop_flags(self, seconds: float) -> tuple[bool, bool]:
        """(stop requested, time limit reached), agreed by all ranks.

        Under DDP the agreement costs a collective and a host sync, so ranks compare notes
        every ``_DDP_STOP_CHECK`` steps (and at every checkpoint step) rather than every step.
        """
        flags = (self._stop_requested, self._out_of_time(seconds))
        if not self.dist.enabled:
            return flags
        ckpt_step = self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0
        if self.step % _DDP_STOP_CHECK and not ckpt_step and self.step != self.config.steps:
            return False, False
        stop, out_of_time = distributed.any_rank(flags, self.dist, self.device)
        return stop, out_of_time

    def _due(self) -> tuple[str, ...]:
        """Names of the optimizers that step in the coming step (its update ratio divides it), in the
        order of the ``optimizers`` mapping: the order they step in."""
        return tuple(n for n in self.optimizers if (self.step + 1) % self.update_every[n] == 0)

    def _train_step(self, need: tuple[str, ...]) -> None:
        """One step: each optimizer of ``need`` in turn, its loss computed after the previous ones stepped;
        all of them on the same (micro-)batches and one random generator."""
        cfg = self.config
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.seed, "objective", self.dist.rank, self.step))
        batches = [next(self.data) for _ in range(cfg.accumulate)]
        for n in need:
            params = self._params[n]
            self.optimizers[n].zero_grad(set_to_none=True)
            for batch in batches:
                if self.device.type == "cuda":
                    # a new iteration for CUDA graphs (compile modes reduce-overhead, max-autotune): the last
                    # call's graph outputs are consumed, their memory may be reused; a no-op otherwise
                    torch.compiler.cudagraph_mark_step_begin()
                with self._autocast():
                    out = self.objective(self.models, batch, need=frozenset((n,)), generator=generator)
                if n not in out.losses:
                    raise GenkitError(f"the objective returned no loss for optimizer '{n}' (got {sorted(out.losses)})")
                loss = out.losses[n]
                (loss / cfg.accumulate).backward(inputs=params)
                self._track(f"loss/{n}", loss.detach().float())
                for k, v in out.metrics.items():
                    self._track(k, v.detach().float())
            distributed.all_reduce_grads(params, self.dist)
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self._track(f"grad_norm/{n}", norm.detach().float())
            self._lr_used[n] = self.optimizers[n].param_groups[0]["lr"]  # logged: what this step trained with
            self.optimizers[n].step()
            self.lr_schedules[n].step()
        for m in sorted(set().union(*(self._owners[n] for n in need))):
            self.ema[m].update(self.models[m], self._ema_updates[m])
            self._ema_updates[m] += 1

    def _track(self, key: str, value: torch.Tensor) -> None:
        """Keep one step's 0-dim value of ``key`` for the next log (no operation, no sync)."""
        self._pending.setdefault(key, []).append(value)
        self._pending_steps.setdefault(key, []).append(self.step + 1)

    def _log_values(self, steps_per_sec: float) -> dict[str, float]:
        self._check_finite()
        values = {k: float(torch.stack(v).mean()) for k, v in self._pending.items()}
        for n, o in self.optimizers.items():
            values[f"lr/{n}"] = self._lr_used.get(n, o.param_groups[0]["lr"])  # the rate of its latest step
        values["steps_per_sec"] = steps_per_sec
        values["samples_per_sec"] = steps_per_sec * self.config.batch_size
        self._pending, self._pending_steps = {}, {}
        return values

    def _first_bad_step(self) -> int:
        """The first step since the last log with a non-finite loss on any rank (-1: none)."""
        never = torch.iinfo(torch.long).max
        first = torch.full((), never, dtype=torch.long, device=self.device)
        for key, values in self._pending.items():
            if key.startswith("loss/"):
                steps = torch.tensor(self._pending_steps[key], device=self.device)
                bad = ~torch.isfinite(torch.stack(values))
                first = torch.minimum(first, torch.where(bad, steps, never).min())
        if self.dist.enabled:
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        step = int(first)
        return -1 if step == never else step

    def _check_finite(self) -> None:
        step = self._first_bad_step()
        if step >= 0:
            raise GenkitError(f"non-finite loss at step {step}: training stopped; {self._kept()}. Lower the "
                              "learning rate or set --train.grad-clip, then run the same command to resume")

    def _check_finite_weights(self) -> None:
        """Before a checkpoint: a finite loss can still come with an overflowing gradient, and the update
        then leaves inf/NaN weights (identical on every rank: DDP averages the gradients)."""
        modules = [*self.models.values(), *(e.module for e in self.ema.values())]
        finite = torch.stack([torch.isfinite(p).all() for m in modules for p in m.parameters()]).all()
        if not bool(finite):
            raise GenkitError(f"non-finite weights at step {self.step} (the losses were finite: a gradient "
                              f"overflowed): training stopped; {self._kept()}. Lower the learning rate or set "
                              "--train.grad-clip, then run the same command to resume")

    def _kept(self) -> str:
        last = self._latest()
        return f"the last good checkpoint {last} is kept" if last else "no checkpoint had been written yet"

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything besides weights needed to continue bit for bit (tensors and plain values, loadable with
        ``torch.load(weights_only=True)``), RNG states included: torch's (CPU and CUDA), Python's ``random``
        and numpy's global ``np.random``, one set per rank, and the objective's state, also one per rank."""
        rng = {"torch": torch.get_rng_state(), "python": _python_rng_state(), "numpy": _numpy_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        # per rank, as the RNG states: an objective's state may differ between ranks (MonoFlow's current round)
        objective = _to_cpu(self.objective.state_dict()) if hasattr(self.objective, "state_dict") else {}
        return {
            "step": self.step,
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "lr_schedules": {n: s.state_dict() for n, s in self.lr_schedules.items()},
            "ema_updates": dict(self._ema_updates),
            "train_seconds": self.train_seconds,
            "data": self.data.state_dict(),
            "objective": self._gather(objective),
            "rng": self._gather(rng),
            "world_size": self.dist.world_size,
        }

    def _gather(self, obj: Any) -> list[Any]:
        if not self.dist.enabled:
            return [obj]
        out: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def _own_entry(self, entries: Any) -> Any:
        """This rank's entry of a per-rank list from :meth:`_gather` (rank 0's if the checkpoint was written by
        another number of ranks); a plain mapping (checkpoints before per-rank objective states) is everyone's."""
        if not isinstance(entries, list):
            return entries
        return entries[self.dist.rank] if len(entries) == self.dist.world_size else entries[0]

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; all ranks take part)."""
        self._check_finite()
        self._check_finite_weights()
        state = self.state_dict()  # collective under DDP: every rank calls it
        if self.run_dir is None or not self.dist.is_main:
            return None
        return ckpt.save_checkpoint(
            self.run_dir / "checkpoints", self.step, models=self.models,
            ema={n: e.module for n, e in self.ema.items()}, trainer_state=state,
            recipe=self.recipe, config=self.run_config, keep=self.config.keep_checkpoints,
        )

    def _latest(self) -> Path | None:
        return ckpt.latest_checkpoint(self.run_dir / "checkpoints") if self.run_dir else None

    def _resume(self) -> None:
        if self.run_dir is not None and self.dist.is_main:
            ckpt.recover_interrupted(self.run_dir / "checkpoints")  # a kill mid-save: the last good one back
        distributed.barrier(self.dist)
        path = self._latest()
        if path is None:
            return
        ckpt.check_compatible(path, recipe=self.recipe, models=self.models)
        ckpt.check_same_run(path, self.run_config)  # the same data, model, seed...: not only the same shapes
        state = ckpt.load_trainer_state(path)
        for n, m in self.models.items():
            ckpt.load_weights(path, n, m)
            ckpt.load_weights(path, n, self.ema[n].module, ema=True)
        for n, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][n])
            self.lr_schedules[n].load_state_dict(state["lr_schedules"][n])
        self._ema_updates = dict(state["ema_updates"])
        self.data.load_state_dict(state["data"])
        if hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(self._own_entry(state.get("objective", {})))
        rng = self._own_entry(state["rng"])
        torch.set_rng_state(rng["torch"])
        if "python" in rng:  # (checkpoints written before these were saved lack them)
            _set_python_rng_state(rng["python"])
        if "numpy" in rng:
            _set_numpy_rng_state(rng["numpy"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))

    # ---- signals ------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):  # finish the step, checkpoint, return
            if self._stop_requested:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self._stop_requested = True

        return {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(old: Mapping[int, Any]) -> None:
        for s, h in old.items():
            signal.signal(s, h)
