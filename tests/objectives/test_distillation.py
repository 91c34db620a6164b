import math

import pytest
import torch

from genkit.couplings import Pairs
from genkit.errors import GenkitError
from genkit.nn.mlp import VelocityMLP
from genkit.objectives.base import LossOutput
from genkit.objectives.distillation import (
    DISTANCES,
    Distillation,
    huber_c_default,
    l2_distance,
    pseudo_huber_distance,
)
from genkit.sampling import ODESampler

NEED = frozenset({"model"})


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, t):
        return self.fn(x, t)


def _pairs(n=6, shape=(3, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    return Pairs(torch.randn(n, *shape, generator=g), 1.5 + 0.5 * torch.randn(n, *shape, generator=g))


def _model(record=None):
    def fn(x, t):
        if record is not None:
            record.append((x.clone(), t.clone()))
        return 0.5 * x.cos() + t.view(-1, *[1] * (x.dim() - 1))

    return Fn(fn)


def test_one_step_l2_by_hand():
    p, seen = _pairs(), []
    out = Distillation()({"model": _model(seen)}, p, need=NEED)
    assert isinstance(out, LossOutput) and set(out.losses) == {"model"} and out.losses["model"].dim() == 0
    (x, t), = seen
    assert torch.equal(x, p.x_0) and torch.equal(t, torch.zeros(6))  # v(z_0, 0)
    x_hat = p.x_0 + 0.5 * p.x_0.cos()
    torch.testing.assert_close(out.losses["model"], ((x_hat - p.x_1) ** 2).mean())


def test_one_step_pseudo_huber_by_hand():
    p = _pairs()
    x_hat = p.x_0 + 0.5 * p.x_0.cos()
    sq = ((x_hat - p.x_1) ** 2).flatten(1).sum(1)
    c = 0.00054 * math.sqrt(6)  # Song & Dhariwal: 0.00054 sqrt(dim), dim = 3 * 2
    out = Distillation(loss="pseudo_huber")({"model": _model()}, p, need=NEED)
    torch.testing.assert_close(out.losses["model"], (torch.sqrt(sq + c * c) - c).mean())
    out = Distillation(loss="pseudo_huber", huber_c=0.3)({"model": _model()}, p, need=NEED)
    torch.testing.assert_close(out.losses["model"], (torch.sqrt(sq + 0.09) - 0.3).mean())
    assert huber_c_default(3072) == pytest.approx(0.00054 * math.sqrt(3072))


@pytest.mark.parametrize("loss", ["l2", "pseudo_huber"])
def test_k_step_by_hand(loss):
    k, p, seen = 4, _pairs(n=40, shape=(2,), seed=1), []
    objective = Distillation(steps=k, loss=loss)
    out = objective({"model": _model(seen)}, p, need=NEED, generator=torch.Generator().manual_seed(3))
    i = torch.randint(0, k, (40,), generator=torch.Generator().manual_seed(3))  # the only draw
    t = i.float() / k
    (x, t_seen), = seen
    torch.testing.assert_close(t_seen, t, rtol=0, atol=0)
    assert set((t_seen * k).tolist()) == {0.0, 1.0, 2.0, 3.0}  # exact grid times, t = 1 never
    x_t = t[:, None] * p.x_1 + (1 - t[:, None]) * p.x_0
    torch.testing.assert_close(x, x_t)
    v = 0.5 * x_t.cos() + t[:, None]
    expected = DISTANCES[loss](v, p.x_1 - p.x_0).mean()  # velocity vs the straight line z_1 - z_0
    if loss == "l2":
        torch.testing.assert_close(expected, ((v - (p.x_1 - p.x_0)) ** 2).mean())
    torch.testing.assert_close(out.losses["model"], expected)


def test_pseudo_huber_limits():
    c = 0.01
    d = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    norm = d.norm(dim=1)
    small = 1e-5 * d / norm[:, None]  # ||d|| = 1e-5 << c: ~ ||d||^2 / (2c), relative error ~ ||d||^2 / (4 c^2)
    torch.testing.assert_close(
        pseudo_huber_distance(small.double(), torch.zeros(5, 8, dtype=torch.float64), c),
        (small.double().norm(dim=1) ** 2) / (2 * c),
        rtol=1e-5,
        atol=0,
    )
    big = 100.0 * d  # ||d|| >> c: ~ ||d|| - c, error c^2 / (2 ||d||) < 1e-6
    torch.testing.assert_close(pseudo_huber_distance(big, torch.zeros(5, 8), c), 100.0 * norm - c, rtol=1e-6, atol=1e-5)
    assert torch.equal(pseudo_huber_distance(d, d, c), torch.zeros(5))
    torch.testing.assert_close(l2_distance(d, torch.zeros(5, 8)), d.pow(2).mean(1))


def test_distance_hook_replaces_the_loss():
    p, calls = _pairs(), []

    def l1(pred, target):
        calls.append((pred, target))
        return (pred - target).abs().flatten(1).sum(1)

    out = Distillation(distance=l1)({"model": _model()}, p, need=NEED)
    (pred, target), = calls
    x_hat = p.x_0 + 0.5 * p.x_0.cos()
    torch.testing.assert_close(pred, x_hat)  # one step: compared in sample space, where LPIPS applies
    assert target is p.x_1
    torch.testing.assert_close(out.losses["model"], (x_hat - p.x_1).abs().flatten(1).sum(1).mean())


def test_gradients_reach_the_student():
    model = VelocityMLP(2, hidden=16, depth=1)
    for steps in (1, 3):
        model.zero_grad()
        out = Distillation(steps=steps, model="student")(
            {"student": model}, _pairs(8, (2,)), need=frozenset({"student"}), generator=torch.Generator().manual_seed(0)
        )
        out.losses["student"].backward()
        assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in model.parameters())


def test_bad_input():
    with pytest.raises(GenkitError, match="Pairs"):
        Distillation()({"model": _model()}, torch.zeros(4, 2), need=NEED)
    with pytest.raises(GenkitError, match="model"):
        Distillation()({"flow": _model()}, _pairs(), need=NEED)
    with pytest.raises(GenkitError, match="per-sample"):
        Distillation(distance=lambda a, b: (a - b).pow(2).mean())({"model": _model()}, _pairs(), need=NEED)
    with pytest.raises(GenkitError, match="shape"):
        Distillation()({"model": Fn(lambda x, t: x[:, :1])}, _pairs(), need=NEED)
    with pytest.raises(GenkitError, match="same shape"):
        Distillation()({"model": _model()}, Pairs(torch.zeros(3, 2), torch.zeros(3, 4)), need=NEED)
    with pytest.raises(GenkitError, match="steps"):
        Distillation(steps=0)
    with pytest.raises(GenkitError, match="loss"):
        Distillation(loss="lpips")
    with pytest.raises(GenkitError, match="huber_c"):
        Distillation(huber_c=0.1)
    with pytest.raises(GenkitError, match="huber_c"):
        Distillation(loss="pseudo_huber", huber_c=-1.0)


def test_one_euler_step_sampler_is_the_one_step_map():
    # One-step generation needs no new class: ODESampler with one Euler step is x_0 + v(x_0, 0).
    torch.manual_seed(0)
    field = VelocityMLP(2, hidden=16, depth=2)
    sampler = ODESampler(field, (2,), method="euler", steps=1)
    x_0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = x_0 + field(x_0, torch.zeros(32))
        traj = sampler.solve(x_0)
    assert traj.nfe == 1
    torch.testing.assert_close(traj.x, expected, rtol=0, atol=0)
    torch.testing.assert_close(sampler.sample(32, generator=torch.Generator().manual_seed(1)), expected, rtol=0, atol=0)
