"""Data parallelism over ``torch.distributed``, launched by ``torchrun``.

The same command runs as one process or under ``torchrun --nproc_per_node=N``:
:func:`init` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and joins the process group (NCCL on CUDA, gloo on CPU).

Gradients are averaged explicitly after each backward (:func:`all_reduce_grads`)
rather than through the ``DistributedDataParallel`` wrapper: genkit objectives may
step several optimizers from one forward pass, and take gradients of gradients
(gradient penalties), both of which the wrapper's hooks do not support.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


TIMEOUT = timedelta(hours=2)
"""How long a collective waits for the slowest rank. Rank 0 alone generates teacher pairs, evaluates and
writes while the others wait at a barrier: torch's defaults (10 min for NCCL) would end such runs."""


def init(device: torch.device) -> DistInfo:
    """Join the process group if launched by torchrun; a no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            dist.init_process_group(backend, device_id=device, timeout=TIMEOUT)
        else:
            dist.init_process_group(backend, timeout=TIMEOUT)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@torch.no_grad()
def broadcast_models(models: Mapping[str, nn.Module], info: DistInfo) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if not info.enabled:
        return
    for model in models.values():
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)


@torch.no_grad()
def all_reduce_grads(params: Iterable[torch.Tensor], info: DistInfo) -> None:
    """Average ``.grad`` over ranks in one flat all-reduce. A rank without a parameter's grad adds 0; a
    parameter no rank has a grad for keeps ``grad = None``, so the optimizer skips it as one process would
    (a zero grad would still move it under momentum or weight decay)."""
    if not info.enabled:
        return
    params = [p for p in params]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = grads[0].new_ones(len(params))  # (len(params),): 1 where this rank has the grad (no host-to-device copy)
    for i, p in enumerate(params):
        if p.grad is None:
            has[i] = 0
    flat = torch.cat([*(g.reshape(-1) for g in grads), has])  # (sum of numel + len(params),)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    # which parameters some rank has a grad for: known without a host sync on a rank that has them all
    missing_here = any(p.grad is None for p in params)
    seen = (flat[-len(params):] > 0).tolist() if missing_here else [True] * len(params)
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone() if seen[i] else None
        offset += n


def any_rank(flags: tuple[bool, ...], info: DistInfo, device: torch.device) -> tuple[bool, ...]:
    """Each flag true on every rank if it is true on any rank (e.g. a stop request): one collective."""
    if not info.enabled:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
