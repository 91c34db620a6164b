import math

import pytest
import torch

from genkit.errors import GenkitError
from genkit.solvers import METHODS, Trajectory, integrate, time_grid

MU, SIGMA = 1.7, 0.4


def quadratic(x, t):
    """dx/dt = x^2, whose flow is x(t) = x_0 / (1 - t x_0) (finite on [0, 1] for x_0 < 1)."""
    return x * x


def gaussian_rf_velocity(x, t):
    """Exact rectified-flow velocity N(0, I) -> N(MU, SIGMA^2 I) (SPEC 2e.1); flow map x -> MU + SIGMA x."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    s2 = (1 - t) ** 2 + t**2 * SIGMA**2
    return MU + (t * SIGMA**2 - (1 - t)) / s2 * (x - t * MU)


def _x0(dtype=torch.float64):
    return 0.5 * torch.rand(32, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_time_grid():
    g = time_grid(4)
    assert g.shape == (5,) and g.dtype == torch.float32
    assert g[0] == 0.0 and g[-1] == 1.0
    torch.testing.assert_close(g, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    back = time_grid(2, t0=1.0, t1=0.0)
    assert back.tolist() == [1.0, 0.5, 0.0]
    with pytest.raises(GenkitError):
        time_grid(0)


# Step counts where the error is in the asymptotic regime and far above float64 rounding.
@pytest.mark.parametrize("method,order,steps", [("euler", 1, 64), ("midpoint", 2, 32), ("rk4", 4, 16)])
def test_convergence_order(method, order, steps):
    x_0 = _x0()
    exact = x_0 / (1 - x_0)
    errs = []
    for n in (steps, 2 * steps):
        traj = integrate(quadratic, x_0, time_grid(n, dtype=torch.float64), method=method)
        errs.append((traj.x - exact).abs().max().item())
    observed = math.log2(errs[0] / errs[1])
    assert abs(observed - order) < 0.3, (errs, observed)


def linear_in_t(x, t):
    """dx/dt = t x, whose flow is x(t) = x_0 exp(t^2 / 2): the field changes within each step."""
    return t.view(-1, *([1] * (x.dim() - 1))) * x


@pytest.mark.parametrize("method,order,steps", [("euler", 1, 64), ("midpoint", 2, 32), ("rk4", 4, 16)])
def test_convergence_order_time_dependent_field(method, order, steps):
    """Halving the step divides the error by ~2^order on a field that depends on t.

    `quadratic` above ignores t, so it cannot see at which times the stages evaluate the field.
    Here evaluating every stage at the left end of the step (measured: order 0.99 for midpoint
    and rk4) or feeding 1 - t (the error stops converging: order 0.00) fails. The error is the
    max over the whole trajectory, not only at t = 1: x' = (1 - t) x reaches the same x(1).

    Tolerance: with e(h) = C h^p (1 + c h + ...), log2(e(h) / e(h/2)) = p + O(h). Measured in
    float64 (errors 1e-2 .. 6e-8, far above rounding): 0.991, 1.985, 3.940, i.e. deviations
    0.009 / 0.015 / 0.060; the bound 0.15 leaves 2.5x margin over the largest and is far below
    the >= 1 drop of a wrong stage time.
    """
    x_0 = _x0()
    errs = []
    for n in (steps, 2 * steps):
        grid = time_grid(n, dtype=torch.float64)
        traj = integrate(linear_in_t, x_0, grid, method=method)
        exact = x_0 * torch.exp(0.5 * grid**2).view(-1, 1, 1)
        errs.append((traj.xs - exact).abs().max().item())
    observed = math.log2(errs[0] / errs[1])
    assert abs(observed - order) < 0.15, (errs, observed)


def test_euler_first_order_on_gaussian_flow():
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = MU + SIGMA * z
    errs = [
        (integrate(gaussian_rf_velocity, z, time_grid(n, dtype=torch.float64)).x - exact).abs().max().item()
        for n in (32, 64)
    ]
    assert abs(math.log2(errs[0] / errs[1]) - 1) < 0.3


def test_dopri5_reaches_tolerance():
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = MU + SIGMA * z
    loose = integrate(gaussian_rf_velocity, z, time_grid(1, dtype=torch.float64), method="dopri5", atol=1e-4, rtol=1e-4)
    tight = integrate(gaussian_rf_velocity, z, time_grid(1, dtype=torch.float64), method="dopri5", atol=1e-9, rtol=1e-9)
    assert (tight.x - exact).abs().max() < 1e-7
    assert (loose.x - exact).abs().max() < 1e-3
    assert tight.nfe > loose.nfe


def test_dopri5_reports_states_at_grid_times():
    x_0 = _x0()
    grid = time_grid(4, dtype=torch.float64)
    traj = integrate(quadratic, x_0, grid, method="dopri5", atol=1e-10, rtol=1e-10)
    assert traj.xs.shape == (5, 32, 2)
    exact = torch.stack([x_0 / (1 - t * x_0) for t in grid])
    torch.testing.assert_close(traj.xs, exact, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("method,stages", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_nfe_and_states(method, stages):
    x_0 = _x0(torch.float32)
    traj = integrate(quadratic, x_0, time_grid(10), method=method)
    assert isinstance(traj, Trajectory)
    assert traj.nfe == 10 * stages
    assert traj.xs.shape == (11, 32, 2)
    torch.testing.assert_close(traj.xs[0], x_0, rtol=0, atol=0)
    assert torch.equal(traj.x, traj.xs[-1])


def test_euler_steps_exactly_on_the_grid():
    # With a field that records its times, Euler's evaluations are exactly the grid's left end points.
    seen = []

    def field(x, t):
        assert t.shape == (x.shape[0],)
        seen.append(t[0].item())
        return torch.ones_like(x)

    grid = torch.tensor([0.0, 0.1, 0.5, 0.6, 1.0])
    traj = integrate(field, torch.zeros(3, 2), grid, method="euler")
    assert seen == pytest.approx(grid[:-1].tolist(), abs=0)
    torch.testing.assert_close(traj.xs[:, 0, 0], grid)


def test_save_at_matches_full_grid():
    x_0 = _x0()
    grid = time_grid(20, dtype=torch.float64)
    full = integrate(quadratic, x_0, grid, method="rk4")
    sparse = integrate(quadratic, x_0, grid, method="rk4", save_at=grid[::5])
    assert sparse.xs.shape == (5, 32, 2) and sparse.nfe == full.nfe
    torch.testing.assert_close(sparse.xs, full.xs[::5], rtol=0, atol=0)
    with pytest.raises(GenkitError, match="save_at"):
        integrate(quadratic, x_0, grid, save_at=grid[:5])


def test_float32_state_with_bf16_field():
    def bf16_field(x, t):
        return (-x).to(torch.bfloat16)

    x_0 = torch.ones(4, 3)
    traj = integrate(bf16_field, x_0, time_grid(8), method="midpoint")
    assert traj.xs.dtype == torch.float32
    # exp(-1) up to midpoint error with bf16 derivatives (relative rounding 2^-8 per evaluation).
    torch.testing.assert_close(traj.x, torch.full((4, 3), math.exp(-1)), rtol=1e-2, atol=1e-2)
    assert integrate(bf16_field, x_0.bfloat16(), time_grid(2)).xs.dtype == torch.float32


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_bf16_output_is_cast_before_the_update(method):
    # A constant field 1 is exact in bf16; dt = 1/3 is not. Casting the output to float32 first keeps
    # the update dt * f at float32 precision; a bf16 product would be off by ~2e-3 after 3 steps.
    ones = lambda x, t: torch.ones_like(x, dtype=torch.bfloat16)
    traj = integrate(ones, torch.zeros(2, 2), time_grid(3), method=method)
    torch.testing.assert_close(traj.x, torch.ones(2, 2), rtol=0, atol=1e-6)


def test_backward_integration_inverts_forward():
    x_0 = _x0()
    fwd = integrate(quadratic, x_0, time_grid(1, dtype=torch.float64), method="dopri5", atol=1e-10, rtol=1e-10)
    back = integrate(
        quadratic, fwd.x, time_grid(1, t0=1.0, t1=0.0, dtype=torch.float64), method="dopri5", atol=1e-10, rtol=1e-10
    )
    torch.testing.assert_close(back.x, x_0, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("tol", [1e-3, 1e-5])
@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (1.0, 0.0)])
def test_dopri5_never_evaluates_the_field_outside_the_grid(t0, t1, tol):
    # Unconstrained, dopri5's last step overshoots the end and interpolates back: the field saw
    # t up to 1.32 forwards (1.77 at tol 1e-3) and down to -0.30 on the reversed (likelihood) solve.
    seen = []

    def field(x, t):
        seen.append(t[0].item())
        return gaussian_rf_velocity(x, t)

    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    grid = time_grid(4, t0=t0, t1=t1)  # intermediate report times too
    traj = integrate(field, z, grid, method="dopri5", atol=tol, rtol=tol)
    assert traj.xs.shape == (5, 256, 2) and traj.nfe == len(seen)
    assert 0.0 <= min(seen) and max(seen) <= 1.0


def test_dopri5_initial_step_probe_stays_in_the_grid():
    # A slow field makes torchdiffeq's first-step probe h0 = 0.01 |x| / |f| ~ 100, far past the end.
    seen = []
    integrate(lambda x, t: seen.append(t[0].item()) or 1e-4 * x, torch.ones(2, 2), time_grid(1), method="dopri5")
    assert 0.0 <= min(seen) and max(seen) <= 1.0


def test_differentiable_unless_no_grad():
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    x_0 = torch.ones(2, 1, dtype=torch.float64)
    traj = integrate(lambda x, t: a * x, x_0, time_grid(200, dtype=torch.float64), method="rk4")
    (grad,) = torch.autograd.grad(traj.x.sum(), a)
    assert grad.item() == pytest.approx(2 * math.exp(0.3), rel=1e-8)  # d/da [2 exp(a)]
    with torch.no_grad():
        assert not integrate(lambda x, t: a * x, x_0, time_grid(2), method="rk4").x.requires_grad


def test_unknown_method_lists_choices():
    with pytest.raises(GenkitError) as info:
        integrate(quadratic, _x0(), time_grid(2), method="rk45")
    for m in METHODS:
        assert m in str(info.value)


def test_bad_grid():
    with pytest.raises(GenkitError, match="monotone|increasing"):
        integrate(quadratic, _x0(), torch.tensor([0.0, 0.5, 0.2, 1.0]))
