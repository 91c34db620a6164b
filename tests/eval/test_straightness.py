import math

import pytest
import torch
from scipy import integrate as quad

from genkit.errors import GenkitError
from genkit.eval.straightness import StraightnessResult, straightness

MU, SIGMA = 1.7, 0.4


def v_1rf(x, t):
    """Exact 1-RF velocity N(0, I) -> N(MU, SIGMA^2 I), independent coupling (SPEC 2e.1)."""
    t = t[:, None]
    s2 = (1 - t) ** 2 + t**2 * SIGMA**2
    return MU + (t * SIGMA**2 - (1 - t)) / s2 * (x - t * MU)


def v_2rf(x, t):
    """Exact 2-RF velocity on the pairs (Z_0, MU + SIGMA Z_0) (SPEC 2e.3): straight lines."""
    t = t[:, None]
    return MU + (SIGMA - 1) * (x - t * MU) / ((1 - t) + t * SIGMA)


def l_star(t):
    """Per-dimension Var(X_1 - X_0 | X_t) of the independent coupling: the irreducible FM loss at t."""
    cov = t * SIGMA**2 - (1 - t)
    return 1 + SIGMA**2 - cov**2 / ((1 - t) ** 2 + t**2 * SIGMA**2)


def _unit_second_moment(n, d, seed):
    # Normal draws rescaled so that mean(z^2) = 1 exactly: on a field affine in x along each
    # trajectory the per-sample straightness is C * z^2, so the sample mean is C with no MC error.
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z / z.pow(2).mean().sqrt()


def test_two_rf_gaussian_is_straight():
    x_0 = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = straightness(v_2rf, x_0, steps=100)
    assert isinstance(r, StraightnessResult) and r.nfe == 100 and r.per_sample.shape == (1000,)
    assert r.value < 1e-10
    # Z_1 - Z_0 = MU + (SIGMA - 1) Z_0: per-dimension cost MU^2 + (1 - SIGMA)^2 up to sampling of Z_0.
    expected = ((MU + (SIGMA - 1) * x_0) ** 2).mean().item()
    assert r.cost == pytest.approx(expected, rel=1e-10)


def test_one_rf_gaussian_matches_closed_form():
    # SPEC 2e.1: E||X_1 - X_0||^2 - E||Z_1 - Z_0||^2 = 2 d SIGMA = S + L*, so per dimension
    # S = 2 SIGMA - int_0^1 l_star = 0.17168 (d = 1, MU = 1.7, SIGMA = 0.4).
    s_exact = 2 * SIGMA - quad.quad(l_star, 0, 1, epsabs=1e-13)[0]
    assert s_exact == pytest.approx(0.1717, abs=1e-4)
    x_0 = _unit_second_moment(1000, 1, seed=1)
    # Euler on the grid is first order: measured errors -4.84e-3, -9.8e-4, -4.9e-4 at 100,
    # 500, 1000 steps (~ -0.49 / steps); the 1e-3 tolerance is twice the error at 1000 steps.
    r = straightness(v_1rf, x_0, steps=1000)
    assert r.value == pytest.approx(s_exact, abs=1e-3)
    coarse = straightness(v_1rf, x_0, steps=100)  # first order: 10x the steps, 1/10 the error
    assert abs(coarse.value - s_exact) == pytest.approx(10 * abs(r.value - s_exact), rel=0.1)
    # Transport cost of the flow map Z_1 = MU + SIGMA Z_0: MU^2 + (1 - SIGMA)^2 (Euler error ~0.3 %).
    assert r.cost == pytest.approx(MU**2 + (1 - SIGMA) ** 2, rel=1e-2)


def test_time_variance_by_hand():
    # v(x, t) = t: the Euler velocities are 0, 1/4, 1/2, 3/4, their mean 3/8 is Z_1 - Z_0, and the
    # straightness is their variance (steps^2 - 1) / (12 steps^2) = 15/192.
    x_0 = torch.zeros(3, 2)
    r = straightness(lambda x, t: t[:, None].expand_as(x), x_0, steps=4)
    assert r.value == pytest.approx(15 / 192, rel=1e-12)
    assert r.cost == pytest.approx((3 / 8) ** 2, rel=1e-12)
    c = torch.tensor([1.0, -2.0])
    const = straightness(lambda x, t: c.expand_as(x), x_0, steps=7)
    assert const.value == 0.0 and const.cost == pytest.approx(2.5)


def test_runs_without_graph_and_on_images():
    seen = []
    net = torch.nn.Conv2d(3, 3, 1)

    def field(x, t):
        seen.append(torch.is_grad_enabled())
        return net(x) * t.view(-1, 1, 1, 1)

    r = straightness(field, torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)), steps=5)
    assert seen == [False] * 5 and r.nfe == 5 and r.per_sample.shape == (4,)
    assert isinstance(r.value, float) and math.isfinite(r.value) and r.value > 0


def test_bad_input():
    with pytest.raises(GenkitError, match="steps"):
        straightness(v_2rf, torch.zeros(3, 1), steps=0)
    with pytest.raises(GenkitError, match="x_0"):
        straightness(v_2rf, torch.zeros(3))
    with pytest.raises(GenkitError, match="shape"):
        straightness(lambda x, t: x[:, :1], torch.zeros(3, 2), steps=2)
