"""The VAE / IWAE objective and the VAE model (SPEC 5(b), 6(b), 6(e)3-4; the density identities themselves are
in tests/eval/test_density.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from genkit.distributions.vmf import kl_vmf_uniform
from genkit.errors import GenkitError
from genkit.eval.density import Density, iwae_log_prob
from genkit.nn.vae_nets import build_vae_nets
from genkit.objectives.vae import VAE, BernoulliImage, VAEObjective

SHAPE = (1, 4, 4)


def _vae(latent="vmf", likelihood="bernoulli", d=3, seed=0, **kw):
    torch.manual_seed(seed)
    out = d * (2 if latent == "gaussian" else 1)
    enc, dec = build_vae_nets("mlp", SHAPE, enc_out_dim=out, latent_dim=d, hidden=16)
    return VAE(enc, dec, latent_dim=d, latent=latent, likelihood=likelihood, **kw)


def _images(n=6, seed=1):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _grads(vae, loss):
    vae.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in vae.parameters() if p.requires_grad]


def test_vmf_m1_gradient_equals_the_single_sample_negative_elbo():
    """SPEC 6(e)3 for vMF latents: the loss (reconstruction + analytic KL) and -log q_1 = -(log p(x|z) + log p(z)
    - log q(z|x)) at the same draw have the same gradient exactly: log q(z|x) = log C + kappa <mu, z> and
    <mu, z> = w carries no gradient (Householder: <H x', mu> = <x', e_1>), log p(z) is constant."""
    vae, x = _vae(kappa=8.0), _images()
    out = VAEObjective(samples=1)({"model": vae}, x, generator=torch.Generator().manual_seed(3))
    g_obj = _grads(vae, out.losses["model"])
    q, prior = vae.posterior(x), vae.prior()
    z = q.rsample((1,), generator=torch.Generator().manual_seed(3))  # the objective's draw (same generator)
    neg_q1 = -iwae_log_prob(vae.decode(z).log_prob(x), prior.log_prob(z), q.log_prob(z)).log_prob.mean()
    g_iwae = _grads(vae, neg_q1)
    for a, b in zip(g_obj, g_iwae):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and the loss is the hand-written single-sample negative ELBO
    manual = -vae.decode(z).log_prob(x)[0] + kl_vmf_uniform(3, torch.tensor(8.0))
    torch.testing.assert_close(out.losses["model"], manual.mean())


def test_gaussian_m1_forms_have_the_same_expectation():
    """SPEC 6(b): the analytic-KL loss and -log q_1 differ by log q(z|x) - log p(z) - KL, which averages to 0
    over z ~ q(z|x) (5 standard errors over 20000 draws)."""
    vae, x = _vae("gaussian", d=2), _images(2)
    with torch.no_grad():
        q, prior = vae.posterior(x), vae.prior()
        z = q.sample((20000,))  # (N, B, d)
        gap = q.log_prob(z) - prior.log_prob(z) - torch.distributions.kl_divergence(q, prior)  # (N, B)
    se = gap.std(0) / math.sqrt(len(gap))
    assert bool((gap.mean(0).abs() < 5 * se).all()), (gap.mean(0), se)


def test_iwae_objective_uses_the_importance_weighted_bound():
    vae, x = _vae("gaussian", "gaussian", d=2, scale=0.5), _images()
    out = VAEObjective(samples=5)({"model": vae}, x, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        q, prior = vae.posterior(x), vae.prior()
        g = torch.Generator().manual_seed(4)
        eps = torch.randn(5, *q.base_dist.loc.shape, generator=g)
        z = q.base_dist.loc + q.base_dist.scale * eps  # (5, B, d): the same draws
        est = iwae_log_prob(vae.decode(z).log_prob(x), prior.log_prob(z), q.log_prob(z))
    torch.testing.assert_close(-out.losses["model"], est.log_prob.mean())
    m = out.metrics
    assert set(m) == {"recon", "kl", "elbo", "bound"} and all(v.dim() == 0 and not v.requires_grad for v in m.values())
    torch.testing.assert_close(m["elbo"], -(m["recon"] + m["kl"]))
    torch.testing.assert_close(m["bound"], est.log_prob.mean())
    # Jensen on the same draws: log-mean-exp of the log-weights >= their mean (the sampled-KL ELBO), per image
    assert bool((est.log_prob >= est.log_weights.mean(0)).all())


def test_vmf_kl_metric_is_the_closed_form_constant():
    for kappa in (1.0, 20.0):
        vae = _vae(d=4, kappa=kappa)
        out = VAEObjective()({"model": vae}, _images(), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.metrics["kl"], kl_vmf_uniform(4, torch.tensor(kappa)))
        assert float(out.metrics["kl"]) > 0
        torch.testing.assert_close(out.losses["model"], out.metrics["recon"] + out.metrics["kl"])


def test_iwae_loss_is_stable_for_log_weights_of_magnitude_1e4():
    """SPEC 6(e)4 through the objective: a Gaussian likelihood with sigma = 1e-3 gives log p(x|z) ~ -1e4..-1e5."""
    vae, x = _vae("gaussian", "gaussian", d=2, scale=1e-3), _images()
    out = VAEObjective(samples=8)({"model": vae}, x, generator=torch.Generator().manual_seed(5))
    assert float(out.metrics["recon"]) > 1e4 and math.isfinite(float(out.losses["model"].detach()))
    assert all(torch.isfinite(g).all() for g in _grads(vae, out.losses["model"]))


def test_bernoulli_image_likelihood():
    logits = torch.randn(2, 3, *SHAPE, generator=torch.Generator().manual_seed(6))
    binary = torch.randint(0, 2, (3, *SHAPE), generator=torch.Generator().manual_seed(7)).float()
    p = BernoulliImage(logits)
    ref = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 3).log_prob(binary)
    torch.testing.assert_close(p.log_prob(binary * 2 - 1), ref)  # (2, 3): a log-probability of binary images
    grey = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(8))
    bce = F.binary_cross_entropy_with_logits(logits, grey.expand_as(logits), reduction="none").sum((-3, -2, -1))
    torch.testing.assert_close(p.log_prob(grey * 2 - 1), -bce)  # the post's per-image summed BCE
    assert p.batch_shape == (2, 3) and p.event_shape == SHAPE and float(p.mean.abs().max()) <= 1


def test_vae_density_protocol_sampling_and_learned_scale():
    vae = _vae("vmf", "gaussian", d=3, learn_scale=True)
    assert "log_scale" in dict(vae.named_parameters())
    fixed = _vae()
    assert "log_scale" in dict(fixed.named_buffers()) and "log_scale" not in dict(fixed.named_parameters())
    density = vae.density(num_samples=7, chunk_size=3)
    assert isinstance(density, Density) and density.is_bound
    lp = density.log_prob(_images(4), generator=torch.Generator().manual_seed(9))
    assert lp.shape == (4,) and bool(torch.isfinite(lp).all())
    z = vae.sample_prior(5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(5))
    assert vae.decode(z).mean.shape == (5, *SHAPE)


def test_dequantized_batches_stay_in_their_cells():
    """With dequantize, the objective scores (x_int + u)/128 - 1 of the batch's integers x_int."""
    x_int = torch.randint(0, 256, (6, *SHAPE), generator=torch.Generator().manual_seed(10))
    seen = {}
    vae = _vae("gaussian", "gaussian", d=2)
    posterior = vae.posterior

    def spy(x):
        seen["x"] = x
        return posterior(x)

    vae.posterior = spy
    VAEObjective(dequantize=True)({"model": vae}, x_int / 127.5 - 1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.floor((seen["x"] + 1) * 128).long().clamp(max=255), x_int)


def test_bad_settings_are_one_line_errors():
    enc, dec = build_vae_nets("mlp", SHAPE, enc_out_dim=3, latent_dim=3, hidden=8)
    bad = [
        (lambda: VAEObjective(samples=0), "M must be an integer >= 1"),
        (lambda: VAE(enc, dec, latent_dim=3, latent="normal"), "unknown latent"),
        (lambda: VAE(enc, dec, latent_dim=3, likelihood="poisson"), "unknown likelihood"),
        (lambda: VAE(enc, dec, latent_dim=1, latent="vmf"), "latent_dim"),
        (lambda: VAE(enc, dec, latent_dim=3, kappa=0.0), "kappa"),
        (lambda: VAE(enc, dec, latent_dim=3, latent="gaussian").posterior(_images()), "(B, 6)"),
        (lambda: build_vae_nets("conv", (1, 30, 30), enc_out_dim=3, latent_dim=3), "divisible by 4"),
        (lambda: build_vae_nets("resnet", SHAPE, enc_out_dim=3, latent_dim=3), "unknown VAE architecture"),
    ]
    for make, words in bad:
        with pytest.raises(GenkitError) as err:
            make()
        assert words in str(err.value) and "\n" not in str(err.value)


def test_iwae_training_learns_the_correlations_of_a_linear_gaussian_model():
    """Data x = W z + s eps (z ~ N(0, I_2), 16 pixels, s = 0.1): a 2-d Gaussian VAE with a learned scale contains
    the true model. Threshold: the exact log-likelihood of the truth E log p(x) = -1/2 log det(2 pi e Sigma) and of
    the best model that ignores correlations (independent pixels with the true variances) differ by `gap` nats
    (about 23 here); after 150 IWAE steps, the test IWAE bound must recover more than half of it, which a model
    without the latent structure cannot do, while an untrained one is far below that baseline."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(16, 2, generator=g) * 0.5
    cov = w @ w.T + 0.01 * torch.eye(16)

    def data(n):
        return (torch.randn(n, 2, generator=g) @ w.T + 0.1 * torch.randn(n, 16, generator=g)).view(n, *SHAPE)

    truth = float(torch.distributions.MultivariateNormal(torch.zeros(16), cov).entropy())
    diagonal = float(0.5 * torch.log(2 * math.pi * math.e * torch.diagonal(cov)).sum())
    gap = diagonal - truth  # nats per image: mutual information between pixels the baseline ignores
    assert gap > 10
    vae = _vae("gaussian", "gaussian", d=2, seed=0, scale=0.3, learn_scale=True)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    objective = VAEObjective(samples=5)
    test = data(500)

    def bound():
        with torch.no_grad():
            return float(vae.density(num_samples=50, chunk_size=None).log_prob(test, generator=torch.Generator().manual_seed(0)).mean())

    before = bound()
    for step in range(150):
        out = objective({"model": vae}, data(64), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.losses["model"].backward()
        opt.step()
    after = bound()
    assert before < -diagonal and after > -diagonal + gap / 2, (before, after, -diagonal, -truth)
