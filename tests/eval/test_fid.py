"""Fréchet distance oracles, streaming feature statistics, the .npz format, per-sample seeding."""

import numpy as np
import pytest
import torch
from scipy import linalg

from genkit.data.images import to_uint8
from genkit.errors import GenkitError
from genkit.eval.fid import (
    FeatureStats,
    frechet_distance,
    iter_samples,
    load_stats,
    per_sample_noise,
    sample_images,
    sampler_stats,
    save_stats,
)
from genkit.sampling import ODESampler
from genkit.seeding import derive_seed


def sqrtm_reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance (sqrtm of the product, eps offset if singular)."""
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
    covmean = covmean.real
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def random_cov(rng, d, n):
    """Sample covariance of n correlated Gaussian vectors in d dims (full rank for n > d)."""
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((n, d)) @ a + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False)


# ---- Fréchet distance ---------------------------------------------------------------------------------
def test_shifted_identity_gaussians_give_squared_mean_distance():
    m = np.array([3.0, -4.0, 0.5, 0.0])
    d = len(m)
    assert frechet_distance(np.zeros(d), np.eye(d), m, np.eye(d)) == pytest.approx(m @ m, rel=1e-12)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 4.0, 16), rng.uniform(0.0, 4.0, 16)  # b may be near 0: still PSD
    b[3] = 0.0  # singular second covariance
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_sample_set_against_itself_is_zero():
    rng = np.random.default_rng(1)
    mu, sigma = random_cov(rng, 64, 500)
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-8 * np.trace(sigma)
    # rank-deficient (fewer samples than dimensions), where sqrtm needs its eps offset
    mu, sigma = random_cov(rng, 64, 20)
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-8 * np.trace(sigma)


def test_agrees_with_pytorch_fid_sqrtm_formula():
    rng = np.random.default_rng(2)
    for d, n1, n2 in ((8, 50, 80), (64, 300, 200), (128, 1000, 400)):
        mu1, s1 = random_cov(rng, d, n1)
        mu2, s2 = random_cov(rng, d, n2)
        ref = sqrtm_reference(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
        # torch tensors are accepted as well
        assert frechet_distance(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(GenkitError, match="dimension"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(GenkitError, match="mu \\(D,\\) and sigma \\(D, D\\)"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(GenkitError, match="not a covariance") as info:
        frechet_distance(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))
    assert "\n" not in str(info.value)
    with pytest.raises(GenkitError, match="non-finite"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))


# ---- FeatureStats and the file format --------------------------------------------------------------------
def test_streaming_stats_equal_numpy_in_any_batching():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(103, 5, generator=g, dtype=torch.float64) * 2 + 3
    stats = FeatureStats()
    lo = 0
    for size in (1, 7, 32, 50, 13):  # uneven batches covering all 103 rows
        stats.update(x[lo : lo + size].float() if size == 7 else x[lo : lo + size])
        lo += size
    assert lo == 103 and stats.n == 103 and stats.dim == 5
    ref = x.clone()
    ref[1:8] = ref[1:8].float().double()  # the float32 batch is rounded before accumulation
    assert np.allclose(stats.mean(), ref.numpy().mean(0), rtol=0, atol=1e-12)
    assert np.allclose(stats.cov(), np.cov(ref.numpy(), rowvar=False), rtol=0, atol=1e-12)
    assert stats.mean().dtype == np.float64 and stats.cov().shape == (5, 5)


def test_merge_equals_one_pass_and_leaves_inputs_alone():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    a, b, whole = FeatureStats(), FeatureStats(), FeatureStats()
    a.update(x[:25])
    b.update(x[25:])
    whole.update(x)
    merged = a.merge(b)
    assert merged.n == 60 and a.n == 25 and b.n == 35
    assert np.allclose(merged.mean(), whole.mean(), rtol=0, atol=1e-12)
    assert np.allclose(merged.cov(), np.cov(x.numpy(), rowvar=False), rtol=0, atol=1e-12)
    assert FeatureStats().merge(a).n == 25  # an empty side is a no-op
    other = FeatureStats()
    other.update(torch.zeros(3, 2))
    with pytest.raises(GenkitError, match="4-d and 2-d"):
        a.merge(other)


def test_stats_errors():
    stats = FeatureStats()
    with pytest.raises(GenkitError, match="empty"):
        stats.mean()
    with pytest.raises(GenkitError, match="\\(B, D\\)"):
        stats.update(torch.zeros(4))
    stats.update(torch.zeros(1, 3))
    with pytest.raises(GenkitError, match="at least 2"):
        stats.cov()
    with pytest.raises(GenkitError, match="3-d"):
        stats.update(torch.zeros(2, 4))


def test_npz_round_trip_uses_pytorch_fid_keys(tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = random_cov(rng, 6, 40)
    path = save_stats(tmp_path / "sub" / "stats.npz", mu, sigma)
    assert path == tmp_path / "sub" / "stats.npz" and path.is_file()
    with np.load(path) as f:  # what pytorch-fid reads: f["mu"][:], f["sigma"][:]
        assert sorted(f.files) == ["mu", "sigma"]
        assert np.array_equal(f["mu"], mu) and np.array_equal(f["sigma"], sigma)
    mu2, sigma2 = load_stats(path)
    assert np.array_equal(mu2, mu) and np.array_equal(sigma2, sigma)
    # a file written the way pytorch-fid writes it loads too
    np.savez_compressed(tmp_path / "theirs.npz", mu=mu, sigma=sigma)
    assert np.array_equal(load_stats(tmp_path / "theirs.npz")[1], sigma)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(GenkitError, match="lacks \\['mu', 'sigma'\\]"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(GenkitError, match="cannot read"):
        load_stats(tmp_path / "missing.npz")


def test_truncated_or_corrupt_npz_is_one_line_naming_the_file(tmp_path):
    """A cached file cut short by an interrupted write (BadZipFile) or with damaged data (zlib.error)."""
    good = save_stats(tmp_path / "good.npz", np.zeros(50), np.eye(50)).read_bytes()
    flipped = good[:60] + bytes(b ^ 0xFF for b in good[60:120]) + good[120:]
    for name, data in (("cut.npz", good[: len(good) // 2]), ("flipped.npz", flipped)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(GenkitError) as e:
            load_stats(tmp_path / name)
        message = str(e.value)
        assert "\n" not in message and str(tmp_path / name) in message and "delete it" in message


# ---- sampling with one seed per sample ---------------------------------------------------------------------
class ImageField(torch.nn.Module):
    """A small fixed MLP velocity field over (1, 4, 4) images."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(17, 32), torch.nn.SiLU(), torch.nn.Linear(32, 16))

    def forward(self, x, t):
        h = torch.cat([x.flatten(1), t[:, None]], dim=1)
        return self.net(h).view_as(x)


def test_per_sample_noise_rows_come_from_their_own_seeds():
    noise = per_sample_noise(5, (2, 3), seed=7, start=10)
    assert noise.shape == (5, 2, 3)
    for j in range(5):
        g = torch.Generator().manual_seed(derive_seed(7, "fid", 10 + j))
        assert torch.equal(noise[j], torch.randn((2, 3), generator=g))
    assert torch.equal(per_sample_noise(3, (2, 3), seed=7, start=12), noise[2:])


class ElementwiseField(torch.nn.Module):
    """A fixed nonlinear field built from correctly rounded elementwise ops only: each sample's
    result is bit-identical in any batch (a matmul's rounding may depend on the batch size)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b = torch.randn(2, 1, 1, 4, 4, generator=g)

    def forward(self, x, t):
        return torch.relu(x) * self.a - x * self.b + t.view(-1, 1, 1, 1)


def test_fid_samples_do_not_depend_on_batch_size():
    sampler = ODESampler(ElementwiseField(), (1, 4, 4), method="euler", steps=4)
    a = sample_images(sampler, 40, seed=3, batch_size=7)
    b = sample_images(sampler, 40, seed=3, batch_size=32)
    assert a.dtype == torch.uint8 and a.shape == (40, 1, 4, 4)
    floats = [torch.cat(list(iter_samples(sampler, 40, seed=3, batch_size=bs))) for bs in (7, 32)]
    assert floats[0].std() > 0.5 and torch.equal(floats[0], floats[1]) and torch.equal(a, b)
    assert not torch.equal(sample_images(sampler, 40, seed=4, batch_size=7), a)  # the seed matters
    # a shard starting at index 10 holds samples 10.. of the whole set
    assert torch.equal(sample_images(sampler, 5, seed=3, batch_size=2, start=10), a[10:15])


def test_mlp_field_samples_agree_across_batch_sizes_up_to_matmul_rounding():
    sampler = ODESampler(ImageField(), (1, 4, 4), method="euler", steps=4)
    a, b = (torch.cat(list(iter_samples(sampler, 40, seed=3, batch_size=bs))) for bs in (7, 32))
    assert torch.allclose(a, b, rtol=0, atol=1e-5)  # the noise is identical; only float32 rounding differs
    batches = iter_samples(sampler, 4, seed=0, batch_size=2)
    x = next(batches)
    assert not x.requires_grad and torch.is_grad_enabled()  # no graph, and the caller's grad mode is kept


def test_bf16_sampling_runs_the_network_under_autocast_and_returns_float32():
    sampler = ODESampler(ImageField(), (1, 4, 4), method="euler", steps=4)
    full = next(iter_samples(sampler, 8, seed=0, batch_size=8))
    low = next(iter_samples(sampler, 8, seed=0, batch_size=8, precision="bf16"))
    assert low.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")  # left as it was found
    assert not torch.equal(low, full)  # the network ran in bf16 ...
    assert torch.linalg.vector_norm(low - full) < 5e-2 * torch.linalg.vector_norm(full)  # ... to bf16 accuracy


class PlainSampler:
    """A Sampler without shape/solve: sample(n) is a function of its generator only."""

    def sample(self, n, *, generator=None):
        return torch.rand((n, 1, 2, 2), generator=generator) * 2 - 1


def test_plain_sampler_gets_one_generator_per_sample():
    a = sample_images(PlainSampler(), 9, seed=1, batch_size=4)
    b = sample_images(PlainSampler(), 9, seed=1, batch_size=9)
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(derive_seed(1, "fid", 8))
    assert torch.equal(a[8:], to_uint8(torch.rand((1, 1, 2, 2), generator=g) * 2 - 1))
    assert torch.equal(a[8:], sample_images(PlainSampler(), 1, seed=1, batch_size=1, start=8))
    with pytest.raises(GenkitError, match="not a Sampler"):
        next(iter_samples(object(), 2, seed=0, batch_size=1))


def test_sampler_stats_streams_features_of_the_uint8_samples():
    sampler = ODESampler(ImageField(), (1, 4, 4), method="euler", steps=2)

    def pixels(images):  # a feature extractor: the uint8 pixels as floats
        assert images.dtype == torch.uint8
        return images.flatten(1).float()

    stats = sampler_stats(sampler, 30, pixels, seed=0, batch_size=8)
    x = sample_images(sampler, 30, seed=0, batch_size=30).flatten(1).double().numpy()
    assert stats.n == 30
    assert np.allclose(stats.cov(), np.cov(x, rowvar=False), rtol=0, atol=1e-9)
