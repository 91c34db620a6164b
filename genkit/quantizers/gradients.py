"""Pure functions of vector quantization: nearest-code assignment and the gradient rules through it.

A quantizer's forward value is the selected code ``q``; what differs between methods is the Jacobian
``d z_q / d z`` the backward pass pretends the quantizer has (SPEC §8). Every rule here returns a
tensor whose *value* is ``q`` bit for bit, built as ``sg[q] + (g(z) - sg[g(z)])`` (``sg`` = detach):
the second term is exactly zero in the forward pass and carries the Jacobian of ``g`` in the backward
pass. No gradient reaches ``q`` (the codebook) through the output: the codebook learns from the
codebook loss term only.

- :func:`straight_through`: ``g(z) = z``, Jacobian ``I`` (the classic ``z + sg[q - z]``).
- :func:`rotation_trick`: ``g(z) = sg[lambda R] z``, Jacobian ``lambda R`` with ``lambda = ||q|| / ||z||`` and
  ``R`` the rotation in the plane of ``z_hat, q_hat`` taking ``z_hat`` to ``q_hat``, applied as two
  Householder reflections ``R = (I - 2 q_hat q_hat^T)(I - 2 r r^T)``, ``r = (z_hat + q_hat) / ||z_hat + q_hat||``,
  in O(D) per vector (no D x D matrix).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from genkit.errors import GenkitError

__all__ = ["RotationVariant", "nearest_code", "rotation_matrix", "rotation_trick", "straight_through"]

RotationVariant = Literal["scaled", "tangent"]
"""Which rotation trick (SPEC §8(d), §11.3); both have forward value ``q``:

- ``scaled`` (default; the paper, lucidrains, the official VQ-VAE script): ``sg[lambda R] z``,
  Jacobian ``lambda R``.
- ``tangent`` (the official VQGAN script): ``sg[||q|| R] z_hat`` with ``z_hat = z / ||z||`` *not* stopped,
  Jacobian ``lambda R (I - z_hat z_hat^T)``: the gradient also loses its radial component.
"""


def _check_pair(z: Tensor, q: Tensor, who: str) -> None:
    if z.dim() != 2 or z.shape != q.shape:
        raise GenkitError(f"{who} needs z and q of one shape (N, D), got {tuple(z.shape)} and {tuple(q.shape)}")


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code (squared Euclidean distance) for each row of ``z``.

    Args:
        z: ``(N, D)`` vectors.
        codebook: ``(K, D)`` codes.
    Returns:
        ``(N,)`` int64 in ``[0, K)``; ties go to the lowest index.

    Distances are ``||z||^2 - 2 z.e + ||e||^2`` (one matrix product, no ``(N, K, D)`` tensor), computed
    without gradient: the assignment is piecewise constant.
    """
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise GenkitError(f"nearest_code needs z (N, D) and codebook (K, D) of one D, got {tuple(z.shape)} "
                          f"and {tuple(codebook.shape)}")
    if codebook.shape[0] < 1:
        raise GenkitError("nearest_code needs a codebook of at least one code")
    with torch.no_grad():
        z, e = z.detach(), codebook.detach().to(z.dtype)
        # ||z||^2 is the same for every code of a row: it does not change the argmin
        d = e.pow(2).sum(dim=1) - 2.0 * (z @ e.T)  # (N, K): squared distance less ||z||^2
        return d.argmin(dim=1)


def straight_through(z: Tensor, q: Tensor) -> Tensor:
    """Straight-through estimator: value ``q``, Jacobian w.r.t. ``z`` the identity, none w.r.t. ``q``.

    ``z, q: (..., D)`` of one shape; returns the same shape. Equal in both passes to the classic
    ``z + sg[q - z]``, but its value is ``q`` exactly (no rounding of ``z + (q - z)``).
    """
    if z.shape != q.shape:
        raise GenkitError(f"straight_through needs z and q of one shape, got {tuple(z.shape)} and {tuple(q.shape)}")
    return q.detach() + (z - z.detach())


def _unit(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(x / ||x||, ||x||) row-wise for ``x: (N, D)``; rows of norm <= eps give a zero direction."""
    norm = x.norm(dim=1, keepdim=True)  # (N, 1)
    return torch.where(norm > eps, x / norm.clamp_min(eps), torch.zeros_like(x)), norm


def _directions(z: Tensor, q: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Detached pieces of the rotation for ``z, q: (N, D)``: ``z_hat, q_hat, r`` (N, D), ``||z||, ||q||`` (N, 1),
    and ``antipodal`` (N, 1) bool where ``||z_hat + q_hat|| <= sqrt(machine eps)``."""
    z, q = z.detach(), q.detach()
    z_hat, z_norm = _unit(z, eps)
    q_hat, q_norm = _unit(q, eps)
    s = z_hat + q_hat  # (N, D)
    s_norm = s.norm(dim=1, keepdim=True)
    # r = s / ||s|| has relative error ~ machine eps / ||s||: below sqrt(eps) the plane is numerically
    # undefined, and the policy of rotation_trick applies
    antipodal = s_norm <= torch.finfo(z.dtype).eps ** 0.5
    r = s / s_norm.clamp_min(torch.finfo(z.dtype).tiny)
    return z_hat, q_hat, r, z_norm, q_norm, antipodal


def _rotate(v: Tensor, z_hat: Tensor, q_hat: Tensor, r: Tensor, antipodal: Tensor) -> Tensor:
    """``R v`` row-wise, ``v: (N, D)``: ``v - 2 (v.r) r + 2 (v.z_hat) q_hat`` (two Householder reflections);
    where ``antipodal``, the reflection ``v - 2 (v.z_hat) z_hat`` that maps ``z_hat`` to ``-z_hat``."""
    vz = (v * z_hat).sum(dim=1, keepdim=True)  # (N, 1)
    rotated = v - 2.0 * (v * r).sum(dim=1, keepdim=True) * r + 2.0 * vz * q_hat
    reflected = v - 2.0 * vz * z_hat
    return torch.where(antipodal, reflected, rotated)


def rotation_trick(z: Tensor, q: Tensor, *, variant: RotationVariant = "scaled", eps: float = 1e-6) -> Tensor:
    """The rotation trick (Fifty et al., 2025; SPEC §8): value ``q``, Jacobian ``lambda R`` w.r.t. ``z``.

    Args:
        z: ``(N, D)`` encoder outputs.
        q: ``(N, D)`` their selected codes (no gradient reaches them through the output).
        variant: ``scaled`` (Jacobian ``lambda R``) or ``tangent`` (``lambda R (I - z_hat z_hat^T)``);
            see :data:`RotationVariant`.
        eps: norms at or below it count as zero.
    Returns:
        ``(N, D)``, equal to ``q`` bit for bit.

    Edge cases (a fixed policy, finite everywhere):

    - ``||z|| <= eps``: ``z_hat`` and ``lambda`` are undefined; that row falls back to the straight-through
      estimator (Jacobian ``I``).
    - ``||q|| <= eps``: ``lambda = 0`` (the limit), so the row's Jacobian is zero.
    - ``q_hat ~ -z_hat`` (``||z_hat + q_hat|| <= sqrt(machine eps)``): the rotation plane is undefined; ``R`` is
      replaced by the reflection ``I - 2 z_hat z_hat^T``, which maps ``z_hat`` to ``-z_hat = q_hat``. It is
      orthogonal (determinant -1), so the angle and norm invariants of the gradient still hold; it is the
      official repository's reflection variant ``I - 2 w w^T``, ``w ~ z_hat - q_hat``, at that point.
    """
    _check_pair(z, q, "rotation_trick")
    if variant not in _VARIANTS:
        raise GenkitError(f"unknown rotation-trick variant {variant!r}: use one of {list(_VARIANTS)}")
    z_hat, q_hat, r, z_norm, q_norm, antipodal = _directions(z, q, eps)
    g = _VARIANTS[variant](z, z_hat, q_hat, r, z_norm, q_norm, antipodal, eps)
    g = torch.where(z_norm > eps, g, z)  # z = 0: the straight-through estimator
    return q.detach() + (g - g.detach())


def _scaled(z, z_hat, q_hat, r, z_norm, q_norm, antipodal, eps) -> Tensor:
    lam = q_norm / z_norm.clamp_min(eps)  # (N, 1), detached
    return lam * _rotate(z, z_hat, q_hat, r, antipodal)


def _tangent(z, z_hat, q_hat, r, z_norm, q_norm, antipodal, eps) -> Tensor:
    live = z / z.norm(dim=1, keepdim=True).clamp_min(eps)  # (N, D), z_hat with its gradient
    return q_norm * _rotate(live, z_hat, q_hat, r, antipodal)


_VARIANTS = {"scaled": _scaled, "tangent": _tangent}


def rotation_matrix(z: Tensor, q: Tensor, *, eps: float = 1e-6) -> Tensor:
    """The explicit ``R`` of :func:`rotation_trick` for each pair: ``z, q: (N, D)`` -> ``(N, D, D)``.

    ``I + 2 q_hat z_hat^T - (q_hat + z_hat)(q_hat + z_hat)^T / (1 + cos theta)`` (SPEC §8(a)), or the
    reflection ``I - 2 z_hat z_hat^T`` for antipodal pairs. O(N D^2) memory: for tests and small D.
    """
    _check_pair(z, q, "rotation_matrix")
    z_hat, q_hat, _, _, _, antipodal = _directions(z, q, eps)
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device).expand(len(z), -1, -1)  # (N, D, D)
    outer = lambda a, b: a.unsqueeze(2) * b.unsqueeze(1)
    s = q_hat + z_hat
    cos = (q_hat * z_hat).sum(dim=1).view(-1, 1, 1)  # (N, 1, 1)
    rotation = eye + 2.0 * outer(q_hat, z_hat) - outer(s, s) / (1.0 + cos).clamp_min(torch.finfo(z.dtype).tiny)
    reflection = eye - 2.0 * outer(z_hat, z_hat)
    return torch.where(antipodal.view(-1, 1, 1), reflection, rotation)
