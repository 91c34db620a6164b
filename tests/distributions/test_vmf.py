"""The von Mises-Fisher distribution (SPEC 5(e)): closed forms against scipy and quadrature, the sampler's
law, gradients in kappa (Bessel autograd) and in loc (Householder reparameterisation), contracts."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from scipy.special import ive

from genkit.distributions import HypersphericalUniform, VonMisesFisher, log_bessel_iv, mean_resultant_length
from genkit.distributions import vmf
from genkit.distributions.vmf import _LogBesselIv, kl_vmf_uniform, log_sphere_area
from genkit.errors import GenkitError

CASES = [(3, 5.0), (8, 20.0), (64, 100.0), (2, 3.0)]  # the (d, kappa) SPEC 12 verified numerically


def _loc(b, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)


def _w_density(d, kappa):
    """Unnormalised density of w = <mu, x> on [-1, 1]: exp(kappa (w - 1)) (1 - w^2)^((d-3)/2)."""
    return lambda w: math.exp(kappa * (w - 1)) * (1 - w * w) ** ((d - 3) / 2)


@pytest.mark.parametrize("d,kappa", CASES)
def test_log_prob_and_entropy_match_scipy(d, kappa):
    mu = _loc(1, d)
    p = VonMisesFisher(mu, kappa)
    ref = stats.vonmises_fisher(mu[0].numpy(), kappa)
    x = torch.from_numpy(ref.rvs(5, random_state=np.random.default_rng(0)))  # (5, d)
    np.testing.assert_allclose(p.log_prob(x.unsqueeze(1))[:, 0].numpy(), ref.logpdf(x.numpy()), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(float(p.entropy()[0]), ref.entropy(), rtol=1e-10, atol=1e-10)
    # KL to the uniform = -entropy + log |S^{d-1}| (the uniform's log-density is constant)
    kl = torch.distributions.kl_divergence(p, HypersphericalUniform(d, dtype=torch.float64))
    np.testing.assert_allclose(float(kl[0]), -ref.entropy() + log_sphere_area(d), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d,kappa", CASES)
def test_normaliser_mean_and_kl_against_quadrature(d, kappa):
    """Integrate over w = <mu, x>: the surface measure of S^{d-1} is |S^{d-2}| (1 - w^2)^((d-3)/2) dw."""
    # d = 2: the endpoint factor (1 - w^2)^(-1/2) as quad's algebraic weight (integrable poles)
    if d < 3:
        alg, f = {"weight": "alg", "wvar": ((d - 3) / 2, (d - 3) / 2)}, lambda w: math.exp(kappa * (w - 1))
    else:
        alg, f = {}, _w_density(d, kappa)
    alg |= {"limit": 200, "epsabs": 0, "epsrel": 1e-11}
    mass = integrate.quad(f, -1, 1, **alg)[0]
    k = torch.tensor([kappa], dtype=torch.float64)
    log_c = -(log_sphere_area(d - 1) + math.log(mass) + kappa)  # 1 = C |S^{d-2}| e^kappa mass (|S^0| = 2)
    p = VonMisesFisher(_loc(1, d), k)
    np.testing.assert_allclose(float(p.log_prob(p.loc)[0]) - kappa, log_c, rtol=1e-9)
    a = integrate.quad(lambda w: w * f(w), -1, 1, **alg)[0] / mass
    np.testing.assert_allclose(float(mean_resultant_length(d, k)), a, rtol=1e-9)
    np.testing.assert_allclose(float(kl_vmf_uniform(d, k)), kappa * a + log_c + log_sphere_area(d), rtol=1e-9)


def test_spec_reference_values_and_d3_closed_form():
    k = torch.tensor([5.0, 20.0], dtype=torch.float64)
    assert float(mean_resultant_length(8, k[1:])) == pytest.approx(0.83646, abs=1e-5)
    assert float(mean_resultant_length(3, k[:1])) == pytest.approx(1 / math.tanh(5) - 1 / 5, rel=1e-12)
    assert float(kl_vmf_uniform(3, k[:1])) == pytest.approx(1.30308, abs=1e-5)
    assert float(kl_vmf_uniform(8, k[1:])) == pytest.approx(4.48599, abs=1e-5)
    ks = torch.tensor([0.5, 2.0, 7.0, 30.0], dtype=torch.float64)
    d3 = ks / torch.tanh(ks) - 1 + torch.log(ks / torch.sinh(ks))
    torch.testing.assert_close(kl_vmf_uniform(3, ks), d3, rtol=1e-12, atol=1e-12)


def test_kl_is_zero_at_kappa_zero_increasing_and_independent_of_loc():
    ks = torch.tensor([1e-6, 0.1, 1.0, 5.0, 20.0, 100.0, 1000.0], dtype=torch.float64)
    for d in (2, 3, 8, 64):
        kl = kl_vmf_uniform(d, ks)
        assert abs(float(kl[0])) < 1e-9 and bool((kl.diff() > 0).all()), (d, kl)
    mu = _loc(4, 8)
    kl = torch.distributions.kl_divergence(VonMisesFisher(mu, 20.0), HypersphericalUniform(8, dtype=torch.float64))
    assert kl.shape == (4,) and torch.equal(kl, kl[:1].expand(4))


def test_kl_equals_monte_carlo_of_the_log_ratio():
    """SPEC 5(e)5: KL = E_z[log p(z|x)] - log C_{d,0}, estimated from the sampler (5 standard errors)."""
    p = VonMisesFisher(_loc(1, 8), 20.0)
    z = p.rsample((20000,), generator=torch.Generator().manual_seed(1))  # (N, 1, 8)
    ratio = p.log_prob(z) - HypersphericalUniform(8, dtype=torch.float64).log_prob(z)  # (N, 1)
    se = float(ratio.std()) / math.sqrt(len(ratio))
    assert abs(float(ratio.mean()) - float(p.kl_to_uniform()[0])) < 5 * se


@pytest.mark.parametrize("d,kappa", CASES)
def test_samples_are_unit_with_mean_resultant_length_a_d(d, kappa):
    mu = _loc(2, d, seed=d)
    n = 4000
    z = VonMisesFisher(mu, kappa).rsample((n,), generator=torch.Generator().manual_seed(d))  # (n, 2, d)
    assert z.shape == (n, 2, d) and z.dtype == torch.float64
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(n, 2, dtype=torch.float64), rtol=0, atol=1e-12)
    w = (z * mu).sum(-1)  # (n, 2)
    a = float(mean_resultant_length(d, torch.tensor(kappa, dtype=torch.float64)))
    se = w.std(0) / math.sqrt(n)
    assert bool(((w.mean(0) - a).abs() < 5 * se).all()), (w.mean(0), a, se)
    # E[z] = A_d mu: the mean vector minus A_d mu is within 5 standard errors in every coordinate
    zbar, zse = z.mean(0), z.std(0) / math.sqrt(n)
    assert bool(((zbar - a * mu).abs() < 5 * zse + 1e-12).all())


def test_w_law_ks_against_exact_cdfs():
    """KS test of w = <mu, z>: d = 3 against the exact CDF (SPEC 5(e)3: inverse of w = 1 + log(u + (1-u)e^{-2k})/k),
    d = 8 against the numerically integrated CDF. Seeded; a correct sampler fails with probability 1e-3."""
    kappa = 5.0
    z = VonMisesFisher(_loc(1, 3), kappa).rsample((3000,), generator=torch.Generator().manual_seed(2))
    w = (z[:, 0] * _loc(1, 3)[0]).sum(-1).numpy()
    exact = lambda t: (np.exp(kappa * (t - 1)) - np.exp(-2 * kappa)) / (1 - np.exp(-2 * kappa))
    assert stats.kstest(w, exact).pvalue > 1e-3
    # the d = 3 inverse-CDF sampler of SPEC 5(e)3 follows the same law (two-sample KS)
    u = np.random.default_rng(0).uniform(size=3000)
    assert stats.ks_2samp(w, 1 + np.log(u + (1 - u) * np.exp(-2 * kappa)) / kappa).pvalue > 1e-3
    d, kappa = 8, 20.0
    f = _w_density(d, kappa)
    grid = np.linspace(-1, 1, 4001)
    cdf = np.concatenate([[0.0], np.cumsum([integrate.quad(f, a, b)[0] for a, b in itertools.pairwise(grid)])])
    cdf /= cdf[-1]
    z = VonMisesFisher(_loc(1, d), kappa).rsample((3000,), generator=torch.Generator().manual_seed(3))
    w = (z[:, 0] * _loc(1, d)[0]).sum(-1).numpy()
    assert stats.kstest(w, lambda t: np.interp(t, grid, cdf)).pvalue > 1e-3


def test_bessel_autograd_gradcheck_and_a_d_derivative():
    kappa = torch.tensor([0.3, 2.0, 20.0, 150.0], dtype=torch.float64, requires_grad=True)
    for v in (0.0, 0.5, 3.0, 31.0):
        assert torch.autograd.gradcheck(lambda k, v=v: _LogBesselIv.apply(v, k), (kappa,))
    np.testing.assert_allclose(log_bessel_iv(2.5, kappa).detach().numpy(),
                               np.log(ive(2.5, kappa.detach().numpy())) + kappa.detach().numpy(), rtol=1e-13)
    for d in (3, 8, 64):
        a = mean_resultant_length(d, kappa)  # = E[mu^T z]
        (grad,) = torch.autograd.grad(a.sum(), kappa)
        analytic = 1 - a**2 - (d - 1) * a / kappa  # A_d'(k) from the Bessel recurrences
        torch.testing.assert_close(grad, analytic.detach(), rtol=1e-9, atol=1e-12)


def test_rsample_gradient_wrt_loc_matches_the_mean():
    """E[a^T z] = A_d(kappa) a^T mu for unit mu = normalize(r): the pathwise gradient through the Householder map
    averages to d/dr of that (Monte Carlo over the draws, 5 standard errors per coordinate)."""
    d, kappa, n = 5, 4.0, 4000
    r = torch.tensor([[0.3, -1.0, 0.5, 0.2, 0.8]], dtype=torch.float64, requires_grad=True)
    a_vec = torch.tensor([1.0, 2.0, -0.5, 0.3, -1.0], dtype=torch.float64)
    a_d = float(mean_resultant_length(d, torch.tensor(kappa, dtype=torch.float64)))
    (exact,) = torch.autograd.grad(a_d * (F.normalize(r, dim=-1) @ a_vec).sum(), r)
    z = VonMisesFisher(F.normalize(r, dim=-1), kappa).rsample((n,), generator=torch.Generator().manual_seed(4))
    per_draw = torch.stack([torch.autograd.grad((z[i] @ a_vec).sum(), r, retain_graph=True)[0][0] for i in range(0, n, 8)])
    se = per_draw.std(0) / math.sqrt(len(per_draw))
    assert bool(((per_draw.mean(0) - exact[0]).abs() < 5 * se + 1e-9).all()), (per_draw.mean(0), exact)
    # kappa gets no gradient through the sampler (fixed by design)
    k = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
    assert not VonMisesFisher(F.normalize(r.detach(), dim=-1), k).rsample((3,)).requires_grad


def test_seeded_reproducibility_and_shapes():
    mu = _loc(3, 6).float()
    p = VonMisesFisher(mu, torch.tensor([1.0, 10.0, 100.0]))
    a = p.rsample((7,), generator=torch.Generator().manual_seed(5))
    b = p.rsample((7,), generator=torch.Generator().manual_seed(5))
    c = p.rsample((7,), generator=torch.Generator().manual_seed(6))
    assert a.shape == (7, 3, 6) and a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    assert p.sample().shape == (3, 6) and p.log_prob(a).shape == (7, 3) and p.mean.shape == (3, 6)
    assert p.entropy().shape == (3,)


def test_uniform_sphere_kappa_zero_properties():
    """SPEC 5(e)4 (kappa = 0): E[z] = 0, E[z z^T] = I/d, (w + 1)/2 ~ Beta((d-1)/2, (d-1)/2)."""
    d, n = 5, 20000
    q = HypersphericalUniform(d, dtype=torch.float64)
    z = q.sample((n,), generator=torch.Generator().manual_seed(7))
    assert z.shape == (n, d)
    assert float(z.mean(0).abs().max()) < 5 * math.sqrt(1 / d / n)
    second = z.T @ z / n
    assert float((second - torch.eye(d, dtype=torch.float64) / d).abs().max()) < 0.01  # sd of an entry ~ 0.0012
    assert stats.kstest((z[:, 0].numpy() + 1) / 2, stats.beta((d - 1) / 2, (d - 1) / 2).cdf).pvalue > 1e-3
    assert float(HypersphericalUniform(3).log_prob(torch.zeros(2, 3))[0]) == pytest.approx(-math.log(4 * math.pi))
    assert q.log_prob(z[:4].view(2, 2, d)).shape == (2, 2)  # (2, 2, d) -> (2, 2)


def test_bad_input_is_a_one_line_error():
    mu = _loc(2, 4)
    bad = [
        (lambda: VonMisesFisher(mu[0], 1.0), "(B, d)"),
        (lambda: VonMisesFisher(mu[:, :1], 1.0), "d >= 2"),
        (lambda: VonMisesFisher(mu, 0.0), "> 0"),
        (lambda: VonMisesFisher(mu, -2.0), "> 0"),
        (lambda: VonMisesFisher(mu, torch.tensor([1.0, -1.0]), validate_args=True), "> 0"),
        (lambda: VonMisesFisher(mu, torch.ones(3)), "shape"),
        (lambda: VonMisesFisher(2 * mu, 1.0, validate_args=True), "unit norm"),
        (lambda: VonMisesFisher(mu, 1.0).log_prob(torch.zeros(2, 3)), "dimension 4"),
        (lambda: HypersphericalUniform(1), "d >= 2"),
    ]
    for make, words in bad:
        with pytest.raises(GenkitError, match=None) as err:
            make()
        assert words in str(err.value) and "\n" not in str(err.value)


def test_float_kappa_closed_forms_need_no_bessel_call_per_use(monkeypatch):
    """A float kappa has its closed forms evaluated once, at construction: later calls never go to scipy
    (on a GPU that would be a device sync each step), and they equal the tensor-kappa formulas."""
    d, kappa = 5, 7.5
    fixed, tensor = VonMisesFisher(_loc(3, d), kappa), VonMisesFisher(_loc(3, d), torch.tensor(kappa, dtype=torch.float64))
    x = fixed.sample((4,), generator=torch.Generator().manual_seed(0))  # (4, 3, d)
    expected = (tensor.log_prob(x), tensor.entropy(), tensor.kl_to_uniform())

    def refuse(*args):
        raise AssertionError("log I_v evaluated after construction")

    monkeypatch.setattr(vmf._LogBesselIv, "apply", refuse)
    got = (fixed.log_prob(x), fixed.entropy(), fixed.kl_to_uniform())
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
