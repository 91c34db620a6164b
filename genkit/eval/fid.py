"""Fréchet distance between feature Gaussians (FID, FID-C), streaming feature statistics,
pytorch-fid-compatible ``.npz`` statistics files, and per-sample-seeded sampling for FID.

The pieces a FID command composes::

    extractor = InceptionFeatures(device=device)               # genkit.eval.features
    fake = sampler_stats(sampler, 50_000, extractor, seed=0, batch_size=500)
    real = image_stats(load_images("cifar10", root="data"), extractor, batch_size=500)
    fid = frechet_distance(fake.mean(), fake.cov(), real.mean(), real.cov())

Sample ``i`` always starts from the noise drawn by its own generator, seeded
``derive_seed(seed, "fid", i)``: the samples (hence the FID) do not depend on the batch
size, and ranks can split the indices with ``start`` and merge their :class:`FeatureStats`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from genkit.data.images import to_uint8
from genkit.errors import GenkitError
from genkit.precision import Precision, ResolvedPrecision
from genkit.sampling import Sampler, compile_for_sampling
from genkit.seeding import derive_seed
from genkit.solvers import EVALUATIONS_PER_STEP

if TYPE_CHECKING:
    from genkit.eval.features import FeatureExtractor

__all__ = [
    "FeatureStats",
    "NoiseSampler",
    "frechet_distance",
    "image_stats",
    "iter_samples",
    "load_stats",
    "per_sample_noise",
    "sample_images",
    "sampler_stats",
    "save_stats",
]


# ---- statistics ------------------------------------------------------------------------------------
class FeatureStats:
    """Streaming mean and covariance of feature vectors: N, sum f and sum f f^T in float64.

    :meth:`update` takes ``(B, D)`` batches on any device; the sums live in float64 on the
    device of the first batch (later batches are moved there). Batches of any sizes give
    the same statistics as one pass over all rows, up to float64 rounding. Raw sums (not
    a shifted or Welford update) keep :meth:`merge` exact and simple; the covariance loses
    about ``eps_64 * |mean|^2 / var`` relative precision, negligible for network features.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sum: Tensor | None = None  # (D,) float64
        self.sum_outer: Tensor | None = None  # (D, D) float64

    @property
    def dim(self) -> int | None:
        """Feature dimension D (``None`` before the first update)."""
        return None if self.sum is None else self.sum.shape[0]

    def update(self, features: Tensor) -> None:
        """Add the rows of ``features: (B, D)`` (any float dtype, any device)."""
        if not isinstance(features, Tensor) or features.dim() != 2:
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise GenkitError(f"FeatureStats.update expects a (B, D) tensor, got {got}")
        if self.sum is None:
            d = features.shape[1]
            self.sum = torch.zeros(d, dtype=torch.float64, device=features.device)
            self.sum_outer = torch.zeros(d, d, dtype=torch.float64, device=features.device)
        elif features.shape[1] != self.dim:
            raise GenkitError(f"FeatureStats holds {self.dim}-d features, got a batch of {features.shape[1]}-d")
        f = features.detach().to(device=self.sum.device, dtype=torch.float64)
        if not torch.isfinite(f).all():
            raise GenkitError("FeatureStats.update got non-finite features; check the extractor's input")
        self.n += f.shape[0]
        self.sum += f.sum(dim=0)
        self.sum_outer += f.T @ f

    def merge(self, other: FeatureStats) -> FeatureStats:
        """New statistics of both sets of rows (e.g. of two ranks); ``self`` and ``other`` are unchanged."""
        out = FeatureStats()
        parts = [s for s in (self, other) if s.sum is not None]
        if len(parts) == 2 and parts[0].dim != parts[1].dim:
            raise GenkitError(f"cannot merge FeatureStats of {parts[0].dim}-d and {parts[1].dim}-d features")
        for s in parts:
            if out.sum is None:
                out.n, out.sum, out.sum_outer = s.n, s.sum.clone(), s.sum_outer.clone()
            else:
                out.n += s.n
                out.sum += s.sum.to(out.sum.device)
                out.sum_outer += s.sum_outer.to(out.sum.device)
        return out

    def mean(self) -> np.ndarray:
        """``(D,)`` float64 mean of all rows seen."""
        if self.n < 1:
            raise GenkitError("FeatureStats is empty: update it with feature batches first")
        return (self.sum / self.n).cpu().numpy()

    def cov(self) -> np.ndarray:
        """``(D, D)`` float64 sample covariance with the N - 1 denominator (as ``np.cov``)."""
        if self.n < 2:
            raise GenkitError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        mean = self.sum / self.n
        cov = (self.sum_outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return ((cov + cov.T) / 2).cpu().numpy()  # exactly symmetric


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write ``mu: (D,)`` and ``sigma: (D, D)`` to ``path`` as pytorch-fid's ``.npz`` (keys ``mu``, ``sigma``).

    float64, compressed, written atomically to exactly ``path`` (numpy would otherwise
    append ``.npz`` to a name without it). Loads in ``pytorch_fid`` and with :func:`load_stats`.
    """
    mu, sigma = _as_f64(mu, "mu"), _as_f64(sigma, "sigma")
    _check_pair(mu, sigma, "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, mu=mu, sigma=sigma)
    os.replace(tmp, path)
    return path


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu: (D,), sigma: (D, D))`` float64 from a pytorch-fid ``.npz`` (never unpickles).

    An unreadable file (missing, truncated, corrupt, other keys) is a one-line error naming it; a cached
    file is recomputed once deleted.
    """
    import zipfile
    import zlib

    try:
        with np.load(Path(path), allow_pickle=False) as f:
            missing = [k for k in ("mu", "sigma") if k not in f.files]
            if missing:
                raise GenkitError(f"{path} has keys {sorted(f.files)}, lacks {missing}: not a FID statistics file")
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GenkitError(f"cannot read FID statistics {path} ({type(e).__name__}: {first}); expected a .npz with "
                          "keys mu, sigma: if it is a cached file (truncated by an interrupted write, say), delete it "
                          "and it is recomputed") from None
    _check_pair(mu, sigma, f" in {path}")
    return mu, sigma


# ---- the Fréchet distance ----------------------------------------------------------------------------
def _as_f64(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise GenkitError(f"{name} must be a numeric array, got {type(x).__name__}") from None


def _check_pair(mu: np.ndarray, sigma: np.ndarray, where: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise GenkitError(f"expected mu (D,) and sigma (D, D){where}, got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise GenkitError(f"mu or sigma{where} holds non-finite values")


def _psd_sqrt(sigma: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a covariance via ``eigh``; rounding-level negative eigenvalues -> 0."""
    from scipy import linalg

    w, v = linalg.eigh((sigma + sigma.T) / 2)
    scale = max(float(np.abs(w).max(initial=0.0)), np.finfo(np.float64).tiny)
    if w.min(initial=0.0) < -1e-5 * scale:
        raise GenkitError(
            f"{name} is not a covariance: eigenvalue {w.min():.3g} < 0 (largest {scale:.3g}); pass (mu, sigma) pairs"
        )
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``, the FID of
    pytorch-fid / TTUR. ``mu*: (D,)``, ``sigma*: (D, D)``, numpy arrays or tensors.

    Why not pytorch-fid's ``scipy.linalg.sqrtm(sigma1 @ sigma2)``: that product is not
    symmetric, so sqrtm runs a complex Schur decomposition, can return spurious imaginary
    parts, and for singular covariances (fewer samples than dimensions, the usual case for
    quick FIDs at D = 2048) needs an ``eps * I`` offset that changes the value. Here, with
    ``A = sigma1^{1/2}`` and ``B = sigma2^{1/2}`` (symmetric roots via ``eigh``),
    ``(sigma1 sigma2)^{1/2}`` is similar to ``(A sigma2 A)^{1/2} = ((AB)(AB)^T)^{1/2}``, so
    its trace is the sum of the singular values of ``A @ B``. Everything stays real and
    symmetric-PSD, singular inputs need no offset, and singular values are accurate to
    ``eps * |AB|`` (taking ``sqrt`` of ``eigvalsh(A sigma2 A)`` would be only
    ``sqrt(eps)``-accurate for the small ones). tests/eval/test_fid.py checks it against the
    sqrtm formula. Rounding below zero is clipped: the result is a float ``>= 0``.
    """
    from scipy import linalg

    mu1, sigma1, mu2, sigma2 = (_as_f64(a, n) for a, n in ((mu1, "mu1"), (sigma1, "sigma1"), (mu2, "mu2"), (sigma2, "sigma2")))
    _check_pair(mu1, sigma1, " (first)")
    _check_pair(mu2, sigma2, " (second)")
    if mu1.shape != mu2.shape:
        raise GenkitError(f"the two Gaussians differ in dimension: {mu1.shape[0]} vs {mu2.shape[0]}")
    tr_covmean = linalg.svdvals(_psd_sqrt(sigma1, "sigma1") @ _psd_sqrt(sigma2, "sigma2")).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return max(float(value), 0.0)


# ---- sampling with one seed per sample -------------------------------------------------------------------
class _Solved(Protocol):
    x: Tensor


@runtime_checkable
class NoiseSampler(Protocol):
    """A sampler whose samples are a deterministic function of given noise (e.g. ``ODESampler``).

    ``noise_shape`` is one noise vector's shape; ``solve(x_0: (B, *noise_shape))`` returns an object whose
    ``.x: (B, ...)`` holds the samples (``ODESampler`` returns a ``Trajectory``). Samplers
    that only implement :class:`~genkit.sampling.Sampler` still work with
    :func:`iter_samples`, one ``sample(1)`` call per sample.
    """

    @property
    def noise_shape(self) -> tuple[int, ...]: ...

    def solve(self, x_0: Tensor) -> _Solved: ...


def per_sample_noise(
    n: int, shape: tuple[int, ...], *, seed: int, start: int = 0, device: str | torch.device = "cpu"
) -> Tensor:
    """Noise ``(n, *shape)`` float32 whose row ``j`` is ``randn(shape)`` of its own generator.

    Row ``j`` is sample index ``i = start + j``, drawn from a CPU generator seeded
    ``derive_seed(seed, "fid", i)`` and then moved to ``device``: the same on every device
    and for every batching.
    """
    if n < 0 or start < 0:
        raise GenkitError(f"per_sample_noise needs n >= 0 and start >= 0, got n={n}, start={start}")
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, "fid", start + j)))
            for j in range(n)]
    out = torch.stack(rows) if rows else torch.empty((0, *shape))
    return out.to(device)


def iter_samples(
    sampler: Sampler | NoiseSampler, n: int, *, seed: int, batch_size: int, start: int = 0,
    precision: ResolvedPrecision = "fp32",
) -> Iterator[Tensor]:
    """Samples ``start .. start + n - 1`` in batches of up to ``batch_size``: ``(b, ...)`` float32 tensors.

    ``precision="bf16"`` runs the sampler under bf16 autocast on its device (the network in bf16, as
    the recipes sample; an ODE solver's state stays float32); whatever the caller does with a batch
    (e.g. feature extraction) runs outside it.

    A :class:`NoiseSampler` gets ``x_0`` from :func:`per_sample_noise` and is solved under
    ``torch.no_grad()``; the noise, hence each sample, does not depend on ``batch_size``
    (beyond the network's own batch-size-dependent rounding, which on CPU is usually none).
    Any other :class:`~genkit.sampling.Sampler` is called as ``sample(1, generator=g_i)``
    per sample with ``g_i`` seeded ``derive_seed(seed, "fid", i)`` on ``sampler.device``
    (CPU if it has none): correct, but with no batching.
    """
    if n < 1 or batch_size < 1 or start < 0:
        raise GenkitError(f"need n >= 1, batch_size >= 1, start >= 0; got n={n}, batch_size={batch_size}, start={start}")
    with_noise = isinstance(sampler, NoiseSampler)
    if not with_noise and not isinstance(sampler, Sampler):
        raise GenkitError(f"{type(sampler).__name__} is not a Sampler: it needs sample(n, *, generator) or noise_shape + solve(x_0)")
    device = torch.device(getattr(sampler, "device", "cpu"))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for lo in range(start, start + n, batch_size):
        b = min(batch_size, start + n - lo)
        with torch.no_grad(), autocast:  # closed before the yield: the caller's modes are left alone
            if with_noise:
                x = sampler.solve(per_sample_noise(b, tuple(sampler.noise_shape), seed=seed, start=lo, device=device)).x
            else:
                gens = [torch.Generator(device=device).manual_seed(derive_seed(seed, "fid", i)) for i in range(lo, lo + b)]
                x = torch.cat([sampler.sample(1, generator=g) for g in gens])
        yield x.float()


def sample_images(sampler: Sampler | NoiseSampler, n: int, *, seed: int, batch_size: int, start: int = 0) -> Tensor:
    """``n`` samples of an image sampler as uint8 ``(n, C, H, W)`` on the CPU (see :func:`iter_samples`).

    Float samples in [-1, 1] are converted with :func:`genkit.data.images.to_uint8`.
    """
    out = []
    for x in iter_samples(sampler, n, seed=seed, batch_size=batch_size, start=start):
        if x.dim() != 4:
            raise GenkitError(f"sample_images needs image samples (B, C, H, W), the sampler returned {tuple(x.shape)}")
        out.append(to_uint8(x).cpu())
    return torch.cat(out)


def sampler_stats(
    sampler: Sampler | NoiseSampler,
    n: int,
    extractor: FeatureExtractor,
    *,
    seed: int,
    batch_size: int,
    start: int = 0,
    precision: ResolvedPrecision = "fp32",
) -> FeatureStats:
    """Feature statistics of samples ``start .. start + n - 1``, streamed (no sample set is kept);
    ``precision`` as in :func:`iter_samples` (features are always computed outside autocast)."""
    stats = FeatureStats()
    for x in iter_samples(sampler, n, seed=seed, batch_size=batch_size, start=start, precision=precision):
        if x.dim() != 4:
            raise GenkitError(f"FID needs image samples (B, C, H, W), the sampler returned {tuple(x.shape)}")
        stats.update(extractor(to_uint8(x)))
    return stats


def image_stats(images: Tensor, extractor: FeatureExtractor, *, batch_size: int) -> FeatureStats:
    """Feature statistics of uint8 ``images: (N, C, H, W)`` (e.g. from ``load_images``), in batches."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise GenkitError(f"image_stats expects uint8 images (N, C, H, W), got {got}; see to_uint8")
    if batch_size < 1:
        raise GenkitError(f"batch_size must be >= 1, got {batch_size}")
    stats = FeatureStats()
    for lo in range(0, len(images), batch_size):
        stats.update(extractor(images[lo : lo + batch_size]))
    return stats


# ---- command line: python -m genkit.eval.fid --run DIR -------------------------------------------
DEFAULT_NFE = 100
"""``--nfe`` of a fixed-step solver when none is given."""


@dataclass(frozen=True)
class FIDConfig:
    """FID of a run's samples against a data split; recorded in the run's eval.json.

    Every result records how it was made: extractor, reference split and which images of it, N, solver,
    NFE (network evaluations per sample, counted), EMA or raw weights, the sampling precision, seed and the
    checkpoint step; a new FID evaluation replaces all ``fid_<features>_*`` entries of the previous one.
    ``--features classifier`` (FID-C) uses a genkit classifier's penultimate features: an offline proxy
    that is NOT comparable to published Inception FID.

    Reference statistics are cached as ``.npz`` files named by data set, split, subset, extractor (with a
    digest of its weights) and, for an ImageFolder, a digest of its resolved root. The default cache
    folder is ``<root>/fid_stats`` for torchvision data sets, and a sibling ``<root>-fid_stats`` of an
    ImageFolder root, never inside the image tree (a folder there would be read as a class of images).
    """

    run: Path
    """run folder (a recipe's --out)"""
    n: int = 10_000
    """samples, and reference images: the whole split if it holds no more, else a fixed seeded random
    subset of it (the same in every evaluation; the first N of a folder sorted by class would be a few classes)"""
    ref: Literal["train", "test"] = "test"
    """reference split of the run's data set"""
    features: Literal["inception", "classifier"] = "inception"
    classifier: Path | None = None
    """classifier run folder (python -m genkit.recipes.classifier) for --features classifier"""
    inception_weights: Path | None = None
    """the FID Inception weights file for --features inception (default: the torch hub cache)"""
    solver: Literal["euler", "midpoint", "rk4", "dopri5"] = "euler"
    nfe: tuple[int, ...] | None = None
    """network evaluations per sample of a fixed-step solver (default 100; steps = NFE / evaluations per
    step: euler 1, midpoint 2, rk4 4); several: also writes fid_<features>_vs_nfe.png. Not for dopri5,
    which chooses its own steps (its measured mean NFE is recorded), nor for one-shot generators"""
    floor: bool = False
    """also report FID of the train split against the reference split (the data floor; needs --ref test)"""
    batch_size: int = 500
    weights: Literal["ema", "raw"] = "ema"
    precision: Precision = "auto"
    """the sampling network's precision: auto = bf16 autocast on CUDA (as the recipes sample; the ODE
    state stays float32), fp32 on the CPU. Features are computed in float32 either way"""
    compile: bool = True
    """torch.compile a flow's network for sampling (CUDA only; the CPU and one-shot generators run eagerly)"""
    seed: int = 0
    device: str = "auto"
    stats_dir: Path | None = None
    """where reference statistics are cached as .npz (default: <root>/fid_stats; an ImageFolder's: <root>-fid_stats)"""
    checkpoints: Literal["latest", "all", "missing"] | tuple[int, ...] = "latest"
    """latest; or a FID curve over checkpoints (fid_curve.json, fid_curve.png): all, those fid_curve.json
    lacks (missing), or these Trainer steps. A curve takes one --nfe; eval.json gets the latest's numbers"""
    curve_points: int | None = None
    """with --checkpoints all or missing: about this many checkpoints at most (default: every one): every
    checkpoint up to --curve-dense-until, then evenly spaced ones beyond it, always the latest"""
    curve_dense_until: int = 0
    """the Trainer step up to which a --curve-points curve keeps every checkpoint (e.g. the steps every
    compared run reaches, so that genkit.eval.compare finds the same generator steps in each)"""

    def __post_init__(self) -> None:
        if self.n < 2:
            raise GenkitError(f"--n must be >= 2 (a covariance needs two samples), got {self.n}")
        if self.batch_size < 1:
            raise GenkitError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.features == "inception" and self.classifier is not None:
            raise GenkitError("--classifier is for --features classifier: add that, or drop --classifier")
        if self.features == "classifier" and self.inception_weights is not None:
            raise GenkitError("--inception-weights is for --features inception: drop it with --features classifier")
        if self.floor and self.ref == "train":
            raise GenkitError("--floor compares the train split with the reference split: use it with --ref test")
        if self.nfe is not None:
            if self.solver not in EVALUATIONS_PER_STEP:
                raise GenkitError(f"{self.solver} chooses its own steps (its mean NFE is measured and recorded): "
                                  "drop --nfe, or pick a fixed-step --solver (euler, midpoint, rk4)")
            per_step = EVALUATIONS_PER_STEP[self.solver]
            bad = [k for k in self.nfe if k < 1 or k % per_step]
            if not self.nfe or bad:
                raise GenkitError(f"--nfe counts network evaluations per sample: {self.solver} takes {per_step} per "
                                  f"step, so each value must be a positive multiple of {per_step} (got {bad or 'none'})")
        if self.curve_points is not None:
            if self.checkpoints not in ("all", "missing"):
                raise GenkitError("--curve-points thins a curve of --checkpoints all or missing: add one of those, "
                                  "or drop --curve-points")
            if self.curve_points < 1:
                raise GenkitError(f"--curve-points must be >= 1, got {self.curve_points}")
        if self.curve_dense_until < 0 or (self.curve_dense_until and self.curve_points is None):
            raise GenkitError(f"--curve-dense-until is a Trainer step >= 0 for a --curve-points curve, got "
                              f"{self.curve_dense_until}{'' if self.curve_points else ' without --curve-points'}")

    def nfe_values(self) -> tuple[int, ...]:
        """The NFEs of a fixed-step solver to evaluate (``--nfe`` or :data:`DEFAULT_NFE`)."""
        return self.nfe if self.nfe is not None else (DEFAULT_NFE,)


def _extractor(cfg: FIDConfig, device: torch.device):
    from genkit.eval.features import ClassifierFeatures, InceptionFeatures

    if cfg.features == "inception":
        return InceptionFeatures(cfg.inception_weights, device=device)
    if cfg.classifier is None:
        raise GenkitError("--features classifier needs --classifier RUN_DIR (train one: python -m genkit.recipes.classifier --preset mnist --out runs/classifier-mnist)")
    return ClassifierFeatures(cfg.classifier, device=device)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_stats_dir(data) -> Path:
    """Where reference statistics of ``data`` (``dataset``, ``root``) are cached by default: ``<root>/fid_stats``,
    or for an ImageFolder the sibling folder ``<root>-fid_stats`` (never inside the image tree)."""
    root = Path(data.root).expanduser()
    if data.dataset != "imagefolder":
        return root / "fid_stats"
    root = root.resolve()
    return root.parent / f"{root.name}-fid_stats"


@dataclass(frozen=True)
class ReferenceStats:
    """Feature statistics ``mu: (D,)``, ``sigma: (D, D)`` of ``n`` images of a split; ``subset`` says which
    (:func:`genkit.eval.runs.subset_description`); ``path`` is their cache file."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    subset: str
    path: Path


def reference_stats(data, split: str, extractor, *, n: int, batch_size: int, stats_dir: Path | None, device) -> ReferenceStats:
    """Statistics of ``n`` images of ``split`` (:func:`genkit.eval.runs.eval_images`: all of them, or a fixed
    seeded subset), cached as a pytorch-fid-style .npz in ``stats_dir`` (``None``: :func:`default_stats_dir`).

    The file name holds the data set, split, subset, the extractor's name (which carries a digest of
    non-standard weights) and, for an ImageFolder, a digest of its resolved root: two folders or two
    networks sharing a ``stats_dir`` never read each other's statistics.
    """
    from genkit.eval.runs import SUBSET_SEED, eval_images, subset_description

    folder = Path(stats_dir) if stats_dir is not None else default_stats_dir(data)
    images, total = eval_images(data, split, n)
    count, subset = len(images), subset_description(total, len(images))
    which = f"{count}" if count == total else f"{count}of{total}-seed{SUBSET_SEED}"
    tag = extractor.name.replace(":", "-").replace("/", "-").replace("@", "-")
    where = f"-root{_digest(str(Path(data.root).expanduser().resolve()))}" if data.dataset == "imagefolder" else ""
    path = folder / f"{data.dataset}-{split}-{which}-{tag}{where}.npz"
    if path.is_file():
        mu, sigma = load_stats(path)
        return ReferenceStats(mu, sigma, count, subset, path)
    stats = image_stats(images.to(device), extractor, batch_size=batch_size)
    mu, sigma = stats.mean(), stats.cov()
    save_stats(path, mu, sigma)
    return ReferenceStats(mu, sigma, count, subset, path)


class _CountedSolves:
    """A :class:`NoiseSampler` passing ``solve`` through to ``sampler`` and adding up the network evaluations
    each sample went through (``Trajectory.nfe`` of its batch's solve)."""

    def __init__(self, sampler: NoiseSampler) -> None:
        self.sampler = sampler
        self.device = getattr(sampler, "device", "cpu")
        self.evaluations = 0  # summed over samples
        self.samples = 0

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return tuple(self.sampler.noise_shape)

    def solve(self, x_0: Tensor) -> _Solved:
        out = self.sampler.solve(x_0)
        self.evaluations += int(out.nfe) * x_0.shape[0]
        self.samples += x_0.shape[0]
        return out

    @property
    def nfe(self) -> float:
        """Mean network evaluations per sample so far."""
        return self.evaluations / max(self.samples, 1)


def evaluate_fid(cfg: FIDConfig, extractor: FeatureExtractor | None = None) -> dict[str, float | int | str]:
    """Run the evaluation described by ``cfg``; returns the flat ``fid_<features>_*`` entries for eval.json.

    ``extractor``: the feature network (``None``: the one ``cfg.features`` names). A fixed-step solver gives
    ``fid_<features>_nfe<K>`` per NFE ``K`` (network evaluations per sample, counted); dopri5 and one-shot
    generators give ``fid_<features>`` (dopri5 also its measured mean ``fid_<features>_nfe``, ``_atol``,
    ``_rtol``). With ``cfg.checkpoints`` other than ``"latest"`` the checkpoints' FIDs also go to the run's
    ``fid_curve.json`` and ``fid_curve.png`` (:func:`genkit.eval.compare.extend_curve`); the entries returned
    are then the latest checkpoint's if it was among them, else none. Reference statistics are computed
    (or read) once.
    """
    from genkit.cli import resolve_device
    from genkit.eval.runs import checkpoint_steps, load_eval_run
    from genkit.precision import resolve_precision

    device = resolve_device(cfg.device)
    run = load_eval_run(cfg.run, device=device, ema=cfg.weights == "ema")
    if len(run.shape) != 3:
        raise GenkitError(f"FID needs an image model; {cfg.run} makes samples of shape {list(run.shape)} (2-D runs report energy distance in eval.json)")
    is_flow = getattr(run, "is_flow", True)
    if not is_flow and cfg.nfe is not None:
        raise GenkitError(f"{cfg.run} is a one-shot generator (one network evaluation per sample): drop --nfe")
    fixed_step = is_flow and cfg.solver in EVALUATIONS_PER_STEP
    nfes: tuple[int | None, ...] = cfg.nfe_values() if fixed_step else (None,)
    steps = _curve_steps(cfg, checkpoint_steps(cfg.run), is_flow)
    extractor = extractor if extractor is not None else _extractor(cfg, device)
    ref = reference_stats(run.data, cfg.ref, extractor, n=cfg.n, batch_size=cfg.batch_size, stats_dir=cfg.stats_dir,
                          device=device)
    key = f"fid_{cfg.features}"
    precision = resolve_precision(cfg.precision, device)
    provenance: dict[str, str | int | float] = {
        "extractor": extractor.name, "ref": f"{run.data.dataset}:{cfg.ref}", "n": cfg.n, "n_ref": ref.n,
        "ref_subset": ref.subset, "solver": cfg.solver if is_flow else "generator", "weights": cfg.weights,
        "precision": precision, "seed": cfg.seed}

    def sampler_of(loaded, nfe: int | None):
        if not is_flow:
            return loaded.sampler(device=device)
        steps_ = nfe // EVALUATIONS_PER_STEP[cfg.solver] if nfe is not None else None
        sampler = loaded.sampler(method=cfg.solver, steps=steps_, device=device)
        # a flow evaluates its network nfe times per batch: worth compiling (a generator, once: not)
        sampler.field = compile_for_sampling(sampler.field, device, enabled=cfg.compile)
        return sampler

    if is_flow and not fixed_step:  # the tolerances of the run's adaptive sampler
        adaptive = run.sampler(method=cfg.solver, device=device)
        provenance |= {"atol": adaptive.atol, "rtol": adaptive.rtol}

    def fid_of(loaded, nfe: int | None) -> tuple[float, float, float | None]:
        """(FID, seconds of sampling and features, mean NFE per sample: flows) of one loaded checkpoint."""
        start = time.perf_counter()
        sampler = sampler_of(loaded, nfe)
        counted = _CountedSolves(sampler) if is_flow else sampler
        stats = sampler_stats(counted, cfg.n, extractor, seed=cfg.seed, batch_size=cfg.batch_size, precision=precision)
        measured = counted.nfe if is_flow else None
        if nfe is not None and measured != nfe:
            raise GenkitError(f"{cfg.solver} with {nfe // EVALUATIONS_PER_STEP[cfg.solver]} steps evaluated the network "
                              f"{measured:g} times per sample, not {nfe}: this run's sampler does not take --nfe")
        fid = frechet_distance(stats.mean(), stats.cov(), ref.mu, ref.sigma)
        return fid, round(time.perf_counter() - start, 2), measured

    if steps is None:
        results = {nfe: fid_of(run, nfe) for nfe in nfes}
    else:
        from genkit.eval.compare import extend_curve

        measured_at: dict[int, float | None] = {}

        def fid_at(step: int) -> tuple[float, float]:
            loaded = run if step == run.step else load_eval_run(cfg.run, device=device, ema=cfg.weights == "ema", step=step)
            fid, seconds, measured_at[step] = fid_of(loaded, nfes[0])
            return fid, seconds

        nfe_setting = nfes[0] if fixed_step else ("adaptive" if is_flow else None)
        settings = {"metric": key, **provenance, "nfe": nfe_setting}
        done = extend_curve(cfg.run, settings, steps, fid_at, only_missing=cfg.checkpoints == "missing")
        if run.step not in done:
            return {}  # the latest checkpoint was not evaluated: eval.json keeps what it has
        results = {nfes[0]: (*done[run.step], measured_at[run.step])}
    out: dict[str, float | int | str] = {}
    for nfe, (fid, seconds, measured) in results.items():
        if nfe is not None:
            out |= {f"{key}_nfe{nfe}": fid, f"{key}_seconds_nfe{nfe}": seconds}
        else:
            out |= {key: fid, f"{key}_seconds": seconds}
            if measured is not None:  # dopri5: the mean network evaluations per sample it chose
                out[f"{key}_nfe"] = round(measured, 1)
    if cfg.floor:
        train = reference_stats(run.data, "train", extractor, n=cfg.n, batch_size=cfg.batch_size,
                                stats_dir=cfg.stats_dir, device=device)
        out[f"{key}_floor_train_vs_{cfg.ref}"] = frechet_distance(train.mu, train.sigma, ref.mu, ref.sigma)
        out[f"{key}_floor_train_subset"] = train.subset
    out |= {f"{key}_{name}": value for name, value in provenance.items()}
    out[f"{key}_step"] = run.step
    if fixed_step and len(nfes) > 1:
        from genkit.plots import save_curves

        xs = sorted(nfes)
        floor_key = f"{key}_floor_train_vs_{cfg.ref}"
        floor = {f"train vs {cfg.ref} split (floor)": out[floor_key]} if floor_key in out else {}
        save_curves({f"{cfg.solver}, {cfg.weights} weights": (xs, [out[f"{key}_nfe{k}"] for k in xs])},
                    Path(cfg.run) / f"fid_{cfg.features}_vs_nfe.png", xlabel="NFE (network evaluations per sample)",
                    ylabel=f"FID ({extractor.name}, N={cfg.n})", title=f"{run.data.dataset}: FID against NFE",
                    logx=True, logy=True, hlines=floor)
    return out


def _curve_steps(cfg: FIDConfig, available: list[int], is_flow: bool) -> list[int] | None:
    """The Trainer steps ``cfg.checkpoints`` asks a curve for (``None``: no curve, the latest checkpoint only).

    ``missing`` is resolved against the run's fid_curve.json by :func:`genkit.eval.compare.extend_curve`.
    """
    if cfg.checkpoints == "latest":
        return None
    if is_flow and len(cfg.nfe_values()) != 1:
        raise GenkitError(f"a FID curve over checkpoints takes one --nfe, got {' '.join(map(str, cfg.nfe_values()))}: "
                          "run it once per NFE")
    if cfg.checkpoints in ("all", "missing"):
        return available if cfg.curve_points is None else thin_checkpoints(available, cfg.curve_dense_until, cfg.curve_points)
    absent = sorted(set(cfg.checkpoints) - set(available))
    if absent:
        raise GenkitError(f"{cfg.run} has no checkpoint at step {', '.join(map(str, absent))} (it has steps "
                          f"{', '.join(map(str, available))}): pass --checkpoints steps from that list, all or missing")
    return sorted(set(cfg.checkpoints))


def thin_checkpoints(steps: list[int], dense_until: int, points: int) -> list[int]:
    """Which of the checkpoints of Trainer ``steps`` a curve of about ``points`` evaluates, in increasing order:
    every one up to ``dense_until``, and beyond it ``max(1, points - those)`` evenly spaced by position, the
    last of them the latest checkpoint (all of them if there are no more). The selection depends only on
    ``steps``, so ``--checkpoints missing`` continues a cut-off evaluation of the same selection.
    """
    steps = sorted(set(steps))
    dense = [s for s in steps if s <= dense_until]
    beyond = [s for s in steps if s > dense_until]
    keep = max(1, points - len(dense))
    if len(beyond) <= keep:
        return steps
    return dense + [beyond[(i + 1) * len(beyond) // keep - 1] for i in range(keep)]


def main(argv: list[str] | None = None) -> int:
    from genkit.eval.runs import eval_main

    return eval_main(FIDConfig, evaluate_fid, argv, "python -m genkit.eval.fid", family=lambda cfg: f"fid_{cfg.features}")


if __name__ == "__main__":
    import sys

    from genkit.cli import run_main

    sys.exit(run_main(main))
