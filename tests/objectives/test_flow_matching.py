import math

import numpy as np
import pytest
import torch
from scipy import integrate as quad
from scipy import special, stats

from genkit.couplings import Pairs, ot_pairs
from genkit.errors import GenkitError
from genkit.nn.mlp import VelocityMLP
from genkit.objectives.base import LossOutput
from genkit.objectives.flow_matching import (
    TIME_SAMPLERS,
    FlowMatching,
    LogitNormalTime,
    UniformTime,
    UShapedTime,
)
from genkit.paths import AffinePath, LinearSchedule, VPSchedule

MU, SIGMA, D = 1.7, 0.4, 2
NEED = frozenset({"model"})


def v_star(x, t):
    """Exact marginal velocity N(0, I) -> N(MU, SIGMA^2 I) (SPEC 2e.1)."""
    t = t[:, None]
    s2 = (1 - t) ** 2 + t**2 * SIGMA**2
    return MU + (t * SIGMA**2 - (1 - t)) / s2 * (x - t * MU)


def l_star(t):
    """Per-dimension conditional variance of X_1 - X_0 given X_t (the irreducible FM loss at time t)."""
    cov = t * SIGMA**2 - (1 - t)
    return 1 + SIGMA**2 - cov**2 / ((1 - t) ** 2 + t**2 * SIGMA**2)


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, t):
        return self.fn(x, t)


def _objective(**kw):
    return FlowMatching(AffinePath(LinearSchedule()), **kw)


def _data(n, seed=0, dtype=torch.float32):
    return MU + SIGMA * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_matches_hand_computation_with_same_draws():
    x_1 = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(1))
    model = Fn(lambda x, t: 0.5 * x + t.view(-1, 1, 1))
    out = _objective(t_min=0.2)({"model": model}, x_1, need=NEED, generator=torch.Generator().manual_seed(7))
    assert isinstance(out, LossOutput) and set(out.losses) == {"model"} and dict(out.metrics) == {}
    g = torch.Generator().manual_seed(7)  # the documented draws: x_0 first, then t
    x_0 = torch.randn(6, 3, 4, generator=g)
    t = 0.2 + 0.8 * torch.rand(6, generator=g)
    x_t = t.view(-1, 1, 1) * x_1 + (1 - t.view(-1, 1, 1)) * x_0
    expected = ((0.5 * x_t + t.view(-1, 1, 1) - (x_1 - x_0)) ** 2).mean()
    torch.testing.assert_close(out.losses["model"], expected)


def test_times_respect_t_min_and_shapes():
    seen = {}

    def record(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros_like(x)

    _objective(t_min=0.9)({"model": Fn(record)}, _data(500), need=NEED, generator=torch.Generator().manual_seed(0))
    assert seen["x"].shape == (500, D) and seen["t"].shape == (500,)
    assert seen["t"].min() >= 0.9 and seen["t"].max() <= 1.0 and seen["t"].std() > 0.01


def test_exact_velocity_attains_analytic_minimum():
    # FM loss = L* + E|v - v*|^2 (mean over dims): the exact field gives L* = int_0^1 l_star(t) dt,
    # and adding a constant c to it adds c^2 (the cross term has mean 0).
    n = 200_000
    x_1 = _data(n, dtype=torch.float64)
    l_min = quad.quad(l_star, 0, 1)[0]
    objective = _objective()
    exact = objective({"model": Fn(v_star)}, x_1, need=NEED, generator=torch.Generator().manual_seed(3))
    shifted = objective(
        {"model": Fn(lambda x, t: v_star(x, t) + 0.3)}, x_1, need=NEED, generator=torch.Generator().manual_seed(3)
    )
    # Monte-Carlo std of the mean of n * D squared residuals (variance <= 2 l^2 with l <= 1.16): < 0.003.
    assert exact.losses["model"].item() == pytest.approx(l_min, abs=0.01)
    assert (shifted.losses["model"] - exact.losses["model"]).item() == pytest.approx(0.09, abs=0.01)


@pytest.fixture
def one_thread():
    # Tiny matmuls: one thread is fastest and immune to oversubscription on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_learns_closed_form_velocity(one_thread):
    torch.manual_seed(0)  # the test seeds the network init; the library never seeds
    model = VelocityMLP(D, hidden=128, depth=3)
    objective = _objective()
    g = torch.Generator().manual_seed(10)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(400):
        x_1 = MU + SIGMA * torch.randn(512, D, generator=g)
        loss = objective({"model": model}, x_1, need=NEED, generator=g).losses["model"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Excess risk E|v_theta - v*|^2 on fresh points of the path, against the best constant predictor
    # (v = MU, excess 0.54): the trained net must explain > 95 % of it (observed 97.2-97.5 % over 3 seeds).
    ge = torch.Generator().manual_seed(2)
    t = 0.01 + 0.98 * torch.rand(4096, generator=ge)
    x_t = t[:, None] * _data(4096, seed=4) + (1 - t[:, None]) * torch.randn(4096, D, generator=ge)
    with torch.no_grad():
        excess = (model(x_t, t) - v_star(x_t, t)).pow(2).mean().item()
        baseline = (MU - v_star(x_t, t)).pow(2).mean().item()
    assert excess < 0.05 * baseline, (excess, baseline)
    # Pointwise at typical points of p_t, where v* differs from MU by up to ~1 (observed errors <= 0.17).
    for tt in (0.1, 0.5):
        s_t = math.sqrt((1 - tt) ** 2 + tt**2 * SIGMA**2)
        x = tt * MU + s_t * torch.tensor([[0.0, 0.0], [1.0, -1.0], [-0.5, 0.8]])
        tt_b = torch.full((3,), tt)
        with torch.no_grad():
            assert (model(x, tt_b) - v_star(x, tt_b)).abs().max() < 0.3


def test_gradients_reach_the_model_and_custom_key():
    model = VelocityMLP(D, hidden=16, depth=1)
    out = _objective(model="flow")(
        {"flow": model},
        (_data(8), torch.zeros(8)),
        need=frozenset({"flow"}),
        generator=torch.Generator().manual_seed(0),
    )
    assert set(out.losses) == {"flow"} and out.losses["flow"].dim() == 0
    out.losses["flow"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_input():
    with pytest.raises(GenkitError, match="model"):
        _objective()({"generator": Fn(lambda x, t: x)}, _data(4), need=NEED)
    with pytest.raises(GenkitError, match="shape"):
        _objective()({"model": Fn(lambda x, t: x[:, :1])}, _data(4), need=NEED)
    with pytest.raises(GenkitError, match="t_min"):
        _objective(t_min=1.0)
    with pytest.raises(GenkitError, match="data"):
        _objective()({"model": Fn(lambda x, t: x)}, {"x": _data(4)}, need=NEED)


# ----------------------------------------------------------------------------- couplings and pairs


def _hand_loss(model, x_0, x_1, t):
    tb = t.view(-1, *[1] * (x_1.dim() - 1))
    x_t = tb * x_1 + (1 - tb) * x_0
    return ((model(x_t, t) - (x_1 - x_0)) ** 2).mean()


def test_pairs_batch_is_used_as_given():
    g = torch.Generator().manual_seed(3)
    x_0, x_1 = torch.randn(5, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g)
    model = Fn(lambda x, t: x.sin() * t.view(-1, 1, 1))
    for coupling in ("independent", "ot"):  # the coupling is ignored for Pairs
        out = _objective(coupling=coupling)(
            {"model": model}, Pairs(x_0, x_1), need=NEED, generator=torch.Generator().manual_seed(11)
        )
        t = torch.rand(5, generator=torch.Generator().manual_seed(11))  # the only draw: t
        torch.testing.assert_close(out.losses["model"], _hand_loss(model, x_0, x_1, t))


def test_ot_coupling_pairs_drawn_noise_with_the_data():
    x_1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1)) + 3.0
    labels = torch.arange(16)
    model = Fn(lambda x, t: 0.3 * x - t[:, None])
    out = _objective(coupling="ot")(
        {"model": model}, (x_1, labels), need=NEED, generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)  # documented draws: x_0 (then reordered), then t
    x_0 = ot_pairs(x_1, generator=g).x_0
    t = torch.rand(16, generator=g)
    torch.testing.assert_close(out.losses["model"], _hand_loss(model, x_0, x_1, t))
    # ... which differs from the independent pairing of the same draw.
    ind = _objective()({"model": model}, x_1, need=NEED, generator=torch.Generator().manual_seed(5))
    assert abs(ind.losses["model"].item() - out.losses["model"].item()) > 1e-3


def test_pairs_bad_input():
    with pytest.raises(GenkitError, match="same shape"):
        _objective()({"model": Fn(lambda x, t: x)}, Pairs(torch.zeros(4, 2), torch.zeros(4, 3)), need=NEED)
    with pytest.raises(GenkitError, match="x_0"):
        bad = Pairs(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2))
        _objective()({"model": Fn(lambda x, t: x)}, bad, need=NEED)
    with pytest.raises(GenkitError, match="coupling"):
        _objective(coupling="sinkhorn")


# ----------------------------------------------------------------------------- time samplers

N_TIMES = 20_000
KS_CRIT_1PCT = 1.628 / math.sqrt(N_TIMES)  # asymptotic one-sample KS critical value at the 1 % level


def _times(sampler, seed=0, dtype=torch.float64):
    return sampler(N_TIMES, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"), dtype=dtype)


def _u_cdf(t, a):
    return (np.sinh(a * (t - 0.5)) + np.sinh(a / 2)) / (2 * np.sinh(a / 2))


def test_uniform_time_range_and_law():
    t = _times(UniformTime(0.25))
    assert t.shape == (N_TIMES,) and t.dtype == torch.float64
    assert t.min() >= 0.25 and t.max() < 1.0
    assert stats.kstest(t.numpy(), stats.uniform(0.25, 0.75).cdf).statistic < KS_CRIT_1PCT


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (-0.5, 0.7)])
def test_logit_normal_time_matches_closed_form_cdf(mean, std):
    # P(T <= t) = Phi((logit t - mean) / std).
    t = _times(LogitNormalTime(mean, std))
    assert 0.0 < t.min() and t.max() < 1.0

    def cdf(u):
        return stats.norm.cdf((special.logit(u) - mean) / std)

    assert stats.kstest(t.numpy(), cdf).statistic < KS_CRIT_1PCT
    # The median is sigmoid(mean): within 4 standard errors of a binomial proportion.
    frac = (t < special.expit(mean)).double().mean().item()
    assert abs(frac - 0.5) < 4 * 0.5 / math.sqrt(N_TIMES)


@pytest.mark.parametrize("a", [4.0, 1.0])
def test_u_shaped_time_matches_closed_form_cdf(a):
    t = _times(UShapedTime(a))
    assert 0.0 <= t.min() and t.max() < 1.0
    assert stats.kstest(t.numpy(), lambda u: _u_cdf(u, a)).statistic < KS_CRIT_1PCT
    # Symmetric about 1/2: mean 1/2 within 4 standard errors (std <= 1/2).
    assert abs(t.mean().item() - 0.5) < 4 * 0.5 / math.sqrt(N_TIMES)


def test_u_shaped_time_is_denser_at_the_ends():
    # a = 4: mass of [0, 0.1] is F(0.1) = 0.1725, of [0.45, 0.55] 0.0555 (ratio 3.1; density ratio cosh 2 = 3.76).
    t = _times(UShapedTime(), seed=1, dtype=torch.float32)
    left, right = (t < 0.1).sum().item(), (t > 0.9).sum().item()
    middle = ((t > 0.45) & (t < 0.55)).sum().item()
    assert left > 2 * middle and right > 2 * middle
    assert _u_cdf(0.1, 4.0) == pytest.approx(0.1725, abs=1e-4)
    assert (left + right) / N_TIMES == pytest.approx(2 * _u_cdf(0.1, 4.0), abs=4 * math.sqrt(0.345 * 0.655 / N_TIMES))


def test_flow_matching_draws_times_from_the_sampler():
    x_1 = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    model = Fn(lambda x, t: x * t[:, None])
    for sampler in (UShapedTime(3.0), LogitNormalTime(0.5, 2.0)):
        out = _objective(time=sampler)({"model": model}, x_1, need=NEED, generator=torch.Generator().manual_seed(4))
        g = torch.Generator().manual_seed(4)
        x_0 = torch.randn(7, 2, generator=g)
        t = sampler(7, generator=g, device=torch.device("cpu"), dtype=torch.float32)
        torch.testing.assert_close(out.losses["model"], _hand_loss(model, x_0, x_1, t))
    assert _objective(time=UShapedTime()).t_min == 0.0 and _objective(t_min=0.3).t_min == 0.3


def test_time_sampler_bad_input():
    assert set(TIME_SAMPLERS) == {"uniform", "logit_normal", "u_shaped"}
    with pytest.raises(GenkitError, match="not both"):
        _objective(t_min=0.1, time=UShapedTime())
    with pytest.raises(GenkitError, match="t_min"):
        UniformTime(-0.1)
    with pytest.raises(GenkitError, match="std"):
        LogitNormalTime(0.0, 0.0)
    with pytest.raises(GenkitError, match="a > 0"):
        UShapedTime(0.0)


@pytest.mark.parametrize(
    "sampler",
    [UShapedTime(), UniformTime(0.5), LogitNormalTime(20.0, 1.0)],
    ids=["u_shaped", "uniform", "logit_normal"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_times_stay_below_one(monkeypatch, sampler, dtype):
    # The largest torch.rand draw, 1 - 2^-24 in float32, mapped to t = 1.0 (u-shaped; uniform for
    # t_min >= 0.5), as does a float32 sigmoid above ~17; VP's d_sigma_1 = -inf made the loss infinite.
    def largest_rand(size, *, generator, device, dtype):
        return torch.full(size, 1 - torch.finfo(dtype).eps / 2, device=device, dtype=dtype)

    monkeypatch.setattr(torch, "rand", largest_rand)
    t = sampler(4, generator=None, device=torch.device("cpu"), dtype=dtype)
    assert t.dtype == dtype and (t < 1).all() and (t > 0.99).all()
    if dtype == torch.float32:
        objective = FlowMatching(AffinePath(VPSchedule()), time=sampler)
        out = objective({"model": Fn(lambda x, t: torch.zeros_like(x))}, _data(4), need=NEED)
        assert torch.isfinite(out.losses["model"])
