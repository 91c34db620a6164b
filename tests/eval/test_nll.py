"""ODE log-likelihood (genkit.solvers.log_likelihood), dequantization and bits/dim (genkit.eval.nll)."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from genkit.analytic import gaussian_rf_velocity
from genkit.errors import GenkitError
from genkit.eval.density import FlowDensity
from genkit.eval.nll import LOG_SCALE_PER_DIM, ImageNLL, bits_per_dim, dequantize, image_nll
from genkit.solvers import LogLikelihood, log_likelihood

MU, SIGMA = 0.7, 0.5


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rf_field(x, t):
    return gaussian_rf_velocity(x, t, MU, SIGMA)


def tiny_mlp(d, seed):
    torch.manual_seed(seed)  # test-only: the weights of a fixed random field
    net = torch.nn.Sequential(torch.nn.Linear(d + 1, 32), torch.nn.Tanh(), torch.nn.Linear(32, d))

    def field(x, t):
        return net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))

    return net, field


# --- ODE log-likelihood: analytic oracles -------------------------------------------------


@pytest.mark.parametrize("d", [2, 5])
def test_gaussian_rf_flow_matches_closed_form(d):
    # The RF field maps N(0, I) to N(MU, SIGMA^2 I) at t = 1 (SPEC 2(e)1), so log p_1 is that
    # Gaussian's log-density; dopri5 at 1e-7 in float64 leaves an error well below 1e-5.
    x_1 = MU + SIGMA * torch.randn(8, d, generator=gen(d), dtype=torch.float64) * 1.5
    r = log_likelihood(rf_field, x_1, divergence="exact", method="dopri5", atol=1e-7, rtol=1e-7)
    expected = torch.distributions.Normal(MU, SIGMA).log_prob(x_1).sum(1)
    assert isinstance(r, LogLikelihood)
    assert r.log_prob.shape == (8,) and r.log_prob.dtype == torch.float64
    torch.testing.assert_close(r.log_prob, expected, atol=1e-5, rtol=0)
    # The parts: the volume term of a field with Jacobian c(t) I is D log(SIGMA) (s_1 / s_0 = SIGMA),
    # and x_0 is the noise the exact map x_1 = MU + SIGMA x_0 inverts to.
    torch.testing.assert_close(r.delta, torch.full((8,), -d * math.log(SIGMA), dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(r.x_0, (x_1 - MU) / SIGMA, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.log_prob, r.prior_logp + r.delta)
    assert r.nfe > 0


@pytest.mark.parametrize("d", [2, 5])
def test_linear_field_matches_pushforward_gaussian(d):
    # v = A x + b (non-symmetric A): x_1 = e^A x_0 + (e^A - I) A^{-1} b, so p_1 = N(m, e^A e^{A^T}).
    rng = np.random.default_rng(d)
    a = 0.4 * rng.standard_normal((d, d)) + 0.3 * np.eye(d)
    b = rng.standard_normal(d)
    ea = expm(a)
    mean = (ea - np.eye(d)) @ np.linalg.solve(a, b)
    law = torch.distributions.MultivariateNormal(torch.tensor(mean), torch.tensor(ea @ ea.T))
    a_t, b_t = torch.tensor(a), torch.tensor(b)
    x_1 = torch.tensor(mean) + torch.randn(8, d, generator=gen(1), dtype=torch.float64)
    r = log_likelihood(lambda x, t: x @ a_t.T + b_t, x_1, divergence="exact", atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(r.log_prob, law.log_prob(x_1), atol=1e-5, rtol=0)
    torch.testing.assert_close(r.delta, torch.full((8,), -float(np.trace(a)), dtype=torch.float64), atol=1e-5, rtol=0)


def test_fixed_step_solvers_converge_to_the_closed_form():
    x_1 = torch.randn(4, 3, generator=gen(2), dtype=torch.float64)
    expected = torch.distributions.Normal(MU, SIGMA).log_prob(x_1).sum(1)
    errors = [
        (log_likelihood(rf_field, x_1, divergence="exact", method="rk4", steps=n).log_prob - expected).abs().max()
        for n in (5, 10)
    ]
    # rk4 is 4th order: halving the step divides the error by ~16 (at least 8 here).
    assert errors[1] < errors[0] / 8 and errors[1] < 1e-4


# --- Hutchinson ---------------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_exact_divergence(probe):
    # Each batch row gets its own probe, so 2000 copies of a point give 2000 independent
    # single-probe estimates on the same trajectory. With a fixed-step solver the estimate is
    # linear in the per-stage divergence estimates, so its mean is exactly the exact-divergence
    # result on the same steps: the sample mean must lie within 3 standard errors.
    _, field = tiny_mlp(4, seed=0)
    points = torch.randn(3, 4, generator=gen(3))
    reps = 2000
    with torch.no_grad():
        exact = log_likelihood(field, points, divergence="exact", method="rk4", steps=8).log_prob
        est = log_likelihood(
            field, points.repeat_interleave(reps, 0), divergence="hutchinson", probe=probe,
            method="rk4", steps=8, generator=gen(4),
        ).log_prob.view(3, reps).double()
    mean, se = est.mean(1), est.std(1) / math.sqrt(reps)
    assert (se > 0).all()  # the probes do vary
    assert ((mean - exact.double()).abs() < 3 * se).all(), (mean, exact, se)


def test_hutchinson_probes_are_averaged():
    # Averaging K independent probes divides the estimate's variance by K. With 2000 draws the
    # sample-variance ratio has relative standard error ~ sqrt(2/2000) * sqrt(2) = 4.5%; allow 4 of them.
    _, field = tiny_mlp(4, seed=0)
    x = torch.randn(1, 4, generator=gen(5)).repeat(2000, 1)
    with torch.no_grad():
        var = [
            log_likelihood(field, x, divergence="hutchinson", num_probes=k, method="rk4", steps=4,
                           generator=gen(6 + k)).log_prob.double().var()
            for k in (1, 4)
        ]
    assert abs(4 * var[1] / var[0] - 1) < 4 * 0.045


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_probe_is_fixed_along_the_trajectory(probe):
    # The cotangent reaching the field's output in the VJP is the probe: record it at every
    # evaluation. For v = A x the estimate is eps^T A eps at every t, so delta = -eps^T A eps.
    a = torch.tensor([[0.3, -1.0, 0.2], [0.5, 0.1, 0.0], [0.0, 0.4, -0.2]], dtype=torch.float64)
    seen = []

    def field(x, t):
        v = x @ a.T
        v.register_hook(lambda g: seen.append(g.clone()))
        return v

    x_1 = torch.randn(5, 3, generator=gen(7), dtype=torch.float64)
    r = log_likelihood(field, x_1, divergence="hutchinson", probe=probe, method="dopri5", generator=gen(8))
    assert len(seen) == r.nfe > 2
    for g in seen[1:]:
        assert torch.equal(g, seen[0])
    eps = seen[0]
    if probe == "rademacher":
        assert set(eps.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(r.delta, -((eps @ a.T) * eps).sum(1), atol=1e-9, rtol=1e-9)
    # Same generator seed, same probes, same answer; another seed, other probes.
    again = log_likelihood(field, x_1, divergence="hutchinson", probe=probe, generator=gen(8))
    other = log_likelihood(field, x_1, divergence="hutchinson", probe=probe, generator=gen(9))
    assert torch.equal(again.log_prob, r.log_prob) and not torch.equal(other.log_prob, r.log_prob)


def test_exact_divergence_with_several_num_probes_unused_is_deterministic():
    _, field = tiny_mlp(2, seed=1)
    x = torch.randn(4, 2, generator=gen(10))
    with torch.no_grad():
        a = log_likelihood(field, x, divergence="exact", method="rk4", steps=4)
        b = log_likelihood(field, x, divergence="exact", method="rk4", steps=4, num_probes=3)
    assert torch.equal(a.log_prob, b.log_prob)


# --- precision and gradients --------------------------------------------------------------


def test_no_grad_callers_get_a_detached_result_equal_to_grad_mode():
    net, field = tiny_mlp(3, seed=2)
    x = torch.randn(4, 3, generator=gen(11))
    with torch.no_grad():
        detached = log_likelihood(field, x, divergence="exact", method="rk4", steps=6)
    live = log_likelihood(field, x, divergence="exact", method="rk4", steps=6)
    assert not detached.log_prob.requires_grad and live.log_prob.requires_grad
    torch.testing.assert_close(detached.log_prob, live.log_prob.detach(), atol=1e-6, rtol=0)
    live.log_prob.sum().backward()  # through the divergence (create_graph) and the solve
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_gradient_through_the_solve_matches_the_closed_form():
    # d/dmu log N(x; mu, SIGMA^2 I) = (x - mu) / SIGMA^2, summed over the batch.
    mu = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    x_1 = torch.randn(6, 2, generator=gen(12), dtype=torch.float64)
    r = log_likelihood(lambda x, t: gaussian_rf_velocity(x, t, mu, SIGMA), x_1, divergence="exact",
                       atol=1e-8, rtol=1e-8)
    (grad,) = torch.autograd.grad(r.log_prob.sum(), mu)
    torch.testing.assert_close(grad, ((x_1 - mu) / SIGMA**2).sum(0).detach(), atol=1e-5, rtol=0)


def test_state_is_float32_under_bf16_autocast():
    _, field = tiny_mlp(3, seed=3)
    x = torch.randn(4, 3, generator=gen(13))
    with torch.no_grad():
        ref = log_likelihood(field, x, divergence="hutchinson", method="rk4", steps=4, generator=gen(1)).log_prob
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = log_likelihood(field, x, divergence="hutchinson", method="rk4", steps=4, generator=gen(1))
    assert low.log_prob.dtype == torch.float32 and low.delta.dtype == torch.float32
    # bf16 keeps 8 significant bits (relative error <= 2^-9 ~ 0.2% per rounding) and the float32
    # state averages the roundings over the steps: the result stays within 1% of float32's.
    assert ((low.log_prob - ref).abs() < 0.01 * ref.abs()).all()


def test_log_likelihood_rejects_bad_input():
    x = torch.randn(2, 3)
    with pytest.raises(GenkitError, match="divergence"):
        log_likelihood(rf_field, x, divergence="trace")
    with pytest.raises(GenkitError, match="probe"):
        log_likelihood(rf_field, x, divergence="hutchinson", probe="uniform")
    with pytest.raises(GenkitError, match="num_probes"):
        log_likelihood(rf_field, x, divergence="hutchinson", num_probes=0)
    with pytest.raises(GenkitError, match="method"):
        log_likelihood(rf_field, x, divergence="exact", method="rk45")
    with pytest.raises(GenkitError, match="x_1"):
        log_likelihood(rf_field, torch.ones(2, 3, dtype=torch.long), divergence="exact")
    with pytest.raises(GenkitError, match="shape"):
        log_likelihood(lambda x, t: x[:, :2], x, divergence="exact", method="euler", steps=1)


# --- dequantization and bits/dim ------------------------------------------------------------


class UniformDensity:
    """Uniform on [-1, 1]^D: log p = -D log 2."""

    is_bound = False

    def log_prob(self, x, *, generator=None):
        return torch.full((x.shape[0],), -x[0].numel() * math.log(2), dtype=torch.float64)


class GaussianDensity:
    """Independent N(0.1, 0.6^2) per dimension."""

    is_bound = False

    def log_prob(self, x, *, generator=None):
        return torch.distributions.Normal(0.1, 0.6).log_prob(x.double()).flatten(1).sum(1)


def images(n=5, shape=(3, 4, 4), seed=0):
    return torch.randint(0, 256, (n, *shape), generator=gen(seed), dtype=torch.uint8)


def test_dequantize_stays_in_the_cell_and_is_uniform():
    x_int = images(200)
    x = dequantize(x_int, generator=gen(1))
    assert x.dtype == torch.float32 and x.shape == x_int.shape
    assert x.min() >= -1 and x.max() <= 1
    frac = (x.double() + 1) * 128 - x_int.double()  # u, the position inside the cell
    assert frac.min() >= -1e-4 and frac.max() < 1 + 1e-4
    # U[0, 1) has mean 1/2 and sd 1/sqrt(12): the sample mean of n draws lies within 4 SE.
    n = frac.numel()
    assert abs(frac.mean().item() - 0.5) < 4 / math.sqrt(12 * n)
    assert torch.equal(dequantize(x_int, generator=gen(1)), x)
    assert dequantize(x_int, generator=gen(1), dtype=torch.float64).dtype == torch.float64


def test_dequantize_rejects_non_uint8():
    with pytest.raises(GenkitError, match="uint8"):
        dequantize(torch.zeros(2, 3))


def test_uniform_model_gives_exactly_8_bits_per_dim():
    # log p = -D log 2 on [-1, 1]; + D log(2/256) is -D log 256 nats per image, i.e. 8 bits/dim.
    d = 48
    lp = torch.full((3,), -d * math.log(2), dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(lp, d), torch.full((3,), 8.0, dtype=torch.float64), atol=1e-12, rtol=0)
    # Without the offset it is the [-1, 1]-scale density's own 1 bit/dim; the offset is exactly 7.
    torch.testing.assert_close(bits_per_dim(lp, d, scale_offset=False), torch.ones(3, dtype=torch.float64))
    assert LOG_SCALE_PER_DIM == math.log(2 / 256)
    for k in (1, 3):
        r = image_nll(UniformDensity(), images(), k=k, generator=gen(2))
        assert isinstance(r, ImageNLL) and r.k == k and r.num_dims == 48
        torch.testing.assert_close(r.bits_per_dim, torch.full((5,), 8.0, dtype=torch.float64), atol=1e-12, rtol=0)
        assert abs(r.mean - 8) < 1e-12 and r.stderr < 1e-12


def test_k1_is_the_plain_estimate_and_k_samples_are_importance_weighted():
    x_int, density = images(), GaussianDensity()
    one = image_nll(density, x_int, k=1, generator=gen(3))
    plain = bits_per_dim(density.log_prob(dequantize(x_int, generator=gen(3))), 48)
    torch.testing.assert_close(one.bits_per_dim, plain)
    # k = 4: log((1/4) sum_j p(x_j)) over the four draws the generator makes in turn.
    g = gen(4)
    draws = torch.stack([density.log_prob(dequantize(x_int, generator=g)) for _ in range(4)])
    four = image_nll(density, x_int, k=4, generator=gen(4))
    expected = bits_per_dim(torch.logsumexp(draws, 0) - math.log(4), 48)
    torch.testing.assert_close(four.bits_per_dim, expected)
    # Jensen: the K-sample bound is never looser than the mean of single-draw bounds.
    assert (four.bits_per_dim <= bits_per_dim(draws, 48).mean(0) + 1e-12).all()
    assert abs(one.stderr - one.bits_per_dim.std().item() / math.sqrt(5)) < 1e-12
    # Batching changes nothing for a deterministic density and k = 1 on identical inputs.
    halves = image_nll(density, x_int[:2], k=1, generator=gen(3)).bits_per_dim
    torch.testing.assert_close(halves, one.bits_per_dim[:2])


def test_image_nll_of_a_flow_matches_the_analytic_density():
    # The RF field's density is N(MU, SIGMA^2 I) exactly, so FlowDensity + image_nll must give
    # the bits/dim of that Gaussian on the same dequantized images (rk4 error ~1e-6 nats).
    x_int = images(4, (1, 3, 3))
    flow = FlowDensity(rf_field, (1, 3, 3), divergence="exact", method="rk4", steps=20)
    r = image_nll(flow, x_int, k=1, batch_size=3, generator=gen(5))
    g = gen(5)
    lp = []
    for batch in (x_int[:3], x_int[3:]):
        x = dequantize(batch, generator=g)
        lp.append(torch.distributions.Normal(MU, SIGMA).log_prob(x.double()).flatten(1).sum(1))
    torch.testing.assert_close(r.bits_per_dim, bits_per_dim(torch.cat(lp), 9), atol=1e-5, rtol=0)


def test_image_nll_rejects_bad_input():
    with pytest.raises(GenkitError, match="k must"):
        image_nll(UniformDensity(), images(), k=0)
    with pytest.raises(GenkitError, match="batch_size"):
        image_nll(UniformDensity(), images(), batch_size=0)
    with pytest.raises(GenkitError, match="num_dims"):
        bits_per_dim(torch.zeros(2), 0)


def test_hutchinson_with_several_draws_is_optimistic():
    """Documents the bias nll_k_note warns of. field(x) = A x with A = [[0, 2], [2, 0]]: tr A = 0, so the
    exact divergence term vanishes, while a Rademacher probe's z^T A z = 4 z_1 z_2 = +-4 is unbiased noise
    of +-4 nats per image. At k = 1 both agree on average; at k = 8 the log-mean-exp favours the +4 draws
    and the Hutchinson bits/dim fall far below the exact ones (ln cosh 4 ~ 3.3 nats: ~2.4 bits/dim)."""
    a = torch.tensor([[0.0, 2.0], [2.0, 0.0]])

    def field(x, t):
        return (x.flatten(1) @ a.T).view_as(x)

    x_int = torch.randint(0, 256, (64, 1, 1, 2), generator=gen(7), dtype=torch.uint8)

    def bpd(divergence, k):
        flow = FlowDensity(field, (1, 1, 2), divergence=divergence, method="rk4", steps=2)
        return image_nll(flow, x_int, k=k, generator=gen(8)).mean

    assert abs(bpd("hutchinson", 1) - bpd("exact", 1)) < 1.0  # unbiased: within the noise of 64 images
    assert bpd("hutchinson", 8) < bpd("exact", 8) - 1.5
