import pytest
import torch

from genkit.errors import GenkitError
from genkit.paths import AffinePath, Coefficients, LinearSchedule, PathSample


def _pair(shape=(4, 3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x_1 = torch.randn(shape, generator=g, dtype=torch.float64)
    return x_0, x_1


def test_linear_schedule_values():
    t = torch.tensor([0.0, 0.25, 1.0])
    c = LinearSchedule()(t)
    assert isinstance(c, Coefficients)
    torch.testing.assert_close(c.alpha_t, t)
    torch.testing.assert_close(c.sigma_t, 1 - t)
    for field in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t):
        assert field.shape == (3,) and field.dtype == t.dtype


def test_linear_schedule_derivatives_match_autograd():
    t = torch.rand(7, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_()
    c = LinearSchedule()(t)
    (d_alpha,) = torch.autograd.grad(c.alpha_t.sum(), t)
    (d_sigma,) = torch.autograd.grad(c.sigma_t.sum(), t)
    torch.testing.assert_close(c.d_alpha_t.detach(), d_alpha)
    torch.testing.assert_close(c.d_sigma_t.detach(), d_sigma)


def test_endpoints_are_source_and_data():
    x_0, x_1 = _pair()
    path = AffinePath(LinearSchedule())
    s0 = path.sample(x_0, x_1, torch.zeros(4, dtype=torch.float64))
    s1 = path.sample(x_0, x_1, torch.ones(4, dtype=torch.float64))
    assert isinstance(s0, PathSample)
    torch.testing.assert_close(s0.x_t, x_0, rtol=0, atol=0)
    torch.testing.assert_close(s1.x_t, x_1, rtol=0, atol=0)


def test_rectified_flow_velocity_is_difference():
    x_0, x_1 = _pair()
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)
    s = AffinePath(LinearSchedule()).sample(x_0, x_1, t)
    torch.testing.assert_close(s.dx_t, x_1 - x_0)
    torch.testing.assert_close(s.x_t, t.view(4, 1, 1) * x_1 + (1 - t.view(4, 1, 1)) * x_0)


class _Cubic:
    """A non-linear test schedule (alpha = t^3, sigma = cos t) to check the path's use of derivatives."""

    def __call__(self, t):
        return Coefficients(alpha_t=t**3, sigma_t=torch.cos(t), d_alpha_t=3 * t**2, d_sigma_t=-torch.sin(t))


@pytest.mark.parametrize("schedule", [LinearSchedule(), _Cubic()], ids=["linear", "cubic"])
def test_dx_t_is_time_derivative_of_x_t(schedule):
    x_0, x_1 = _pair()
    path = AffinePath(schedule)
    t = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=torch.float64, requires_grad=True)
    s = path.sample(x_0, x_1, t)
    # Each sample depends only on its own t, so the gradient of sum(x_t * e) is d/dt x_t per element.
    jac = torch.stack(
        [torch.autograd.grad(s.x_t.flatten(1)[:, j].sum(), t, retain_graph=True)[0] for j in range(15)], dim=1
    ).view_as(x_0)
    torch.testing.assert_close(s.dx_t.detach(), jac)
    # Central finite difference agrees too.
    h = 1e-6
    fd = (path.sample(x_0, x_1, t.detach() + h).x_t - path.sample(x_0, x_1, t.detach() - h).x_t) / (2 * h)
    torch.testing.assert_close(s.dx_t.detach(), fd, rtol=1e-6, atol=1e-6)


def test_shape_errors():
    x_0, x_1 = _pair()
    path = AffinePath(LinearSchedule())
    with pytest.raises(GenkitError, match="same shape"):
        path.sample(x_0, x_1[:, :2], torch.zeros(4))
    with pytest.raises(GenkitError, match=r"\(B,\)"):
        path.sample(x_0, x_1, torch.zeros(4, 1))
    with pytest.raises(GenkitError, match="4 samples"):
        path.sample(x_0, x_1, torch.zeros(3))


# --- schedules -------------------------------------------------------------------------------

import math  # noqa: E402

from genkit.paths import (  # noqa: E402
    SCHEDULES,
    CosineSchedule,
    CustomSchedule,
    PolynomialSchedule,
    VPSchedule,
    make_schedule,
)

ALL_SCHEDULES = {
    "linear": LinearSchedule(),
    "cosine": CosineSchedule(),
    "vp": VPSchedule(),
    "polynomial": PolynomialSchedule(),
    "polynomial_0.5": PolynomialSchedule(0.5),
    "vp_custom_betas": VPSchedule(beta_min=0.5, beta_max=8.0),
}


def _vp_alpha_0(s: VPSchedule) -> float:
    # alpha_0 = exp(-1/2 int_0^1 beta) = exp(-(beta_min + beta_max) / 4).
    return math.exp(-(s.beta_min + s.beta_max) / 4)


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_schedule_boundary_values(name, dtype):
    s = ALL_SCHEDULES[name]
    c = s(torch.tensor([0.0, 1.0], dtype=dtype))
    for field in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t):
        assert field.shape == (2,) and field.dtype == dtype
    # Data end: exact in floating point for every schedule.
    assert c.alpha_t[1].item() == 1.0 and c.sigma_t[1].item() == 0.0
    if isinstance(s, VPSchedule):
        # Source end is only approximately pure noise (documented value).
        a0 = _vp_alpha_0(s)
        assert c.alpha_t[0].item() == pytest.approx(a0, rel=1e-6)
        assert c.sigma_t[0].item() == pytest.approx(math.sqrt(1 - a0**2), rel=1e-6)
    else:
        assert c.alpha_t[0].item() == 0.0 and c.sigma_t[0].item() == 1.0


def test_vp_default_alpha_0_is_documented_value():
    c = VPSchedule()(torch.zeros(1, dtype=torch.float64))
    assert c.alpha_t.item() == pytest.approx(math.exp(-5.025), rel=1e-12)


def test_cosine_is_variance_preserving_and_vp_too():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for s in (CosineSchedule(), VPSchedule()):
        c = s(t)
        torch.testing.assert_close(c.alpha_t**2 + c.sigma_t**2, torch.ones_like(t), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
def test_schedule_derivatives_match_autograd(name):
    s = ALL_SCHEDULES[name]
    # Interior times: VP's d_sigma diverges at t = 1, and t^(n-1) at t = 0 for n < 1.
    t = (0.02 + 0.96 * torch.rand(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).requires_grad_()
    c = s(t)
    (d_alpha,) = torch.autograd.grad(c.alpha_t.sum(), t, retain_graph=True)
    (d_sigma,) = torch.autograd.grad(c.sigma_t.sum(), t)
    torch.testing.assert_close(c.d_alpha_t.detach(), d_alpha, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c.d_sigma_t.detach(), d_sigma, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
def test_schedule_log_snr_increases(name):
    c = ALL_SCHEDULES[name](torch.linspace(0.001, 0.999, 999, dtype=torch.float64))
    log_snr = torch.log(c.alpha_t) - torch.log(c.sigma_t)
    assert bool((log_snr.diff() > 0).all())


def _custom_cosine():
    return CustomSchedule(lambda t: torch.sin(math.pi * t / 2), lambda t: torch.cos(math.pi * t / 2))


def _custom_vp(beta_min=0.1, beta_max=20.0):
    def alpha(t):
        s = 1 - t
        return torch.exp(-0.5 * (beta_min * s + 0.5 * (beta_max - beta_min) * s**2))

    return CustomSchedule(alpha, lambda t: torch.sqrt(1 - alpha(t) ** 2))


@pytest.mark.parametrize(
    "custom, builtin",
    [
        (_custom_cosine(), CosineSchedule()),
        (_custom_vp(), VPSchedule()),
        (CustomSchedule(lambda t: t, lambda t: 1 - t), LinearSchedule()),
        (CustomSchedule(lambda t: t**3, lambda t: 1 - t**3), PolynomialSchedule(3.0)),
    ],
    ids=["cosine", "vp", "linear", "cubic"],
)
@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_custom_schedule_matches_builtin(custom, builtin, mode):
    # Under torch.inference_mode() enable_grad() records no graph: the derivatives were silently zero.
    t = torch.linspace(0.01, 0.99, 41, dtype=torch.float64)
    context = torch.inference_mode() if mode == "inference_mode" else torch.set_grad_enabled(mode == "grad")
    with context:
        a, b = custom(t), builtin(t)
    for name in ("alpha_t", "sigma_t", "d_alpha_t", "d_sigma_t"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12)
        assert getattr(a, name).shape == (41,)
    assert not a.d_alpha_t.requires_grad


def test_custom_schedule_keeps_graph_of_values_and_handles_constants():
    t = torch.tensor([0.2, 0.7], dtype=torch.float64, requires_grad=True)
    c = CustomSchedule(lambda t: t**2, lambda t: torch.ones_like(t))(t)
    (g,) = torch.autograd.grad(c.alpha_t.sum(), t)
    torch.testing.assert_close(g, 2 * t.detach())
    torch.testing.assert_close(c.d_sigma_t, torch.zeros(2, dtype=torch.float64))


def test_custom_schedule_bad_output_shape():
    with pytest.raises(GenkitError, match="shaped like t"):
        CustomSchedule(lambda t: t.sum(), lambda t: 1 - t)(torch.rand(3))


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
def test_affine_path_under_every_schedule(name):
    s = ALL_SCHEDULES[name]
    x_0, x_1 = _pair()
    path = AffinePath(s)
    torch.testing.assert_close(path.sample(x_0, x_1, torch.ones(4, dtype=torch.float64)).x_t, x_1, rtol=0, atol=0)
    if not isinstance(s, VPSchedule):
        torch.testing.assert_close(path.sample(x_0, x_1, torch.zeros(4, dtype=torch.float64)).x_t, x_0, rtol=0, atol=0)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    h = 1e-6
    fd = (path.sample(x_0, x_1, t + h).x_t - path.sample(x_0, x_1, t - h).x_t) / (2 * h)
    torch.testing.assert_close(path.sample(x_0, x_1, t).dx_t, fd, rtol=1e-7, atol=1e-7)


def test_make_schedule_and_registry():
    assert set(SCHEDULES) == {"linear", "cosine", "vp", "polynomial"}
    assert make_schedule("cosine") == CosineSchedule()
    assert make_schedule("vp") == VPSchedule(0.1, 20.0)
    assert make_schedule("polynomial") == PolynomialSchedule(2.0)
    assert isinstance(make_schedule("linear"), LinearSchedule)


def test_unknown_schedule_is_one_line_error_listing_names():
    with pytest.raises(GenkitError) as info:
        make_schedule("sigmoid")
    msg = str(info.value)
    assert "\n" not in msg and "sigmoid" in msg
    for name in SCHEDULES:
        assert name in msg


def test_bad_schedule_parameters():
    with pytest.raises(GenkitError, match="n > 0"):
        PolynomialSchedule(0.0)
    with pytest.raises(GenkitError, match="beta_min <= beta_max"):
        VPSchedule(beta_min=5.0, beta_max=1.0)
