"""The von Mises-Fisher distribution on the unit sphere ``S^{d-1}`` and the uniform distribution there (SPEC 5).

``vMF(mu, kappa)`` has density ``C_d(kappa) exp(kappa <mu, x>)`` with respect to the surface measure, where
``C_d(kappa) = kappa^{d/2-1} / ((2 pi)^{d/2} I_{d/2-1}(kappa))`` and ``I_v`` is the modified Bessel function
of the first kind. ``E[x] = A_d(kappa) mu`` with ``A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa)``, and

    KL(vMF(mu, kappa) || U(S^{d-1})) = kappa A_d(kappa) + log C_d(kappa) - log C_d(0),

independent of ``mu``. ``log I_v`` goes through ``scipy.special.ive`` (exponentially scaled, so large
``kappa`` does not overflow: ``log I_v(k) = log ive(v, k) + k``) inside a custom autograd function whose
derivative is ``d/dk log I_v(k) = I_{v+1}(k) / I_v(k) + v / k``: gradients of every closed form here
(log-density, entropy, KL, ``A_d``) with respect to ``kappa`` are exact.

Sampling follows Wood (1994): ``w = <mu, x>`` by rejection (exact for every ``d`` and ``kappa``), a direction
``v`` uniform on ``S^{d-2}``, ``x' = (w, sqrt(1 - w^2) v)`` around the first axis ``e_1``, then the
Householder reflection that maps ``e_1`` to ``mu``. The reflection is differentiable in ``mu``, so
:meth:`VonMisesFisher.rsample` carries gradients to ``loc``; ``w`` carries none to ``kappa`` (that would need
implicit reparameterisation of the rejection sampler): ``kappa`` is fixed by design in the vMF-VAE (SPEC 11
item 5), learning it is out of scope. The post draws ``w`` by inverse CDF on a grid instead (SPEC 5(a));
both are exact in law, Wood's needs no table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.distributions import Distribution, constraints, register_kl

from genkit.errors import GenkitError

__all__ = ["HypersphericalUniform", "VonMisesFisher", "kl_vmf_uniform", "log_bessel_iv", "mean_resultant_length"]

MAX_REJECTION_ROUNDS = 1000
"""Bound on the rounds of Wood's rejection loop; each round accepts well over half of the pending draws."""


class _LogBesselIv(torch.autograd.Function):
    """``log I_v(kappa)`` elementwise through ``scipy.special.ive`` (float64), with its exact derivative."""

    @staticmethod
    def forward(ctx, v: float, kappa: Tensor) -> Tensor:  # type: ignore[override]
        from scipy.special import ive

        k = kappa.detach().to("cpu", torch.float64).numpy()
        with np.errstate(divide="ignore"):
            out = np.log(ive(v, k)) + k
        ctx.v = v
        ctx.save_for_backward(kappa)
        return torch.from_numpy(np.asarray(out)).to(device=kappa.device, dtype=kappa.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        from scipy.special import ive

        (kappa,) = ctx.saved_tensors
        k = kappa.detach().to("cpu", torch.float64).numpy()
        d = ive(ctx.v + 1, k) / ive(ctx.v, k) + ctx.v / k  # d/dk log I_v(k) = I_{v+1}/I_v + v/k
        return None, grad * torch.from_numpy(np.asarray(d)).to(device=kappa.device, dtype=grad.dtype)


def log_bessel_iv(v: float, kappa: Tensor) -> Tensor:
    """``log I_v(kappa)``, same shape as ``kappa: (...)`` (> 0), differentiable in ``kappa``.

    ``v``: the order (a float >= 0). Accurate wherever ``scipy.special.ive(v, kappa)`` does not underflow
    (orders in the hundreds at ``kappa`` near 0 do).
    """
    return _LogBesselIv.apply(float(v), kappa)


def mean_resultant_length(d: int, kappa: Tensor) -> Tensor:
    """``A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) = E[<mu, x>]`` for ``x ~ vMF(mu, kappa)`` on ``S^{d-1}``.

    ``kappa: (...)`` > 0; returns the same shape, in ``(0, 1)``, differentiable in ``kappa``
    (``A_d'(kappa) = 1 - A_d^2 - (d-1) A_d / kappa``).
    """
    return torch.exp(log_bessel_iv(d / 2, kappa) - log_bessel_iv(d / 2 - 1, kappa))


def log_normalizer(d: int, kappa: Tensor) -> Tensor:
    """``log C_d(kappa) = (d/2-1) log kappa - (d/2) log(2 pi) - log I_{d/2-1}(kappa)``, shape of ``kappa``."""
    return (d / 2 - 1) * torch.log(kappa) - (d / 2) * math.log(2 * math.pi) - log_bessel_iv(d / 2 - 1, kappa)


def log_sphere_area(d: int) -> float:
    """``log |S^{d-1}| = log 2 + (d/2) log pi - log Gamma(d/2)``, so ``log C_d(0) = -log_sphere_area(d)``."""
    return math.log(2) + (d / 2) * math.log(math.pi) - math.lgamma(d / 2)


def kl_vmf_uniform(d: int, kappa: Tensor) -> Tensor:
    """``KL(vMF(mu, kappa) || U(S^{d-1})) = kappa A_d(kappa) + log C_d(kappa) + log |S^{d-1}|``.

    Independent of ``mu``; ``kappa: (...)`` > 0, result of the same shape, > 0 and increasing in ``kappa``
    (0 in the limit ``kappa -> 0``). For ``d = 3``: ``kappa coth kappa - 1 + log(kappa / sinh kappa)``.
    """
    return kappa * mean_resultant_length(d, kappa) + log_normalizer(d, kappa) + log_sphere_area(d)


@dataclass(frozen=True)
class _ClosedForms:
    """The kappa-only closed forms of ``vMF`` on ``S^{d-1}`` at one fixed kappa, as Python floats."""

    log_c: float
    entropy: float
    kl_to_uniform: float


def _closed_forms(d: int, kappa: float) -> _ClosedForms:
    k = torch.tensor(kappa, dtype=torch.float64)
    log_c, a_d = float(log_normalizer(d, k)), float(mean_resultant_length(d, k))
    return _ClosedForms(log_c=log_c, entropy=-log_c - kappa * a_d, kl_to_uniform=float(kl_vmf_uniform(d, k)))


def _check_dim(dim: int) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise GenkitError(f"the sphere S^(d-1) needs an integer dimension d >= 2, got {dim!r}")


def _uniform_on_sphere(shape: tuple[int, ...], d: int, generator: torch.Generator | None, *, device, dtype) -> Tensor:
    """``(*shape, d)`` points uniform on ``S^{d-1}``: normalised standard normals."""
    return F.normalize(torch.randn((*shape, d), generator=generator, device=device, dtype=dtype), dim=-1)


def _wood_w(kappa: Tensor, d: int, generator: torch.Generator | None) -> Tensor:
    """``w = <mu, x>`` of ``x ~ vMF(mu, kappa)`` on ``S^{d-1}`` by Wood's (1994) rejection sampler.

    ``kappa: (N,)`` float64 > 0 -> ``w: (N,)`` float64. The ``Beta((d-1)/2, (d-1)/2)`` proposal is drawn as
    ``|g_1|^2 / (|g_1|^2 + |g_2|^2)`` with ``g_i ~ N(0, I_{d-1})`` (a ratio of chi-square variables), so every
    draw comes from ``generator``.
    """
    n, m = kappa.shape[0], d - 1
    # b = (-2k + sqrt(4k^2 + m^2)) / m, written without cancellation for large kappa
    b = m / (2 * kappa + torch.sqrt(4 * kappa**2 + m**2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + m * torch.log1p(-(x0**2))
    w = torch.empty_like(kappa)
    pending = torch.arange(n, device=kappa.device)
    for _ in range(MAX_REJECTION_ROUNDS):
        if pending.numel() == 0:
            return w
        k = pending.numel()
        g = torch.randn((2, k, m), generator=generator, device=kappa.device, dtype=kappa.dtype)
        s = g.pow(2).sum(-1)  # (2, k) chi-square(m) pairs
        eps = s[0] / (s[0] + s[1])  # Beta(m/2, m/2)
        u = torch.rand(k, generator=generator, device=kappa.device, dtype=kappa.dtype)
        bp, x0p, cp, kp = b[pending], x0[pending], c[pending], kappa[pending]
        cand = (1 - (1 + bp) * eps) / (1 - (1 - bp) * eps)
        accept = kp * cand + m * torch.log1p(-x0p * cand) - cp >= torch.log(u)
        w[pending[accept]] = cand[accept]
        pending = pending[~accept]
    raise GenkitError(f"Wood's vMF sampler left {pending.numel()} draws unaccepted after {MAX_REJECTION_ROUNDS} "
                      "rounds: kappa or d is out of the range it handles (check for NaN or inf)")


class VonMisesFisher(Distribution):
    """``vMF(loc, scale)`` on the unit sphere ``S^{d-1}`` of ``R^d``: density ``C_d(k) exp(k <loc, x>)``.

    Args:
        loc: ``(B, d)`` unit vectors ``mu`` (``d >= 2``); batch shape ``(B,)``, event shape ``(d,)``.
        scale: the concentration ``kappa > 0``: a float, or a tensor of shape ``()`` or ``(B,)``.
        validate_args: also check that ``loc`` has unit rows and ``kappa > 0`` for tensors (a device sync);
            shapes and float ``kappa`` are always checked.

    ``rsample`` is reparameterised in ``loc`` (Householder reflection) but not in ``scale``: ``kappa`` is a
    fixed hyper-parameter of the vMF-VAE (see the module docstring). ``log_prob``, ``entropy``, ``mean`` and
    the KL to :class:`HypersphericalUniform` are closed forms, differentiable in both.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor, scale: float | Tensor, validate_args: bool | None = None) -> None:
        if not isinstance(loc, Tensor) or loc.dim() != 2 or loc.shape[-1] < 2 or not loc.is_floating_point():
            got = tuple(loc.shape) if isinstance(loc, Tensor) else type(loc).__name__
            raise GenkitError(f"vMF loc must be a float tensor (B, d) of unit vectors with d >= 2, got {got}")
        b, d = loc.shape
        if isinstance(scale, Tensor):
            if scale.shape not in ((), (b,)):
                raise GenkitError(f"vMF scale (kappa) must be a float or a tensor of shape () or ({b},), got {tuple(scale.shape)}")
            kappa = scale.to(device=loc.device, dtype=loc.dtype).expand(b)
        else:
            if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0 or not math.isfinite(scale):
                raise GenkitError(f"vMF scale (kappa) must be a finite number > 0, got {scale!r}")
            kappa = torch.full((b,), float(scale), device=loc.device, dtype=loc.dtype)
        validate = Distribution._validate_args if validate_args is None else validate_args
        if validate:
            if not bool((kappa > 0).all() & torch.isfinite(kappa).all()):
                raise GenkitError("vMF scale (kappa) must be finite and > 0 everywhere")
            norms = loc.detach().norm(dim=-1)
            if not bool(((norms - 1).abs() < 1e-3).all()):
                raise GenkitError("vMF loc rows must have unit norm: normalise them (torch.nn.functional.normalize)")
        self.loc, self.scale, self.dim = loc, kappa, d
        # A float kappa (the vMF-VAE's fixed concentration) has its closed forms evaluated once here, on the
        # CPU in float64, so log_prob, entropy and the KL never move a device tensor to scipy (no GPU sync).
        self._fixed = None if isinstance(scale, Tensor) else _closed_forms(d, float(scale))
        super().__init__(torch.Size((b,)), torch.Size((d,)), validate_args=False)

    @property
    def mean(self) -> Tensor:
        """``E[x] = A_d(kappa) loc``: ``(B, d)``."""
        return mean_resultant_length(self.dim, self.scale).unsqueeze(-1) * self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    def log_prob(self, value: Tensor) -> Tensor:
        """``log C_d(kappa) + kappa <loc, x>`` for ``value: (..., B, d)`` on the sphere -> ``(..., B)``."""
        if value.shape[-1] != self.dim:
            raise GenkitError(f"vMF log_prob needs points of dimension {self.dim}, got shape {tuple(value.shape)}")
        log_c = log_normalizer(self.dim, self.scale) if self._fixed is None else self._fixed.log_c
        return log_c + self.scale * (value * self.loc).sum(-1)

    def entropy(self) -> Tensor:
        """``-log C_d(kappa) - kappa A_d(kappa)``: ``(B,)`` nats."""
        if self._fixed is not None:
            return self.scale.new_full(self.batch_shape, self._fixed.entropy)
        return -log_normalizer(self.dim, self.scale) - self.scale * mean_resultant_length(self.dim, self.scale)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = (), generator: torch.Generator | None = None) -> Tensor:
        """``(*sample_shape, B, d)`` draws from ``generator``; differentiable in ``loc`` only."""
        shape = (*sample_shape, *self.batch_shape)
        n, d = math.prod(shape), self.dim
        kappa = self.scale.detach().to(torch.float64).expand(shape).reshape(n)  # (N,) one kappa per draw
        w = _wood_w(kappa, d, generator).to(self.loc.dtype).reshape(*shape, 1)  # (*shape, 1)
        v = _uniform_on_sphere(shape, d - 1, generator, device=self.loc.device, dtype=self.loc.dtype)  # (*shape, d-1)
        x = torch.cat([w, torch.sqrt((1 - w**2).clamp_min(0)) * v], dim=-1)  # (*shape, d) around e_1
        return _householder_to(x, self.loc)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = (), generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def kl_to_uniform(self) -> Tensor:
        """``KL(self || U(S^{d-1}))``: ``(B,)`` nats, independent of ``loc`` (:func:`kl_vmf_uniform`)."""
        if self._fixed is not None:
            return self.scale.new_full(self.batch_shape, self._fixed.kl_to_uniform)
        return kl_vmf_uniform(self.dim, self.scale)

    def __repr__(self) -> str:
        return f"VonMisesFisher(batch={tuple(self.batch_shape)}, d={self.dim})"


def _householder_to(x: Tensor, mu: Tensor) -> Tensor:
    """Reflect ``x: (..., B, d)``, drawn around ``e_1``, by ``H = I - 2 u u^T``, ``u = (e_1 - mu)/|e_1 - mu|``.

    ``H e_1 = mu`` for unit ``mu: (B, d)``, and ``H`` is orthogonal, so ``<H x, mu> = <x, e_1>``; where ``mu``
    is ``e_1`` already (``|e_1 - mu|`` below 1e-6) ``H`` is the identity.
    """
    e1 = torch.zeros_like(mu)
    e1[:, 0] = 1
    u = e1 - mu
    norm = u.norm(dim=-1, keepdim=True)  # (B, 1)
    u = torch.where(norm > 1e-6, u / norm.clamp_min(1e-6), torch.zeros_like(u))
    return x - 2 * (x * u).sum(-1, keepdim=True) * u


class HypersphericalUniform(Distribution):
    """The uniform distribution on ``S^{d-1}``: density ``1 / |S^{d-1}|``, ``vMF`` at ``kappa = 0``.

    Batch shape ``()``, event shape ``(d,)``; ``log_prob(x: (..., d)) -> (...)``, the same constant everywhere.

    Args:
        dim: ``d >= 2``.
        device, dtype: of the samples and log-densities.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, dim: int, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        _check_dim(dim)
        self.dim = dim
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._dtype = dtype or torch.get_default_dtype()
        super().__init__(torch.Size(), torch.Size((dim,)), validate_args=False)

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.dim, device=self._device, dtype=self._dtype)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = (), generator: torch.Generator | None = None) -> Tensor:
        """``(*sample_shape, d)`` uniform points (normalised standard normals) from ``generator``."""
        return _uniform_on_sphere(tuple(sample_shape), self.dim, generator, device=self._device, dtype=self._dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        """``-log |S^{d-1}|`` for each point ``value: (..., d)`` -> ``(...)``."""
        if value.shape[-1] != self.dim:
            raise GenkitError(f"uniform-sphere log_prob needs points of dimension {self.dim}, got shape {tuple(value.shape)}")
        return torch.full(value.shape[:-1], -log_sphere_area(self.dim), device=value.device, dtype=value.dtype)

    def entropy(self) -> Tensor:
        return torch.tensor(log_sphere_area(self.dim), device=self._device, dtype=self._dtype)

    def __repr__(self) -> str:
        return f"HypersphericalUniform(d={self.dim})"


@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_vmf_uniform(p: VonMisesFisher, q: HypersphericalUniform) -> Tensor:
    if p.dim != q.dim:
        raise GenkitError(f"KL between spheres of different dimension: vMF d={p.dim}, uniform d={q.dim}")
    return p.kl_to_uniform()
