"""The VQ-VAE objective: its terms, where each sends gradient, its metrics, and that it trains."""

import pytest
import torch
import torch.nn.functional as F

from genkit.errors import GenkitError
from genkit.eval.codebook import code_histogram, perplexity
from genkit.nn.vq_nets import VQVAE, VQDecoder, VQEncoder
from genkit.objectives.vq import VQVAELoss
from genkit.quantizers import VectorQuantizer


def _net(gradient="ste", codebook="plain", num_codes=16, dim=4):
    torch.manual_seed(0)
    return VQVAE(VQEncoder(1, dim, channels=(4, 8)), VectorQuantizer(num_codes, dim, gradient=gradient, codebook=codebook),
                 VQDecoder(1, dim, channels=(4, 8)))


def _images(n=8, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_loss_is_reconstruction_plus_weighted_terms_and_metrics_are_the_batch_stats():
    net, x = _net(), _images()
    out = VQVAELoss(codebook_weight=0.7, commitment_weight=0.3)({"model": net}, x)
    ref = net(x)
    q = ref.quantizer
    recon = F.mse_loss(ref.reconstruction, x)
    assert torch.allclose(out.losses["model"], recon + 0.7 * q.codebook_loss + 0.3 * q.commitment_loss)
    m = out.metrics
    assert set(m) == {"recon_mse", "codebook_loss", "commitment_loss", "perplexity", "code_usage"}
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    counts = code_histogram(q.indices, 16)
    assert q.indices.shape == (8, 2, 2) and m["code_usage"] == (counts > 0).sum() / 16
    assert torch.isclose(m["perplexity"], perplexity(counts)) and 1 <= m["perplexity"] <= (counts > 0).sum()


def test_the_codebook_learns_only_from_its_term_and_the_encoder_from_the_others():
    net, x = _net(), _images()
    codes = net.quantizer.codes
    VQVAELoss(codebook_weight=0.0)({"model": net}, x).losses["model"].backward()
    assert torch.all(codes.grad == 0)  # reconstruction and commitment leave the codebook alone
    assert net.encoder.net[0].weight.grad.abs().sum() > 0  # the decoder's gradient crossed the quantizer
    net.zero_grad()
    net_out = net(x)
    net_out.quantizer.codebook_loss.backward()
    assert codes.grad.abs().sum() > 0
    assert all(p.grad is None or torch.all(p.grad == 0) for p in net.encoder.parameters())


@pytest.mark.parametrize(("gradient", "codebook"), [("ste", "plain"), ("rotation", "plain"), ("ste", "linear"),
                                                    ("rotation", "linear")])
def test_a_few_adam_steps_lower_the_loss(gradient, codebook):
    """Direction only: 40 steps on one fixed batch of 16 images must lower the objective below its start."""
    net, x = _net(gradient, codebook), _images(16)
    loss_fn = VQVAELoss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = loss_fn({"model": net}, x).losses["model"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss_fn({"model": net}, x).losses["model"].detach()) < first


def test_bad_weights_and_bad_images_are_one_line_errors():
    with pytest.raises(GenkitError, match="weights must be >= 0"):
        VQVAELoss(commitment_weight=-1.0)
    with pytest.raises(GenkitError, match="divisible by 4"):
        VQVAELoss()({"model": _net()}, torch.zeros(2, 1, 10, 10))
    with pytest.raises(GenkitError, match=r"\(B, 1, H, W\)"):
        VQVAELoss()({"model": _net()}, torch.zeros(2, 3, 8, 8))
