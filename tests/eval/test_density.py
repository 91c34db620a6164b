"""Density protocol, FlowDensity and the IWAE estimator (SPEC 6)."""

import math

import pytest
import torch
from torch.distributions import Independent, Laplace, MultivariateNormal, Normal

from genkit.analytic import gaussian_rf_velocity
from genkit.errors import GenkitError
from genkit.eval.density import (
    Density,
    FlowDensity,
    IWAEDensity,
    IWAEEstimate,
    iwae_estimate,
    iwae_log_prob,
    log_mean_exp,
)
from genkit.solvers import log_likelihood

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


class LinearGaussian:
    """SPEC 6(e)1: z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_3); p(x) = N(b, W W^T + s^2 I)."""

    def __init__(self, seed=0, s=0.5):
        g = gen(seed)
        self.w = torch.randn(3, 2, generator=g, dtype=F64)
        self.b = torch.randn(3, generator=g, dtype=F64)
        self.s = s
        self.cov_post = torch.linalg.inv(torch.eye(2, dtype=F64) + self.w.T @ self.w / s**2)
        self.prior = Independent(Normal(torch.zeros(2, dtype=F64), 1.0), 1)

    def decoder(self, z):
        return Independent(Normal(z @ self.w.T + self.b, self.s), 1)

    def post_mean(self, x):
        return (x - self.b) @ self.w @ self.cov_post / self.s**2

    def posterior(self, x):  # the exact posterior N(m, Sigma)
        return MultivariateNormal(self.post_mean(x), self.cov_post)

    def mismatched(self, x):  # shifted and too wide
        return Independent(Normal(self.post_mean(x) + 0.3, 1.5 * self.cov_post.diagonal().sqrt()), 1)

    def log_px(self, x):
        cov = self.w @ self.w.T + self.s**2 * torch.eye(3, dtype=F64)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def data(self, n, seed):
        return torch.randn(n, 3, generator=gen(seed), dtype=F64) * 1.5 + self.b


@pytest.mark.parametrize("m", [1, 5, 50])
def test_iwae_with_exact_posterior_is_exact_with_zero_variance(m):
    # Every weight p(x|z) p(z) / p(z|x) equals p(x), so the estimate is exact for every M.
    model = LinearGaussian()
    x = model.data(4, seed=1)
    r = iwae_estimate(x, encoder=model.posterior, decoder=model.decoder, prior=model.prior,
                      num_samples=m, generator=gen(2))
    assert isinstance(r, IWAEEstimate) and r.is_bound
    assert r.log_prob.shape == (4,) and r.log_weights.shape == (m, 4)
    truth = model.log_px(x)
    torch.testing.assert_close(r.log_prob, truth, atol=1e-10, rtol=0)
    torch.testing.assert_close(r.log_weights, truth.expand(m, 4), atol=1e-10, rtol=0)
    torch.testing.assert_close(r.ess, torch.full((4,), float(m), dtype=F64))


def test_iwae_bias_shrinks_with_m_towards_the_truth():
    # SPEC 6(e)2: E log q_M <= log p(x), non-decreasing in M. 2000 independent estimates per M and
    # per point (batch rows are independent); each step up in M must exceed 3 standard errors of
    # the difference, and the M = 50 mean may not exceed the truth by more than 3 standard errors.
    model = LinearGaussian()
    x = model.data(2, seed=3)
    reps = 2000
    truth = model.log_px(x)
    means, ses = [], []
    for m in (1, 5, 50):
        est = iwae_estimate(x.repeat_interleave(reps, 0), encoder=model.mismatched, decoder=model.decoder,
                            prior=model.prior, num_samples=m, generator=gen(10 + m)).log_prob.view(2, reps)
        means.append(est.mean(1))
        ses.append(est.std(1) / math.sqrt(reps))
    for lo, hi, se_lo, se_hi in zip(means, means[1:], ses, ses[1:]):
        assert (hi - lo > 3 * torch.sqrt(se_lo**2 + se_hi**2)).all()
    assert (means[-1] <= truth + 3 * ses[-1]).all()
    gaps = [truth - mean for mean in means]
    assert (gaps[0] > gaps[1]).all() and (gaps[1] > gaps[2]).all()


def test_iwae_is_stable_for_log_weights_of_magnitude_1e4():
    # exp(-1e4) underflows and exp(1e4) overflows, but log-mean-exp shifts by the max first:
    # weights w and 3w average to 2w exactly.
    for sign in (-1.0, 1.0):
        base = torch.full((2, 3), sign * 1e4, dtype=F64)
        lp = base.clone()
        lp[1] += math.log(3)
        r = iwae_log_prob(lp, torch.zeros_like(lp), torch.zeros_like(lp))
        torch.testing.assert_close(r.log_prob, torch.full((3,), sign * 1e4 + math.log(2), dtype=F64), atol=1e-9, rtol=0)
        r32 = iwae_log_prob(lp.float(), torch.zeros(2, 3), torch.zeros(2, 3))
        assert torch.isfinite(r32.log_prob).all()
        # float32 resolves 1e4 to ~1e-3 (2^-10): the answer is right to that precision.
        assert (r32.log_prob.double() - (sign * 1e4 + math.log(2))).abs().max() < 2e-3
    # Terms that cancel: log p(x|z) ~ -1e4, log q ~ -1e4.
    big = torch.full((4, 2), -1e4, dtype=F64)
    r = iwae_log_prob(big, torch.zeros(4, 2, dtype=F64), big)
    torch.testing.assert_close(r.log_prob, torch.zeros(2, dtype=F64))


def test_log_mean_exp_is_the_log_of_the_mean():
    w = torch.rand(5, 3, generator=gen(4), dtype=F64) + 0.1
    torch.testing.assert_close(log_mean_exp(w.log(), 0), w.mean(0).log())
    torch.testing.assert_close(log_mean_exp(w.log(), 1), w.mean(1).log())
    with pytest.raises(GenkitError):
        log_mean_exp(torch.zeros(0, 3))


def test_iwae_draws_come_from_the_generator_and_chunks_change_nothing_exact():
    model = LinearGaussian()
    x = model.data(3, seed=5)
    kwargs = dict(encoder=model.mismatched, decoder=model.decoder, prior=model.prior, num_samples=20)
    a = iwae_estimate(x, **kwargs, generator=gen(6))
    b = iwae_estimate(x, **kwargs, generator=gen(6))
    c = iwae_estimate(x, **kwargs, generator=gen(7))
    assert torch.equal(a.log_weights, b.log_weights) and not torch.equal(a.log_weights, c.log_weights)
    chunked = iwae_estimate(x, encoder=model.posterior, decoder=model.decoder, prior=model.prior,
                            num_samples=20, chunk_size=7, generator=gen(6))
    assert chunked.log_weights.shape == (20, 3)
    torch.testing.assert_close(chunked.log_prob, model.log_px(x), atol=1e-10, rtol=0)
    # Without a generator the global RNG is used (any proposal with rsample).
    laplace = lambda x: Independent(Laplace(model.post_mean(x), 1.0), 1)  # noqa: E731
    drawn = iwae_estimate(x, encoder=laplace, decoder=model.decoder, prior=model.prior, num_samples=3)
    assert drawn.log_prob.shape == (3,)
    with pytest.raises(GenkitError, match="generator"):
        iwae_estimate(x, encoder=laplace, decoder=model.decoder, prior=model.prior, num_samples=3, generator=gen(0))


def test_iwae_is_differentiable_through_the_reparameterised_draws():
    model = LinearGaussian()
    x = model.data(3, seed=8)
    shift = torch.zeros(2, dtype=F64, requires_grad=True)
    enc = lambda x: Independent(Normal(model.post_mean(x) + shift, 0.5), 1)  # noqa: E731
    loss = -iwae_estimate(x, encoder=enc, decoder=model.decoder, prior=model.prior, num_samples=5,
                          generator=gen(9)).log_prob.mean()
    (grad,) = torch.autograd.grad(loss, shift)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_iwae_rejects_bad_shapes_and_arguments():
    model = LinearGaussian()
    x = model.data(2, seed=0)
    per_dim = lambda z: Normal(z @ model.w.T + model.b, model.s)  # noqa: E731  (no Independent)
    with pytest.raises(GenkitError, match="Independent"):
        iwae_estimate(x, encoder=model.posterior, decoder=per_dim, prior=model.prior, num_samples=2)
    with pytest.raises(GenkitError, match="num_samples"):
        iwae_estimate(x, encoder=model.posterior, decoder=model.decoder, prior=model.prior, num_samples=0)
    with pytest.raises(GenkitError, match="shape"):
        iwae_log_prob(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 2))


def test_iwae_density_implements_the_protocol_as_a_bound():
    model = LinearGaussian()
    density = IWAEDensity(model.posterior, model.decoder, model.prior, num_samples=30, chunk_size=8)
    assert isinstance(density, Density) and density.is_bound
    x = model.data(4, seed=11)
    torch.testing.assert_close(density.log_prob(x, generator=gen(0)), model.log_px(x), atol=1e-10, rtol=0)


def test_flow_density_implements_the_protocol_with_the_ode_log_likelihood():
    mu, sigma = 0.7, 0.5

    def field(x, t):
        return gaussian_rf_velocity(x, t, mu, sigma)

    density = FlowDensity(field, (2, 2), divergence="exact", atol=1e-7, rtol=1e-7)
    assert isinstance(density, Density) and not density.is_bound
    x = torch.randn(3, 2, 2, generator=gen(12), dtype=F64)
    lp = density.log_prob(x)
    assert lp.shape == (3,)
    torch.testing.assert_close(lp, Normal(mu, sigma).log_prob(x).flatten(1).sum(1), atol=1e-5, rtol=0)
    full = density.log_likelihood(x)
    assert torch.equal(full.log_prob, lp) and full.nfe > 0
    hutch = FlowDensity(field, (2, 2), divergence="hutchinson", method="rk4", steps=5)
    expected = log_likelihood(field, x, divergence="hutchinson", method="rk4", steps=5, generator=gen(1)).log_prob
    assert torch.equal(hutch.log_prob(x, generator=gen(1)), expected)
    with pytest.raises(GenkitError, match="shape"):
        density.log_prob(torch.zeros(3, 4, dtype=F64))
    with pytest.raises(GenkitError, match="divergence"):
        FlowDensity(field, (2,), divergence="trace")
