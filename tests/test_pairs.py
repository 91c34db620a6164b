"""Reflow pairs on disk: closed-form teacher, NFE, atomic shards, resume, checks, PairStream."""

import json
import shutil
import weakref

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from genkit.couplings import Pairs
from genkit.errors import GenkitError
from genkit.pairs import PairStream, check_pairs, generate_pairs, shard_name
from genkit.seeding import derive_seed

MU, SIGMA = 1.7, 0.4
SHAPE = (2, 3)


def straight_gaussian(x, t):
    """Exact velocity of the 2-RF Gaussian flow (SPEC 2e.3): its flow map is x_0 -> MU + SIGMA x_0."""
    t = t.view(-1, *[1] * (x.dim() - 1))
    return MU + (SIGMA - 1) * (x - t * MU) / ((1 - t) + t * SIGMA)


class Counting:
    """Wraps the teacher: counts calls and raises once ``fail_after`` calls have been made."""

    def __init__(self, fail_after=None):
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, x, t):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated interruption")
        self.calls += 1
        return straight_gaussian(x, t)


# n = 50 in shards of 20 (20, 20, 10), batches of 8: 3 + 3 + 2 = 8 batches; rk4 with 5 steps: 20 NFE each.
ARGS = dict(n=50, shape=SHAPE, seed=3, method="rk4", steps=5, batch_size=8, shard_size=20, progress=False)
NFE_PER_BATCH = 4 * 5
BATCHES = [3, 3, 2]


def read_folder(folder):
    """Every file's content: the manifest's text, each shard's tensors and metadata (whose key order varies)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as f:
                out[p.name] = ({k: f.get_tensor(k) for k in f.keys()}, f.metadata())
        else:
            out[p.name] = p.read_bytes()
    return out


def assert_same_folder(a, b):
    """Same files, bit for bit, except the wall time and the rank of the process each shard records."""
    a, b = read_folder(a), read_folder(b)
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith(".safetensors"):
            (ta, ma), (tb, mb) = a[name], b[name]
            assert float(ma.pop("seconds")) >= 0 and float(mb.pop("seconds")) >= 0
            ma.pop("rank"), mb.pop("rank")
            assert ma == mb and ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta), name  # bit for bit
        else:
            assert a[name] == b[name]


def test_pairs_follow_the_closed_form_map_and_count_nfe(tmp_path):
    info = generate_pairs(straight_gaussian, tmp_path, **ARGS)
    assert (info.n, info.shape, info.num_shards, info.shard_size) == (50, SHAPE, 3, 20)
    assert info.nfe == NFE_PER_BATCH * sum(BATCHES)
    assert info.nfe_per_pair == NFE_PER_BATCH  # every pair's trajectory took 4 x 5 evaluations
    seconds = []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.json", *(shard_name(k) for k in range(3))]
    manifest = json.loads((tmp_path / "pairs.json").read_text())
    assert {k: manifest[k] for k in ("n", "shape", "shard_size", "num_shards", "method", "steps", "seed", "dtype")} == {
        "n": 50, "shape": [2, 3], "shard_size": 20, "num_shards": 3, "method": "rk4", "steps": 5, "seed": 3,
        "dtype": "float32",
    }
    for k, length in enumerate([20, 20, 10]):
        shard = load_file(str(tmp_path / shard_name(k)))
        assert shard["x_0"].shape == shard["x_1"].shape == (length, *SHAPE)
        assert shard["x_0"].dtype == torch.float32
        # rk4 on straight trajectories is exact up to float32 rounding
        torch.testing.assert_close(shard["x_1"], MU + SIGMA * shard["x_0"], atol=1e-5, rtol=0)
        with safe_open(str(tmp_path / shard_name(k)), framework="pt") as f:
            assert int(f.metadata()["nfe"]) == NFE_PER_BATCH * BATCHES[k]
            seconds.append(float(f.metadata()["seconds"]))
        # each shard's noise is reproducible on its own from derive_seed(seed, "pairs", k)
        g = torch.Generator().manual_seed(derive_seed(3, "pairs", k))
        noise = torch.cat([torch.randn((m, *SHAPE), generator=g) for m in ((8, 8, 4), (8, 8, 4), (8, 2))[k]])
        assert torch.equal(shard["x_0"], noise)
    assert all(s > 0 for s in seconds) and info.seconds == pytest.approx(sum(seconds), abs=2e-3)
    assert check_pairs(tmp_path) == info


def test_float16_storage_halves_the_bytes_and_keeps_the_map(tmp_path):
    generate_pairs(straight_gaussian, tmp_path, **(ARGS | dict(dtype="float16", n=20)))
    shard = load_file(str(tmp_path / shard_name(0)))
    assert shard["x_0"].dtype == shard["x_1"].dtype == torch.float16
    # float16 keeps 11 significant bits: |x| < 6 here, so rounding errors stay below 6 * 2^-11 * (1 + SIGMA)
    torch.testing.assert_close(shard["x_1"].float(), MU + SIGMA * shard["x_0"].float(), atol=6e-3, rtol=0)


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    generate_pairs(straight_gaussian, full, **ARGS)
    # die in the middle of the second shard
    with pytest.raises(RuntimeError, match="simulated"):
        generate_pairs(Counting(fail_after=NFE_PER_BATCH * (BATCHES[0] + 1)), part, **ARGS)
    assert sorted(p.name for p in part.iterdir()) == ["pairs.json", shard_name(0)]
    with pytest.raises(GenkitError) as err:
        check_pairs(part)
    assert "has 1 of 3 shards" in str(err.value) and "\n" not in str(err.value)
    teacher = Counting()
    info = generate_pairs(teacher, part, **ARGS)
    assert teacher.calls == NFE_PER_BATCH * (BATCHES[1] + BATCHES[2])  # only the missing shards
    assert info.nfe == NFE_PER_BATCH * sum(BATCHES) and info.nfe_per_pair == NFE_PER_BATCH  # both runs' work
    assert_same_folder(part, full)


def test_a_deleted_shard_alone_is_regenerated(tmp_path):
    full = tmp_path / "full"
    generate_pairs(straight_gaussian, full, **ARGS)
    shutil.copytree(full, tmp_path / "copy")
    (tmp_path / "copy" / shard_name(1)).unlink()
    (tmp_path / "copy" / f".{shard_name(1)}.tmp-999").write_bytes(b"half written")  # a killed run's leftover
    teacher = Counting()
    generate_pairs(teacher, tmp_path / "copy", **ARGS)
    assert teacher.calls == NFE_PER_BATCH * BATCHES[1]
    assert_same_folder(tmp_path / "copy", full)  # and the temporary is gone


def test_other_arguments_on_an_existing_folder_are_refused(tmp_path):
    generate_pairs(straight_gaussian, tmp_path, **(ARGS | dict(n=10)))
    with pytest.raises(GenkitError, match=r"seed=3 \(not 4\)") as err:
        generate_pairs(straight_gaussian, tmp_path, **(ARGS | dict(n=10, seed=4)))
    assert "\n" not in str(err.value)
    with pytest.raises(GenkitError, match="steps"):
        generate_pairs(straight_gaussian, tmp_path, **(ARGS | dict(n=10, steps=6)))


def test_bad_folders_and_arguments(tmp_path):
    with pytest.raises(GenkitError, match="no pairs.json"):
        check_pairs(tmp_path)
    generate_pairs(straight_gaussian, tmp_path, **ARGS)
    save_file({"x_0": torch.zeros(20, 3), "x_1": torch.zeros(20, 3)}, str(tmp_path / shard_name(1)))
    with pytest.raises(GenkitError, match=r"x_0 of shape \[20, 3\].*expects \[20, 2, 3\]") as err:
        check_pairs(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(GenkitError, match="training mode"):
        generate_pairs(nn.Linear(3, 3), tmp_path / "other", **ARGS)
    with pytest.raises(GenkitError, match="dtype"):
        generate_pairs(straight_gaussian, tmp_path / "other", **(ARGS | dict(dtype="int8")))


def test_host_memory_holds_one_shard_at_a_time(tmp_path, monkeypatch):
    """When shard k is written, every tensor of shard k - 1 has been freed."""
    saved = []
    real_save = safetensors.torch.save_file

    def spy(tensors, filename, metadata=None):
        for refs in saved:
            assert all(ref() is None for ref in refs), "an earlier shard is still in memory"
        assert all(t.shape[0] <= ARGS["shard_size"] for t in tensors.values())
        saved.append([weakref.ref(t) for t in tensors.values()])
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", spy)
    generate_pairs(straight_gaussian, tmp_path, **ARGS)
    assert len(saved) == 3


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    generate_pairs(straight_gaussian, folder, **ARGS)
    return folder


def all_x_0(folder):
    return torch.cat([load_file(str(folder / shard_name(k)))["x_0"] for k in range(3)])


def test_stream_epoch_is_a_permutation_of_the_pairs(pairs_dir):
    stream = PairStream(pairs_dir, 5, seed=0)  # shards 20, 20, 10 -> 4 + 4 + 2 batches, nothing dropped
    assert stream.batches_per_epoch == 10
    batches = [next(stream) for _ in range(10)]
    assert all(isinstance(b, Pairs) and b.x_0.dtype == torch.float32 and b.x_0.shape == (5, *SHAPE) for b in batches)
    x_0 = torch.cat([b.x_0 for b in batches])
    x_1 = torch.cat([b.x_1 for b in batches])
    torch.testing.assert_close(x_1, MU + SIGMA * x_0, atol=1e-5, rtol=0)  # pairs stay paired
    stored = all_x_0(pairs_dir).flatten(1)
    assert sorted(map(tuple, x_0.flatten(1).tolist())) == sorted(map(tuple, stored.tolist()))
    assert not torch.equal(x_0.flatten(1), stored)  # shuffled
    assert stream.state_dict() == {"epoch": 1, "shard": 0, "index": 0}
    second = torch.cat([next(stream).x_0 for _ in range(10)])
    assert not torch.equal(second, x_0)  # a new order each epoch


def test_stream_resumes_exactly(pairs_dir):
    stream = PairStream(pairs_dir, 3, seed=7)  # 6 + 6 + 3 = 15 batches per epoch
    for _ in range(11):
        next(stream)
    state = stream.state_dict()
    assert all(type(v) is int for v in state.values())
    expected = [next(stream) for _ in range(12)]  # crosses into the next epoch
    resumed = PairStream(pairs_dir, 3, seed=7)
    resumed.load_state_dict(state)
    for a, b in zip(expected, [next(resumed) for _ in range(12)]):
        assert torch.equal(a.x_0, b.x_0) and torch.equal(a.x_1, b.x_1)
    with pytest.raises(GenkitError, match="same pairs folder"):
        resumed.load_state_dict({"epoch": 0, "shard": 0, "index": 99})


def test_ranks_get_disjoint_pairs_and_equal_batch_counts(pairs_dir):
    rows = []
    for rank in range(3):  # per rank: 20 // 3 = 6 -> 3 batches of 2; 10 // 3 = 3 -> 1 batch
        stream = PairStream(pairs_dir, 2, seed=1, rank=rank, world_size=3)
        assert stream.batches_per_epoch == 7
        rows.append({tuple(r) for _ in range(7) for r in next(stream).x_0.flatten(1).tolist()})
    assert all(len(r) == 14 for r in rows)
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])


def test_stream_refuses_bad_input(pairs_dir, tmp_path):
    with pytest.raises(GenkitError, match="lower the batch size"):
        PairStream(pairs_dir, 21, seed=0)
    with pytest.raises(GenkitError, match="rank"):
        PairStream(pairs_dir, 2, seed=0, rank=2, world_size=2)
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(pairs_dir / "pairs.json", part / "pairs.json")
    with pytest.raises(GenkitError, match="has 0 of 3 shards"):
        PairStream(part, 2, seed=0)


def test_nfe_per_pair_of_shards_written_before_it_was_recorded(tmp_path):
    """Older shards lack ``pair_nfe`` and ``seconds``: the per-pair NFE comes from nfe and batch_size."""
    generate_pairs(straight_gaussian, tmp_path, **ARGS)
    for k in range(3):
        file = str(tmp_path / shard_name(k))
        with safe_open(file, framework="pt") as f:
            meta = {key: v for key, v in f.metadata().items() if key not in ("pair_nfe", "seconds")}
        save_file(load_file(file), file, metadata=meta)
    info = check_pairs(tmp_path)
    assert info.nfe == NFE_PER_BATCH * sum(BATCHES) and info.nfe_per_pair == NFE_PER_BATCH and info.seconds == 0


def test_processes_share_the_shards_and_make_the_same_folder(tmp_path):
    """Two workers (threads here, processes under torchrun) with a shared barrier: worker r writes shards
    k = r mod 2 for two workers, and the folder equals the one a single process writes."""
    import threading

    single, shared = tmp_path / "single", tmp_path / "shared"
    generate_pairs(straight_gaussian, single, **ARGS)
    barrier = threading.Barrier(2)
    infos, errors = [None, None], []

    def worker(rank):
        try:
            infos[rank] = generate_pairs(straight_gaussian, shared, **ARGS, rank=rank, world_size=2, barrier=barrier.wait)
        except BaseException as e:  # (reported below; a thread's exception would be lost)
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert infos[0] == infos[1] and infos[0].nfe == NFE_PER_BATCH * sum(BATCHES)
    ranks = []
    for k in range(3):
        with safe_open(str(shared / shard_name(k)), framework="pt") as f:
            ranks.append(f.metadata()["rank"])
    assert ranks == ["0", "1", "0"]
    assert_same_folder(shared, single)
    with pytest.raises(GenkitError, match="barrier"):
        generate_pairs(straight_gaussian, shared, **ARGS, rank=1, world_size=2)
    with pytest.raises(GenkitError, match="rank"):
        generate_pairs(straight_gaussian, shared, **ARGS, rank=2, world_size=2, barrier=lambda: None)
