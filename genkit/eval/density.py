"""Densities: everything that scores data in nats implements :class:`Density`.

* Flows score data exactly (up to solver error) by the ODE log-likelihood:
  :class:`FlowDensity` over :func:`genkit.solvers.log_likelihood`.
* Latent-variable models (VAEs) score data by importance sampling (SPEC 6):
  ``log q_M(x) = logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log M`` with
  ``z_i ~ q(z|x)``, a lower bound in expectation (``E log q_M <= log p(x)``, non-decreasing in
  ``M``): :func:`iwae_log_prob` (the formula on given terms), :func:`iwae_estimate` (draws the
  ``z_i``), :class:`IWAEDensity` (the :class:`Density` adapter).

Evaluation (bits/dim in :mod:`genkit.eval.nll`) depends only on :class:`Density`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from genkit.errors import GenkitError
from genkit.solvers import (
    DIVERGENCES,
    METHODS,
    PROBES,
    Divergence,
    Field,
    LogLikelihood,
    Method,
    Probe,
    log_likelihood,
)

__all__ = [
    "Decoder",
    "Density",
    "Encoder",
    "FlowDensity",
    "IWAEDensity",
    "IWAEEstimate",
    "iwae_estimate",
    "iwae_log_prob",
    "log_mean_exp",
]

Encoder = Callable[[Tensor], Distribution]
"""``encoder(x: (B, ...)) -> q(z|x)``, batch shape ``(B,)``, event shape that of one ``z``."""
Decoder = Callable[[Tensor], Distribution]
"""``decoder(z: (M, B, ...)) -> p(x|z)``, batch shape ``(M, B)``, event shape that of one ``x``."""


@runtime_checkable
class Density(Protocol):
    """Anything that scores data: ``log_prob(x: (B, ...)) -> (B,)`` in nats.

    ``is_bound`` is True when ``log_prob`` estimates a lower bound of ``log p(x)`` (IWAE),
    False when it is ``log p(x)`` itself or an unbiased estimate of it (flows). Stochastic
    estimators draw from ``generator``. An unbiased but noisy estimate is no bound: a log-mean-exp
    of several of them (``genkit.eval.nll.image_nll`` with ``k > 1``) is biased upward.
    """

    is_bound: bool

    def log_prob(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor: ...


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """``log(mean(exp(log_w)))`` along ``dim``, stable for any magnitude (``logsumexp - log n``)."""
    n = log_w.shape[dim]
    if n == 0:
        raise GenkitError("log_mean_exp needs at least one value along the reduced dimension")
    return torch.logsumexp(log_w, dim=dim) - math.log(n)


class FlowDensity:
    """The density of a flow from ``N(0, I)``: ``log_prob`` is :func:`genkit.solvers.log_likelihood`.

    With ``divergence="exact"`` the result is ``log p(x)`` up to solver error; with
    ``"hutchinson"`` it is an unbiased estimate of ``log p(x)`` (in expectation over the probes)
    and neither a bound nor exact, hence ``is_bound = False`` either way. Unbiased holds for
    ``log p`` itself, not for nonlinear functions of it: the log-mean-exp over ``K`` dequantization
    draws that :func:`genkit.eval.nll.image_nll` takes with ``k > 1`` is biased towards higher
    likelihood by the probe noise (fewer bits/dim than the exact divergence; more probes shrink it).

    Args:
        field: velocity ``field(x: (B, *shape), t: (B,)) -> (B, *shape)``.
        shape: shape of one sample, e.g. ``(2,)`` or ``(3, 32, 32)``.
        divergence, probe, num_probes, method, steps, atol, rtol: as in
            :func:`genkit.solvers.log_likelihood` (``"exact"`` costs one backward pass per
            dimension: use ``"hutchinson"`` for images).

    ``nfe`` counts the field evaluations of every solve so far (an adaptive solver's cost varies).
    """

    is_bound: bool = False

    def __init__(
        self,
        field: Field,
        shape: tuple[int, ...],
        *,
        divergence: Divergence,
        probe: Probe = "rademacher",
        num_probes: int = 1,
        method: Method = "dopri5",
        steps: int = 100,
        atol: float = 1e-5,
        rtol: float = 1e-5,
    ) -> None:
        if divergence not in DIVERGENCES:
            raise GenkitError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
        if probe not in PROBES:
            raise GenkitError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
        if method not in METHODS:
            raise GenkitError(f"unknown solver method {method!r}; choose one of {', '.join(METHODS)}")
        self.field = field
        self.shape = tuple(shape)
        self.divergence: Divergence = divergence
        self.probe: Probe = probe
        self.num_probes = num_probes
        self.method: Method = method
        self.steps = steps
        self.atol = atol
        self.rtol = rtol
        self.nfe = 0

    def log_likelihood(self, x: Tensor, *, generator: torch.Generator | None = None) -> LogLikelihood:
        """The full :class:`genkit.solvers.LogLikelihood` (prior and volume terms, NFE) of ``x: (B, *shape)``."""
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise GenkitError(f"x must have shape (B, {', '.join(map(str, self.shape))}), got {got}")
        ll = log_likelihood(
            self.field,
            x,
            divergence=self.divergence,
            probe=self.probe,
            num_probes=self.num_probes,
            method=self.method,
            steps=self.steps,
            atol=self.atol,
            rtol=self.rtol,
            generator=generator,
        )
        self.nfe += ll.nfe
        return ll

    def log_prob(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``log p(x): (B,)`` in nats for ``x: (B, *shape)``."""
        return self.log_likelihood(x, generator=generator).log_prob

    def __repr__(self) -> str:
        return f"FlowDensity(shape={self.shape}, divergence={self.divergence!r}, method={self.method!r})"


@dataclass(frozen=True)
class IWAEEstimate:
    """Importance-weighted estimate ``log q_M(x)`` (SPEC 6).

    ``log_prob: (B,)`` nats; ``log_weights: (M, B)`` the terms
    ``log p(x|z_i) + log p(z_i) - log q(z_i|x)``. A lower bound of ``log p(x)`` in expectation
    (``is_bound``), exact for every ``M`` when ``q(z|x)`` is the true posterior.
    """

    log_prob: Tensor
    log_weights: Tensor
    is_bound: ClassVar[bool] = True

    @property
    def ess(self) -> Tensor:
        """Effective sample size of the normalised weights, ``(B,)``: ``(sum w)^2 / sum w^2``, in ``[1, M]``."""
        return torch.exp(2 * torch.logsumexp(self.log_weights, 0) - torch.logsumexp(2 * self.log_weights, 0))


def iwae_log_prob(log_p_x_given_z: Tensor, log_p_z: Tensor, log_q_z: Tensor) -> IWAEEstimate:
    """``log q_M(x) = logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log M``.

    Stable for log-weights of any magnitude (``torch.logsumexp``); differentiable, so
    ``-log_prob.mean()`` is the IWAE training loss (M = 1: the VAE's single-sample loss).

    Args:
        log_p_x_given_z: ``(M, B)`` decoder log-likelihoods at ``z_i ~ q(z|x)``.
        log_p_z: ``(M, B)`` prior log-densities of the ``z_i``.
        log_q_z: ``(M, B)`` proposal log-densities of the ``z_i``.

    Returns:
        :class:`IWAEEstimate`.
    """
    if log_p_x_given_z.dim() != 2 or log_p_x_given_z.shape[0] == 0:
        raise GenkitError(f"the IWAE terms must have shape (M, B) with M >= 1, got {tuple(log_p_x_given_z.shape)}")
    if log_p_z.shape != log_p_x_given_z.shape or log_q_z.shape != log_p_x_given_z.shape:
        shapes = ", ".join(str(tuple(a.shape)) for a in (log_p_x_given_z, log_p_z, log_q_z))
        raise GenkitError(f"the three IWAE terms must share one (M, B) shape, got {shapes}")
    log_w = log_p_x_given_z + log_p_z - log_q_z
    return IWAEEstimate(log_prob=log_mean_exp(log_w, 0), log_weights=log_w)


def iwae_estimate(
    x: Tensor,
    *,
    encoder: Encoder,
    decoder: Decoder,
    prior: Distribution,
    num_samples: int,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> IWAEEstimate:
    """Draw ``z_i ~ q(z|x)``, ``i = 1..num_samples``, and return :func:`iwae_log_prob` of them.

    Reparameterised (differentiable) where the proposal allows. With a ``generator`` the draws
    come from it for ``Normal``, ``Independent(Normal)`` and ``MultivariateNormal`` proposals,
    or for any distribution whose ``rsample`` takes a ``generator``; other proposals need
    ``generator=None`` (global RNG).

    Args:
        x: ``(B, ...)`` data.
        encoder: ``x -> q(z|x)`` with batch shape ``(B,)`` (see :data:`Encoder`).
        decoder: ``z: (m, B, ...) -> p(x|z)`` with batch shape ``(m, B)`` (see :data:`Decoder`);
            wrap per-dimension distributions in ``torch.distributions.Independent``.
        prior: ``p(z)`` whose ``log_prob(z)`` is ``(m, B)`` for ``z: (m, B, ...)``.
        num_samples: ``M >= 1`` (SPEC 6(d): train with 1, 5 or 50; evaluate with 5000).
        chunk_size: draw and score at most this many ``z`` per batch row at once (memory);
            ``None`` draws all ``M`` together.
        generator: source of the draws.

    Returns:
        :class:`IWAEEstimate` with ``log_prob: (B,)`` and ``log_weights: (M, B)``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise GenkitError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise GenkitError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
    q = encoder(x)
    chunk = num_samples if chunk_size is None else chunk_size
    terms: list[tuple[Tensor, Tensor, Tensor]] = []
    for start in range(0, num_samples, chunk):
        m = min(chunk, num_samples - start)
        z = rsample(q, m, generator)
        expected = (m, x.shape[0])
        parts = (decoder(z).log_prob(x), prior.log_prob(z), q.log_prob(z))
        for name, part in zip(("decoder(z).log_prob(x)", "prior.log_prob(z)", "encoder(x).log_prob(z)"), parts):
            if tuple(part.shape) != expected:
                raise GenkitError(
                    f"{name} has shape {tuple(part.shape)}, expected (M, B) = {expected}; "
                    "sum event dimensions with torch.distributions.Independent"
                )
        terms.append(parts)
    return iwae_log_prob(*(torch.cat(column, 0) for column in zip(*terms)))


class IWAEDensity:
    """A latent-variable model as a :class:`Density`: ``log_prob`` is :func:`iwae_estimate`.

    A stochastic lower bound of ``log p(x)`` in expectation (``is_bound = True``), tight as
    ``num_samples`` grows.
    """

    is_bound: bool = True

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        prior: Distribution,
        *,
        num_samples: int = 5000,
        chunk_size: int | None = 500,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise GenkitError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.num_samples = num_samples
        self.chunk_size = chunk_size

    def log_prob(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``log q_M(x): (B,)`` in nats for ``x: (B, ...)``."""
        return iwae_estimate(
            x,
            encoder=self.encoder,
            decoder=self.decoder,
            prior=self.prior,
            num_samples=self.num_samples,
            chunk_size=self.chunk_size,
            generator=generator,
        ).log_prob

    def __repr__(self) -> str:
        return f"IWAEDensity(num_samples={self.num_samples})"


def rsample(q: Distribution, m: int, generator: torch.Generator | None) -> Tensor:
    """``m`` reparameterised draws ``(m, *batch_shape, *event_shape)`` from ``q``, from ``generator`` if given."""
    if generator is None:
        return q.rsample((m,)) if q.has_rsample else q.sample((m,))
    base = q
    while isinstance(base, Independent):  # Independent only regroups dimensions
        base = base.base_dist
    if isinstance(base, Normal):
        eps = torch.randn((m, *base.batch_shape), generator=generator, device=base.loc.device, dtype=base.loc.dtype)
        return base.loc + base.scale * eps
    if isinstance(base, MultivariateNormal):
        size = (m, *base.batch_shape, *base.event_shape)
        eps = torch.randn(size, generator=generator, device=base.loc.device, dtype=base.loc.dtype)
        return base.loc + (base.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    if "generator" in inspect.signature(q.rsample).parameters:
        return q.rsample((m,), generator=generator)
    raise GenkitError(
        f"cannot draw from a {type(q).__name__} proposal with an explicit generator; pass generator=None"
    )
