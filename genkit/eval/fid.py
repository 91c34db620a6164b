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
    """``(mu: (D,), sigma: (D, D))`` float64 from a pytorch-fid ``.npz`` (never unpickles)."""
    try:
        with np.load(Path(path), allow_pickle=False) as f:
            missing = [k for k in ("mu", "sigma") if k not in f.files]
            if missing:
                raise GenkitError(f"{path} has keys {sorted(f.files)}, lacks {missing}: not a FID statistics file")
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GenkitError(f"cannot read FID statistics {path} ({first}); expected a .npz with keys mu, sigma") from None
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
@dataclass(frozen=True)
class FIDConfig:
    """FID of a run's samples against a data split; merged into the run's eval.json.

    Every result records how it was made: extractor, reference split, N, solver, NFE, EMA or raw
    weights, the sampling precision, seed. ``--features classifier`` (FID-C) uses a genkit classifier's penultimate
    features: an offline proxy that is NOT comparable to published Inception FID.
    """

    run: Path
    """run folder (a recipe's --out)"""
    n: int = 10_000
    """samples (and at most this many reference images)"""
    ref: Literal["train", "test"] = "test"
    """reference split of the run's data set"""
    features: Literal["inception", "classifier"] = "inception"
    classifier: Path | None = None
    """classifier run folder (python -m genkit.recipes.classifier) for --features classifier"""
    inception_weights: Path | None = None
    """the FID Inception weights file (default: the torch hub cache)"""
    solver: Literal["euler", "midpoint", "rk4", "dopri5"] = "euler"
    nfe: tuple[int, ...] = (100,)
    """solver steps to evaluate (several: also writes fid_<features>_vs_nfe.png); ignored by one-shot samplers"""
    floor: bool = False
    """also report FID of the train split against the reference split (the data floor)"""
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
    """where reference statistics are cached as .npz (default: <data root>/fid_stats)"""
    checkpoints: Literal["latest", "all", "missing"] | tuple[int, ...] = "latest"
    """latest; or a FID curve over checkpoints (fid_curve.json, fid_curve.png): all, those fid_curve.json
    lacks (missing), or these Trainer steps. A curve takes one --nfe; eval.json gets the latest's numbers"""


def _extractor(cfg: FIDConfig, device: torch.device):
    from genkit.eval.features import ClassifierFeatures, InceptionFeatures

    if cfg.features == "inception":
        return InceptionFeatures(cfg.inception_weights, device=device)
    if cfg.classifier is None:
        raise GenkitError("--features classifier needs --classifier RUN_DIR (train one: python -m genkit.recipes.classifier --preset mnist --out runs/classifier-mnist)")
    return ClassifierFeatures(cfg.classifier, device=device)


def reference_stats(data, split: str, extractor, *, n: int, batch_size: int, stats_dir: Path | None, device) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, N) of the first ``n`` images of ``split``, cached as pytorch-fid-style .npz."""
    from genkit.data.images import load_images

    folder = Path(stats_dir) if stats_dir is not None else Path(data.root) / "fid_stats"
    tag = extractor.name.replace(":", "-").replace("/", "-")
    images = load_images(data.dataset, root=data.root, split=split, download=data.download)
    count = min(n, len(images))
    path = folder / f"{data.dataset}-{split}-{count}-{tag}.npz"
    if path.is_file():
        mu, sigma = load_stats(path)
        return mu, sigma, count
    stats = image_stats(images[:count].to(device), extractor, batch_size=batch_size)
    mu, sigma = stats.mean(), stats.cov()
    folder.mkdir(parents=True, exist_ok=True)
    save_stats(path, mu, sigma)
    return mu, sigma, count


def evaluate_fid(cfg: FIDConfig, extractor: FeatureExtractor | None = None) -> dict[str, float | int | str]:
    """Run the evaluation described by ``cfg``; returns the flat ``fid_*`` entries for eval.json.

    ``extractor``: the feature network (``None``: the one ``cfg.features`` names). With ``cfg.checkpoints``
    other than ``"latest"`` the checkpoints' FIDs also go to the run's ``fid_curve.json`` and
    ``fid_curve.png`` (:func:`genkit.eval.compare.extend_curve`); the entries returned are then the latest
    checkpoint's if it was among them, else none. Reference statistics are computed (or read) once.
    """
    from genkit.cli import resolve_device
    from genkit.eval.runs import checkpoint_steps, load_eval_run
    from genkit.precision import resolve_precision

    device = resolve_device(cfg.device)
    run = load_eval_run(cfg.run, device=device, ema=cfg.weights == "ema")
    if len(run.shape) != 3:
        raise GenkitError(f"FID needs an image model; {cfg.run} makes samples of shape {list(run.shape)} (2-D runs report energy distance in eval.json)")
    is_flow = getattr(run, "is_flow", True)
    nfes = cfg.nfe if is_flow else (1,)
    steps = _curve_steps(cfg, checkpoint_steps(cfg.run), is_flow)
    extractor = extractor if extractor is not None else _extractor(cfg, device)
    mu_ref, sigma_ref, n_ref = reference_stats(run.data, cfg.ref, extractor, n=cfg.n, batch_size=cfg.batch_size,
                                               stats_dir=cfg.stats_dir, device=device)
    key = f"fid_{cfg.features}"
    precision = resolve_precision(cfg.precision, device)
    provenance: dict[str, str | int] = {
        "extractor": extractor.name, "ref": f"{run.data.dataset}:{cfg.ref}", "n": cfg.n, "n_ref": n_ref,
        "solver": cfg.solver if is_flow else "generator", "weights": cfg.weights, "precision": precision,
        "seed": cfg.seed}

    def fid_of(loaded, nfe: int) -> tuple[float, float]:
        """(FID, seconds of sampling and features) of one loaded checkpoint at ``nfe`` solver steps (flows)."""
        start = time.perf_counter()
        if is_flow:
            sampler = loaded.sampler(method=cfg.solver, steps=nfe, device=device)
            # a flow evaluates its network nfe times per batch: worth compiling (a generator, once: not)
            sampler.field = compile_for_sampling(sampler.field, device, enabled=cfg.compile)
        else:
            sampler = loaded.sampler(device=device)
        stats = sampler_stats(sampler, cfg.n, extractor, seed=cfg.seed, batch_size=cfg.batch_size, precision=precision)
        return frechet_distance(stats.mean(), stats.cov(), mu_ref, sigma_ref), round(time.perf_counter() - start, 2)

    if steps is None:
        results = {nfe: fid_of(run, nfe) for nfe in nfes}
    else:
        from genkit.eval.compare import extend_curve

        def fid_at(step: int) -> tuple[float, float]:
            loaded = run if step == run.step else load_eval_run(cfg.run, device=device, ema=cfg.weights == "ema", step=step)
            return fid_of(loaded, nfes[0])

        settings = {"metric": key, **provenance, "nfe": nfes[0] if is_flow else None}
        done = extend_curve(cfg.run, settings, steps, fid_at, only_missing=cfg.checkpoints == "missing")
        if run.step not in done:
            return {}  # the latest checkpoint was not evaluated: eval.json keeps what it has
        results = {nfes[0]: done[run.step]}
    out: dict[str, float | int | str] = {}
    for nfe, (fid, seconds) in results.items():
        out |= {f"{key}_nfe{nfe}": fid, f"{key}_seconds_nfe{nfe}": seconds} if is_flow else {key: fid, f"{key}_seconds": seconds}
    if cfg.floor:
        mu_tr, sigma_tr, _ = reference_stats(run.data, "train", extractor, n=cfg.n, batch_size=cfg.batch_size,
                                             stats_dir=cfg.stats_dir, device=device)
        out[f"{key}_floor_train_vs_{cfg.ref}"] = frechet_distance(mu_tr, sigma_tr, mu_ref, sigma_ref)
    out |= {f"{key}_{name}": value for name, value in provenance.items()}
    if is_flow and len(cfg.nfe) > 1:
        from genkit.plots import save_curves

        nfes = sorted(cfg.nfe)
        floor_key = f"{key}_floor_train_vs_{cfg.ref}"
        floor = {f"train vs {cfg.ref} split (floor)": out[floor_key]} if floor_key in out else {}
        save_curves({f"{cfg.solver}, {cfg.weights} weights": (nfes, [out[f"{key}_nfe{k}"] for k in nfes])},
                    Path(cfg.run) / f"fid_{cfg.features}_vs_nfe.png", xlabel="NFE", ylabel=f"FID ({extractor.name}, N={cfg.n})",
                    title=f"{run.data.dataset}: FID against NFE", logx=True, logy=True, hlines=floor)
    return out


def _curve_steps(cfg: FIDConfig, available: list[int], is_flow: bool) -> list[int] | None:
    """The Trainer steps ``cfg.checkpoints`` asks a curve for (``None``: no curve, the latest checkpoint only).

    ``missing`` is resolved against the run's fid_curve.json by :func:`genkit.eval.compare.extend_curve`.
    """
    if cfg.checkpoints == "latest":
        return None
    if is_flow and len(cfg.nfe) != 1:
        raise GenkitError(f"a FID curve over checkpoints takes one --nfe, got {' '.join(map(str, cfg.nfe))}: "
                          "run it once per NFE")
    if cfg.checkpoints in ("all", "missing"):
        return available
    absent = sorted(set(cfg.checkpoints) - set(available))
    if absent:
        raise GenkitError(f"{cfg.run} has no checkpoint at step {', '.join(map(str, absent))} (it has steps "
                          f"{', '.join(map(str, available))}): pass --checkpoints steps from that list, all or missing")
    return sorted(set(cfg.checkpoints))


def main(argv: list[str] | None = None) -> int:
    from genkit.eval.runs import eval_main

    return eval_main(FIDConfig, evaluate_fid, argv, "python -m genkit.eval.fid")


if __name__ == "__main__":
    import sys

    from genkit.cli import run_main

    sys.exit(run_main(main))
