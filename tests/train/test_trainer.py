"""The Trainer: exact resume, two optimizers at a ratio, NaN stop, EMA, accumulation."""

import json
import math
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genkit.data.toy import ToyStream
from genkit.errors import GenkitError
from genkit.nn.mlp import MLP, VelocityMLP
from genkit.objectives.base import LossOutput
from genkit.objectives.flow_matching import FlowMatching
from genkit.objectives.gan import WGANGP
from genkit.paths import AffinePath, LinearSchedule
from genkit.train import TrainConfig, Trainer
from genkit.train import checkpoint as ckpt
from genkit.train.ema import EMA, ema_decay


class DropoutField(nn.Module):
    """A velocity field that also draws from the global RNG (dropout), to test RNG restore."""

    def __init__(self):
        super().__init__()
        self.net = VelocityMLP(2, hidden=32, depth=2)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, t):
        return self.net(self.drop(x), t)


def flow_trainer(run_dir, steps, *, callbacks=(), **cfg):
    torch.manual_seed(0)
    model = DropoutField()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    config = TrainConfig(**{"steps": steps, "batch_size": 64, "log_every": 5, "sample_every": 0,
                            "checkpoint_every": 1000, "tensorboard": False, "progress": False,
                            "warmup_steps": 5, "grad_clip": 1.0, "ema_decay": 0.9, **cfg})
    data = ToyStream("8gaussians", config.micro_batch_size(), seed=0)
    return Trainer({"model": model}, {"model": opt}, FlowMatching(AffinePath(LinearSchedule())), data, config,
                   run_dir=run_dir, recipe="test", run_config={"x": 1}, seed=0, callbacks=callbacks)


def interrupt_at(step):
    def cb(trainer):
        if trainer.step == step:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: finish the step, checkpoint, return
    return cb


def losses(run_dir):
    lines = [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(d["step"], d["loss/model"]) for d in lines]


def global_draws(record):
    """A callback drawing from Python's and numpy's global RNGs after every step (as data augmentation or
    a user's objective might): ``record`` gets (step, random.random(), random.gauss, np.random.rand(),
    np.random.randn()); gauss/randn exercise the generators' cached second normal."""
    def cb(trainer):
        record.append((trainer.step, random.random(), random.gauss(0.0, 1.0), float(np.random.rand()),
                       float(np.random.randn())))
    return cb


def seed_globals(seed):
    random.seed(seed)
    np.random.seed(seed)


def test_resume_is_bit_exact(tmp_path):
    n = 20
    seed_globals(1)
    full_draws, split_draws = [], []
    full = flow_trainer(tmp_path / "full", n, callbacks=[global_draws(full_draws)])
    assert not full.fit().interrupted

    seed_globals(1)
    first = flow_trainer(tmp_path / "split", n, callbacks=[global_draws(split_draws), interrupt_at(n // 2)])
    result = first.fit()
    assert result.interrupted and result.step == n // 2
    assert result.checkpoint.name == ckpt.step_dir_name(n // 2)

    seed_globals(12345)  # a new process: other global states, until the checkpoint's are restored
    second = flow_trainer(tmp_path / "split", n, callbacks=[global_draws(split_draws)])  # "the same command" again
    assert second.fit().step == n
    # Python's and numpy's global RNGs continue as in the uninterrupted run
    assert [d[0] for d in split_draws] == list(range(1, n + 1))
    assert split_draws == full_draws

    for a, b in zip(full.models["model"].state_dict().values(), second.models["model"].state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema["model"].module.state_dict().values(), second.ema["model"].module.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = full.optimizers["model"].state_dict(), second.optimizers["model"].state_dict()
    for k in sa["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa["state"][k][name], sb["state"][k][name])
    assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"]
    assert torch.equal(next(full.data), next(second.data))  # the next batch
    # (DropoutField draws from the global RNG: equal weights also show its state was restored)
    assert losses(tmp_path / "full") == losses(tmp_path / "split")  # same logged losses, no duplicated lines


def global_states():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return random.getstate(), (name, keys.tolist(), pos, has_gauss, cached)


def test_checkpoint_rng_states_load_weights_only_and_older_checkpoints_resume(tmp_path):
    seed_globals(3)
    random.gauss(0.0, 1.0), np.random.randn()  # leave a cached second normal in both
    saved = global_states()  # (nothing in the run draws from them)
    flow_trainer(tmp_path, 4).fit()
    path = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)  # tensors and plain values
    (rng,) = state["rng"]
    assert set(rng) == {"torch", "python", "numpy"}
    assert isinstance(rng["python"], list) and isinstance(rng["numpy"]["keys"], torch.Tensor)

    seed_globals(4)
    assert flow_trainer(tmp_path, 4).fit().step == 4  # resumes (nothing left to train): restores the states
    assert global_states() == saved

    # a checkpoint written before Python's and numpy's states were saved still resumes (theirs left alone)
    del rng["python"], rng["numpy"]
    torch.save(state, path / "trainer.pt")
    seed_globals(7)
    before = global_states()
    assert flow_trainer(tmp_path, 6).fit().step == 6
    assert global_states() == before


def metric_lines(run_dir):
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def spied_trainer(run_dir, steps, opt_fn, **cfg):
    """A plain velocity MLP trained with ``opt_fn(params)``, logging every step; returns the trainer and a
    list that gets, at each optimizer step, (lr used, norm of the gradient it steps with, norm of the change)."""
    torch.manual_seed(0)
    model = VelocityMLP(2, hidden=16, depth=2)
    opt = opt_fn(model.parameters())
    seen, before = [], []
    params = [p for g in opt.param_groups for p in g["params"]]

    def pre(o, args, kwargs):
        before[:] = [p.detach().clone() for p in params]

    def post(o, args, kwargs):
        grad = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params]))
        change = torch.linalg.vector_norm(torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(params, before)]))
        seen.append((o.param_groups[0]["lr"], float(grad), float(change)))

    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)
    config = TrainConfig(**{"steps": steps, "batch_size": 32, "log_every": 1, "sample_every": 0, "checkpoint_every": 0,
                            "tensorboard": False, "progress": False, **cfg})
    t = Trainer({"model": model}, {"model": opt}, FlowMatching(AffinePath(LinearSchedule())),
                ToyStream("8gaussians", 32, seed=0), config, run_dir=run_dir, recipe="test", run_config={})
    return t, seen


def test_grad_clip_bounds_the_update_and_logs_the_raw_norm(tmp_path):
    clip, lr = 1e-2, 1.0  # SGD: the change of the weights is lr x the clipped gradient
    t, seen = spied_trainer(tmp_path / "tiny", 4, lambda ps: torch.optim.SGD(ps, lr=lr), grad_clip=clip)
    t.fit()
    raw = [d["grad_norm/model"] for d in metric_lines(tmp_path / "tiny")]
    assert len(raw) == len(seen) == 4 and all(n > 10 * clip for n in raw)  # the raw norms exceed the clip...
    for _, grad, change in seen:  # ...and the step used a gradient of norm grad_clip
        assert grad == pytest.approx(clip, rel=1e-4)
        assert change == pytest.approx(lr * clip, rel=1e-3)

    # a clip above the norms changes nothing: the step's gradient is the logged (pre-clip) norm
    t, seen = spied_trainer(tmp_path / "wide", 4, lambda ps: torch.optim.SGD(ps, lr=1e-3), grad_clip=1e6)
    t.fit()
    raw = [d["grad_norm/model"] for d in metric_lines(tmp_path / "wide")]
    assert [grad for _, grad, _ in seen] == pytest.approx(raw, rel=1e-5)


def test_lr_warmup_is_linear_and_logged(tmp_path):
    lr, w = 1e-2, 4
    t, seen = spied_trainer(tmp_path, 6, lambda ps: torch.optim.Adam(ps, lr=lr), warmup_steps=w)
    t.fit()
    # step s (1, 2, ...) trains with min(1, s / w) x lr ...
    assert [used for used, _, _ in seen] == pytest.approx([min(1.0, s / w) * lr for s in range(1, 7)], rel=1e-12)
    # ... and the lr logged at step k is the one step k trained with
    log = metric_lines(tmp_path)
    assert [d["step"] for d in log] == list(range(1, 7))
    assert [d["lr/model"] for d in log] == pytest.approx([min(1.0, k / w) * lr for k in range(1, 7)], rel=1e-12)


def test_lr_warmup_counts_each_optimizers_own_steps(tmp_path):
    """At 5:1 the generator's k-th step (Trainer step 5k) trains with min(1, k / w) x lr: the logged rate."""
    w = 3
    gan_trainer(tmp_path, 15, warmup_steps=w, log_every=5).fit()
    log = metric_lines(tmp_path)
    assert [d["step"] for d in log] == [5, 10, 15]
    assert [d["lr/critic"] for d in log] == pytest.approx([1e-3] * 3, rel=1e-12)
    assert [d["lr/generator"] for d in log] == pytest.approx([min(1.0, k / w) * 1e-3 for k in (1, 2, 3)], rel=1e-12)


@pytest.mark.parametrize("tensorboard", [True, False])
def test_tensorboard_events_only_when_asked(tmp_path, tensorboard):
    flow_trainer(tmp_path, 4, log_every=2, tensorboard=tensorboard).fit()
    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    if not tensorboard:
        assert events == [] and not (tmp_path / "tensorboard").exists()
        return
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    log = metric_lines(tmp_path)
    for key in ("loss/model", "lr/model", "grad_norm/model"):  # the same scalars as metrics.jsonl
        scalars = acc.Scalars(key)
        assert [e.step for e in scalars] == [d["step"] for d in log] == [2, 4]
        assert [e.value for e in scalars] == pytest.approx([d[key] for d in log], rel=1e-6)


def test_resume_refuses_other_recipe_and_shape(tmp_path):
    flow_trainer(tmp_path, 5).fit()
    other = flow_trainer(tmp_path, 10)
    other.recipe = "another"
    with pytest.raises(GenkitError, match="recipe 'test'"):
        other.fit()
    torch.manual_seed(0)
    wider = VelocityMLP(2, hidden=48, depth=2)
    t = Trainer({"model": wider}, {"model": torch.optim.Adam(wider.parameters())},
                FlowMatching(AffinePath(LinearSchedule())), ToyStream("moons", 8, seed=0),
                TrainConfig(steps=10, batch_size=8, progress=False, tensorboard=False),
                run_dir=tmp_path, recipe="test", run_config={})
    with pytest.raises(GenkitError, match="shape"):
        t.fit()


def test_resume_refuses_another_run_config_and_allows_more_steps(tmp_path):
    """A checkpoint trained under one run config is not resumed under another data set, seed or optimizer
    (refused before config.json is rewritten); the steps, cadences, device and evaluation may change."""
    first = flow_trainer(tmp_path, 4)
    first.run_config = {"recipe": "test", "seed": 0, "data": {"dataset": "8gaussians", "root": "data"},
                        "optim": {"lr": 1e-3},
                        "train": {"steps": 4, "batch_size": 64, "log_every": 5}, "sample": {"n_eval": 10}}
    first.fit()
    card = (tmp_path / "config.json").read_text()
    for change, named in (({"data": {"dataset": "moons", "root": "data"}}, "data.dataset: '8gaussians' -> 'moons'"),
                          ({"seed": 1}, "seed: 0 -> 1"), ({"optim": {"lr": 0.1}}, "optim.lr: 0.001 -> 0.1"),
                          ({"train": {"steps": 8, "batch_size": 32, "log_every": 5}}, "train.batch_size: 64 -> 32")):
        other = flow_trainer(tmp_path, 8)
        other.run_config = first.run_config | change
        with pytest.raises(GenkitError, match="other settings") as info:
            other.fit()
        assert named in str(info.value) and "another --out" in str(info.value)
        assert (tmp_path / "config.json").read_text() == card
    more = flow_trainer(tmp_path, 8, log_every=1)
    more.run_config = first.run_config | {"train": {"steps": 8, "batch_size": 64, "log_every": 1},
                                          "sample": {"n_eval": 99}, "device": "cuda", "extra": 1,
                                          "data": {"dataset": "8gaussians", "root": "/elsewhere"}}
    assert more.fit().step == 8
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 8


@pytest.mark.parametrize("sub", ["", "sub"])
def test_run_dir_that_cannot_be_a_folder_is_a_one_line_error(tmp_path, sub):
    (tmp_path / "afile").write_text("x")
    run_dir = tmp_path / "afile" / sub if sub else tmp_path / "afile"
    with pytest.raises(GenkitError, match="cannot write the run folder") as info:
        flow_trainer(run_dir, 2).fit()
    assert "\n" not in str(info.value) and (tmp_path / "afile").read_text() == "x"


class RankRound:
    """Flow matching whose state differs between ranks, as MonoFlow's round (its z and target) does."""

    def __init__(self, value):
        self.inner, self.value = FlowMatching(AffinePath(LinearSchedule())), torch.tensor([float(value)])

    def __call__(self, models, batch, *, need, generator=None):
        return self.inner(models, batch, need=need, generator=generator)

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_objective_state_is_saved_and_restored_per_rank(tmp_path, monkeypatch):
    """Under DDP every rank's objective state goes into the checkpoint (gathered like the RNG states) and
    each rank gets its own back; a checkpoint of one objective state for all (older ones) still loads.
    (Two ranks are simulated: the gathering and the barrier are stood in for.)"""
    from genkit.train import distributed
    from genkit.train.distributed import DistInfo

    t = flow_trainer(tmp_path, 3)
    t.objective = RankRound(0)
    t.dist = DistInfo(rank=0, world_size=2)
    t._gather = lambda obj: [obj, {"value": torch.tensor([1.0])} if "value" in obj else obj]  # rank 1's state
    state = t.state_dict()
    assert [s["value"].item() for s in state["objective"]] == [0.0, 1.0]

    del t._gather
    t.dist = DistInfo()
    t.fit()  # a one-rank checkpoint, turned into a two-rank one below
    path = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    saved = ckpt.load_trainer_state(path)
    assert [s["value"].item() for s in saved["objective"]] == [0.0]
    saved["objective"] = [{"value": torch.tensor([5.0])}, {"value": torch.tensor([6.0])}]
    saved["rng"], saved["world_size"] = saved["rng"] * 2, 2
    torch.save(saved, path / "trainer.pt")
    monkeypatch.setattr(distributed, "barrier", lambda info: None)
    for rank, want in ((0, 5.0), (1, 6.0)):
        r = flow_trainer(tmp_path, 3)
        r.objective, r.dist = RankRound(-1), DistInfo(rank=rank, world_size=2)
        r._resume()
        assert r.objective.value.item() == want
    saved["objective"] = {"value": torch.tensor([7.0])}  # as checkpoints before per-rank states held it
    torch.save(saved, path / "trainer.pt")
    r = flow_trainer(tmp_path, 3)
    r.objective, r.dist = RankRound(-1), DistInfo(rank=1, world_size=2)
    r._resume()
    assert r.objective.value.item() == 7.0


class NaNAfter:
    """Flow matching whose loss turns NaN from call `k` on."""

    def __init__(self, k):
        self.inner, self.k, self.calls = FlowMatching(AffinePath(LinearSchedule())), k, 0

    def __call__(self, models, batch, *, need, generator=None):
        self.calls += 1
        out = self.inner(models, batch, need=need, generator=generator)
        if self.calls >= self.k:
            return LossOutput({"model": out.losses["model"] * float("nan")})
        return out


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    t = flow_trainer(tmp_path, 50, checkpoint_every=4, log_every=5)
    t.objective = NaNAfter(7)
    with pytest.raises(GenkitError, match="non-finite loss at step 7") as e:
        t.fit()
    assert "\n" not in str(e.value)
    last = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert last.name == ckpt.step_dir_name(4)
    fresh = DropoutField()
    ckpt.load_weights(last, "model", fresh)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_non_finite_weights_after_finite_losses_are_never_checkpointed(tmp_path):
    """An overflowing gradient can leave inf weights after a step whose loss was finite: the checkpoint
    of that step is refused, the last good one kept."""
    def overflow_at(step):
        def cb(trainer):
            if trainer.step == step:
                with torch.no_grad():
                    next(trainer.models["model"].parameters()).view(-1)[0] = float("inf")
        return cb

    t = flow_trainer(tmp_path, 50, checkpoint_every=3, log_every=100, callbacks=[overflow_at(6)])
    with pytest.raises(GenkitError, match="non-finite weights at step 6 .*last good checkpoint .*step_00000003") as e:
        t.fit()
    assert "\n" not in str(e.value)
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("step_*"))] == [ckpt.step_dir_name(3)]


def gan_trainer(run_dir, steps, order=("critic", "generator"), **cfg):
    torch.manual_seed(0)
    models = {"generator": MLP(2, 2, hidden=32, depth=2), "critic": MLP(2, 1, hidden=32, depth=2)}
    opts = {n: torch.optim.Adam(models[n].parameters(), lr=1e-3, betas=(0.0, 0.9)) for n in order}
    config = TrainConfig(**{"steps": steps, "batch_size": 64, "log_every": 10, "sample_every": 0,
                            "checkpoint_every": 1000, "tensorboard": False, "progress": False, **cfg})
    return Trainer(models, opts, WGANGP(latent_dim=2), ToyStream("8gaussians", 64, seed=1), config,
                   run_dir=run_dir, recipe="gan-test", run_config={}, seed=0, update_every={"generator": 5})


def test_two_optimizers_at_five_to_one(tmp_path):
    t = gan_trainer(tmp_path, 50)
    g0 = [p.clone() for p in t.models["generator"].parameters()]
    t.fit()
    steps = {n: {int(s["step"]) for s in o.state_dict()["state"].values()} for n, o in t.optimizers.items()}
    assert steps == {"critic": {50}, "generator": {10}}
    assert t._ema_updates == {"critic": 50, "generator": 10}
    assert any(not torch.equal(a, b) for a, b in zip(g0, t.models["generator"].parameters()))
    log = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss/critic", "loss/generator"):
        values = [d[key] for d in log]
        assert all(math.isfinite(v) for v in values) and len(set(values)) == len(values)


class OrderSpy:
    """WGAN-GP's losses; records each call's ``need`` and the critic's first weight at that moment."""

    def __init__(self):
        self.inner, self.calls = WGANGP(latent_dim=2), []

    def __call__(self, models, batch, *, need, generator=None):
        self.calls.append((tuple(need), next(models["critic"].parameters()).detach().clone()))
        return self.inner(models, batch, need=need, generator=generator)


@pytest.mark.parametrize("order", [("critic", "generator"), ("generator", "critic")])
def test_due_optimizers_step_in_turn_in_the_mappings_order(order):
    """Alternating updates: on step 5 both are due; each loss is computed after the previous optimizer
    stepped, in the order of the optimizers mapping (critic first: the generator meets the critic its
    step-5 update produced, as in WGAN-GP's Algorithm 1)."""
    t = gan_trainer(None, 5, order)
    spy = t.objective = OrderSpy()
    t.fit()
    assert [need for need, _ in spy.calls] == [("critic",)] * 4 + [(order[0],), (order[1],)]
    step5 = dict(zip(order, (w for _, w in spy.calls[4:])))
    after = next(t.models["critic"].parameters()).detach()
    if order[0] == "critic":
        assert torch.equal(step5["generator"], after) and not torch.equal(step5["critic"], after)
    else:  # the generator first: it meets the critic of step 4
        assert torch.equal(step5["generator"], step5["critic"]) and not torch.equal(step5["generator"], after)


def test_update_ratio_must_name_an_optimizer(tmp_path):
    t = gan_trainer(None, 1)
    with pytest.raises(GenkitError, match="not an optimizer"):
        Trainer(t.models, t.optimizers, t.objective, t.data, t.config, run_dir=None, recipe="x",
                run_config={}, update_every={"gen": 5})


def test_accumulation_matches_one_big_batch():
    """Two micro-batches of 32 give the gradient of their mean, like one batch of 64."""
    def run(accumulate):
        torch.manual_seed(0)
        model = MLP(2, 1, hidden=16, depth=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        xs = iter(torch.randn(4, 32, 2, generator=torch.Generator().manual_seed(0)))

        class Stream:
            def __next__(self):
                return next(xs)
            def state_dict(self):
                return {}
            def load_state_dict(self, s):
                pass

        class Batches:  # one 64 batch == two 32 micro-batches
            def __init__(self):
                self.src = Stream()
            def __next__(self):
                return torch.cat([next(self.src), next(self.src)]) if accumulate == 1 else next(self.src)
            def state_dict(self):
                return {}
            def load_state_dict(self, s):
                pass

        obj = lambda models, x, *, need, generator=None: LossOutput({"model": (models["model"](x) ** 2).mean()})
        cfg = TrainConfig(steps=2, batch_size=64, accumulate=accumulate, tensorboard=False, progress=False)
        Trainer({"model": model}, {"model": opt}, obj, Batches(), cfg, run_dir=None, recipe="x", run_config={}).fit()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(1), run(2)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ema_follows_the_formula():
    model = nn.Linear(3, 1)
    ema = EMA(model, decay=0.9, warmup=True)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)  # warm-up decay min(0.9, 1/10) = 0.1
    assert ema_decay(0, 0.9, True) == pytest.approx(0.1)
    torch.testing.assert_close(ema.module.weight, 0.1 * start + 0.9 * (start + 1.0))
    assert ema_decay(1000, 0.9, True) == 0.9 and ema_decay(0, 0.9, False) == 0.9
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_batch_size_must_divide():
    with pytest.raises(GenkitError, match="multiple of ranks x accumulate"):
        TrainConfig(batch_size=10, accumulate=3).micro_batch_size(1)


def test_time_limit_ends_the_run_and_counts_over_resumes(tmp_path):
    limit = 0.003  # minutes: 0.18 s of training, far fewer than the 10**6 steps asked for
    first = flow_trainer(tmp_path, 10**6, time_limit=limit).fit()
    assert first.time_limit_reached and not first.interrupted and 0 < first.step < 10**6
    assert first.checkpoint.name == ckpt.step_dir_name(first.step)  # the run ends with a checkpoint
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == first.step and last["train_seconds"] >= 60 * limit

    again = flow_trainer(tmp_path, 10**6, time_limit=limit).fit()  # the same command: the budget is spent
    assert again.time_limit_reached and again.step == first.step

    more = flow_trainer(tmp_path, 10**6, time_limit=2 * limit).fit()  # a larger budget continues the run
    assert more.time_limit_reached and more.step > first.step
    state = ckpt.load_trainer_state(more.checkpoint)
    assert 2 * 60 * limit <= state["train_seconds"] < 2 * 60 * limit + 5


def test_time_limit_does_not_cut_a_run_that_reaches_its_steps(tmp_path):
    result = flow_trainer(tmp_path, 5, time_limit=10.0).fit()
    assert result.step == 5 and not result.time_limit_reached


@pytest.mark.parametrize("field, value, message", [
    ("time_limit", -1.0, "--train.time-limit must be >= 0"),
    ("steps", 0, "--train.steps must be >= 1"),
    ("grad_clip", -0.5, "--train.grad-clip must be >= 0"),
    ("ema_decay", 1.0, r"--train.ema-decay must be in \[0, 1\)"),
])
def test_bad_train_settings_are_one_line_errors(field, value, message):
    with pytest.raises(GenkitError, match=message):
        TrainConfig(**{field: value})


def test_train_seconds_leave_out_snapshots(tmp_path):
    import time

    def slow_snapshot(models, step):
        time.sleep(0.5)

    trainer = flow_trainer(tmp_path, 4, sample_every=1)
    trainer.snapshot = slow_snapshot
    result = trainer.fit()
    assert result.train_seconds < 1.0  # four snapshots slept 2 s: not counted


class SlowFirstCall(FlowMatching):
    """Flow matching whose first call sleeps, as a step does while torch.compile compiles."""

    def __init__(self):
        super().__init__(AffinePath(LinearSchedule()))
        self.calls = 0

    def __call__(self, *args, **kwargs):
        import time

        self.calls += 1
        if self.calls == 1:
            time.sleep(1.0)
        return super().__call__(*args, **kwargs)


class NoCompileMLP(VelocityMLP):
    def compile(self, *args, **kwargs):  # stands in for torch.compile (slow on the CPU)
        pass


@pytest.mark.parametrize("compile_", [False, True])
def test_train_seconds_leave_out_the_compiling_step(tmp_path, compile_):
    model = NoCompileMLP(2, hidden=16, depth=1)
    config = TrainConfig(steps=3, batch_size=8, compile=compile_, tensorboard=False, progress=False, sample_every=0)
    result = Trainer({"model": model}, {"model": torch.optim.Adam(model.parameters())}, SlowFirstCall(),
                     ToyStream("moons", 8, seed=0), config, run_dir=tmp_path, recipe="test", run_config={}).fit()
    assert (result.train_seconds < 0.5) == compile_


@pytest.mark.parametrize(("mode", "expected"), [("default", None), ("reduce-overhead", "reduce-overhead")])
def test_compile_mode_reaches_torch_compile(mode, expected):
    seen = []

    class RecordingMLP(VelocityMLP):
        def compile(self, *args, **kwargs):  # records instead of compiling (slow on the CPU)
            seen.append(kwargs.get("mode"))

    model = RecordingMLP(2, hidden=8, depth=1)
    config = TrainConfig(steps=1, batch_size=8, compile=True, compile_mode=mode, tensorboard=False, progress=False,
                         sample_every=0, checkpoint_every=0)
    Trainer({"model": model}, {"model": torch.optim.Adam(model.parameters())}, FlowMatching(AffinePath(LinearSchedule())),
            ToyStream("moons", 8, seed=0), config, run_dir=None, recipe="test", run_config={}).fit()
    assert seen == [expected]
