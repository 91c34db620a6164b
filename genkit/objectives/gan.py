"""Adversarial objectives: MonoFlow (SPEC §3), ReFlow-GAN (SPEC §4) and the classic WGAN-GP.

Models: ``{"generator": G, "discriminator": D}`` for :class:`MonoFlow`, ``{"generator": G,
"critic": D}`` for :class:`ReFlowGAN` and :class:`WGANGP`; ``G(z): (B, latent_dim) -> (B, ...)``,
``D(x): (B, ...) -> (B,)`` or ``(B, 1)``. The batch is real data ``x_1: (B, ...)`` or an
``(x_1, labels)`` tuple (labels are ignored).

The pure pieces (``h`` functions, the logistic discriminator loss, the particle target
``sg[x + eps grad_x h(D(x))]``, the per-sample gradient penalty and the critic loss at
given interpolation times) are exposed so tests and :mod:`genkit.particles` reuse them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.nn.gan_nets import check_no_batchnorm
from genkit.objectives.base import LossOutput

__all__ = [
    "H_FUNCTIONS", "CriticTerms", "HName", "MonoFlow", "ReFlowGAN", "WGANGP", "critic_loss_at",
    "flow_velocity", "gradient_penalty", "h_function", "input_gradient", "interpolate",
    "logistic_discriminator_loss", "particle_matching_loss", "particle_target", "penalty_at",
]

HName = Literal["identity", "log_sigmoid", "softplus", "arcsinh", "exp"]

# Increasing functions of the log-ratio logit d = D(x) ~ log p/q (SPEC §3a-b). The generator
# loss is -E h(D(G(z))) and particles move along grad_x h(D(x)) = h'(d) grad_x d.
H_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda d: d,    # reverse-KL flow ("logit" in the MonoFlow code)
    "log_sigmoid": F.logsigmoid,  # non-saturating GAN loss
    "softplus": F.softplus,     # minimax loss log(1 - sigmoid(d)) = -softplus(d); see h_function's shift
    "arcsinh": torch.asinh,
    "exp": torch.exp,           # forward-KL flow
}


def h_function(name: HName, *, shift: float = 5.0) -> Callable[[Tensor], Tensor]:
    """The ``h`` called ``name``; ``"softplus"`` becomes ``d -> softplus(d + shift)``.

    The shifted minimax loss ``log(1 - sigmoid(d + C))`` (``C = shift``, 5 in the MonoFlow code)
    keeps a gradient when fakes are confidently rejected. Other names ignore ``shift``.
    """
    if name not in H_FUNCTIONS:
        raise GenkitError(f"unknown h {name!r}; choose one of {', '.join(H_FUNCTIONS)}")
    if name == "softplus":
        return lambda d: F.softplus(d + shift)
    return H_FUNCTIONS[name]


def _per_sample(d: Tensor) -> Tensor:
    return d.reshape(d.shape[0])  # (B, 1) or (B,) -> (B,)


def _data(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _models(models: Mapping[str, nn.Module], who: str, *names: str) -> list[nn.Module]:
    missing = [n for n in names if n not in models]
    if missing:
        raise GenkitError(f"{who} needs models named {', '.join(map(repr, names))}; got {sorted(models)}")
    return [models[n] for n in names]


def _latent(x_real: Tensor, latent_dim: int, generator: torch.Generator | None) -> Tensor:
    dtype = x_real.dtype if x_real.is_floating_point() else torch.get_default_dtype()
    return torch.randn(x_real.shape[0], latent_dim, generator=generator, device=x_real.device, dtype=dtype)


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is in a narrower float type (bf16/fp16 under autocast); float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_positive(what: str, value: float) -> None:
    if not value > 0:
        raise GenkitError(f"{what} must be > 0, got {value!r}")


# ---- pure math ------------------------------------------------------------------------------
def logistic_discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """BCE-with-logits, real label 1, fake label 0: ``E softplus(-d_real) + E softplus(d_fake)``.

    d_real: (B,) or (B, 1) logits on data; d_fake: (B',) or (B', 1) logits on fakes. Returns a
    scalar. With equal class weights its minimiser is the log-ratio ``D*(x) = log p(x)/q(x)``.
    """
    return F.softplus(-_per_sample(d_real)).mean() + F.softplus(_per_sample(d_fake)).mean()


def input_gradient(fn: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool = False) -> Tensor:
    """Per-sample input gradient ``grad_x fn(x)_i`` of a per-sample scalar ``fn: (B, ...) -> (B,) | (B, 1)``.

    x: (B, ...); returns (B, ...). ``x`` is detached first; with ``create_graph`` the result
    keeps the graph to ``fn``'s parameters (double back-propagation), otherwise it is detached.
    Works inside ``torch.no_grad()``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_per_sample(fn(x)).sum(), x, create_graph=create_graph)
    return grad


def flow_velocity(discriminator: Callable[[Tensor], Tensor], x: Tensor, *,
                  h: Callable[[Tensor], Tensor]) -> Tensor:
    """The particle velocity ``grad_x h(D(x))`` (SPEC §3a): x: (B, ...) -> (B, ...), detached."""
    return input_gradient(lambda y: h(_per_sample(discriminator(y))), x)


def particle_target(discriminator: Callable[[Tensor], Tensor], x: Tensor, *, h: Callable[[Tensor], Tensor],
                    step_size: float) -> Tensor:
    """One Euler step of the particle flow, ``sg[x + step_size * grad_x h(D(x))]``: (B, ...) -> (B, ...)."""
    return (x.detach() + step_size * flow_velocity(discriminator, x, h=h)).detach()


def particle_matching_loss(x: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ``||x_i - target_i||^2`` summed over all other dims. x, target: (B, ...).

    At ``x = G_tau(z)`` and ``target = particle_target(D, x, h, eps)`` its parameter gradient is
    ``2 eps`` times that of ``-E h(D(G(z)))`` (SPEC §3a): one step of either is the same update.
    """
    return ((x - target) ** 2).flatten(1).sum(1).mean()


def interpolate(x_real: Tensor, x_fake: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x_fake + t x_real`` per sample (t = 1 is real). x_*: (B, ...), t: (B,)."""
    t = t.view(t.shape[0], *([1] * (x_real.dim() - 1)))
    return (1 - t) * x_fake + t * x_real


def penalty_at(critic: Callable[[Tensor], Tensor], x_real: Tensor, x_fake: Tensor, t: Tensor, *,
               center: float) -> Tensor:
    """Per-sample ``(||grad D(x_t)|| - center)^2`` at ``x_t = interpolate(x_real, x_fake, t)``.

    x_real, x_fake: (B, ...); t: (B,). Returns (B,), keeping the graph to the critic's parameters.
    """
    grad = input_gradient(critic, interpolate(x_real, x_fake, t), create_graph=True)
    return (grad.flatten(1).norm(dim=1) - center) ** 2


def _uniform_t(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)


def gradient_penalty(critic: nn.Module, x_real: Tensor, x_fake: Tensor, *, center: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """Mean over samples of ``(||grad D(x_hat)|| - center)^2`` at per-sample uniform interpolates.

    x_real, x_fake: (B, ...). Draws ``t = torch.rand(B, generator=generator)`` (one weight per
    sample, t multiplies ``x_real``) and returns ``penalty_at(...).mean()``, a scalar that keeps
    the graph (create_graph=True).
    """
    return penalty_at(critic, x_real, x_fake, _uniform_t(x_real, generator), center=center).mean()


@dataclass(frozen=True)
class CriticTerms:
    """The critic loss and its two parts (scalars)."""

    loss: Tensor
    """``gp_weight * penalty - wasserstein``, keeps the graph"""
    wasserstein: Tensor
    """``E D(x_real) - E D(x_fake)``, detached"""
    penalty: Tensor
    """``E (||grad D(x_t)|| - gp_center)^2``, detached"""


def critic_loss_at(critic: Callable[[Tensor], Tensor], x_real: Tensor, x_fake: Tensor, t: Tensor, *,
                   gp_weight: float, gp_center: float) -> CriticTerms:
    """The critic loss at given interpolation times (SPEC §4a-b):

    ``E_i[gp_weight * (||grad D(x_t_i)|| - gp_center)^2 - D(x_real_i) + D(x_fake_i)]``.
    With ``gp_weight = 1/2, gp_center = 0`` and ``t ~ U[0, 1]`` its expectation is ReFlow-GAN's
    ``L_D``; with ``10, 1`` it is WGAN-GP's critic loss. x_real, x_fake: (B, ...); t: (B,).
    """
    gap = _per_sample(critic(x_real)).mean() - _per_sample(critic(x_fake)).mean()
    penalty = penalty_at(critic, x_real, x_fake, t, center=gp_center).mean()
    return CriticTerms(loss=-gap + gp_weight * penalty, wasserstein=gap.detach(), penalty=penalty.detach())


# ---- objectives ---------------------------------------------------------------------------
class MonoFlow:
    """A GAN read as a particle flow in training time (SPEC §3, Yi, Zhu & Liu 2023).

    Discriminator (``losses["discriminator"]``, when ``"discriminator"`` is in ``need``):
    :func:`logistic_discriminator_loss` on data vs ``G(z)``, so ``D ~ log p/q``.
    Generator (``losses["generator"]``, when ``"generator"`` is in ``need``), by ``form``:

    * ``"direct"``: ``-E h(D(G(z)))`` with a fresh ``z`` each call.
    * ``"particle"``: ``E ||G(z) - sg[x + step_size * grad_x h(D(x))]||^2`` with ``x = G_tau(z)``.
      A call with ``"discriminator"`` in ``need`` ends the round; the next call asking for the
      generator loss starts one: it draws ``z`` and computes ``target`` with the discriminator as
      it is then (under the Trainer, just updated: SPEC §3c), and the generator-only calls after
      it reuse both frozen; so ``update_every={"discriminator": k}`` gives ``k`` generator steps
      toward one target. They are kept in :meth:`state_dict`. (With gradient accumulation the
      round's latents are the first micro-batch's.) The target and the MSE are computed in float32
      (float64 stays) also under bf16 autocast, where ``x + step_size * v`` would round back to ``x``.

    ``h`` comes from :func:`h_function` (``shift`` applies to ``"softplus"`` only).
    Metrics: ``d_real``, ``d_fake`` (mean logits on data and fakes; their difference estimates
    ``KL(p||q) + KL(q||p)`` at the optimum) on discriminator calls.
    """

    def __init__(self, *, latent_dim: int, h: HName = "identity", shift: float = 5.0,
                 form: Literal["direct", "particle"] = "direct", step_size: float = 1.0) -> None:
        if form not in ("direct", "particle"):
            raise GenkitError(f"unknown MonoFlow form {form!r}; choose 'direct' or 'particle'")
        if latent_dim < 1:
            raise GenkitError(f"latent_dim must be >= 1, got {latent_dim}")
        _check_positive("step_size", step_size)
        self.h_name, self._h = h, h_function(h, shift=shift)
        self.latent_dim, self.shift, self.form, self.step_size = latent_dim, shift, form, step_size
        self._z: Tensor | None = None       # (B, latent_dim) of the current round (particle form)
        self._target: Tensor | None = None  # (B, ...) frozen targets of the current round

    def __call__(self, models: Mapping[str, nn.Module], batch: Any, *, need: frozenset[str],
                 generator: torch.Generator | None = None) -> LossOutput:
        g, d = _models(models, "MonoFlow", "generator", "discriminator")
        x_real = _data(batch)
        losses: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        z = _latent(x_real, self.latent_dim, generator)
        if "discriminator" in need:
            with torch.no_grad():
                x_fake = g(z)
            d_real, d_fake = _per_sample(d(x_real)), _per_sample(d(x_fake))
            losses["discriminator"] = logistic_discriminator_loss(d_real, d_fake)
            metrics["d_real"], metrics["d_fake"] = d_real.detach().mean(), d_fake.detach().mean()
        if "generator" in need and self.form == "particle":
            if self._z is None:  # a new round, against the discriminator as it is now
                with torch.no_grad():  # in float32: under bf16 autocast x + eps v would round back to x
                    x = _at_least_float32(g(z))
                self._z, self._target = z, particle_target(d, x, h=self._h, step_size=self.step_size)
            z_frozen, target = self._z.to(x_real.device), self._target.to(x_real.device)
            losses["generator"] = particle_matching_loss(_at_least_float32(g(z_frozen)), target)
        elif "generator" in need:
            losses["generator"] = -self._h(_per_sample(d(g(z)))).mean()
        if "discriminator" in need and self.form == "particle":
            self._z = self._target = None  # the round ends with this discriminator step
        return LossOutput(losses=losses, metrics=metrics)

    def state_dict(self) -> dict[str, Tensor]:
        """``{"z": (B, latent_dim), "target": (B, ...)}`` of the current round, or ``{}`` before the first."""
        return {} if self._z is None else {"z": self._z, "target": self._target}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore a :meth:`state_dict` (``{}`` starts a new round on the next call)."""
        if not state:
            self._z = self._target = None
            return
        if set(state) != {"z", "target"}:
            raise GenkitError(f"MonoFlow state needs the keys 'z' and 'target', got {sorted(state)}")
        self._z, self._target = state["z"], state["target"]


class _CriticGAN:
    """Critic loss :func:`critic_loss_at` at ``t ~ U[0, 1]`` per sample; generator ``-E D(G(z))``.

    A critic with BatchNorm is refused (GenkitError) on its first use: the penalty is per sample.
    """

    def __init__(self, *, latent_dim: int, gp_weight: float, gp_center: float) -> None:
        if latent_dim < 1:
            raise GenkitError(f"latent_dim must be >= 1, got {latent_dim}")
        if gp_weight < 0:
            raise GenkitError(f"gp_weight must be >= 0, got {gp_weight}")
        self.latent_dim, self.gp_weight, self.gp_center = latent_dim, gp_weight, gp_center
        self._checked: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # critics already checked for BatchNorm

    def _check_critic(self, critic: nn.Module) -> None:
        """Refuse a critic with BatchNorm (the per-sample penalty needs samples that do not mix), once per module."""
        if critic not in self._checked:
            check_no_batchnorm(critic, f"{type(self).__name__} trains the critic with a per-sample gradient penalty")
            self._checked.add(critic)

    def __call__(self, models: Mapping[str, nn.Module], batch: Any, *, need: frozenset[str],
                 generator: torch.Generator | None = None) -> LossOutput:
        g, d = _models(models, type(self).__name__, "generator", "critic")
        self._check_critic(d)
        x_real = _data(batch)
        z = _latent(x_real, self.latent_dim, generator)
        losses: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        if "critic" in need:
            with torch.no_grad():
                x_fake = g(z)
            terms = critic_loss_at(d, x_real, x_fake, _uniform_t(x_real, generator),
                                   gp_weight=self.gp_weight, gp_center=self.gp_center)
            losses["critic"] = terms.loss
            metrics["wasserstein"], metrics["gradient_penalty"] = terms.wasserstein, terms.penalty
        if "generator" in need:
            losses["generator"] = -_per_sample(d(g(z))).mean()
        return LossOutput(losses=losses, metrics=metrics)


class ReFlowGAN(_CriticGAN):
    """ReFlow with a learned source reduced to a critic (SPEC §4, post 二十).

    Critic: ``L_D = E_{t~U[0,1]}[gp_weight (||grad D(x_t)|| - gp_center)^2 - D(x_real) + D(G(z))]``,
    ``x_t = (1 - t) G(z) + t x_real`` per sample, no time input; the defaults (1/2, 0) give Su's
    ``1/2 ||grad D(x_t)||^2``, the ReFlow regression ``E 1/2||grad D(x_t) - (x_1 - x_0)||^2`` minus a
    constant. Generator: ``-E D(G(z))`` (one step of the flow ``x <- x + eps grad D(x)``).
    Metrics: ``wasserstein`` (``E D(real) - E D(fake)``) and ``gradient_penalty``.
    """

    def __init__(self, *, latent_dim: int, gp_weight: float = 0.5, gp_center: float = 0.0) -> None:
        super().__init__(latent_dim=latent_dim, gp_weight=gp_weight, gp_center=gp_center)


class WGANGP(_CriticGAN):
    """Critic: ``D(fake) - D(real) + gp_weight * (||grad D(x_hat)|| - 1)^2``; generator: ``-D(G(z))``.

    The same losses as :class:`ReFlowGAN` with the classic constants (Gulrajani et al., 2017).
    Use with an update ratio of 5 critic steps per generator step
    (``update_every={"generator": 5}``) and Adam(betas=(0, 0.9)), as in the paper.
    """

    def __init__(self, *, latent_dim: int, gp_weight: float = 10.0, gp_center: float = 1.0) -> None:
        super().__init__(latent_dim=latent_dim, gp_weight=gp_weight, gp_center=gp_center)
