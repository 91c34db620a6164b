"""Deep InfoMax, Su's variant (SPEC §7): unsupervised features by mutual information.

An encoder maps an image ``x`` to a local feature map ``C(x): (B, C, h, w)`` and a Gaussian code
``p(z|x) = N(mu(x), diag exp(logvar(x)))``. Two critics tell positive pairs (an image with its own
code) from negative pairs (an image with another image's code, drawn by shuffling the batch):

* global: ``T_1([a(x), z])`` where ``a(x)`` is the code ``z`` itself (``global_input="code"``, the
  reference code, bojone/infomax) or the flattened feature map (``"image_embedding"``, the blog text);
* local: ``T_2([z, C_ij])`` at every location ``ij`` of the feature map, averaged;

each trained with the logistic (Jensen-Shannon) loss ``E_pos softplus(-T) + E_neg softplus(T)``, whose
negation at the optimal critic is ``2 JS - log 4`` (SPEC §7a). A prior term
``gamma * mean(KL(N(mu, sigma^2) || N(0, 1)))`` (mean over batch *and* code dimensions, as the
reference code) pulls the code towards ``N(0, I)``. Everything (encoder and both critics) minimises

    L = alpha * L_global + beta * L_local + gamma * L_prior

jointly, under one optimizer named ``model``. Models: ``{"encoder": E, "global_critic": T_1,
"local_critic": T_2}`` (see :mod:`genkit.nn.infomax_nets`); the batch is images ``x: (B, C, H, W)``
or an ``(x, labels)`` pair (labels ignored).

Departures from the reference code (SPEC §11.2): negatives come from a random *derangement* of the
batch by default (``randperm`` may pair an image with its own code, a false negative); the logistic
loss is computed with ``softplus`` instead of ``log(sigmoid(T) + 1e-6)`` (same value up to the
1e-6, stable for large logits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.objectives.base import LossOutput
from genkit.objectives.gan import logistic_discriminator_loss

__all__ = [
    "NEGATIVES", "DeepInfoMax", "EncoderOutput", "GlobalInput", "Negatives", "derangement", "gaussian_kl",
    "global_pairs", "js_bracket", "js_estimate", "local_pairs", "random_permutation",
]

GlobalInput = Literal["code", "image_embedding"]
Negatives = Literal["derangement", "permutation"]

LOG4 = math.log(4.0)


@dataclass(frozen=True)
class EncoderOutput:
    """What an InfoMax encoder returns for ``x: (B, C_in, H, W)``."""

    fmap: Tensor
    """local feature map ``C(x): (B, C, h, w)``"""
    mu: Tensor
    """posterior mean ``(B, z_dim)``: the feature used downstream"""
    logvar: Tensor
    """posterior log-variance ``(B, z_dim)``"""


# ---- pure math ---------------------------------------------------------------------------------------
def js_bracket(t_pos: Tensor, t_neg: Tensor) -> Tensor:
    """The variational Jensen-Shannon bracket ``E_pos log sigmoid(T) + E_neg log(1 - sigmoid(T))``.

    t_pos: critic logits on positive pairs, any shape (all entries averaged); t_neg: on negative
    pairs, any shape. Returns a scalar ``<= 0``; it is at most ``2 JS(P, Q) - log 4`` for the pair
    distributions ``P, Q``, with equality at ``T* = log p/q`` (so ``-log 4`` when ``P = Q``, and
    ``-> 0`` as the supports separate). Equals ``-logistic_discriminator_loss``.
    """
    return -logistic_discriminator_loss(t_pos.reshape(-1), t_neg.reshape(-1))  # any shape -> (N,)


def js_estimate(bracket: Tensor | float) -> Tensor:
    """Jensen-Shannon divergence (nats) implied by a bracket value: ``(bracket + log 4) / 2``.

    A lower bound on ``JS(P, Q) <= log 2`` (natural logs; SPEC §11.2); at most ``log 2`` itself since
    the bracket is ``<= 0``, and negative for a critic worse than a constant.
    """
    return (torch.as_tensor(bracket) + LOG4) / 2


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise ``KL(N(mu, exp(logvar)) || N(0, 1))`` per code dimension.

    mu, logvar: ``(B, D)`` (any equal shapes). Returns the same shape:
    ``0.5 * (mu^2 + exp(logvar) - 1 - logvar)``, zero exactly where ``mu = 0, logvar = 0``. Sum over
    the last axis for the KL of the diagonal Gaussian; the InfoMax prior term takes the mean.
    """
    if mu.shape != logvar.shape:
        raise GenkitError(f"mu and logvar need the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def derangement(n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """A random permutation of ``range(n)`` without fixed points: ``(n,)`` int64, ``perm[i] != i``.

    Sattolo's construction: shuffle the indices, then send each to the next one in the shuffled
    order, which gives a uniformly random ``n``-cycle (a derangement, though not every
    derangement is reachable for ``n >= 4``). All randomness comes from ``generator``.
    """
    if n < 2:
        raise GenkitError(f"a derangement needs at least 2 items, got {n}: use a batch of 2 or more")
    order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else device)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)  # order[k] -> order[k + 1]: one n-cycle
    return perm.to(device) if device is not None else perm


def random_permutation(n: int, *, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:
    """``randperm(n)`` (the reference code's negatives; may have fixed points): ``(n,)`` int64."""
    perm = torch.randperm(n, generator=generator, device=generator.device if generator is not None else device)
    return perm.to(device) if device is not None else perm


NEGATIVES = {"derangement": derangement, "permutation": random_permutation}


def global_pairs(anchor: Tensor, z: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs of the global critic: positives ``[anchor, z]``, negatives ``[anchor, z[perm]]``.

    anchor: ``(B, A)`` (the code itself, or an image embedding); z: ``(B, D)``; perm: ``(B,)``.
    Returns two ``(B, A + D)`` tensors.
    """
    return torch.cat([anchor, z], dim=1), torch.cat([anchor, z[perm]], dim=1)


def local_pairs(z: Tensor, fmap: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs of the local critic: ``[z tiled, C]`` and ``[z tiled, C[perm]]``, channel-concatenated.

    z: ``(B, D)``; fmap: ``(B, C, h, w)``; perm: ``(B,)``. Returns two ``(B, D + C, h, w)`` tensors.
    """
    tiled = z[:, :, None, None].expand(-1, -1, *fmap.shape[2:])  # (B, D) -> (B, D, h, w)
    return torch.cat([tiled, fmap], dim=1), torch.cat([tiled, fmap[perm]], dim=1)


# ---- the objective ------------------------------------------------------------------------------
def _anchor(global_input: str, z: Tensor, out: EncoderOutput) -> Tensor:
    return {"code": lambda: z, "image_embedding": lambda: out.fmap.flatten(1)}[global_input]()  # (B, C, h, w) -> (B, C*h*w)


class DeepInfoMax:
    """The DIM loss of SPEC §7(b) (Su's variant): hyper-parameters only.

    Args:
        alpha, beta, gamma: weights of the global, local and prior terms (0.5, 1.5, 0.01 in the
            reference CIFAR-10 setup).
        global_input: what stands for the image in the global pair: ``"code"`` (``[z, z]`` vs
            ``[z, z_perm]``, the reference code) or ``"image_embedding"`` (the flattened feature
            map: ``[C(x), z]`` vs ``[C(x), z_perm]``, the blog text).
        negatives: ``"derangement"`` (no image paired with its own code) or ``"permutation"``
            (``randperm``, as the reference code).

    ``__call__(models, x)`` returns ``LossOutput({"model": L}, metrics)`` with metrics
    ``loss_global``, ``loss_local``, ``prior_kl`` (the three unweighted terms), ``js_global`` and
    ``js_local`` (the JS lower bounds in nats, at most ``log 2``), ``code_mean`` and ``code_std``
    (of ``mu`` over the batch and dimensions: the prior's sanity check, ideally near 0 and 1).
    """

    def __init__(self, alpha: float = 0.5, beta: float = 1.5, gamma: float = 0.01, *,
                 global_input: GlobalInput = "code", negatives: Negatives = "derangement") -> None:
        for name, w in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not (math.isfinite(w) and w >= 0):
                raise GenkitError(f"DeepInfoMax weight {name} must be finite and >= 0, got {w!r}")
        if global_input not in ("code", "image_embedding"):
            raise GenkitError(f"unknown global_input {global_input!r}: use 'code' or 'image_embedding'")
        if negatives not in NEGATIVES:
            raise GenkitError(f"unknown negatives {negatives!r}: use {' or '.join(map(repr, NEGATIVES))}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.global_input, self.negatives = global_input, negatives

    def __call__(
        self,
        models: Mapping[str, nn.Module],
        batch: Any,
        *,
        need: frozenset[str] = frozenset({"model"}),
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        missing = [n for n in ("encoder", "global_critic", "local_critic") if n not in models]
        if missing:
            raise GenkitError(f"DeepInfoMax needs models 'encoder', 'global_critic', 'local_critic'; got {sorted(models)}")
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if x.shape[0] < 2:
            raise GenkitError(f"DeepInfoMax needs batches of at least 2 images for negatives, got {x.shape[0]}")
        out: EncoderOutput = models["encoder"](x)
        mu, logvar = out.mu.float(), out.logvar.float()
        # reparameterised code; noise drawn first, then the negatives' permutation
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        perm = NEGATIVES[self.negatives](x.shape[0], generator=generator, device=x.device)

        g_pos, g_neg = global_pairs(_anchor(self.global_input, z, out).to(z.dtype), z, perm)
        bracket_g = js_bracket(models["global_critic"](g_pos).float(), models["global_critic"](g_neg).float())
        l_pos, l_neg = local_pairs(z, out.fmap.to(z.dtype), perm)
        bracket_l = js_bracket(models["local_critic"](l_pos).float(), models["local_critic"](l_neg).float())
        prior = gaussian_kl(mu, logvar).mean()  # mean over batch and code dimensions (reference code)

        loss = -self.alpha * bracket_g - self.beta * bracket_l + self.gamma * prior
        metrics = {
            "loss_global": -bracket_g.detach(), "loss_local": -bracket_l.detach(), "prior_kl": prior.detach(),
            "js_global": js_estimate(bracket_g.detach()), "js_local": js_estimate(bracket_l.detach()),
            "code_mean": mu.detach().mean(), "code_std": mu.detach().std(),
        }
        return LossOutput({"model": loss}, metrics)
