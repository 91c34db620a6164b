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
