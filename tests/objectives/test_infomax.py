"""Deep InfoMax (SPEC §7): the JS estimator's closed forms, the prior term, negatives, the objective, the nets."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genkit.errors import GenkitError
from genkit.nn.infomax_nets import InfoMaxEncoder, build_infomax_models
from genkit.nn.mlp import MLP
from genkit.objectives.infomax import (
    DeepInfoMax, derangement, gaussian_kl, js_bracket, js_estimate, random_permutation,
)

LOG2, LOG4 = math.log(2.0), math.log(4.0)


# ---- a correlated Gaussian pair: P = N(0, [[1, rho], [rho, 1]]) (positives), Q = N(0, I) (negatives) ----
def pmi(x, z, rho):
    """SPEC §7(e)2: T*(x, z) = log p(x, z) / (p(x) p(z)) for standardised (x, z) with correlation rho."""
    return -0.5 * math.log(1 - rho**2) - (rho**2 * x**2 - 2 * rho * x * z + rho**2 * z**2) / (2 * (1 - rho**2))


def sample_pairs(n, rho, generator):
    """(n, 2) positives from P and (n, 2) negatives from Q."""
    x, e = torch.randn(2, n, generator=generator, dtype=torch.float64)
    pos = torch.stack([x, rho * x + math.sqrt(1 - rho**2) * e], dim=1)
    neg = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return pos, neg


def js_by_quadrature(rho, half_width=9.0, n=1201):
    """JS(P, Q) = KL(P||M)/2 + KL(Q||M)/2, M = (P + Q)/2, by the trapezoid rule on a grid (nats)."""
    t = np.linspace(-half_width, half_width, n)
    x, z = np.meshgrid(t, t, indexing="ij")
    log_q = -0.5 * (x**2 + z**2) - math.log(2 * math.pi)
    log_p = log_q + pmi(x, z, rho)
    log_m = np.logaddexp(log_p, log_q) - LOG2
    integrand = 0.5 * np.exp(log_p) * (log_p - log_m) + 0.5 * np.exp(log_q) * (log_q - log_m)
    return float(np.trapezoid(np.trapezoid(integrand, t, axis=1), t))


def mean_and_sd(values):
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def test_js_bracket_equal_distributions_and_disjoint_supports():
    zeros = torch.zeros(7)
    # P = Q: T* = 0 and the bracket is -log 4 (JS = 0)
    assert js_bracket(zeros, zeros).item() == pytest.approx(-LOG4, abs=1e-7)
    assert js_estimate(js_bracket(zeros, zeros)).item() == pytest.approx(0.0, abs=1e-7)
    # disjoint supports: T* = +inf on positives, -inf on negatives; at |T| = m the bracket is -2 log(1 + e^-m)
    for m in (5.0, 30.0, 200.0):
        b = js_bracket(torch.full((3, 1), m), torch.full((4, 1), -m))
        assert b.item() == pytest.approx(-2 * math.log1p(math.exp(-m)), rel=1e-6, abs=1e-12)
    assert js_estimate(js_bracket(torch.full((3,), 200.0), torch.full((3,), -200.0))).item() == pytest.approx(LOG2)
    # shapes are averaged entrywise: a (B, 1, h, w) map equals its flattened values
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(2, 3, 1, 4, 4, generator=g)
    assert torch.allclose(js_bracket(pos, neg), js_bracket(pos.reshape(-1), neg.reshape(-1)))
    assert torch.allclose(-js_bracket(pos, neg), F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                          + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))


def test_bracket_at_the_pmi_critic_is_2js_minus_log4_and_is_its_maximum():
    rho = 0.8
    js = js_by_quadrature(rho)
    assert 0 < js < LOG2  # (standard JS with natural logs is at most log 2, SPEC §11.2)
    pos, neg = sample_pairs(200_000, rho, torch.Generator().manual_seed(1))
    t_pos, t_neg = pmi(pos[:, 0], pos[:, 1], rho), pmi(neg[:, 0], neg[:, 1], rho)
    # the bracket is a sum of two independent sample means: its standard error from the samples
    m_pos, sd_pos = mean_and_sd(F.logsigmoid(t_pos))
    m_neg, sd_neg = mean_and_sd(F.logsigmoid(-t_neg))
    bracket = js_bracket(t_pos, t_neg).item()
    assert bracket == pytest.approx(m_pos + m_neg, abs=1e-9)
    assert abs(bracket - (2 * js - LOG4)) < 4 * math.hypot(sd_pos, sd_neg)
    # any other critic scores less (the variational bound): shifted, scaled, or ignoring z
    for f in (lambda t: t + 0.5, lambda t: 0.7 * t, lambda t: 1.3 * t, lambda t: torch.zeros_like(t)):
        assert js_bracket(f(t_pos), f(t_neg)).item() < bracket


def test_pmi_critic_averages_to_the_mutual_information_on_positives():
    """SPEC §7(e)2: E_P T* = I(X; Z) = -log(1 - rho^2) / 2."""
    rho = 0.6
    pos, _ = sample_pairs(100_000, rho, torch.Generator().manual_seed(2))
    m, sd = mean_and_sd(pmi(pos[:, 0], pos[:, 1], rho))
    assert abs(m - (-0.5 * math.log(1 - rho**2))) < 4 * sd


def test_a_small_critic_learns_most_of_the_js_divergence():
    """Learning works: an MLP critic trained on the logistic loss gets close to the bound.

    Any critic's bracket is at most 2 JS - log 4 (previous test); one that ignores the pairing (a
    constant) gets at most JS estimate 0. We ask the learned critic for 9/10 of the true JS on held-out
    pairs, far above 0 (the held-out standard error is ~0.002 against JS ~ 0.21), and at most the bound
    plus 4 standard errors.
    """
    rho, steps, batch = 0.9, 150, 256
    js = js_by_quadrature(rho)
    torch.manual_seed(0)
    critic = MLP(2, 1, hidden=32, depth=2, activation="silu")
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        pos, neg = (s.float() for s in sample_pairs(batch, rho, g))
        loss = -js_bracket(critic(pos), critic(neg))
        opt.zero_grad()
        loss.backward()
        opt.step()
    pos, neg = (s.float() for s in sample_pairs(50_000, rho, torch.Generator().manual_seed(4)))
    with torch.no_grad():
        t_pos, t_neg = critic(pos), critic(neg)
    learned = js_estimate(js_bracket(t_pos, t_neg)).item()
    sd = 0.5 * math.hypot(mean_and_sd(F.logsigmoid(t_pos))[1], mean_and_sd(F.logsigmoid(-t_neg))[1])
    assert 0.9 * js < learned < js + 4 * sd, (learned, js)


def test_decomposition_identity_for_a_linear_gaussian_encoder():
    """SPEC §7(e)3: x ~ N(0, I_2), p(z|x) = N(A x, S) (diagonal S), q = N(0, I_3). Then
    p(z) = N(0, A A^T + S), I(X, Z) = (log det(A A^T + S) - log det S) / 2, KL(p(z)||q) in closed form,
    and E_x KL(p(z|x)||q) by the library's gaussian_kl at Gauss-Hermite nodes (exact: quadratic in x).
    -I + lam KL(p(z)||q) = -(1 + lam) I + lam E_x KL(p(z|x)||q)."""
    A = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.7, 0.0]], dtype=torch.float64)
    s = torch.tensor([0.5, 1.5, 0.2], dtype=torch.float64)  # posterior variances
    cov_z = A @ A.T + torch.diag(s)
    mi = 0.5 * (torch.logdet(cov_z) - s.log().sum())
    kl_marginal = 0.5 * (cov_z.trace() - 3 - torch.logdet(cov_z))
    nodes, weights = np.polynomial.hermite_e.hermegauss(5)  # probabilists' Hermite: weight exp(-x^2/2)
    weights = weights / weights.sum()
    x = torch.tensor(np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2))  # (25, 2) nodes
    w = torch.tensor(np.outer(weights, weights).reshape(-1))  # (25,) weights
    per_x = gaussian_kl(x @ A.T, s.log().expand(len(x), 3)).sum(dim=1)  # (25,) KL(p(z|x)||q)
    expected_kl = (w * per_x).sum()
    # the identity E_x KL(p(z|x)||q) = I + KL(p(z)||q) behind the rewrite, then the rewrite itself
    assert expected_kl.item() == pytest.approx((mi + kl_marginal).item(), rel=1e-12)
    for lam in (0.0, 0.01, 1.0, 5.0):
        lhs = -mi + lam * kl_marginal
        rhs = -(1 + lam) * mi + lam * expected_kl
        assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12, abs=1e-12)


def test_gaussian_kl_is_zero_only_at_the_prior_and_matches_monte_carlo():
    assert torch.equal(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))
    for mu, logvar in ((0.3, 0.0), (0.0, -0.5), (0.0, 0.4), (-1.2, 1.1)):
        kl = gaussian_kl(torch.tensor([mu]), torch.tensor([logvar])).item()
        assert kl > 0
        z = mu + math.exp(0.5 * logvar) * torch.randn(200_000, generator=torch.Generator().manual_seed(5),
                                                      dtype=torch.float64)
        log_ratio = -0.5 * (z - mu) ** 2 / math.exp(logvar) - 0.5 * logvar + 0.5 * z**2  # log N(z; mu, s^2) - log N(z; 0, 1)
        m, sd = mean_and_sd(log_ratio)
        assert abs(kl - m) < 4 * sd + 1e-6
    with pytest.raises(GenkitError, match="same shape"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_derangement_has_no_fixed_points_and_is_seeded():
    for n in (2, 3, 5, 64, 257):
        for seed in range(5):
            perm = derangement(n, generator=torch.Generator().manual_seed(seed))
            assert perm.dtype == torch.int64 and torch.equal(perm.sort().values, torch.arange(n))
            assert not (perm == torch.arange(n)).any()
    a, b = (derangement(50, generator=torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, derangement(50, generator=torch.Generator().manual_seed(8)))
    # n = 3 has exactly two derangements, the two 3-cycles: both are drawn
    seen = {tuple(derangement(3, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert seen == {(1, 2, 0), (2, 0, 1)}
    # the reference code's randperm does leave fixed points (expected count 1 for any n)
    fixed = [(random_permutation(10, generator=torch.Generator().manual_seed(s)) == torch.arange(10)).sum()
             for s in range(50)]
    assert sum(int(f) for f in fixed) > 0
    with pytest.raises(GenkitError, match="at least 2"):
        derangement(1)


def _tiny_models(global_input="code"):
    torch.manual_seed(0)
    return build_infomax_models((1, 8, 8), channels=(4, 6), z_dim=3, critic_hidden=8, global_input=global_input)


def test_objective_equals_the_reference_sketch_with_the_same_draws():
    """SPEC §7(b)/(c) sketch (BCE-with-logits terms, KL mean over batch and dims), negatives and noise
    drawn as the objective draws them: noise first, then the permutation, from one generator."""
    models = _tiny_models()
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = DeepInfoMax(0.5, 1.5, 0.01, negatives="permutation")(models, x, generator=torch.Generator().manual_seed(9))

    enc, t1, t2 = models["encoder"], models["global_critic"], models["local_critic"]
    g = torch.Generator().manual_seed(9)
    o = enc(x)
    fmap, mu, logvar = o.fmap, o.mu, o.logvar
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
    perm = torch.randperm(x.shape[0], generator=g)
    pos_g, neg_g = t1(torch.cat([z, z], 1)), t1(torch.cat([z, z[perm]], 1))
    zt = z[:, :, None, None].expand(-1, -1, *fmap.shape[2:])
    pos_l, neg_l = t2(torch.cat([zt, fmap], 1)), t2(torch.cat([zt, fmap[perm]], 1))

    def bce(p, n):
        return (F.binary_cross_entropy_with_logits(p, torch.ones_like(p))
                + F.binary_cross_entropy_with_logits(n, torch.zeros_like(n)))

    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).mean()
    reference = 0.5 * bce(pos_g, neg_g) + 1.5 * bce(pos_l, neg_l) + 0.01 * kl
    assert out.losses["model"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert out.metrics["prior_kl"].item() == pytest.approx(kl.item(), rel=1e-5)


@pytest.mark.parametrize("global_input", ["code", "image_embedding"])
def test_objective_terms_metrics_and_gradients(global_input):
    models = _tiny_models(global_input)
    objective = DeepInfoMax(alpha=0.5, beta=1.5, gamma=0.01, global_input=global_input)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = objective(models, (x, torch.zeros(6)), generator=torch.Generator().manual_seed(2))
    m = out.metrics
    assert set(out.losses) == {"model"} and out.losses["model"].dim() == 0
    assert {"loss_global", "loss_local", "prior_kl", "js_global", "js_local", "code_mean", "code_std"} <= set(m)
    total = 0.5 * m["loss_global"] + 1.5 * m["loss_local"] + 0.01 * m["prior_kl"]
    assert out.losses["model"].item() == pytest.approx(total.item(), rel=1e-6)
    for key in ("js_global", "js_local"):
        assert m[key].item() <= LOG2  # (a lower bound on a JS: at most log 2, negative for a poor critic)
        assert m[key].item() == pytest.approx((LOG4 - m[key.replace("js", "loss")].item()) / 2, abs=1e-6)
    assert all(not v.requires_grad for v in m.values())
    out.losses["model"].backward()
    for name, model in models.items():  # the encoder learns through z and the feature map; both critics learn
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    # same generator seed, same loss; the draws come only from the generator
    again = objective(models, x, generator=torch.Generator().manual_seed(2))
    assert again.losses["model"].item() == pytest.approx(out.losses["model"].item(), rel=1e-6)


def test_objective_errors():
    models = _tiny_models()
    with pytest.raises(GenkitError, match="at least 2 images"):
        DeepInfoMax()(models, torch.zeros(1, 1, 8, 8))
    with pytest.raises(GenkitError, match="needs models"):
        DeepInfoMax()({"encoder": models["encoder"]}, torch.zeros(2, 1, 8, 8))
    with pytest.raises(GenkitError, match="gamma"):
        DeepInfoMax(gamma=-1.0)
    with pytest.raises(GenkitError, match="global_input"):
        DeepInfoMax(global_input="pixels")
    with pytest.raises(GenkitError, match="negatives"):
        DeepInfoMax(negatives="roll")


def test_encoder_shapes_for_the_reference_setups():
    """CIFAR-10 (SPEC §7d): 4x4x256 feature map and a 256-d code; MNIST 28x28: 3x3 after three pools."""
    torch.manual_seed(0)
    models = build_infomax_models((3, 32, 32))
    out = models["encoder"](torch.randn(2, 3, 32, 32))
    assert out.fmap.shape == (2, 256, 4, 4) and out.mu.shape == out.logvar.shape == (2, 256)
    assert models["global_critic"](torch.zeros(2, 512)).shape == (2, 1)
    assert models["local_critic"](torch.zeros(2, 512, 4, 4)).shape == (2, 1, 4, 4)
    mnist = InfoMaxEncoder(1, (28, 28), channels=(8, 8, 8), z_dim=4)
    assert mnist(torch.randn(2, 1, 28, 28)).fmap.shape == (2, 8, 3, 3) and mnist.features(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    with pytest.raises(GenkitError, match="too small"):
        InfoMaxEncoder(1, (4, 4), channels=(8, 8, 8))
    with pytest.raises(GenkitError, match=r"expects images \(B, 1, H, W\)"):
        mnist(torch.zeros(2, 3, 28, 28))
