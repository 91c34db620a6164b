"""genkit.train.distributed.all_reduce_grads on two gloo processes (CPU): averages, and keeps a parameter
that no rank has a gradient for without one, so the optimizer skips it as a single process would."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genkit.train.distributed import DistInfo, all_reduce_grads


def _worker(rank: int, store_path: str, results) -> None:
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    try:
        used_by_all, used_by_rank0, unused = (torch.nn.Parameter(torch.ones(3)) for _ in range(3))
        used_by_all.grad = torch.full((3,), float(rank + 1))  # 1 on rank 0, 2 on rank 1
        if rank == 0:
            used_by_rank0.grad = torch.full((3,), 4.0)
        all_reduce_grads([used_by_all, used_by_rank0, unused], DistInfo(rank=rank, world_size=2))
        results[rank] = (used_by_all.grad.tolist(), used_by_rank0.grad.tolist(), unused.grad)
    finally:
        dist.destroy_process_group()


def test_all_reduce_averages_and_keeps_absent_grads_absent(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "store"), results), nprocs=2, join=True)
    for rank in (0, 1):
        both, one, none = results[rank]
        assert both == [1.5] * 3  # (1 + 2) / 2
        assert one == [2.0] * 3  # (4 + 0) / 2: a rank without the grad adds 0
        assert none is None  # no rank had it: None, not zeros (AdamW would still move it)


def test_cuda_device_is_this_ranks_gpu(monkeypatch):
    """``--device cuda`` (and auto) mean the GPU of torchrun's LOCAL_RANK: NCCL needs an indexed device;
    a fixed ``cuda:N`` under torchrun would put every rank on one GPU and is refused in one line."""
    import pytest

    from genkit.cli import resolve_device
    from genkit.errors import GenkitError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == torch.device("cuda", 0) == resolve_device("auto")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1) == resolve_device("auto")
    with pytest.raises(GenkitError, match="under torchrun would put every rank on one GPU"):
        resolve_device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")
