"""Negative log-likelihood of 8-bit images in bits/dim: the one place where nats become bits.

Dequantization, written out once. Images ``x_int in {0, ..., 255}^D`` become
``x = (x_int + u) / 256 * 2 - 1`` with ``u ~ U[0, 1)^D`` (uniform dequantization), so each
integer owns a cell of width 1 on the integer scale, of width ``2 / 256`` on the model's
``[-1, 1]`` scale. Writing ``y = x_int + u`` on the integer scale, ``p_y(y) = p(x) (2/256)^D``
(the Jacobian of the scaling) and, by Jensen's inequality,

    log P(x_int) = log E_u p_y(x_int + u) >= E_u[log p(x)] + D log(2/256).

The offset ``D log(2/256)`` is applied in :func:`bits_per_dim` and nowhere else;
``bits/dim = -(log p(x) + D log(2/256)) / (D ln 2) = -log p(x) / (D ln 2) + 7`` for ``[-1, 1]``
data. With ``K`` dequantization draws ``u_1..u_K``, the importance-weighted bound
``log (1/K) sum_k p_y(x_int + u_k)`` (uniform proposal) is tighter and tends to ``log P(x_int)``
as ``K`` grows: :func:`image_nll` with ``k``.

That bound needs the exact ``log p(x)`` of each draw. A flow's Hutchinson estimate is unbiased for
``log p(x)``, which is enough at ``K = 1`` (the mean over images is unbiased for the bound), but at
``K > 1`` the log-mean-exp of noisy log-estimates is biased upward by the probe noise (Jensen again,
the other way): the bits/dim come out optimistic, possibly below the model's true value. Reduce the
noise with more probes (``--num-probes``) or use the exact divergence where it is affordable.

Compare numbers only at the same ``K``: the Flow Matching paper (Lipman et al., 2023, Table 4)
reports CIFAR-10 likelihoods whose ``K = 1`` setting is the one comparable to 3.11 bits/dim,
not to the headline 2.99.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from genkit.errors import GenkitError
from genkit.eval.density import Density, FlowDensity, IWAEDensity, log_mean_exp
from genkit.precision import ResolvedPrecision, autocast_field, field_precision
from genkit.sampling import compile_for_sampling
from genkit.solvers import FIXED_STEP_METHODS

__all__ = ["LOG_SCALE_PER_DIM", "NUM_LEVELS", "ImageNLL", "NLLConfig", "bits_per_dim", "dequantize", "image_nll", "main"]

NUM_LEVELS = 256
"""Levels per 8-bit channel."""
LOG_SCALE_PER_DIM = math.log(2 / NUM_LEVELS)
"""``log(2/256)``: log-Jacobian per dimension from the integer scale (cells of width 1) to ``[-1, 1]``."""


def dequantize(
    x_uint8: Tensor, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Uniform dequantization: ``x = (x_int + u) / 256 * 2 - 1``, ``u ~ U[0, 1)`` per element.

    The cells tile ``[-1, 1)`` exactly, which the bits/dim offset needs. Training images are scaled
    ``x_int / 127.5 - 1`` (:func:`genkit.data.images.to_float`: 0 and 255 at -1 and 1), so a training
    point lies inside its cell but not at its centre: at the lower edge for 0, the upper for 255.

    Args:
        x_uint8: ``(B, ...)`` uint8 images (values ``0..255``).
        generator: draws ``u`` (on ``x_uint8``'s device).
        dtype: floating dtype of the result.

    Returns:
        ``(B, ...)`` floats in ``[-1, 1]``; ``floor((x + 1) * 128) == x_int`` up to rounding at the
        top edge of a cell.
    """
    if not isinstance(x_uint8, Tensor) or x_uint8.dtype != torch.uint8:
        got = x_uint8.dtype if isinstance(x_uint8, Tensor) else type(x_uint8).__name__
        raise GenkitError(f"dequantize expects a uint8 image tensor (values 0..255), got {got}")
    if not dtype.is_floating_point:
        raise GenkitError(f"dtype must be a floating-point dtype, got {dtype}")
    u = torch.rand(x_uint8.shape, generator=generator, device=x_uint8.device, dtype=dtype)
    return (x_uint8.to(dtype) + u) * (2 / NUM_LEVELS) - 1


def bits_per_dim(log_prob_nats: Tensor, num_dims: int, *, scale_offset: bool = True) -> Tensor:
    """Bits per dimension of log-likelihoods in nats: ``-(log_prob + offset) / (num_dims ln 2)``.

    Args:
        log_prob_nats: log-likelihoods, any shape (e.g. ``(B,)``).
        num_dims: ``D``, the dimensions of one sample (``C * H * W``).
        scale_offset: add ``D log(2/256)`` (:data:`LOG_SCALE_PER_DIM`): ``log_prob_nats`` is a
            density on the ``[-1, 1]`` scale of dequantized 8-bit data (see the module docstring).
            False: ``log_prob_nats`` is already a log-probability of the discrete data.

    Returns:
        Bits/dim, same shape as ``log_prob_nats``. A density uniform on ``[-1, 1]^D`` gives 8.
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise GenkitError(f"num_dims must be an integer >= 1, got {num_dims!r}")
    offset = num_dims * LOG_SCALE_PER_DIM if scale_offset else 0.0
    return -(log_prob_nats + offset) / (num_dims * math.log(2))


@dataclass(frozen=True)
class ImageNLL:
    """Bits/dim of a set of 8-bit images under a :class:`~genkit.eval.density.Density`.

    ``bits_per_dim: (N,)`` per image, ``log_prob: (N,)`` the ``K``-sample log-density in nats on
    the ``[-1, 1]`` scale (before the dequantization offset), both float64 CPU; ``mean`` and
    ``stderr`` (standard error of the mean, NaN for one image) of ``bits_per_dim``; ``k``
    dequantization draws per image; ``num_dims`` per image. An upper bound (in expectation) on the
    discrete data's bits/dim when ``log_prob`` is exact or, at ``k = 1``, an unbiased estimate of it
    (or a lower bound, as IWAE's). At ``k > 1`` with a noisy unbiased estimate (a flow's Hutchinson
    divergence) it is not: the log-mean-exp of noisy estimates favours the high ones, so the bits/dim are
    optimistic by an amount that grows with the probe noise (see the module docstring).
    """

    bits_per_dim: Tensor
    log_prob: Tensor
    mean: float
    stderr: float
    k: int
    num_dims: int


def image_nll(
    density: Density,
    x_uint8: Tensor,
    *,
    k: int = 1,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> ImageNLL:
    """Dequantized bits/dim of 8-bit images: ``-log((1/k) sum_j p(dequantize(x)_j)) / (D ln 2) + 7``.

    For each batch, draws ``k`` dequantizations in turn and scores each
    (``dequantize`` then ``density.log_prob``, both from ``generator``), combines them with
    :func:`~genkit.eval.density.log_mean_exp`, then applies :func:`bits_per_dim`. ``k = 1`` is the
    plain estimate ``bits_per_dim(density.log_prob(dequantize(x)))``. Runs under ``torch.no_grad()``.
    For a flow use :class:`~genkit.eval.density.FlowDensity` (``divergence="hutchinson"`` for images).

    Args:
        density: scores ``(b, ...)`` floats in ``[-1, 1]`` on ``x_uint8``'s device.
        x_uint8: ``(N, ...)`` uint8 images, e.g. ``(N, 3, 32, 32)``.
        k: dequantization draws per image (``>= 1``).
        batch_size: images per call to ``density.log_prob``; ``None``: all at once.
        generator: draws the dequantization noise (and the density's own randomness).
        progress: show a progress bar over batches.

    Returns:
        :class:`ImageNLL`.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GenkitError(f"k must be an integer >= 1, got {k!r}")
    if not isinstance(x_uint8, Tensor) or x_uint8.dim() < 2 or x_uint8.shape[0] == 0:
        raise GenkitError("x_uint8 must be a non-empty uint8 tensor of shape (N, ...)")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise GenkitError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    n, num_dims = x_uint8.shape[0], x_uint8[0].numel()
    size = n if batch_size is None else batch_size
    log_probs = []
    with torch.no_grad():
        from tqdm.auto import tqdm

        for start in tqdm(range(0, n, size), desc="nll", unit="batch", disable=not progress):
            batch = x_uint8[start : start + size]
            draws = []
            for _ in range(k):
                lp = density.log_prob(dequantize(batch, generator=generator), generator=generator)
                if tuple(lp.shape) != (batch.shape[0],):
                    got = tuple(lp.shape)
                    raise GenkitError(f"density.log_prob returned shape {got}, expected ({batch.shape[0]},)")
                draws.append(lp.detach().to("cpu", torch.float64))
            log_probs.append(log_mean_exp(torch.stack(draws), 0))
    return _image_nll_of(torch.cat(log_probs), num_dims, k)


def _image_nll_of(log_prob: Tensor, num_dims: int, k: int) -> ImageNLL:
    """:class:`ImageNLL` of per-image ``K``-sample log-densities ``log_prob: (N,)`` float64."""
    bpd = bits_per_dim(log_prob, num_dims)
    n = log_prob.numel()
    stderr = float(bpd.std() / math.sqrt(n)) if n > 1 else math.nan
    return ImageNLL(bits_per_dim=bpd, log_prob=log_prob, mean=float(bpd.mean()), stderr=stderr, k=k, num_dims=num_dims)


# ---- command line: python -m genkit.eval.nll --run DIR ------------------------------------------
@dataclass(frozen=True)
class NLLConfig:
    """Negative log-likelihood of a run's model on held-out data; merged into the run's eval.json.

    Images: bits/dim of the split under uniform dequantization with ``k`` draws (an upper bound
    on the discrete data's bits/dim in expectation with the exact divergence, or with Hutchinson at
    ``k = 1``; Hutchinson at ``k > 1`` is optimistic, see this module's docstring). 2-D data: nats per
    point on fresh samples of the toy distribution (no dequantization, no split, ``k = 1``).
    A new NLL evaluation replaces all ``nll_*`` entries of the previous one in eval.json.
    """

    run: Path
    """run folder (a recipe's --out)"""
    split: Literal["train", "test"] = "test"
    """the image split to score (2-D data: fresh samples, leave it at test)"""
    n: int = 0
    """number of images (0 or at least the split's size: the whole split; fewer: a fixed seeded random
    subset, the one FID uses); 2-D data: fresh points (0: 2000)"""
    k: int = 1
    """dequantization draws per image (importance weighted; with hutchinson, k > 1 is optimistic by the
    probe noise: raise --num-probes)"""
    divergence: Literal["exact", "hutchinson"] = "hutchinson"
    """exact costs one backward per dimension: for 2-D data; hutchinson for images"""
    probe: Literal["rademacher", "gaussian"] = "rademacher"
    num_probes: int = 1
    method: Literal["euler", "midpoint", "rk4", "dopri5"] = "dopri5"
    steps: int = 100
    """solver steps for fixed-step methods"""
    atol: float = 1e-5
    rtol: float = 1e-5
    batch_size: int = 500
    weights: Literal["ema", "raw"] = "ema"
    precision: ResolvedPrecision = "fp32"
    """the flow network's precision on CUDA: fp32 (PyTorch's default TF32 convolutions), or bf16 autocast,
    about twice as fast but an approximation of the field that dopri5's error control sees: compare
    it with fp32 on a subset (--n) before trusting it. The ODE state and the log-density stay float32"""
    compile: bool = True
    """torch.compile the flow's network, forward and backward (CUDA only, with hutchinson and one probe:
    a compiled backward runs once per forward; otherwise, and on the CPU, the network runs eagerly)"""
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name, value, least in (("n", self.n, 0), ("k", self.k, 1), ("num-probes", self.num_probes, 1),
                                   ("steps", self.steps, 1), ("batch-size", self.batch_size, 1)):
            if value < least:
                raise GenkitError(f"--{name} must be >= {least}, got {value}")
        if not (self.atol > 0 and self.rtol > 0):
            raise GenkitError(f"--atol and --rtol must be > 0, got {self.atol} and {self.rtol}")


K_NOTE = ("hutchinson with k > 1: the log-mean-exp of noisy log-density estimates is biased towards higher "
          "likelihood, so these bits/dim are optimistic by the probe noise (not a bound); raise --num-probes "
          "or compare at k = 1")
"""``nll_k_note`` in eval.json: why a Hutchinson estimate with several dequantization draws is no bound."""


def evaluate_nll(cfg: NLLConfig) -> dict[str, float | int | str | bool | None]:
    """Run the evaluation described by ``cfg``; returns the flat ``nll_*`` entries for eval.json.

    Besides the result and its settings: ``nll_step`` (the checkpoint), ``nll_subset`` (which images),
    ``nll_batch_size`` (each batch draws its own noise, so the value depends on it),
    ``nll_density_is_bound`` (the model's log-density is itself a lower bound, as IWAE's, rather than
    ``log p`` or an unbiased estimate of it) and, for Hutchinson with ``k > 1``, ``nll_k_note``
    (:data:`K_NOTE`). Tolerances are recorded for dopri5, steps for the fixed-step solvers.
    """
    import time

    from genkit.cli import resolve_device
    from genkit.eval.runs import load_eval_run
    from genkit.seeding import derive_seed

    device = resolve_device(cfg.device)
    run = load_eval_run(cfg.run, device=device, ema=cfg.weights == "ema")
    if not hasattr(run, "density"):
        raise GenkitError(f"the model of {cfg.run} has no density to evaluate (it is a sampler only)")
    density = run.density(divergence=cfg.divergence, probe=cfg.probe, num_probes=cfg.num_probes,
                          method=cfg.method, steps=cfg.steps, atol=cfg.atol, rtol=cfg.rtol)
    if isinstance(density, FlowDensity):
        # Each divergence evaluates the network under torch.enable_grad() and differentiates it with
        # torch.autograd.grad: compiled, AOTAutograd compiles that forward and its backward. Its compiled
        # backward may run only once per forward (donated buffers), so only Hutchinson with one probe compiles.
        one_backward = cfg.divergence == "hutchinson" and cfg.num_probes == 1
        density.field = compile_for_sampling(density.field, device, enabled=cfg.compile and one_backward)
        density.field = autocast_field(density.field, device, cfg.precision)
    generator = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "nll"))
    start = time.perf_counter()
    out: dict[str, float | int | str | bool | None] = {}
    if len(run.shape) == 1:
        from genkit.data.toy import sample_toy

        if cfg.k != 1 or cfg.split != "test":
            raise GenkitError("2-D data are scored on fresh samples of the toy distribution, without dequantization: "
                              "drop --k and --split")
        n = cfg.n or 2000
        x = sample_toy(run.data.dataset, n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "nll-data")))
        with torch.no_grad():
            lp = torch.cat([density.log_prob(b.to(device), generator=generator).double().cpu()
                            for b in x.split(cfg.batch_size)])
        out |= {"nll_nats": float(-lp.mean()), "nll_nats_stderr": float(lp.std() / math.sqrt(n)) if n > 1 else None,
                "nll_split": "fresh samples"}
        seconds = time.perf_counter() - start
    else:
        from genkit.eval.runs import eval_images, subset_description

        images, total = eval_images(run.data, cfg.split, cfg.n)
        subset = subset_description(total, len(images))
        res, seconds, nfe = _resumable_image_nll(density, images, cfg, device, step=run.step, subset=subset)
        n = res.bits_per_dim.numel()
        out |= {"nll_bpd": res.mean, "nll_bpd_stderr": res.stderr if n > 1 else None, "nll_k": cfg.k,
                "nll_nfe_per_solve": round(nfe, 1), "nll_split": cfg.split, "nll_subset": subset,
                "nll_dequantization": "uniform: (x + u)/128 - 1, offset D log(2/256) (training saw x/127.5 - 1)"}
        if cfg.k > 1 and cfg.divergence == "hutchinson" and isinstance(density, FlowDensity):
            out["nll_k_note"] = K_NOTE
    adaptive = cfg.method not in FIXED_STEP_METHODS
    out |= {"nll_n": n, "nll_step": run.step, "nll_density_is_bound": bool(getattr(density, "is_bound", False)),
            "nll_divergence": cfg.divergence if cfg.divergence == "exact" else f"hutchinson-{cfg.probe}x{cfg.num_probes}",
            "nll_solver": cfg.method, **({"nll_atol": cfg.atol, "nll_rtol": cfg.rtol} if adaptive else {"nll_steps": cfg.steps}),
            "nll_weights": cfg.weights, "nll_seed": cfg.seed, "nll_batch_size": cfg.batch_size,
            "nll_precision": field_precision(cfg.precision, device), "nll_seconds": round(seconds, 2)}
    if isinstance(density, IWAEDensity):  # a VAE: the solver settings above do not apply; its bound's samples do
        out["nll_iwae_samples"] = density.num_samples
    return out


PROGRESS_FILE = "nll_progress.json"
"""Per-batch results of an image NLL evaluation under way, in the run folder (removed when it ends)."""


def _resumable_image_nll(
    density: Density, images: Tensor, cfg: NLLConfig, device: torch.device, *, step: int, subset: str
) -> tuple[ImageNLL, float, float]:
    """:func:`image_nll` batch by batch, resumable; returns the result, the seconds of computing it and
    the mean field evaluations per solve (a batch's ODE solve; 0 for a density that does not count them).

    Batch ``i`` (images ``i * batch_size ...``) draws its dequantization and probes from its own
    generator, seeded ``derive_seed(seed, "nll", i)``, so its log-densities do not depend on which
    batches were computed before it, or in which process (they do depend on the batch size, which is
    recorded). After each batch they are added to ``<run>/nll_progress.json`` (atomically) with the
    settings, the checkpoint step and which images (``subset``); the same
    command after an interruption skips the batches there (other settings start afresh). The seconds
    are those of all batches, whichever call computed them.
    """
    import time

    from tqdm.auto import tqdm

    from genkit.seeding import derive_seed
    from genkit.train.checkpoint import write_json_atomic

    # where and how the network runs (device, compile) changes only rounding: a run may resume with others
    ignored = ("run", "n", "device", "compile")
    settings = {"step": step, "n": len(images), "subset": subset,
                **{k: v for k, v in vars(cfg).items() if k not in ignored}}
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back from the file
    path = Path(cfg.run) / PROGRESS_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        saved = {}
    done: dict[str, dict] = saved.get("batches", {}) if saved.get("settings") == settings else {}
    starts = range(0, len(images), cfg.batch_size)
    for i in tqdm([i for i, _ in enumerate(starts) if str(i) not in done], desc="nll", unit="batch"):
        t0 = time.perf_counter()
        batch = images[starts[i] : starts[i] + cfg.batch_size].to(device)
        generator = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "nll", i))
        nfe = getattr(density, "nfe", 0)
        res = image_nll(density, batch, k=cfg.k, generator=generator)
        done[str(i)] = {"log_prob": res.log_prob.tolist(), "seconds": time.perf_counter() - t0,
                        "nfe": getattr(density, "nfe", 0) - nfe}
        write_json_atomic(path, {"settings": settings, "batches": done})
    log_prob = torch.tensor([v for i in range(len(starts)) for v in done[str(i)]["log_prob"]], dtype=torch.float64)
    path.unlink(missing_ok=True)
    nfe = [b.get("nfe", 0) / cfg.k for b in done.values()]
    return (_image_nll_of(log_prob, images[0].numel(), cfg.k), sum(b["seconds"] for b in done.values()),
            sum(nfe) / len(nfe))


def main(argv: list[str] | None = None) -> int:
    from genkit.eval.runs import eval_main

    return eval_main(NLLConfig, evaluate_nll, argv, "python -m genkit.eval.nll", family=lambda cfg: "nll")


if __name__ == "__main__":
    import sys

    from genkit.cli import run_main

    sys.exit(run_main(main))
