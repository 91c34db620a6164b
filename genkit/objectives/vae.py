"""Variational autoencoders: the ELBO (M = 1) and IWAE (M > 1) objectives, Gaussian or vMF latents (SPEC 5, 6).

The model :class:`VAE` owns the networks and says what its distributions are (they define its density,
which evaluation needs without any objective):

* posterior ``q(z|x)``: ``latent="gaussian"``, a diagonal Normal (encoder output ``(B, 2 d)``: mean and a
  softplus scale); ``latent="vmf"``, ``vMF(normalize(encoder(x)), kappa)`` on ``S^{d-1}`` with ``kappa`` fixed
  (SPEC 5(a): the KL to the uniform prior is then a constant > 0, it cannot collapse);
* prior ``p(z)``: ``N(0, I_d)``, or the uniform distribution on ``S^{d-1}``;
* likelihood ``p(x|z)`` on the library's ``[-1, 1]`` image scale: ``"bernoulli"`` (decoder logits; for
  ``x in {-1, 1}`` a log-probability; for grey values the post's binary cross-entropy against
  ``(x + 1)/2``, which is the expected log-probability of an image binarised with ``P(1) = (x + 1)/2``) or
  ``"gaussian"`` (decoder means, one scale ``sigma`` shared by all pixels, fixed or learned: a density on
  ``[-1, 1]^D``, scored on dequantized 8-bit data with :mod:`genkit.eval.nll`).

:class:`VAEObjective` holds only hyper-parameters: ``M`` importance samples; ``M = 1`` gives the VAE loss
``-log p(x|z) + KL(q(z|x) || p(z))`` (analytic KL: a closed form for both latents, to the uniform for vMF),
``M > 1`` the IWAE loss ``-log q_M(x)`` (SPEC 6(b)) through :func:`genkit.eval.density.iwae_log_prob`.
Log-likelihoods are in nats per image (summed over pixels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, constraints, kl_divergence

from genkit.distributions.vmf import HypersphericalUniform, VonMisesFisher
from genkit.errors import GenkitError
from genkit.eval.density import IWAEDensity, iwae_log_prob, rsample
from genkit.eval.nll import dequantize
from genkit.objectives.base import LossOutput

__all__ = ["LATENTS", "LIKELIHOODS", "VAE", "BernoulliImage", "Latent", "Likelihood", "VAEObjective"]

Latent = Literal["gaussian", "vmf"]
Likelihood = Literal["bernoulli", "gaussian"]
LATENTS: tuple[str, ...] = ("gaussian", "vmf")
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian")


class BernoulliImage(Distribution):
    """Independent Bernoulli pixels with ``logits: (..., C, H, W)``, scoring images ``x`` in ``[-1, 1]``.

    ``log_prob(x) = -sum BCE_with_logits(logits, (x + 1)/2)`` over the last ``event_dims`` dimensions:
    a log-probability for binary images (``x in {-1, 1}``); for grey values the binary cross-entropy of
    the vMF-VAE post, equal to the expected log-probability of the stochastic binarisation
    ``P(pixel = 1) = (x + 1)/2`` (the cross-entropy is linear in its target). ``mean`` is in ``[-1, 1]``.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real

    def __init__(self, logits: Tensor, event_dims: int = 3) -> None:
        self.logits = logits
        shape = logits.shape
        super().__init__(shape[: len(shape) - event_dims], shape[len(shape) - event_dims :], validate_args=False)

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(self.logits) * 2 - 1

    def log_prob(self, value: Tensor) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(self.logits, ((value + 1) / 2).expand_as(self.logits), reduction="none")
        return -bce.flatten(len(self.batch_shape)).sum(-1)  # (*batch, C, H, W) -> (*batch)


class VAE(nn.Module):
    """Encoder + decoder and the distributions they parameterise (see the module docstring).

    Args:
        encoder: ``x: (B, *shape) -> (B, latent_dim)`` (vmf) or ``(B, 2 * latent_dim)`` (gaussian).
        decoder: ``z: (N, latent_dim) -> (N, *shape)``, Bernoulli logits or Gaussian means.
        latent_dim: ``d`` (for vmf the sphere ``S^{d-1}`` of ``R^d``, ``d >= 2``).
        latent: ``"gaussian"`` or ``"vmf"``.
        kappa: the vMF concentration (fixed, > 0; unused for gaussian latents).
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
        scale: the Gaussian likelihood's ``sigma`` (its initial value when learned).
        learn_scale: learn ``log sigma`` (a parameter) rather than keep it fixed (a buffer).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, *, latent_dim: int, latent: Latent = "vmf",
                 kappa: float = 20.0, likelihood: Likelihood = "bernoulli", scale: float = 0.1,
                 learn_scale: bool = False) -> None:
        super().__init__()
        if latent not in LATENTS:
            raise GenkitError(f"unknown latent '{latent}' (known: {', '.join(LATENTS)})")
        if likelihood not in LIKELIHOODS:
            raise GenkitError(f"unknown likelihood '{likelihood}' (known: {', '.join(LIKELIHOODS)})")
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < (2 if latent == "vmf" else 1):
            raise GenkitError(f"latent_dim must be an integer >= {2 if latent == 'vmf' else 1} for {latent} latents, "
                              f"got {latent_dim!r}")
        if latent == "vmf" and not (kappa > 0 and math.isfinite(kappa)):
            raise GenkitError(f"kappa must be a finite number > 0, got {kappa!r}")
        if not (scale > 0 and math.isfinite(scale)):
            raise GenkitError(f"the Gaussian likelihood's scale must be a finite number > 0, got {scale!r}")
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.latent, self.kappa, self.likelihood = latent_dim, latent, float(kappa), likelihood
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def enc_out_dim(self) -> int:
        """Width the encoder must output for this latent."""
        return self.latent_dim * (2 if self.latent == "gaussian" else 1)

    def posterior(self, x: Tensor) -> Distribution:
        """``q(z|x)`` for ``x: (B, *shape)``: batch shape ``(B,)``, event shape ``(latent_dim,)``."""
        h = self.encoder(x).float()
        if h.dim() != 2 or h.shape[1] != self.enc_out_dim:
            raise GenkitError(f"the encoder must output (B, {self.enc_out_dim}) for {self.latent} latents of dimension "
                              f"{self.latent_dim}, got {tuple(h.shape)}")
        if self.latent == "vmf":
            return VonMisesFisher(F.normalize(h, dim=-1), self.kappa, validate_args=False)
        mean, raw = h.chunk(2, dim=-1)  # (B, 2d) -> 2 x (B, d)
        return Independent(Normal(mean, F.softplus(raw) + 1e-5, validate_args=False), 1)

    def prior(self) -> Distribution:
        """``p(z)``: ``N(0, I_d)`` or ``U(S^{d-1})``, on the model's device; ``log_prob(z: (..., d)) -> (...)``."""
        device = self.log_scale.device
        if self.latent == "vmf":
            return HypersphericalUniform(self.latent_dim, device=device, dtype=torch.float32)
        zeros = torch.zeros(self.latent_dim, device=device)
        return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1)

    def decode(self, z: Tensor) -> Distribution:
        """``p(x|z)`` for ``z: (..., latent_dim)``: batch shape ``(...)``, event shape ``(C, H, W)``."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim)).float()  # (N, latent_dim) -> (N, *shape)
        out = out.view(*lead, *out.shape[1:])  # (N, *shape) -> (..., *shape)
        event_dims = out.dim() - len(lead)
        if self.likelihood == "bernoulli":
            return BernoulliImage(out, event_dims)
        scale = self.log_scale.float().exp().expand_as(out)
        return Independent(Normal(out, scale, validate_args=False), event_dims)

    def sample_prior(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes ``z ~ p(z)``: ``(n, latent_dim)`` (drawn as normals, normalised for vmf)."""
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.log_scale.device)
        return self.code_from_noise(z)

    def code_from_noise(self, noise: Tensor) -> Tensor:
        """Prior codes from standard normal ``noise: (n, latent_dim)``: itself, or normalised onto the sphere (vmf)."""
        return F.normalize(noise, dim=-1) if self.latent == "vmf" else noise

    def density(self, *, num_samples: int = 5000, chunk_size: int | None = 500) -> IWAEDensity:
        """The model as a :class:`~genkit.eval.density.Density`: the IWAE bound with ``num_samples`` draws
        (``is_bound = True``), scoring ``x: (B, *shape)`` on the likelihood's ``[-1, 1]`` scale."""
        return IWAEDensity(self.posterior, self.decode, self.prior(), num_samples=num_samples, chunk_size=chunk_size)


@dataclass(frozen=True)
class VAEObjective:
    """The VAE (``samples = 1``) or IWAE (``samples = M > 1``) loss of ``models["model"]``, a :class:`VAE`.

    ``batch``: images ``x: (B, C, H, W)`` in ``[-1, 1]``. With ``dequantize`` (for Gaussian likelihoods on
    8-bit data) each batch is taken back to integers ``x_int = round((x + 1) 127.5)`` and dequantized as
    :func:`genkit.eval.nll.dequantize` does (``(x_int + u)/128 - 1``, ``u`` from ``generator``): the density
    is then trained on the data :mod:`genkit.eval.nll` scores.

    Returns ``LossOutput({"model": loss}, metrics)`` with, averaged over the batch (nats per image): ``recon``
    (``-log p(x|z)``, mean over the draws), ``kl`` (analytic ``KL(q(z|x) || p(z))``; the constant of SPEC 5(a)
    for vmf), ``elbo`` (``-(recon + kl)``) and ``bound`` (``-loss``: the ELBO estimate at ``M = 1``, the IWAE
    bound ``log q_M(x)`` at ``M > 1``).
    """

    samples: int = 1
    """M: importance samples per image (1: VAE; > 1: IWAE)"""
    dequantize: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise GenkitError(f"the number of importance samples M must be an integer >= 1, got {self.samples!r}")

    def __call__(self, models: Mapping[str, nn.Module], batch: Tensor, *, need: frozenset[str] = frozenset({"model"}),
                 generator: torch.Generator | None = None) -> LossOutput:
        vae = models["model"]
        x = batch.float()
        if self.dequantize:
            x_int = torch.round((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)
            x = dequantize(x_int, generator=generator)
        q = vae.posterior(x)
        prior = vae.prior()
        z = rsample(q, self.samples, generator)  # (M, B, d)
        log_px = vae.decode(z).log_prob(x)  # (M, B)
        kl = kl_divergence(q, prior)  # (B,)
        elbo = log_px.mean(0) - kl  # (B,)
        if self.samples == 1:
            bound = elbo
        else:
            bound = iwae_log_prob(log_px, prior.log_prob(z), q.log_prob(z)).log_prob
        loss = -bound.mean()
        metrics = {"recon": -log_px.mean().detach(), "kl": kl.mean().detach(), "elbo": elbo.mean().detach(),
                   "bound": -loss.detach()}
        return LossOutput({"model": loss}, metrics)
