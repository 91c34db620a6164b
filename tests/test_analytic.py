import math

import pytest
import torch

from genkit.analytic import (
    atoms_posterior_mean,
    atoms_velocity,
    gaussian_posterior_mean,
    gaussian_rf2_velocity,
    gaussian_rf_map,
    gaussian_rf_velocity,
    gaussian_velocity,
)
from genkit.errors import GenkitError
from genkit.paths import AffinePath, CosineSchedule, LinearSchedule, PolynomialSchedule, VPSchedule
from genkit.solvers import integrate, time_grid

F64 = torch.float64
SCHEDULES = {
    "linear": LinearSchedule(),
    "cosine": CosineSchedule(),
    "vp": VPSchedule(),
    "polynomial": PolynomialSchedule(),
}
ATOMS = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=F64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
MU, SIGMA = 1.7, 0.4  # SPEC 2(e)1


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --- finite atoms ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_atoms_posterior_mean_is_bayes_rule(name):
    schedule = SCHEDULES[name]
    g = _gen(0)
    atoms = torch.randn(4, 1, 2, 3, generator=g, dtype=F64)  # image-shaped atoms, (K, C, H, W)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)  # unnormalised on purpose
    x = torch.randn(10, 1, 2, 3, generator=g, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(10, generator=g, dtype=F64)
    c = schedule(t)
    # Brute force: full Gaussian log-likelihoods, normalised prior.
    log_lik = torch.distributions.Normal(
        c.alpha_t.view(-1, 1, 1) * atoms.flatten(1)[None], c.sigma_t.view(-1, 1, 1)
    ).log_prob(x.flatten(1)[:, None]).sum(-1)  # (B, K)
    post = torch.softmax(torch.log(weights / weights.sum()) + log_lik, dim=1)
    want = (post @ atoms.flatten(1)).view_as(x)
    torch.testing.assert_close(atoms_posterior_mean(x, t, atoms, weights, schedule), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_single_atom_velocity_is_conditional_velocity(name):
    schedule = SCHEDULES[name]
    g = _gen(1)
    a = torch.randn(1, 2, generator=g, dtype=F64)
    eps = torch.randn(8, 2, generator=g, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(8, generator=g, dtype=F64)
    s = AffinePath(schedule).sample(eps, a.expand(8, 2), t)
    v = atoms_velocity(s.x_t, t, a, torch.ones(1, dtype=F64), schedule)
    torch.testing.assert_close(v, s.dx_t, rtol=1e-10, atol=1e-10)


def test_one_step_collapse_at_t0():
    # SPEC 2(e)2: under an independent coupling v(x, 0) = E[X_1] - x (linear schedule).
    x = torch.randn(32, 2, generator=_gen(2), dtype=F64)
    v = atoms_velocity(x, torch.zeros(32, dtype=F64), ATOMS, WEIGHTS, LinearSchedule())
    torch.testing.assert_close(v, WEIGHTS @ ATOMS - x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_integrating_atoms_field_reproduces_atom_law(name):
    schedule, n, t_mid, t_end = SCHEDULES[name], 4000, 0.5, 1 - 1e-3
    g = _gen(3)
    # Start from the exact path marginal at t = 0 (N(0, I) except for VP, where alpha_0 > 0).
    idx = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=F64)
    x = AffinePath(schedule).sample(eps, ATOMS[idx], torch.zeros(n, dtype=F64)).x_t

    def field(x, t):
        return atoms_velocity(x, t, ATOMS, WEIGHTS, schedule)

    x_mid = integrate(field, x, torch.linspace(0, t_mid, 31, dtype=F64), method="rk4").x
    # Towards t = 1 the field stiffens like 1 / (1 - t): log-spaced steps in 1 - t.
    grid = 1 - torch.logspace(math.log10(1 - t_mid), math.log10(1 - t_end), 61, dtype=F64)
    x_end = integrate(field, x_mid, grid, method="rk4").x

    # Moments at t_mid: E[X_t] = alpha_t sum_i pi_i a_i, Var per coordinate = alpha_t^2 Var(a) + sigma_t^2.
    c = schedule(torch.tensor([t_mid], dtype=F64))
    mean_a = WEIGHTS @ ATOMS
    var = c.alpha_t**2 * (WEIGHTS @ ATOMS**2 - mean_a**2) + c.sigma_t**2
    assert ((x_mid.mean(0) - c.alpha_t * mean_a).abs() < 4 * torch.sqrt(var / n)).all()
    m2 = x_mid.pow(2).sum(1)  # E||X_t||^2 = alpha^2 sum_i pi_i |a_i|^2 + d sigma^2
    want_m2 = c.alpha_t**2 * (WEIGHTS @ ATOMS.pow(2).sum(1)) + 2 * c.sigma_t**2
    assert (m2.mean() - want_m2).abs() < 4 * m2.std() / math.sqrt(n)

    # At t_end, X_t = alpha a_i + sigma eps: within (1 - alpha) |a|_max + 5 sigma of an atom
    # (P(|eps| > 5) = e^{-12.5} in 2-D, ~1.5e-2 over 4000 samples).
    c = schedule(torch.tensor([t_end], dtype=F64))
    radius = (1 - c.alpha_t) * ATOMS.norm(dim=1).max() + 5 * c.sigma_t
    dist = torch.cdist(x_end, ATOMS)
    nearest = dist.min(1)
    assert nearest.values.max() < radius.item() < 0.1
    counts = torch.bincount(nearest.indices, minlength=3).to(F64)
    sd = torch.sqrt(n * WEIGHTS * (1 - WEIGHTS))
    assert ((counts - n * WEIGHTS).abs() < 4 * sd).all(), counts


def test_atoms_shape_errors():
    x, t = torch.zeros(4, 2), torch.full((4,), 0.5)
    with pytest.raises(GenkitError, match="atoms must have shape"):
        atoms_velocity(x, t, torch.zeros(3, 5), torch.ones(3), LinearSchedule())
    with pytest.raises(GenkitError, match="weights must have shape"):
        atoms_velocity(x, t, torch.zeros(3, 2), torch.ones(2), LinearSchedule())
    with pytest.raises(GenkitError, match=r"t must have shape \(B,\)"):
        atoms_velocity(x, t[:2], torch.zeros(3, 2), torch.ones(3), LinearSchedule())


# --- Gaussian -> Gaussian --------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_gaussian_rf_velocity_is_regression_optimum(t):
    # (X_t, X_1 - X_0) is jointly Gaussian, so E[X_1 - X_0 | X_t = x] is exactly the
    # least-squares line; compare its fitted slope and intercept with the closed form.
    n, g = 400_000, _gen(4)
    x_0 = torch.randn(n, generator=g, dtype=F64)
    x_1 = MU + SIGMA * torch.randn(n, generator=g, dtype=F64)
    x_t, y = t * x_1 + (1 - t) * x_0, x_1 - x_0
    xc = x_t - x_t.mean()
    slope = (xc * (y - y.mean())).sum() / (xc**2).sum()
    intercept = y.mean() - slope * x_t.mean()
    resid_var = (y - intercept - slope * x_t).var()
    se_slope = torch.sqrt(resid_var / (xc**2).sum())
    se_intercept = torch.sqrt(resid_var * (1 / n + x_t.mean() ** 2 / (xc**2).sum()))
    # Closed form at x = 0 and x = 1 gives intercept and slope.
    tt = torch.full((2,), t, dtype=F64)
    v = gaussian_rf_velocity(torch.tensor([[0.0], [1.0]], dtype=F64), tt, MU, SIGMA).squeeze(1)
    assert abs(v[0] - intercept) < 5 * se_intercept
    assert abs((v[1] - v[0]) - slope) < 5 * se_slope


def test_gaussian_rf_flow_map_and_trajectories():
    z = torch.randn(64, 3, generator=_gen(5), dtype=F64)
    field = lambda x, t: gaussian_rf_velocity(x, t, MU, SIGMA)  # noqa: E731
    save = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=F64)
    traj = integrate(field, z, time_grid(100, dtype=F64), method="rk4", save_at=save)
    assert (traj.x - gaussian_rf_map(z, MU, SIGMA)).abs().max() < 1e-6
    # Trajectories Z_t = t mu + s_t Z_0, s_t = sqrt((1 - t)^2 + t^2 sigma^2) (grid points: exact save).
    s_t = torch.sqrt((1 - save) ** 2 + save**2 * SIGMA**2)
    want = save.view(-1, 1, 1) * MU + s_t.view(-1, 1, 1) * z
    assert (traj.xs - want).abs().max() < 1e-6


def test_gaussian_rf_velocity_end_points():
    x = torch.randn(16, 2, generator=_gen(6), dtype=F64)
    zeros, ones = torch.zeros(16, dtype=F64), torch.ones(16, dtype=F64)
    torch.testing.assert_close(gaussian_rf_velocity(x, zeros, MU, SIGMA), MU - x)  # E[X_1] - x
    torch.testing.assert_close(gaussian_rf_velocity(x, ones, MU, SIGMA), x)  # x - E[X_0]


def test_gaussian_rf2_is_straight_one_euler_step():
    z = torch.randn(64, 3, generator=_gen(7), dtype=F64)
    field = lambda x, t: gaussian_rf2_velocity(x, t, MU, SIGMA)  # noqa: E731
    out = integrate(field, z, time_grid(1, dtype=F64), method="euler")
    assert out.nfe == 1
    assert (out.x - gaussian_rf_map(z, MU, SIGMA)).abs().max() < 1e-6
    # Straight: the velocity is constant along Z_t = z + t (Z_1 - z).
    t = torch.full((64,), 0.6, dtype=F64)
    z_t = z + 0.6 * (gaussian_rf_map(z, MU, SIGMA) - z)
    torch.testing.assert_close(field(z_t, t), gaussian_rf_map(z, MU, SIGMA) - z)


def test_general_gaussian_velocity_reduces_to_rectified_flow():
    g = _gen(8)
    x = torch.randn(32, 4, generator=g, dtype=F64)
    t = 0.01 + 0.98 * torch.rand(32, generator=g, dtype=F64)
    mu = torch.tensor([1.7, -0.3, 0.0, 2.0], dtype=F64)  # tensor mean broadcasts over x[0]
    general = gaussian_velocity(x, t, mu, SIGMA, LinearSchedule())
    torch.testing.assert_close(general, gaussian_rf_velocity(x, t, mu, SIGMA), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_general_gaussian_flow_closed_form(name):
    # Under any schedule the flow is x_t = alpha_t mu + m_t z, m_t = sqrt(alpha_t^2 sigma^2 + sigma_t^2).
    schedule, t_end = SCHEDULES[name], 1 - 1e-3
    z = torch.randn(64, 3, generator=_gen(9), dtype=F64)

    def flow(t):
        c = schedule(torch.tensor([t], dtype=F64))
        return c.alpha_t * MU + torch.sqrt(c.alpha_t**2 * SIGMA**2 + c.sigma_t**2) * z

    field = lambda x, t: gaussian_velocity(x, t, MU, SIGMA, schedule)  # noqa: E731
    out = integrate(field, flow(0.0), time_grid(400, t1=t_end, dtype=F64), method="rk4")
    assert (out.x - flow(t_end)).abs().max() < 1e-6


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_gaussian_posterior_mean_by_regression(name):
    # E[x_1 | x_t] is linear (jointly Gaussian); check the closed form's slope by least squares.
    schedule, t, n, g = SCHEDULES[name], 0.6, 200_000, _gen(10)
    x_1 = MU + SIGMA * torch.randn(n, generator=g, dtype=F64)
    x_t = AffinePath(schedule).sample(torch.randn(n, generator=g, dtype=F64), x_1, torch.full((n,), t, dtype=F64)).x_t
    xc = x_t - x_t.mean()
    slope = (xc * (x_1 - x_1.mean())).sum() / (xc**2).sum()
    se = torch.sqrt((x_1 - x_1.mean() - slope * xc).var() / (xc**2).sum())
    tt = torch.full((2,), t, dtype=F64)
    m = gaussian_posterior_mean(torch.tensor([0.0, 1.0], dtype=F64), tt, MU, SIGMA, schedule)
    assert abs((m[1] - m[0]) - slope) < 5 * se
