"""Reflow / distillation pairs ``(Z_0, Z_1 = ODESolve(teacher, Z_0))``, streamed to disk in shards.

A frozen teacher flow maps noise ``Z_0 ~ N(0, I)`` to ``Z_1``; reflow and distillation
train on the pairs. :func:`generate_pairs` writes them shard by shard, so memory stays
flat whatever the number of pairs; :class:`PairStream` reads them back as an infinite,
seeded, resumable stream of :class:`~genkit.couplings.Pairs`. A pairs folder holds::

    pairs.json                  manifest: n, shape, shard_size, num_shards, method, steps,
                                seed, dtype, teacher (written first)
    shard_00000.safetensors     x_0: (m, *shape), x_1: (m, *shape) in `dtype`;
    shard_00001.safetensors     metadata: nfe, pair_nfe, batch_size, device, rank, seconds of the shard
    ...

Every shard has ``shard_size`` pairs except the last (``n - (num_shards - 1) * shard_size``).
A shard is written to a temporary file and renamed into place, so a file named
``shard_*.safetensors`` is always complete and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genkit.couplings import Pairs
from genkit.data.toy import _check_count
from genkit.errors import GenkitError
from genkit.seeding import derive_seed
from genkit.solvers import METHODS, Field, Method

__all__ = ["MANIFEST", "PairStream", "PairsInfo", "StoreDtype", "check_pairs", "generate_pairs", "shard_name"]

MANIFEST = "pairs.json"
FORMAT = "genkit-pairs/1"
StoreDtype = Literal["float32", "float16", "bfloat16"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Keys of pairs.json that define the pairs: a second call must repeat them to resume.
_IDENTITY = ("n", "shape", "shard_size", "num_shards", "method", "steps", "seed", "dtype", "teacher")


@dataclass(frozen=True)
class PairsInfo:
    """What a complete pairs folder holds.

    ``nfe`` is the total number of teacher evaluations (calls on a batch) over all batches of
    all shards, ``nfe_per_pair`` the mean number of evaluations along one pair's trajectory
    (``4 * steps`` for rk4), and ``seconds`` the wall time spent simulating them. All are read
    from the shards' metadata, so they count the work of every run that wrote them (shards
    written before the time was recorded count 0 seconds).
    """

    path: str
    n: int
    shape: tuple[int, ...]
    shard_size: int
    num_shards: int
    method: str
    steps: int
    seed: int
    dtype: str
    teacher: str
    nfe: int
    nfe_per_pair: float = 0.0
    seconds: float = 0.0

    def shard_len(self, k: int) -> int:
        """Number of pairs in shard ``k``."""
        return min(self.shard_size, self.n - k * self.shard_size)


def shard_name(k: int) -> str:
    """File name of shard ``k``: ``shard_00000.safetensors``."""
    return f"shard_{k:05d}.safetensors"


def generate_pairs(
    field: Field,
    out_dir: str | Path,
    *,
    n: int,
    shape: tuple[int, ...],
    seed: int,
    method: Method = "rk4",
    steps: int = 100,
    batch_size: int = 500,
    shard_size: int = 10_000,
    device: str | torch.device = "cpu",
    dtype: StoreDtype | torch.dtype = torch.float32,
    teacher: str = "",
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
) -> PairsInfo:
    """Write ``n`` pairs ``(x_0, x_1 = ODESolve(field, x_0))`` to ``out_dir`` in shards; resumable.

    The noise of shard ``k`` is drawn batch after batch, in float32, from one
    ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, "pairs", k)``, so each
    shard is reproducible on its own (given the same ``device`` type and ``batch_size``,
    which its metadata records). Each batch is solved from t = 0 to 1 with
    :class:`~genkit.sampling.ODESampler` (``method``, ``steps``; ``dopri5`` uses
    atol = rtol = 1e-5) under ``torch.no_grad()``; both ``x_0`` and ``x_1`` are stored in
    ``dtype`` (float16 halves the disk; the teacher always sees the float32 noise).
    Host memory holds at most one shard, device memory one batch and its solver stages.

    Called again with the same arguments, complete shards are kept and only missing
    ones are generated (an interrupted run finishes; a finished run just returns its
    info). ``batch_size``, ``device`` and ``progress`` may change between calls.

    Data parallel: every one of ``world_size`` processes calls it with the same arguments,
    its ``rank`` and a ``barrier`` of the process group; rank 0 writes (or checks) the
    manifest, then rank ``r`` simulates the missing shards ``k`` with ``k % world_size == r``
    (on its own ``device``: the shards are the same as one process makes, given the same
    device type and batch size), and all return once every shard is written.

    Args:
        field: the frozen teacher ``field(x: (B, *shape), t: (B,)) -> (B, *shape)``; an
            ``nn.Module`` must be in eval mode (dropout would make the pairs random).
        out_dir: the pairs folder (created if needed).
        n: number of pairs; shape: shape of one sample, e.g. ``(3, 32, 32)``.
        seed: run seed; the noise of every shard derives from it.
        teacher: free text recorded in the manifest (e.g. the teacher checkpoint path).
        progress: show a tqdm bar over batches.
        rank, world_size, barrier: this process among the ones that share the work.

    Returns:
        :class:`PairsInfo` of the complete folder (see :func:`check_pairs`).

    Raises:
        GenkitError: bad arguments; ``out_dir`` holds a manifest made with other
            arguments; the teacher is in training mode or returns NaN/inf.
    """
    from tqdm.auto import tqdm

    from genkit.sampling import ODESampler
    from genkit.train.checkpoint import _fsync, write_json_atomic

    _check_count("n", n, 1)
    _check_count("steps", steps, 1)
    _check_count("batch_size", batch_size, 1)
    _check_count("shard_size", shard_size, 1)
    _check_count("seed", seed, 0)
    _check_count("world_size", world_size, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise GenkitError(f"rank must be in [0, {world_size}), got {rank!r}")
    if world_size > 1 and barrier is None:
        raise GenkitError("generate_pairs over several processes needs their barrier")
    shape = tuple(shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise GenkitError(f"shape must be a non-empty tuple of positive ints like (3, 32, 32), got {shape!r}")
    if method not in METHODS:
        raise GenkitError(f"unknown solver method {method!r}; choose one of {', '.join(METHODS)}")
    dtype_name = _dtype_name(dtype)
    if isinstance(field, nn.Module) and field.training:
        raise GenkitError("the teacher is in training mode: call .eval() on it before generating pairs")
    device = torch.device(device)

    out = Path(out_dir)
    manifest = {
        "format": FORMAT, "n": n, "shape": list(shape), "shard_size": shard_size,
        "num_shards": math.ceil(n / shard_size), "method": method, "steps": steps, "seed": seed,
        "dtype": dtype_name, "teacher": teacher,
    }
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if (out / MANIFEST).exists():
            _check_manifest(out, manifest)
        else:
            write_json_atomic(out / MANIFEST, manifest)
        for stale in out.glob(".shard_*.tmp-*"):  # left by a killed run
            stale.unlink(missing_ok=True)
    if barrier is not None and world_size > 1:
        barrier()  # the manifest is in place (and the folder clean) before any process writes a shard
        _check_manifest(out, manifest)

    num_shards = manifest["num_shards"]
    lengths = [min(shard_size, n - k * shard_size) for k in range(num_shards)]
    todo = [k for k in range(rank, num_shards, world_size) if not (out / shard_name(k)).is_file()]
    if todo:
        sampler = ODESampler(field, shape, method=method, steps=steps, device=device)
        total = sum(math.ceil(lengths[k] / batch_size) for k in todo)
        with tqdm(total=total, disable=not progress, unit="batch", desc="pairs") as bar:
            for k in todo:
                bar.set_postfix_str(f"shard {k + 1}/{num_shards}")
                _write_shard(out, k, lengths[k], sampler, seed, batch_size, _DTYPES[dtype_name], bar, rank)
        _fsync(out)
    if barrier is not None and world_size > 1:
        barrier()  # every process's shards are written
    return check_pairs(out)


def _check_manifest(out: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse a folder whose manifest was made with other arguments (one line naming them)."""
    old = _read_manifest(out)
    diff = [f"{k}={old.get(k)!r} (not {manifest[k]!r})" for k in _IDENTITY if old.get(k) != manifest[k]]
    if diff:
        raise GenkitError(
            f"pairs folder {out} holds pairs made with {', '.join(diff)}: "
            "use another folder or repeat the arguments it was made with"
        )


def _write_shard(
    out: Path, k: int, length: int, sampler: Any, seed: int, batch_size: int, dtype: torch.dtype, bar: Any,
    rank: int = 0,
) -> None:
    """Generate shard ``k`` (``length`` pairs) batch by batch into host buffers, then write it atomically."""
    from safetensors.torch import save_file

    from genkit.train.checkpoint import _fsync

    shape = sampler.shape
    generator = torch.Generator(device=sampler.device).manual_seed(derive_seed(seed, "pairs", k))
    start_time = time.perf_counter()
    x_0_all = torch.empty((length, *shape), dtype=dtype)
    x_1_all = torch.empty((length, *shape), dtype=dtype)
    nfe = pair_nfe = 0  # evaluations on batches; evaluations summed over the pairs
    for start in range(0, length, batch_size):
        size = min(batch_size, length - start)
        x_0 = torch.randn((size, *shape), generator=generator, device=sampler.device)
        with torch.no_grad():
            traj = sampler.solve(x_0)
        x_1 = traj.x
        if not bool(torch.isfinite(x_1).all()):
            raise GenkitError(
                f"the teacher produced NaN or inf in shard {k}: check its weights, or use more steps or dopri5"
            )
        x_0_all[start : start + size] = x_0.to("cpu", dtype)
        x_1_all[start : start + size] = x_1.to("cpu", dtype)
        nfe += traj.nfe
        pair_nfe += traj.nfe * size
        bar.update(1)
    final = out / shard_name(k)
    tmp = out / f".{final.name}.tmp-{os.getpid()}"
    metadata = {
        "format": FORMAT, "shard": str(k), "nfe": str(nfe), "pair_nfe": str(pair_nfe), "batch_size": str(batch_size),
        "device": sampler.device.type, "rank": str(rank), "seconds": f"{time.perf_counter() - start_time:.3f}",
    }
    save_file({"x_0": x_0_all, "x_1": x_1_all}, str(tmp), metadata=metadata)
    _fsync(tmp)
    os.replace(tmp, final)


def check_pairs(path: str | Path) -> PairsInfo:
    """Check that ``path`` is a complete pairs folder and describe it.

    Reads ``pairs.json`` and every shard's header (not its tensors).

    Raises:
        GenkitError: (one line) no manifest; missing shards (with the counts); a shard
            whose ``x_0`` / ``x_1`` have the wrong shape.
    """
    from safetensors import safe_open

    out = Path(path)
    manifest = _read_manifest(out)
    num_shards = manifest["num_shards"]
    present = [k for k in range(num_shards) if (out / shard_name(k)).is_file()]
    if len(present) < num_shards:
        raise GenkitError(
            f"pairs folder {out} has {len(present)} of {num_shards} shards: "
            "run the same command again to finish generating them"
        )
    shape = tuple(manifest["shape"])
    shard_size, n = manifest["shard_size"], manifest["n"]
    nfe, pair_nfe, seconds = 0, 0, 0.0
    for k in range(num_shards):
        file = out / shard_name(k)
        want = [min(shard_size, n - k * shard_size), *shape]
        try:
            with safe_open(str(file), framework="pt") as f:
                keys = set(f.keys())
                shapes = {key: list(f.get_slice(key).get_shape()) for key in ("x_0", "x_1") if key in keys}
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise GenkitError(f"cannot read {file} ({type(e).__name__}): delete it and run the same command again") from None
        for key in ("x_0", "x_1"):
            if shapes.get(key) != want:
                raise GenkitError(
                    f"{file} holds {key} of shape {shapes.get(key)} but {MANIFEST} expects {want}: "
                    "delete the shard and run the same command again"
                )
        nfe += int(meta.get("nfe", 0))
        if "pair_nfe" in meta:
            pair_nfe += int(meta["pair_nfe"])
        else:  # (a shard written before it was recorded: exact for fixed-step methods)
            batches = math.ceil(want[0] / int(meta.get("batch_size", want[0])))
            pair_nfe += round(int(meta.get("nfe", 0)) * want[0] / batches)
        seconds += float(meta.get("seconds", 0.0))
    return PairsInfo(
        path=str(out), n=n, shape=shape, shard_size=shard_size, num_shards=num_shards,
        method=manifest["method"], steps=manifest["steps"], seed=manifest["seed"],
        dtype=manifest["dtype"], teacher=manifest["teacher"], nfe=nfe, nfe_per_pair=pair_nfe / n, seconds=round(seconds, 3),
    )


class PairStream:
    """Infinite, seeded, resumable stream of :class:`~genkit.couplings.Pairs` from a pairs folder.

    Each batch is ``Pairs(x_0, x_1)`` with both ``(batch_size, *shape)`` float32 on ``device``.
    Epoch ``e`` visits the shards in the order ``randperm(num_shards)`` drawn with seed
    ``derive_seed(seed, "pair-shards", e)``; inside shard ``k`` the pairs are permuted with
    seed ``derive_seed(seed, "pair-order", e, k)``, the permutation is cut to a multiple of
    ``world_size`` and rank ``r`` takes its entries ``r, r + world_size, ...`` (ranks get
    disjoint pairs and the same number of batches). Batches never cross shards: each
    shard gives ``(len // world_size) // batch_size`` batches, the rest is skipped. One
    shard at a time is held, in its stored dtype, on ``device`` (with its permutation), so a
    step makes no host-to-device copy; memory stays at one shard however many there are.

    ``state_dict() == {"epoch": e, "shard": s, "index": i}``: the next batch is batch ``i``
    of the ``s``-th shard visited in epoch ``e``; :meth:`load_state_dict` resumes exactly.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        _check_count("batch_size", batch_size, 1)
        _check_count("world_size", world_size, 1)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise GenkitError(f"rank must be in [0, {world_size}), got {rank!r}")
        self.info = check_pairs(path)
        self.path = Path(path)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self._per_rank = [self.info.shard_len(k) // world_size for k in range(self.info.num_shards)]
        self._batches = [m // batch_size for m in self._per_rank]
        self.batches_per_epoch = sum(self._batches)
        if self.batches_per_epoch == 0:
            raise GenkitError(
                f"no shard of {self.path} has batch_size={batch_size} pairs per rank over {world_size} rank(s): "
                "lower the batch size or generate larger shards"
            )
        self.epoch = 0
        self.shard = 0
        self.index = 0
        self._order_epoch = -1
        self._order: list[int] = []
        self._indices_key: tuple[int, int] | None = None
        self._indices = torch.empty(0, dtype=torch.long)
        self._loaded_k = -1
        self._data: dict[str, Tensor] = {}

    def _shard_order(self, epoch: int) -> list[int]:
        if self._order_epoch != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "pair-shards", epoch))
            self._order = torch.randperm(self.info.num_shards, generator=g).tolist()
            self._order_epoch = epoch
        return self._order

    def _normalize(self) -> None:
        """Move the position past shards that are exhausted or give no batch."""
        while True:
            if self.shard >= self.info.num_shards:
                self.epoch, self.shard, self.index = self.epoch + 1, 0, 0
            k = self._shard_order(self.epoch)[self.shard]
            if self.index < self._batches[k]:
                return
            self.shard, self.index = self.shard + 1, 0

    def _rank_indices(self, epoch: int, k: int) -> Tensor:
        if self._indices_key != (epoch, k):
            g = torch.Generator().manual_seed(derive_seed(self.seed, "pair-order", epoch, k))
            perm = torch.randperm(self.info.shard_len(k), generator=g)
            self._indices = perm[self.rank : self._per_rank[k] * self.world_size : self.world_size].to(self.device)
            self._indices_key = (epoch, k)
        return self._indices

    def _load(self, k: int) -> dict[str, Tensor]:
        if self._loaded_k != k:
            from safetensors.torch import load_file

            self._data = {}  # release the previous shard before reading the next one
            self._data = load_file(str(self.path / shard_name(k)), device=str(self.device))
            self._loaded_k = k
        return self._data

    def __iter__(self) -> PairStream:
        return self

    def __next__(self) -> Pairs:
        """The next batch: ``Pairs(x_0, x_1)``, each ``(batch_size, *shape)`` float32 on ``device``."""
        self._normalize()
        k = self._shard_order(self.epoch)[self.shard]
        start = self.index * self.batch_size
        idx = self._rank_indices(self.epoch, k)[start : start + self.batch_size]
        data = self._load(k)
        batch = Pairs(x_0=data["x_0"][idx].float(), x_1=data["x_1"][idx].float())  # on the device already
        self.index += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "shard": s, "index": i}`` (plain ints): where the next batch comes from."""
        self._normalize()
        return {"epoch": self.epoch, "shard": self.shard, "index": self.index}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume from a :meth:`state_dict` of a stream over the same folder and settings."""
        missing = [key for key in ("epoch", "shard", "index") if key not in state]
        if missing:
            raise GenkitError(f"PairStream state needs keys 'epoch', 'shard' and 'index', got {sorted(state)}")
        epoch, shard, index = (int(state[key]) for key in ("epoch", "shard", "index"))
        _check_count("PairStream state 'epoch'", epoch, 0)
        _check_count("PairStream state 'shard'", shard, 0)
        _check_count("PairStream state 'index'", index, 0)
        limit = self._batches[self._shard_order(epoch)[shard]] if shard < self.info.num_shards else 0
        if shard > self.info.num_shards or index > limit:
            raise GenkitError(
                f"PairStream state {dict(epoch=epoch, shard=shard, index=index)} does not fit {self.path}: "
                "resume with the same pairs folder, batch_size and world_size"
            )
        self.epoch, self.shard, self.index = epoch, shard, index
        self._normalize()


def _dtype_name(dtype: StoreDtype | torch.dtype) -> str:
    for name, value in _DTYPES.items():
        if dtype == name or dtype == value:
            return name
    raise GenkitError(f"unsupported pairs dtype {dtype!r}; use one of {', '.join(_DTYPES)}")


def _read_manifest(out: Path) -> dict[str, Any]:
    file = out / MANIFEST
    if not file.is_file():
        raise GenkitError(f"{out} has no {MANIFEST}: it is not a pairs folder; create one with generate_pairs")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenkitError(f"cannot read {file} ({type(e).__name__}): delete the folder and generate the pairs again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or any(k not in manifest for k in _IDENTITY):
        raise GenkitError(f"{file} is not a {FORMAT} manifest: point at a folder made by generate_pairs")
    return manifest
