import functools
import itertools

import pytest
import torch

from genkit.analytic import atoms_velocity, gaussian_posterior_mean, gaussian_velocity
from genkit.errors import GenkitError
from genkit.parameterization import (
    PREDICTIONS,
    ScheduleTransfer,
    as_velocity,
    convert,
    from_x1_eps,
    to_x1_eps,
)
from genkit.paths import (
    AffinePath,
    CosineSchedule,
    CustomSchedule,
    LinearSchedule,
    PolynomialSchedule,
    VPSchedule,
)

F64 = torch.float64


def _custom_alpha(t):
    return torch.sin(0.5 * torch.pi * t) ** 2


def _custom_sigma(t):
    return 1.0 - t**2


# A user-defined schedule unlike any built-in one: alpha_0 = 0, sigma_0 = 1, alpha_1 = 1, sigma_1 = 0
# exactly, log(alpha / sigma) increasing on (0, 1). Its derivatives come from autograd. The round trips
# hold for any coefficients (they only need det != 0); test_custom_schedule_velocity_uses_exact_derivatives
# pins the derivatives themselves.
CUSTOM = CustomSchedule(_custom_alpha, _custom_sigma)
SCHEDULES = {
    "linear": LinearSchedule(),
    "cosine": CosineSchedule(),
    "vp": VPSchedule(),
    "polynomial": PolynomialSchedule(),
    "polynomial_0.5": PolynomialSchedule(0.5),
    "custom": CUSTOM,
}
ATOMS = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=F64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)


def _batch(shape=(16, 3, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    x_1 = torch.randn(shape, generator=g, dtype=F64)
    eps = torch.randn(shape, generator=g, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(shape[0], generator=g, dtype=F64)
    return x_1, eps, t


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("src, dst", list(itertools.product(PREDICTIONS, PREDICTIONS)))
def test_convert_round_trip(name, src, dst):
    schedule = SCHEDULES[name]
    x_1, eps, t = _batch()
    x_t = AffinePath(schedule).sample(eps, x_1, t).x_t
    pred = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7), dtype=F64)  # any prediction
    back = convert(convert(pred, x_t, t, schedule, src=src, dst=dst), x_t, t, schedule, src=dst, dst=src)
    torch.testing.assert_close(back, pred, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_velocity_from_x1_eps_is_path_velocity(name):
    schedule = SCHEDULES[name]
    x_1, eps, t = _batch()
    s = AffinePath(schedule).sample(eps, x_1, t)
    torch.testing.assert_close(from_x1_eps("velocity", x_1, eps, t, schedule), s.dx_t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_true_pair_is_recovered_from_every_kind(name, kind):
    schedule = SCHEDULES[name]
    x_1, eps, t = _batch()
    x_t = AffinePath(schedule).sample(eps, x_1, t).x_t
    pred = from_x1_eps(kind, x_1, eps, t, schedule)
    x_1_hat, eps_hat = to_x1_eps(kind, pred, x_t, t, schedule)
    torch.testing.assert_close(x_1_hat, x_1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_score_is_gradient_of_gaussian_log_density(name):
    # x_1 ~ N(mu, s^2 I): x_t ~ N(alpha mu, (alpha^2 s^2 + sigma^2) I), whose score is known;
    # converting the exact posterior mean E[x_1 | x_t] to "score" must give it.
    schedule, mu, s = SCHEDULES[name], 0.7, 1.3
    _, x_t, t = _batch(seed=2)
    x_1_hat = gaussian_posterior_mean(x_t, t, mu, s, schedule)
    c = schedule(t)
    alpha, sigma = c.alpha_t.view(-1, 1, 1), c.sigma_t.view(-1, 1, 1)
    true_score = -(x_t - alpha * mu) / (alpha**2 * s**2 + sigma**2)
    torch.testing.assert_close(convert(x_1_hat, x_t, t, schedule, src="x_1", dst="score"), true_score)


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_custom_schedule_velocity_uses_exact_derivatives(kind):
    # The round trips above hold for any (d_alpha, d_sigma); this pins the autograd derivatives:
    # converting the true prediction of `kind` to a velocity must give the path velocity
    # d_alpha x_1 + d_sigma eps with the hand derivatives d_alpha = (pi / 2) sin(pi t), d_sigma = -2 t.
    # Both sides are a few float64 operations on O(1) numbers, divided at worst by det (|det| > 0.24
    # on t in [0.05, 0.95]) or by alpha_t >= 6e-3, so round-off stays below ~1e-13.
    x_1, eps, t = _batch(seed=3)
    x_t = AffinePath(CUSTOM).sample(eps, x_1, t).x_t
    d_alpha = (0.5 * torch.pi * torch.sin(torch.pi * t)).view(-1, 1, 1)
    d_sigma = (-2.0 * t).view(-1, 1, 1)
    pred = from_x1_eps(kind, x_1, eps, t, CUSTOM)
    got = convert(pred, x_t, t, CUSTOM, src=kind, dst="velocity")
    torch.testing.assert_close(got, d_alpha * x_1 + d_sigma * eps, rtol=1e-10, atol=1e-10)


def test_as_velocity_wraps_eps_network():
    schedule = CosineSchedule()
    x_1, eps, t = _batch()
    x_t = AffinePath(schedule).sample(eps, x_1, t).x_t
    net = lambda x, tt: torch.where(x == x_t, eps, torch.nan)  # an "oracle" eps network at x_t
    v = as_velocity(net, "eps", schedule)(x_t, t)
    torch.testing.assert_close(v, AffinePath(schedule).sample(eps, x_1, t).dx_t)


def test_convert_errors():
    x_1, eps, t = _batch()
    with pytest.raises(GenkitError, match="unknown prediction kind 'noise'"):
        convert(x_1, eps, t, LinearSchedule(), src="noise", dst="velocity")
    with pytest.raises(GenkitError, match="choose one of velocity, eps, x_1, score"):
        as_velocity(lambda x, t: x, "v", LinearSchedule())
    with pytest.raises(GenkitError, match="same shape"):
        convert(x_1, eps[:, :1], t, LinearSchedule(), src="eps", dst="x_1")
    with pytest.raises(GenkitError, match=r"\(B,\)"):
        convert(x_1, eps, t[:3], LinearSchedule(), src="eps", dst="x_1")


# --- schedule transfer -----------------------------------------------------------------------

TRANSFER_PAIRS = [
    ("linear", "cosine"),
    ("linear", "vp"),
    ("cosine", "linear"),
    ("polynomial", "cosine"),
    ("vp", "linear"),  # linear's SNR at r >= 0.05 is above VP's minimum SNR (alpha_0 / sigma_0 ~ 6.6e-3)
    ("linear", "linear"),
    ("custom", "cosine"),  # a user-defined schedule (autograd derivatives) on the trained side
    ("linear", "custom"),  # ... and on the target side
]


def _xr(n=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(n, 2, generator=g, dtype=F64), 0.05 + 0.9 * torch.rand(n, generator=g, dtype=F64)


@pytest.mark.parametrize("trained, target", TRANSFER_PAIRS)
def test_schedule_transfer_of_exact_atoms_field(trained, target):
    a, b = SCHEDULES[trained], SCHEDULES[target]
    field = functools.partial(atoms_velocity, atoms=ATOMS, weights=WEIGHTS, schedule=a)
    x, r = _xr()
    got = ScheduleTransfer(field, a, b)(x, r)
    want = atoms_velocity(x, r, ATOMS, WEIGHTS, b)
    # The identity is exact; what remains is float64 round-off (bisection resolves t_r to ~2^-56).
    assert (got - want).abs().max().item() < 1e-9


def test_schedule_transfer_of_gaussian_field():
    a, b = LinearSchedule(), CosineSchedule()
    field = functools.partial(gaussian_velocity, mu=1.7, sigma=0.4, schedule=a)
    x, r = _xr()
    got = ScheduleTransfer(field, a, b)(x, r)
    assert (got - gaussian_velocity(x, r, 1.7, 0.4, b)).abs().max().item() < 1e-9


def test_matched_time_matches_snr_and_end_points():
    transfer = ScheduleTransfer(lambda x, t: x, LinearSchedule(), CosineSchedule())
    r = torch.tensor([0.0, 0.3, 0.8, 1.0], dtype=F64)
    t_r = transfer.matched_time(r)
    # Linear SNR t / (1 - t) = tan(pi r / 2)  =>  t_r = sin / (sin + cos).
    s, c = torch.sin(torch.pi * r / 2), torch.cos(torch.pi * r / 2)
    torch.testing.assert_close(t_r, s / (s + c), rtol=0, atol=1e-15)
    t32 = transfer.matched_time(r.float())
    assert t32.dtype == torch.float32
    torch.testing.assert_close(t32, (s / (s + c)).float(), rtol=0, atol=1e-6)


def _smooth_field(x, t):
    """A stand-in for a trained network: finite and smooth at every t in [0, 1]."""
    return torch.sin(x) * (1.0 + t[:, None]) - 0.5 * x


@pytest.mark.parametrize("target", ["vp", "linear", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_schedule_transfer_from_vp_is_finite_at_r_1(target, dtype):
    # VP's d_sigma_1 = -inf gave dt_dr = 0 and dk_dr = 0 * inf = NaN at r = 1 (in float32 for every
    # r >= ~1 - 1e-5, where t_r rounds to 1), so rk4 and dopri5 samples were all NaN.
    from genkit.sampling import ODESampler

    transfer = ScheduleTransfer(_smooth_field, VPSchedule(), SCHEDULES[target])
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    r = torch.tensor([1.0 - 1e-6, 1.0 - 2**-24, 1.0] + [1.0] * 5, dtype=dtype)
    assert torch.isfinite(transfer(x, r)).all()
    samples = ODESampler(transfer, (2,), method="rk4", steps=10).sample(16, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(samples).all()


def test_identity_transfer_vp_to_vp_reproduces_the_field():
    from genkit.sampling import ODESampler

    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    plain = ODESampler(_smooth_field, (2,), method="rk4", steps=10).solve(z).x
    transfer = ScheduleTransfer(_smooth_field, VPSchedule(), VPSchedule())
    same = ODESampler(transfer, (2,), method="rk4", steps=10).solve(z).x
    # Only the last stage (r = 1, evaluated at 1 - 2^-20) and float32 bisection differ.
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-5)


def test_schedule_transfer_from_polynomial_is_bounded_at_r_0():
    # Under PolynomialSchedule(2) t_r = sqrt(r) for a linear target, so t_r' = 1 / (2 sqrt(r)) is infinite
    # at r = 0 (it was ~1e8 at the bisection's t_r = 3.7e-9); r is clamped to 2^-20, where t_r' = 512.
    transfer = ScheduleTransfer(_smooth_field, PolynomialSchedule(2.0), LinearSchedule())
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    v = transfer(x, torch.zeros(8))
    assert torch.isfinite(v).all() and v.abs().max().item() < 1e3
