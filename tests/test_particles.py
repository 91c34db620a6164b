"""The generator-free particle flow x <- x + eps grad h(D(x)) (SPEC §3c, §3e.2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genkit.data.toy import TOY_DATASETS, sample_toy
from genkit.errors import GenkitError
from genkit.eval.distances import energy_distance
from genkit.objectives.gan import H_FUNCTIONS, particle_target
from genkit.particles import ParticleFlowResult, particle_flow


@pytest.fixture
def one_thread():
    # Tiny matmuls: one thread is fastest and immune to oversubscription on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class GaussianLogRatio(nn.Module):
    """The exact log-ratio log N(x; mu, sigma^2 I) - log N(x; m, s^2 I): (B, d) -> (B,)."""

    def __init__(self, mu: torch.Tensor, sigma: float, m: torch.Tensor, s: float) -> None:
        super().__init__()
        self.mu, self.sigma, self.m, self.s = mu, sigma, m, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[1]
        log_p = -((x - self.mu) ** 2).sum(1) / (2 * self.sigma**2) - d * math.log(self.sigma)
        log_q = -((x - self.m) ** 2).sum(1) / (2 * self.s**2) - d * math.log(self.s)
        return log_p - log_q


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Empirical mean (d,) and pooled isotropic std of x: (N, d)."""
    m = x.mean(0)
    return m, float(((x - m) ** 2).mean().sqrt())


def test_gaussian_particles_follow_the_closed_form_ode():
    """SPEC §3e.2: with h = identity and the exact grad log p/q_t, p = N(mu, sigma^2 I), q_t = N(m_t, s_t^2 I),
    the particles' mean and std follow m' = -(m - mu)/sigma^2, s' = 1/s - s/sigma^2, i.e.
    m_t = mu + (m_0 - mu) e^{-t/sigma^2},  s_t^2 = sigma^2 + (s_0^2 - sigma^2) e^{-2t/sigma^2}.

    Each step uses ``particle_target`` (the step of :func:`particle_flow` and of MonoFlow's particle
    form) with the analytic log-ratio of the particles' current Gaussian law (m_t, s_t fitted to
    them), so the test checks the dynamics independently of any learned D. The velocity is affine
    in x, hence the particles stay Gaussian and their moments follow the Euler scheme of the ODE
    exactly; the only error is Euler's O(eps), measured over t in [0, 1.5] as 3.6e-4 (mean) and 3e-5
    (std) at eps = 1e-3, 1.1e-3 and 9e-5 at eps = 3e-3: tolerance 2e-3. Over the run the mean moves by
    3.0 and the std by 0.79, so a wrong sign or a missing term fails by far.
    """
    mu, sigma, eps, n_steps = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.7, 1e-3, 1500
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([-1.0, 0.5], dtype=torch.float64) + 1.5 * torch.randn(1000, 2, dtype=torch.float64, generator=g)
    m_0, s_0 = _moments(x)
    kl = []  # KL(q_t || p) of the particles' Gaussian law, d/2 (s^2/sigma^2 - 1 - log(s^2/sigma^2)) + |m - mu|^2/(2 sigma^2)
    for _ in range(n_steps):
        m, s = _moments(x)
        kl.append(float(mu.numel() / 2 * (s**2 / sigma**2 - 1 - math.log(s**2 / sigma**2))
                        + (m - mu).pow(2).sum() / (2 * sigma**2)))
        x = particle_target(GaussianLogRatio(mu, sigma, m, s), x, h=H_FUNCTIONS["identity"], step_size=eps)
    # SPEC §3e.3: the KL never increases along the flow (here from 12.2 to 0.022; each step lowers it by >= 9e-5)
    assert all(b <= a for a, b in zip(kl, kl[1:])) and kl[0] > 5 and kl[-1] < 0.05 * kl[0]
    t = eps * n_steps
    m_t = mu + (m_0 - mu) * math.exp(-t / sigma**2)
    s_t = math.sqrt(sigma**2 + (s_0**2 - sigma**2) * math.exp(-2 * t / sigma**2))
    m, s = _moments(x)
    torch.testing.assert_close(m, m_t, rtol=0, atol=2e-3)
    assert s == pytest.approx(s_t, abs=2e-3)
    assert float((m_0 - m).norm()) > 2.5 and s_0 - s > 0.6  # the particles really moved
    # fixed point (SPEC §3e.3): at q = p the velocity vanishes identically, whatever the increasing h
    for h in H_FUNCTIONS.values():
        still = particle_target(GaussianLogRatio(mu, sigma, mu, sigma), x, h=h, step_size=0.1)
        torch.testing.assert_close(still, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("h", ["identity", "log_sigmoid"])
def test_learned_particle_flow_reaches_eight_gaussians(h, one_thread):
    """256 N(0, I) particles, 30 moves of eps = 0.1, a warm-started D refit 3 Adam(1e-2) steps per move.

    Energy distance to 1000 held-out data points: start 0.63-0.67; after 30 moves (seeds 0, 1, 2)
    identity 0.014, 0.020, 0.014 and log_sigmoid 0.018, 0.014, 0.019; a data sample of the same size
    is at 0.0097. Threshold 0.05 (< 8% of the start); each of the 8 modes must also keep >= 1/4 of
    its share of particles within radius 1. About 0.2 CPU seconds.
    """
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randn(256, 2, generator=g)
    res = particle_flow(x_0, TOY_DATASETS["8gaussians"], steps=30, step_size=0.1, h=h, d_steps_per_step=3,
                        lr=1e-2, generator=g)
    assert isinstance(res, ParticleFlowResult)
    assert res.xs.shape == (31, 256, 2) and res.d_loss.shape == (30,)
    assert torch.equal(res.xs[0], x_0)
    data = sample_toy("8gaussians", 1000, generator=torch.Generator().manual_seed(99))
    start, end = float(energy_distance(res.xs[0], data)), float(energy_distance(res.xs[-1], data))
    assert start > 0.5
    assert end < 0.05, f"energy distance {start:.3f} -> {end:.4f}"
    angles = torch.arange(8, dtype=torch.float32) * (math.pi / 4)
    centres = (4 / math.sqrt(2)) * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    dist, idx = torch.cdist(res.xs[-1], centres).min(dim=1)
    counts = torch.bincount(idx[dist < 1.0], minlength=8)
    assert int(counts.min()) >= 256 / 32, f"mode counts {counts.tolist()}"


def test_particle_flow_is_seeded_and_leaves_the_global_rng_alone():
    x_0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))

    def run(seed):
        return particle_flow(x_0, TOY_DATASETS["moons"], steps=2, step_size=0.1, d_steps_per_step=2,
                             generator=torch.Generator().manual_seed(seed)).xs

    before = torch.get_rng_state()
    a, b, c = run(3), run(3), run(4)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[1], a[0])  # the particles moved


def test_particle_flow_rejects_bad_input():
    sampler = TOY_DATASETS["moons"]
    with pytest.raises(GenkitError, match=r"shape \(N, d\)"):
        particle_flow(torch.zeros(4, 2, 1), sampler, steps=1, step_size=0.1)
    with pytest.raises(GenkitError, match="d_steps_per_step"):
        particle_flow(torch.zeros(4, 2), sampler, steps=1, step_size=0.1, d_steps_per_step=0)
    with pytest.raises(GenkitError, match="step_size"):
        particle_flow(torch.zeros(4, 2), sampler, steps=1, step_size=0.0)
    with pytest.raises(GenkitError, match="unknown h"):
        particle_flow(torch.zeros(4, 2), sampler, steps=1, step_size=0.1, h="tanh")
