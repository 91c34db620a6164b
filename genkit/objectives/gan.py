"""Adversarial objectives. For now the classic WGAN-GP baseline (Gulrajani et al., 2017).

Models: ``{"generator": G, "critic": D}``; ``G(z): (B, latent_dim) -> (B, ...)``,
``D(x): (B, ...) -> (B,)`` or ``(B, 1)``. The batch is real data ``x_1: (B, ...)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from genkit.objectives.base import LossOutput


def _per_sample(d: Tensor) -> Tensor:
    return d.reshape(d.shape[0])  # (B, 1) or (B,) -> (B,)


def gradient_penalty(critic: nn.Module, x_real: Tensor, x_fake: Tensor, *, center: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """Mean over samples of ``(||grad D(x_hat)|| - center)^2`` at per-sample uniform interpolates.

    x_real, x_fake: (B, ...). Returns a scalar that keeps the graph (create_graph=True).
    """
    b = x_real.shape[0]
    t = torch.rand(b, generator=generator, device=x_real.device, dtype=x_real.dtype)
    t = t.view(b, *([1] * (x_real.dim() - 1)))  # (B, 1, ..., 1) for broadcasting
    x_hat = (t * x_real + (1 - t) * x_fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_per_sample(critic(x_hat)).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - center) ** 2).mean()


class WGANGP:
    """Critic: ``D(fake) - D(real) + gp_weight * (||grad D(x_hat)|| - 1)^2``; generator: ``-D(G(z))``.

    Use with an update ratio of 5 critic steps per generator step
    (``update_every={"generator": 5}``) and Adam(betas=(0, 0.9)), as in the paper.
    """

    def __init__(self, *, latent_dim: int, gp_weight: float = 10.0, gp_center: float = 1.0) -> None:
        self.latent_dim, self.gp_weight, self.gp_center = latent_dim, gp_weight, gp_center

    def __call__(self, models: Mapping[str, nn.Module], batch: Tensor, *, need: frozenset[str],
                 generator: torch.Generator | None = None) -> LossOutput:
        g, d = models["generator"], models["critic"]
        x_real = batch
        z = torch.randn(x_real.shape[0], self.latent_dim, generator=generator, device=x_real.device)
        losses: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        if "critic" in need:
            with torch.no_grad():
                x_fake = g(z)
            gap = _per_sample(d(x_real)).mean() - _per_sample(d(x_fake)).mean()  # Wasserstein estimate
            gp = gradient_penalty(d, x_real, x_fake, center=self.gp_center, generator=generator)
            losses["critic"] = -gap + self.gp_weight * gp
            metrics["wasserstein"], metrics["gradient_penalty"] = gap.detach(), gp.detach()
        if "generator" in need:
            losses["generator"] = -_per_sample(d(g(z))).mean()
        return LossOutput(losses=losses, metrics=metrics)
