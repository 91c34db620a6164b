"""Vector quantization: nearest codes, straight-through and rotation-trick Jacobians (SPEC §8(e)), SimVQ (§9(e))."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from genkit.errors import GenkitError
from genkit.quantizers import (
    VectorQuantizer,
    nearest_code,
    rotation_matrix,
    rotation_trick,
    straight_through,
    vector_quantize,
)

D = 5


def _pairs(n, d=D, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=dtype)
    q = torch.randn(n, d, generator=g, dtype=dtype) * 2.0
    return z, q


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _row_jacobians(fn, z):
    """``(N, D, D)`` Jacobians of a row-wise map ``fn: (N, D) -> (N, D)``, checking rows do not mix."""
    n, d = z.shape
    j = jacobian(fn, z)  # (N, D, N, D)
    blocks = torch.stack([j[i, :, i, :] for i in range(n)])  # (N, D, D)
    mask = ~torch.eye(n, dtype=torch.bool).view(n, 1, n, 1).expand(n, d, n, d)
    assert torch.all(j[mask] == 0)
    return blocks


# ---- nearest codes and the straight-through estimator ------------------------------------------------------
def test_nearest_code_matches_brute_force_and_breaks_ties_low():
    g = torch.Generator().manual_seed(1)
    z, codes = torch.randn(200, 3, generator=g), torch.randn(17, 3, generator=g)
    brute = torch.stack([((codes - row) ** 2).sum(dim=1).argmin() for row in z])
    assert torch.equal(nearest_code(z, codes), brute)
    twins = torch.cat([codes[:1], codes[:1]])  # two equal codes: the first wins
    assert torch.equal(nearest_code(z[:4], twins), torch.zeros(4, dtype=torch.long))


def test_straight_through_is_the_code_with_identity_jacobian():
    z, q = _pairs(4)
    q.requires_grad_(True)
    out = straight_through(z.clone().requires_grad_(True), q)
    assert torch.equal(out, q)  # bit for bit
    assert torch.equal(_row_jacobians(lambda v: straight_through(v, q), z), torch.eye(D).expand(4, D, D).double())
    out.sum().backward()
    assert q.grad is None  # nothing reaches the codebook through the output


# ---- the rotation trick ---------------------------------------------------------------------------------
def test_rotation_matrix_is_the_rotation_from_z_hat_to_q_hat():
    z, q = _pairs(6)
    R = rotation_matrix(z, q)
    zh, qh = _unit(z), _unit(q)
    eye = torch.eye(D, dtype=torch.float64)
    assert torch.allclose(R @ R.transpose(1, 2), eye.expand(6, D, D), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose((R @ zh.unsqueeze(2)).squeeze(2), qh, atol=1e-12)
    # the identity on the orthogonal complement of span(z_hat, q_hat)
    basis, _ = torch.linalg.qr(torch.stack([zh, qh], dim=2))  # (6, D, 2)
    v = torch.randn(6, D, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v = v - basis @ (basis.transpose(1, 2) @ v)
    assert torch.allclose(R @ v, v, atol=1e-12)
    # the product of two Householder reflections (I - 2 q q^T)(I - 2 r r^T)
    r = _unit(zh + qh)
    house = lambda u: eye - 2.0 * u.unsqueeze(2) * u.unsqueeze(1)
    assert torch.allclose(R, house(qh) @ house(r), atol=1e-12)
    # R = I when the directions agree
    assert torch.allclose(rotation_matrix(z, 3.0 * z), eye.expand(6, D, D), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", ["scaled", "tangent"])
def test_rotation_trick_forward_value_is_the_code_exactly(variant, dtype):
    z, q = _pairs(500, d=16, dtype=dtype)
    assert torch.equal(rotation_trick(z.requires_grad_(True), q, variant=variant), q)


def test_rotation_trick_jacobian_is_lambda_r_and_the_codebook_gets_nothing():
    z, q = _pairs(4)
    lam = (q.norm(dim=1) / z.norm(dim=1)).view(-1, 1, 1)
    R = rotation_matrix(z, q)
    J = _row_jacobians(lambda v: rotation_trick(v, q), z)
    assert torch.allclose(J, lam * R, atol=1e-12)
    # variant "tangent" (live z_hat): lambda R (I - z_hat z_hat^T), the radial component dropped
    zh = _unit(z)
    radial_free = torch.eye(D, dtype=torch.float64) - zh.unsqueeze(2) * zh.unsqueeze(1)
    J_t = _row_jacobians(lambda v: rotation_trick(v, q, variant="tangent"), z)
    assert torch.allclose(J_t, lam * R @ radial_free, atol=1e-12)
    q = q.clone().requires_grad_(True)
    rotation_trick(z.clone().requires_grad_(True), q).pow(2).sum().backward()
    assert q.grad is None


def test_rotation_trick_gradient_keeps_the_angle_and_scales_the_norm():
    z, q = _pairs(64, d=8)
    z.requires_grad_(True)
    upstream = torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))  # dL/dq
    (grad_z,) = torch.autograd.grad(rotation_trick(z, q), z, upstream)
    assert torch.allclose(F.cosine_similarity(z, grad_z, dim=1), F.cosine_similarity(q, upstream, dim=1), atol=1e-12)
    assert torch.allclose(grad_z.norm(dim=1), q.norm(dim=1) / z.norm(dim=1) * upstream.norm(dim=1), rtol=1e-12)


def test_rotation_trick_reduces_to_the_straight_through_estimator():
    z, _ = _pairs(3)
    eye = torch.eye(D, dtype=torch.float64).expand(3, D, D)
    assert torch.allclose(_row_jacobians(lambda v: rotation_trick(v, z.clone()), z), eye, atol=1e-12)  # z = q
    q = 2.5 * z  # same direction: the STE scaled by ||q|| / ||z||
    assert torch.allclose(_row_jacobians(lambda v: rotation_trick(v, q), z), 2.5 * eye, atol=1e-12)


@pytest.mark.parametrize("variant", ["scaled", "tangent"])
def test_rotation_trick_edge_cases_are_finite_as_documented(variant):
    z, q = _pairs(4)
    z[0] = 0.0  # z = 0: straight-through
    q[1] = 0.0  # q = 0: lambda = 0, zero Jacobian
    q[2] = -2.0 * z[2]  # antipodal: the reflection I - 2 z_hat z_hat^T, scaled by lambda = 2
    q[3] = -2.0 * z[3] + 1e-10  # within sqrt(eps) of antipodal: the same policy
    out = rotation_trick(z.clone().requires_grad_(True), q, variant=variant)
    assert torch.equal(out, q)
    J = _row_jacobians(lambda v: rotation_trick(v, q, variant=variant), z)
    assert torch.isfinite(J).all()
    assert torch.equal(J[0], torch.eye(D, dtype=torch.float64))
    assert torch.equal(J[1], torch.zeros(D, D, dtype=torch.float64))
    for row in (2, 3):
        zh = _unit(z[row])
        reflection = torch.eye(D, dtype=torch.float64) - 2.0 * torch.outer(zh, zh)
        radial_free = torch.eye(D, dtype=torch.float64) - torch.outer(zh, zh)
        lam = q[row].norm() / z[row].norm()
        expected = lam * reflection @ (radial_free if variant == "tangent" else torch.eye(D, dtype=torch.float64))
        assert torch.allclose(J[row], expected, atol=1e-12)
    # float32 too: a zero row and an antipodal row stay finite
    z32, q32 = z.float().requires_grad_(True), q.float()
    rotation_trick(z32, q32, variant=variant).sum().backward()
    assert torch.isfinite(z32.grad).all()


def test_rotation_trick_and_straight_through_refuse_bad_shapes():
    with pytest.raises(GenkitError, match=r"one shape \(N, D\)"):
        rotation_trick(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(GenkitError, match="unknown rotation-trick variant"):
        rotation_trick(torch.zeros(3, 4), torch.zeros(3, 4), variant="reflect")
    with pytest.raises(GenkitError, match="one shape"):
        straight_through(torch.zeros(3), torch.zeros(4))
    with pytest.raises(GenkitError, match="of one D"):
        nearest_code(torch.zeros(3, 4), torch.zeros(5, 3))


# ---- the module -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient", ["ste", "rotation"])
@pytest.mark.parametrize("codebook", ["plain", "linear"])
def test_quantizer_on_vectors_and_channel_first_grids(gradient, codebook):
    torch.manual_seed(0)
    vq = VectorQuantizer(12, 4, gradient=gradient, codebook=codebook)
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    out = vq(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (2, 3, 5) and out.indices.dtype == torch.long
    E = vq.codebook()
    rows = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)  # (B*H*W, D)
    brute = torch.cdist(rows, E).argmin(dim=1)
    assert torch.equal(out.indices.reshape(-1), brute)
    assert torch.equal(out.quantized, vq.lookup(out.indices))  # value: the codes, channel-first
    assert torch.allclose(out.codebook_loss, F.mse_loss(E[brute], rows))
    assert torch.allclose(out.commitment_loss, out.codebook_loss)  # same value, different gradients
    # commitment trains the input only; codebook loss the codebook only
    (g_z,) = torch.autograd.grad(out.codebook_loss, z, allow_unused=True)
    assert g_z is None
    params = [p for p in vq.parameters()]
    assert all(g is None for g in torch.autograd.grad(out.commitment_loss, params, allow_unused=True, retain_graph=True))
    vectors = vq(rows)
    assert torch.equal(vectors.indices, brute) and torch.equal(vectors.quantized, E[brute].detach())


def test_quantizer_refuses_bad_input_in_one_line():
    vq = VectorQuantizer(8, 4)
    for bad in (torch.zeros(2, 3), torch.zeros(2, 4, 3), torch.zeros(2, 3, 4, 4)):
        with pytest.raises(GenkitError, match=r"expects \(B, 4\) or \(B, 4, H, W\)") as e:
            vq(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(GenkitError, match="unknown codebook"):
        VectorQuantizer(8, 4, codebook="ema")
    with pytest.raises(GenkitError, match="unknown VQ gradient rule"):
        VectorQuantizer(8, 4, gradient="gumbel")
    with pytest.raises(GenkitError, match="num_codes >= 1"):
        VectorQuantizer(0, 4)
    with pytest.raises(GenkitError, match="int64 indices"):
        vq.lookup(torch.zeros(3))


# ---- SimVQ ------------------------------------------------------------------------------------------------
def test_simvq_forward_is_a_row_of_cw_plus_b():
    torch.manual_seed(1)
    vq = VectorQuantizer(10, 3, codebook="linear", bias=True).double()
    assert "codes" in dict(vq.named_buffers()) and not vq.codes.requires_grad  # C frozen by default
    E = vq.codes @ vq.proj.weight.T + vq.proj.bias  # SPEC's C W + b, W = weight^T
    z = torch.randn(40, 3, dtype=torch.float64)
    out = vq(z)
    brute = torch.stack([((E - row) ** 2).sum(dim=1).argmin() for row in z])
    assert torch.equal(out.indices, brute)
    assert torch.allclose(out.quantized, E[brute], atol=1e-14)


def _sgd_codebook_change(vq, z, lr):
    """One SGD step of the codebook loss on the quantizer's parameters: (E_new - E_old, G_E, indices)."""
    E = vq.codebook()
    E.retain_grad()
    E_old = E.detach().clone()
    out = vector_quantize(z, E)
    out.codebook_loss.backward()
    with torch.no_grad():
        for p in vq.parameters():
            p -= lr * p.grad
        return vq.codebook() - E_old, E.grad, out.indices


def test_simvq_sgd_step_with_frozen_c_moves_every_code_by_the_closed_form():
    """SPEC §9(e)2: E_new - E_old = -lr C (C^T G_E); plain VQ: -lr G_E (unused codes stay)."""
    torch.manual_seed(2)
    lr = 0.3
    z = torch.randn(6, 4, dtype=torch.float64) + 3.0  # few vectors: most of the 16 codes go unused
    simvq = VectorQuantizer(16, 4, codebook="linear").double()
    C = simvq.codes.clone()
    change, G, idx = _sgd_codebook_change(simvq, z, lr)
    unused = torch.ones(16, dtype=torch.bool)
    unused[idx] = False
    assert unused.sum() >= 8 and torch.all(G[unused] == 0)
    assert torch.allclose(change, -lr * C @ (C.T @ G), atol=1e-14)
    assert torch.all(change[unused].norm(dim=1) > 0)  # dead codes move too
    plain = VectorQuantizer(16, 4).double()
    change, G, idx = _sgd_codebook_change(plain, z, lr)
    assert torch.allclose(change, -lr * G, atol=1e-14) and torch.all(change[unused] == 0)


def test_simvq_gradient_reaches_w_as_the_sum_over_codes():
    """SPEC §9(e)4: dL/dW = sum_j c_j^T dL/de_j (SPEC's row-vector W = proj.weight^T); no gradient to a frozen C."""
    torch.manual_seed(3)
    vq = VectorQuantizer(9, 3, codebook="linear", gradient="rotation").double()
    z = torch.randn(20, 3, dtype=torch.float64)
    E = vq.codebook()
    E.retain_grad()
    out = vector_quantize(z, E, gradient="rotation")
    (out.codebook_loss + out.quantized.pow(3).mean()).backward()
    assert torch.allclose(vq.proj.weight.grad.T, vq.codes.T @ E.grad, atol=1e-14)
    assert vq.codes.grad is None and E.grad.abs().sum() > 0


@pytest.mark.parametrize("gradient", ["ste", "rotation"])
def test_simvq_with_identity_w_and_trained_c_is_plain_vq(gradient):
    """SPEC §9(e)3: same forward, indices and gradients."""
    torch.manual_seed(4)
    plain = VectorQuantizer(11, 4, gradient=gradient).double()
    simvq = VectorQuantizer(11, 4, gradient=gradient, codebook="linear", train_codes=True).double()
    with torch.no_grad():
        simvq.codes.copy_(plain.codes)
        simvq.proj.weight.copy_(torch.eye(4))
    z = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    grads = []
    for vq in (plain, simvq):
        zi = z.clone().requires_grad_(True)
        out = vq(zi)
        loss = out.quantized.sin().sum() + out.codebook_loss + 0.25 * out.commitment_loss
        loss.backward()
        grads.append((out.quantized.detach(), out.indices, zi.grad, vq.codes.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-14) and a.dtype == b.dtype


def test_simvq_keeps_more_codes_alive_than_plain_vq():
    """SPEC §9(e)5 (toy): fixed 2-D "encoder outputs" from 4 Gaussian blobs around (6, 6), 64 codes of norm ~1 near
    the origin, 200 Adam steps of the codebook loss. Plain VQ: a code no point selects gets a zero gradient, and
    Adam leaves it exactly where it was (derived, asserted below), so usage stays at the few initial winners.
    SimVQ (W with bias, as the official code): every step moves every code, the codebook follows the data.
    Usage = fraction of codes selected by the 512 points; "markedly higher" (SPEC) is set at 4x: seeds 0-3
    give 5.5x-9x."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 5.0], [7.0, 5.0], [5.0, 7.0], [7.0, 7.0]])
    z = centres[torch.arange(512) % 4] + 0.5 * torch.randn(512, 2, generator=g)
    usage = {}
    for kind in ("plain", "linear"):
        torch.manual_seed(0)
        vq = VectorQuantizer(64, 2, codebook=kind, bias=kind == "linear")
        start, first = vq.codebook().detach().clone(), vq(z).indices.unique()
        opt = torch.optim.Adam(vq.parameters(), lr=0.05)
        for _ in range(200):
            opt.zero_grad()
            vq(z).codebook_loss.backward()
            opt.step()
        usage[kind] = vq(z).indices.unique().numel() / 64
        if kind == "plain":
            never = torch.ones(64, dtype=torch.bool)
            never[first] = False
            assert torch.equal(vq.codebook()[never], start[never])  # dead codes stay dead
    assert usage["linear"] >= 4 * usage["plain"], usage


@pytest.mark.parametrize("codebook", ["plain", "linear"])
def test_quantizer_works_in_float32_under_bf16_autocast(codebook):
    torch.manual_seed(5)
    vq = VectorQuantizer(64, 8, codebook=codebook, gradient="rotation")
    z = torch.randn(256, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
    assert out.quantized.dtype == torch.float32
    assert torch.equal(out.indices, vq(z).indices)  # the codebook and distances did not drop to bf16
