"""The VQ-VAE objective: reconstruction + codebook + commitment (SPEC §8(a), §9(a)).

    L = mean((x - dec(z_q))^2) + codebook_weight * mean((q - sg[z])^2) + commitment_weight * mean((z - sg[q])^2)

``codebook_weight`` is SPEC's (Su's) beta and ``commitment_weight`` his gamma; most code and the VQ-VAE
paper call the commitment weight beta (0.25). The defaults, 1.0 and 0.25, are the paper's and the
official SimVQ code's. How the decoder's gradient crosses the quantizer (straight-through or the rotation
trick) and how the codebook is parameterised (plain or SimVQ) are the quantizer's settings.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genkit.errors import GenkitError
from genkit.eval.codebook import code_histogram, perplexity, usage_fraction
from genkit.objectives.base import LossOutput

__all__ = ["VQVAELoss"]


class VQVAELoss:
    """``models["model"]``: a :class:`genkit.nn.vq_nets.VQVAE`; ``batch``: images ``x: (B, C, H, W)``.

    Returns the loss under optimizer ``model`` and, as metrics, ``recon_mse``, ``codebook_loss``,
    ``commitment_loss`` (unweighted), and the batch's code ``perplexity`` and ``code_usage`` (fraction of
    codes selected by the batch's ``B * H/4 * W/4`` vectors).
    """

    def __init__(self, *, codebook_weight: float = 1.0, commitment_weight: float = 0.25) -> None:
        if codebook_weight < 0 or commitment_weight < 0:
            raise GenkitError(f"VQ loss weights must be >= 0, got codebook {codebook_weight}, "
                              f"commitment {commitment_weight}")
        self.codebook_weight, self.commitment_weight = codebook_weight, commitment_weight

    def __call__(
        self,
        models: Mapping[str, nn.Module],
        batch: Tensor,
        *,
        need: frozenset[str] = frozenset({"model"}),
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        net = models["model"]
        out = net(batch)
        recon = F.mse_loss(out.reconstruction.float(), batch.float())
        q = out.quantizer
        loss = recon + self.codebook_weight * q.codebook_loss + self.commitment_weight * q.commitment_loss
        with torch.no_grad():
            counts = code_histogram(q.indices, net.quantizer.num_codes)
            metrics = {"recon_mse": recon.detach(), "codebook_loss": q.codebook_loss.detach(),
                       "commitment_loss": q.commitment_loss.detach(), "perplexity": perplexity(counts),
                       "code_usage": usage_fraction(counts)}
        return LossOutput({"model": loss}, metrics)
