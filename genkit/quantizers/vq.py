"""Vector quantization (VQ-VAE) with a choice of gradient rule and of codebook parameterisation.

``VectorQuantizer(num_codes, dim, gradient=..., codebook=...)``:

- ``gradient="ste"`` (default) passes the decoder's gradient straight through to the encoder;
  ``"rotation"`` uses the rotation trick (SPEC §8; :func:`genkit.quantizers.gradients.rotation_trick`).
  The STE is the default because the trick's gains are setup-dependent (SPEC §11.3).
- ``codebook="plain"`` learns the ``(K, D)`` codes directly; ``"linear"`` is SimVQ (SPEC §9): codes
  ``E = C W (+ b)`` with ``C`` random and frozen (by default) and only the shared linear map ``W`` learned,
  so every update moves every code (no dead codes by neglect).

The module returns the two unweighted VQ loss terms; the objective weights them
(:class:`genkit.objectives.vq.VQVAELoss`). Naming: SPEC (after Su) writes
``beta ||q - sg[z]||^2 + gamma ||z - sg[q]||^2``, beta on the **codebook** term and gamma on the
**commitment** term; most code (and the VQ-VAE paper) calls the commitment weight beta. genkit says
``codebook_loss`` / ``commitment_loss`` and ``codebook_weight`` / ``commitment_weight`` to avoid both letters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.quantizers.gradients import RotationVariant, nearest_code, rotation_trick, straight_through

__all__ = ["CodebookKind", "GradientRule", "QuantizerOutput", "VectorQuantizer", "vector_quantize"]

GradientRule = Literal["ste", "rotation"]
CodebookKind = Literal["plain", "linear"]


@dataclass(frozen=True)
class QuantizerOutput:
    """What a quantizer returns, whatever its settings.

    quantized: the input's shape, ``(B, D)`` or ``(B, D, H, W)``; value = the selected codes, gradient to the
        input by the chosen rule.
    indices: ``(B,)`` or ``(B, H, W)`` int64: the selected code of each vector.
    codebook_loss: scalar ``mean((q - sg[z])^2)``: trains the codebook (its parameters only).
    commitment_loss: scalar ``mean((z - sg[q])^2)``: keeps the encoder near its codes (encoder only).
    """

    quantized: Tensor
    indices: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor


def _straight_through(z: Tensor, q: Tensor, rotation: RotationVariant) -> Tensor:
    return straight_through(z, q)


def _rotation(z: Tensor, q: Tensor, rotation: RotationVariant) -> Tensor:
    return rotation_trick(z, q, variant=rotation)


GRADIENT_RULES = {"ste": _straight_through, "rotation": _rotation}


def vector_quantize(
    z: Tensor, codebook: Tensor, *, gradient: GradientRule = "ste", rotation: RotationVariant = "scaled"
) -> QuantizerOutput:
    """Quantize rows ``z: (N, D)`` to their nearest rows of ``codebook: (K, D)``.

    Returns ``quantized: (N, D)`` (value: the codes), ``indices: (N,)`` and the two loss terms
    (means over all ``N * D`` entries). Gradients reach ``codebook`` only through ``codebook_loss``.
    """
    if gradient not in GRADIENT_RULES:
        raise GenkitError(f"unknown VQ gradient rule {gradient!r}: use one of {list(GRADIENT_RULES)}")
    indices = nearest_code(z, codebook)  # (N,)
    q = codebook[indices]  # (N, D), with its gradient to the codebook
    codebook_loss = F.mse_loss(q, z.detach())
    commitment_loss = F.mse_loss(z, q.detach())
    return QuantizerOutput(GRADIENT_RULES[gradient](z, q, rotation), indices, codebook_loss, commitment_loss)


class VectorQuantizer(nn.Module):
    """A codebook of ``num_codes`` vectors of size ``dim`` and the rule that quantizes to it.

    Args:
        num_codes: K, the codebook size.
        dim: D, the size of each vector (the encoder's output channels).
        gradient: ``ste`` (default) or ``rotation`` (SPEC §8).
        codebook: ``plain`` (learned ``(K, D)`` codes) or ``linear`` (SimVQ, SPEC §9: ``C W + b``).
        rotation: the rotation-trick variant (``gradient="rotation"`` only): ``scaled`` or ``tangent``.
        bias: ``linear`` only: an affine map ``C W + b`` (the official SimVQ code) rather than the paper's
            linear ``C W`` (default).
        train_codes: ``linear`` only: also train ``C`` (SPEC §9: similar results, risk of collapse);
            by default ``C`` is a frozen buffer. Plain codes are always trained.

    Initialisation: plain codes and SimVQ's ``C`` are ``N(0, 1/D)`` (rows of norm about 1, as the official
    SimVQ code); ``W`` is PyTorch's default ``nn.Linear`` initialisation. The module draws from the global
    torch RNG, as every ``nn.Module`` initialisation does: recipes seed it once.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        gradient: GradientRule = "ste",
        codebook: CodebookKind = "plain",
        rotation: RotationVariant = "scaled",
        bias: bool = False,
        train_codes: bool = False,
    ) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise GenkitError(f"VectorQuantizer needs num_codes >= 1 and dim >= 1, got {num_codes} and {dim}")
        if gradient not in GRADIENT_RULES:
            raise GenkitError(f"unknown VQ gradient rule {gradient!r}: use one of {list(GRADIENT_RULES)}")
        if codebook not in _CODEBOOKS:
            raise GenkitError(f"unknown codebook {codebook!r}: use one of {list(_CODEBOOKS)}")
        if rotation not in get_args(RotationVariant):
            raise GenkitError(f"unknown rotation-trick variant {rotation!r}: use one of {list(get_args(RotationVariant))}")
        self.num_codes, self.dim = num_codes, dim
        self.gradient, self.kind, self.rotation = gradient, codebook, rotation
        codes = torch.randn(num_codes, dim) * dim**-0.5  # (K, D)
        if codebook == "plain" or train_codes:
            self.codes = nn.Parameter(codes)
        else:
            self.register_buffer("codes", codes)  # SimVQ's frozen C: saved with the weights, never trained
        # the trained map of SimVQ; nn.Linear computes c W_lin^T + b, so SPEC's row-vector W is weight.T
        self.proj = nn.Linear(dim, dim, bias=bias) if codebook == "linear" else None

    def codebook(self) -> Tensor:
        """The ``(K, D)`` codes quantized to: ``codes`` (plain) or ``codes @ W + b`` (linear)."""
        return _CODEBOOKS[self.kind](self)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z: (B, D)`` or channel-first ``(B, D, H, W)`` (each of the ``B * H * W`` D-vectors)."""
        if z.dim() not in (2, 4) or z.shape[1] != self.dim:
            raise GenkitError(f"VectorQuantizer(dim={self.dim}) expects (B, {self.dim}) or (B, {self.dim}, H, W), "
                              f"got {tuple(z.shape)}")
        if z.dim() == 4:
            b, d, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(b * h * w, d)  # (B*H*W, D): one row per grid position
        else:
            flat = z
        # codebook, distances and rotation in the parameters' precision (float32 in training), also under
        # bf16 autocast: a bf16 distance matmul would pick wrong codes among close ones
        with torch.autocast(z.device.type, enabled=False):
            codebook = self.codebook()  # (K, D)
            dtype = torch.promote_types(z.dtype, codebook.dtype)
            out = vector_quantize(flat.to(dtype), codebook.to(dtype), gradient=self.gradient, rotation=self.rotation)
        if z.dim() == 2:
            return out
        quantized = out.quantized.reshape(b, h, w, d).permute(0, 3, 1, 2)  # back to (B, D, H, W)
        return QuantizerOutput(quantized, out.indices.reshape(b, h, w), out.codebook_loss, out.commitment_loss)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes of ``indices: (B, ...)`` int64 as channel-first vectors: ``(B, D)`` or ``(B, D, H, W)``.

        Applies the SimVQ map (the official code's lookup of raw ``C`` rows is a bug, SPEC §9(c)).
        """
        if indices.dtype != torch.long or indices.dim() not in (1, 3):
            raise GenkitError(f"lookup expects int64 indices (B,) or (B, H, W), got {indices.dtype} {tuple(indices.shape)}")
        q = self.codebook()[indices]  # (B, D) or (B, H, W, D)
        return q if indices.dim() == 1 else q.permute(0, 3, 1, 2)  # (B, D, H, W)

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}, gradient={self.gradient}, codebook={self.kind}"


def _plain(vq: VectorQuantizer) -> Tensor:
    return vq.codes


def _linear(vq: VectorQuantizer) -> Tensor:
    return vq.proj(vq.codes)  # (K, D) = C W + b


_CODEBOOKS = {"plain": _plain, "linear": _linear}
