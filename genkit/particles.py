"""A GAN without a generator: particles moved by a refitted discriminator (SPEC §3c).

The "GAN as a diffusion ODE" picture made literal: ``N`` particles follow
``x <- x + step_size * grad_x h(D(x))`` while a logistic discriminator ``D ~ log p/q_t`` is refit
(warm-started, a few Adam steps) on real data vs the current particles before every move. With
``h = identity`` and an exact ``D`` this is the Euler scheme of the reverse-KL Wasserstein
gradient flow ``x' = grad log(p / q_t)(x)``. For analysis and tests; generators train through
:class:`genkit.objectives.gan.MonoFlow`, whose particle form takes the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.nn.mlp import MLP
from genkit.objectives.gan import HName, h_function, logistic_discriminator_loss, particle_target

__all__ = ["ParticleFlowResult", "default_discriminator", "particle_flow"]


@dataclass(frozen=True)
class ParticleFlowResult:
    xs: Tensor
    """(steps + 1, N, d): the particles before the first move and after each move"""
    d_loss: Tensor
    """(steps,): discriminator loss of the last refit step before each move"""
    discriminator: nn.Module
    """the discriminator after the last refit"""


def default_discriminator(dim: int) -> nn.Module:
    """A small logistic discriminator: ``MLP(dim, 1, hidden=64, depth=2, activation="silu")``."""
    return MLP(dim, 1, hidden=64, depth=2, activation="silu")


def particle_flow(
    x_0: Tensor,
    data_sampler: Callable[[int, torch.Generator | None], Tensor],
    *,
    steps: int,
    step_size: float,
    h: HName | Callable[[Tensor], Tensor] = "identity",
    d_steps_per_step: int = 5,
    lr: float = 1e-3,
    discriminator_factory: Callable[[int], nn.Module] = default_discriminator,
    generator: torch.Generator | None = None,
) -> ParticleFlowResult:
    """Move particles ``x_0: (N, d)`` toward the data by the learned flow ``grad_x h(D(x))``.

    Each of ``steps`` steps: ``d_steps_per_step`` Adam(lr) steps on
    :func:`~genkit.objectives.gan.logistic_discriminator_loss` with ``N`` fresh real points
    ``data_sampler(N, generator): (N, d)`` vs the current particles, then one move
    ``x <- particle_target(D, x, h, step_size)``. ``D = discriminator_factory(d)`` is built once
    (its initialisation drawn from a seed taken from ``generator``; the global RNG is left as it
    was) and warm-started from step to step. ``h`` is a name for
    :func:`~genkit.objectives.gan.h_function` (default shift) or a callable ``(B,) -> (B,)``.
    """
    if x_0.dim() != 2 or x_0.shape[0] < 1:
        raise GenkitError(f"particle_flow expects particles x_0 of shape (N, d), got {tuple(x_0.shape)}")
    if steps < 0 or d_steps_per_step < 1:
        raise GenkitError(f"need steps >= 0 and d_steps_per_step >= 1, got {steps} and {d_steps_per_step}")
    if not (step_size > 0 and lr > 0):
        raise GenkitError(f"step_size and lr must be > 0, got {step_size} and {lr}")
    h_fn = h_function(h) if isinstance(h, str) else h
    n, dim = x_0.shape
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):  # a reproducible initialisation without touching global state
        torch.manual_seed(seed)
        disc = discriminator_factory(dim).to(device=x_0.device, dtype=x_0.dtype)
    opt = torch.optim.Adam(disc.parameters(), lr=lr)
    x = x_0.detach().clone()
    xs, losses = [x], []
    for _ in range(steps):
        for _ in range(d_steps_per_step):
            real = data_sampler(n, generator).to(device=x.device, dtype=x.dtype)
            loss = logistic_discriminator_loss(disc(real), disc(x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(loss.detach())
        x = particle_target(disc, x, h=h_fn, step_size=step_size)
        xs.append(x)
    d_loss = torch.stack(losses) if losses else x.new_zeros(0)
    return ParticleFlowResult(xs=torch.stack(xs), d_loss=d_loss, discriminator=disc)
