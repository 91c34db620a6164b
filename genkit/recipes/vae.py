"""VAE with a hyperspherical (vMF) or Gaussian latent, trained as a VAE (M = 1) or an IWAE (M > 1).

    python -m genkit.recipes.vae --preset mnist --out runs/vae-mnist            # vMF-VAE of the post (SPEC 5(d))
    python -m genkit.recipes.vae --preset mnist --model.latent gaussian --objective.samples 5
    python -m genkit.recipes.vae --preset cifar10                                 # conv nets, Gaussian likelihood

The model (genkit.objectives.vae.VAE): posterior vMF(normalize(encoder(x)), kappa) with kappa fixed, uniform
prior on the sphere (or a diagonal Gaussian posterior and N(0, I) prior); decoder likelihood Bernoulli
(the post's per-image binary cross-entropy) or Gaussian on [-1, 1] (trained on dequantized pixels).
The run folder holds config.json, metrics.jsonl (loss, recon, kl, elbo, bound), checkpoints/, samples/
(recon_<step>.png: test images over their reconstructions; prior_<step>.png: decoded prior samples) and
eval.json with the test-split IWAE bound (EMA weights): an upper bound on the NLL in nats per image and
bits/dim. Bernoulli: of the test images binarised (seeded, P(1) = pixel / 255), bits/dim without offset;
Gaussian: of the 8-bit test images, dequantized, bits/dim with the offset of genkit.eval.nll.
The same command with the same ``--out`` resumes. ``python -m genkit.eval.fid --run DIR`` scores prior
samples; ``python -m genkit.eval.nll --run DIR`` re-measures a Gaussian-likelihood run's bound.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genkit.cli import load_network, open_run, parse_config, report_stop, run_main, run_recipe, to_jsonable
from genkit.data.images import ImageStream, load_images
from genkit.errors import GenkitError
from genkit.nn.vae_nets import build_vae_nets
from genkit.objectives.vae import VAE, VAEObjective
from genkit.recipes.reflow import OptimConfig
from genkit.seeding import derive_seed
from genkit.train import TrainConfig, Trainer, distributed
from genkit.train.logging import update_eval
from genkit.train.optim import adam

RECIPE = "vae"
DATASETS = ("mnist", "fashion-mnist", "cifar10", "imagefolder")
GRID = 32
"""images per snapshot grid (reconstructions: 32 test images over their reconstructions; 64 prior samples)"""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    """mnist, fashion-mnist, cifar10, imagefolder (evaluated on the test split; imagefolder: root/test)"""
    root: Path = Path("data")
    """image data root (torchvision layout), or the ImageFolder directory"""
    download: bool = True
    """let torchvision download missing image sets (needs network)"""
    hflip: bool = False
    """random horizontal flips of training images"""


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["mlp", "conv"] = "mlp"
    """mlp: Dense(hidden) encoder and decoder of the post; conv: two stride-2 convolutions each way"""
    latent: Literal["vmf", "gaussian"] = "vmf"
    """vmf: vMF posterior with fixed kappa, uniform prior on the sphere; gaussian: diagonal Normal, N(0, I) prior"""
    latent_dim: int = 4
    """d (vmf: the sphere S^(d-1) of R^d); the post's code has 4 at HEAD, 8 in its first commits"""
    kappa: float = 20.0
    """vMF concentration, fixed (the KL to the uniform prior is then a constant > 0)"""
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    """bernoulli: per-image summed binary cross-entropy (the post); gaussian: N(decoder(z), scale^2) on [-1, 1]"""
    scale: float = 0.1
    """the Gaussian likelihood's scale on the [-1, 1] pixel scale (initial value if learned)"""
    learn_scale: bool = False
    """learn the Gaussian likelihood's scale (one scalar)"""
    hidden: int = 256
    channels: tuple[int, int] = (32, 64)
    """conv arch: widths of the two convolutions"""


@dataclass(frozen=True)
class ObjectiveConfig:
    samples: int = 1
    """M importance samples per image: 1 trains the VAE loss (reconstruction + analytic KL), > 1 the IWAE bound"""


@dataclass(frozen=True)
class EvalConfig:
    samples: int = 5000
    """IWAE samples per test image (the IWAE paper's 5000); also what genkit.eval.nll uses"""
    n: int = 0
    """test images to evaluate (0: all; fewer: a seeded random subset)"""
    batch_size: int = 100
    chunk_size: int = 100
    """importance samples drawn at once per image (memory)"""


@dataclass(frozen=True)
class VAEConfig:
    """Variational autoencoder (vMF or Gaussian latent; VAE or IWAE loss) with its test-split IWAE bound."""

    preset: str | None = None
    """preset from recipes/vae/<name>.toml (applied before other flags)"""
    out: Path = Path("runs/vae")
    """run folder; running again with the same folder resumes"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    dry_run: bool = False
    """print the resolved config and exit"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=30000, batch_size=100, sample_every=5000, checkpoint_every=5000)
    )
    eval: EvalConfig = field(default_factory=EvalConfig)


def check_config(cfg: VAEConfig) -> None:
    """One-line errors for settings the dataclasses cannot check."""
    m, e = cfg.model, cfg.eval
    if cfg.data.dataset not in DATASETS:
        raise GenkitError(f"unknown dataset '{cfg.data.dataset}' (known: {', '.join(DATASETS)})")
    if m.latent == "vmf" and m.latent_dim < 2:
        raise GenkitError(f"--model.latent-dim must be >= 2 for a vmf latent (the sphere S^(d-1)), got {m.latent_dim}")
    if m.latent_dim < 1 or m.hidden < 1 or min(m.channels) < 1:
        raise GenkitError(f"--model.latent-dim, --model.hidden and --model.channels must be >= 1, got {m.latent_dim}, "
                          f"{m.hidden}, {list(m.channels)}")
    if not (m.kappa > 0 and math.isfinite(m.kappa)):
        raise GenkitError(f"--model.kappa must be a finite number > 0, got {m.kappa}")
    if not (m.scale > 0 and math.isfinite(m.scale)):
        raise GenkitError(f"--model.scale must be a finite number > 0, got {m.scale}")
    if cfg.objective.samples < 1:
        raise GenkitError(f"--objective.samples must be >= 1, got {cfg.objective.samples}")
    for name, value, least in (("samples", e.samples, 1), ("n", e.n, 0), ("batch-size", e.batch_size, 1),
                               ("chunk-size", e.chunk_size, 1)):
        if value < least:
            raise GenkitError(f"--eval.{name} must be >= {least}, got {value}")


def build_vae(model: ModelConfig, shape: Sequence[int]) -> VAE:
    """The VAE of a run from its ``model`` settings and image ``shape`` (C, H, W)."""
    out = model.latent_dim * (2 if model.latent == "gaussian" else 1)
    encoder, decoder = build_vae_nets(model.arch, tuple(shape), enc_out_dim=out, latent_dim=model.latent_dim,
                                      hidden=model.hidden, channels=tuple(model.channels))
    return VAE(encoder, decoder, latent_dim=model.latent_dim, latent=model.latent, kappa=model.kappa,
               likelihood=model.likelihood, scale=model.scale, learn_scale=model.learn_scale)


class DecodedPrior(nn.Module):
    """``noise: (N, latent_dim)`` standard normal -> the decoder's mean image ``(N, C, H, W)`` of the prior code
    (normalised onto the sphere for vmf): the generator a :class:`~genkit.sampling.GeneratorSampler` wraps."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, noise: Tensor) -> Tensor:
        return self.vae.decode(self.vae.code_from_noise(noise)).mean.clamp(-1, 1)


# ---- loading a finished run (the hook genkit.eval.fid / genkit.eval.nll use) ----------------------------
@dataclass(frozen=True)
class LoadedVAE:
    """A VAE run's (EMA) model: ``sampler()`` decodes prior samples, ``density()`` is its IWAE bound."""

    vae: VAE
    config: VAEConfig
    shape: tuple[int, ...]
    step: int

    is_flow = False  # one decoder pass per sample: no solver or NFE to choose

    @property
    def data(self) -> DataConfig:
        return self.config.data

    def sampler(self, *, device: torch.device | None = None, batch_size: int = 500):
        """Decoded prior samples ``(n, *shape)`` as a :class:`~genkit.sampling.GeneratorSampler`."""
        from genkit.sampling import GeneratorSampler

        device = device or self.vae.log_scale.device
        return GeneratorSampler(DecodedPrior(self.vae.to(device)), self.vae.latent_dim, device, batch_size=batch_size)

    def density(self, **options: Any):
        """The IWAE bound with the run's ``--eval.samples`` (a :class:`~genkit.eval.density.IWAEDensity` on
        ``[-1, 1]`` images). ``options`` (an ODE likelihood's solver settings) do not apply and are ignored.
        A Bernoulli likelihood scores binarised images, not dequantized 8-bit ones: refused in one line."""
        if self.vae.likelihood != "gaussian":
            raise GenkitError("a Bernoulli-likelihood VAE scores binarised images, not dequantized 8-bit data: its "
                              "bound is in the run's eval.json (test_nll_bound_*); genkit.eval.nll needs a run trained "
                              "with --model.likelihood gaussian")
        e = self.config.eval
        return self.vae.density(num_samples=e.samples, chunk_size=e.chunk_size)


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu", ema: bool = True,
             step: int | None = None) -> LoadedVAE:
    """Rebuild a VAE run's model from its config.json and load the (EMA) weights of checkpoint ``step``
    (``None``: the latest)."""
    run = open_run(run_dir, RECIPE, VAEConfig, step=step)
    vae = load_network(run, RECIPE, "model", build_vae(run.config.model, run.shape), ema=ema, device=device)
    return LoadedVAE(vae, run.config, run.shape, run.step)


# ---- evaluation ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_bound(vae: VAE, images: Tensor, cfg: VAEConfig, device: torch.device) -> dict[str, float | int | str]:
    """Test-split IWAE bound of ``images`` (uint8 ``(N, C, H, W)``): an upper bound on the NLL (in expectation).

    Gaussian likelihood: :func:`genkit.eval.nll.image_nll` (uniform dequantization, offset ``D log(2/256)``).
    Bernoulli: the images binarised with ``P(1) = x / 255`` (seeded), bits/dim without offset. Batch ``i`` draws
    from a generator seeded ``derive_seed(seed, "vae-eval", i)``.
    """
    from genkit.eval.nll import LOG_SCALE_PER_DIM, bits_per_dim, image_nll

    e, num_dims = cfg.eval, images[0].numel()
    density = vae.density(num_samples=e.samples, chunk_size=e.chunk_size)
    log_probs = []  # nats of the discrete data, per image
    for i, lo in enumerate(range(0, len(images), e.batch_size)):
        g = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "vae-eval", i))
        batch = images[lo : lo + e.batch_size].to(device)
        if vae.likelihood == "gaussian":
            # log P(discrete x) = log p(dequantized x) on the [-1, 1] scale + D log(2/256)
            log_probs.append(image_nll(density, batch, generator=g).log_prob + num_dims * LOG_SCALE_PER_DIM)
        else:
            binary = (torch.rand(batch.shape, generator=g, device=device) * 255 < batch.float()).float() * 2 - 1
            log_probs.append(density.log_prob(binary, generator=g).double().cpu())
    lp = torch.cat(log_probs)
    nats = -lp
    bpd = bits_per_dim(lp, num_dims, scale_offset=False)  # lp is already a log-probability of discrete data
    n = len(lp)
    data = ("8-bit test images, uniformly dequantized ((x + u)/128 - 1), offset D log(2/256) applied"
            if vae.likelihood == "gaussian" else "test images binarised once, P(1) = x/255 (seeded): bits/dim without offset")
    return {"test_nll_bound_nats": float(nats.mean()), "test_nll_bound_nats_stderr": float(nats.std() / math.sqrt(n)) if n > 1 else None,
            "test_nll_bound_bpd": float(bpd.mean()), "test_bound_data": data, "test_bound_note":
            "IWAE bound: E log q_M(x) <= log p(x), so these NLLs are upper bounds (in expectation)",
            "iwae_samples": e.samples, "n_test": n}


# ---- the command ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(VAEConfig, RECIPE, argv, description=__doc__.split("\n\n")[0])
    check_config(cfg)
    return run_recipe(cfg, run)


def _snapshot_fn(cfg: VAEConfig, test_images: Tensor, device: torch.device):
    """Reconstructions of the same test images and decoded prior samples from the same noise at each snapshot."""
    from genkit.data.images import to_float
    from genkit.plots import save_image_grid

    x = to_float(test_images[:GRID]).to(device)
    noise = torch.randn(2 * GRID, cfg.model.latent_dim,
                        generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "snapshot"))).to(device)

    def snapshot(ema: Mapping[str, nn.Module], step: int) -> None:
        vae = ema["model"]
        with torch.no_grad():
            q = vae.posterior(x)
            code = q.mode if vae.latent == "vmf" else q.mean  # the deterministic code of SPEC 5(c)
            recon = vae.decode(code).mean.clamp(-1, 1)
            prior = DecodedPrior(vae)(noise)
        save_image_grid(torch.cat([x, recon]).float().cpu(), cfg.out / "samples" / f"recon_{step:08d}.png", nrow=8)
        save_image_grid(prior.float().cpu(), cfg.out / "samples" / f"prior_{step:08d}.png", nrow=8)

    return snapshot


def _test_images(cfg: VAEConfig) -> Tensor:
    from genkit.eval.runs import eval_images

    return eval_images(cfg.data, "test", cfg.eval.n)[0]


def run(cfg: VAEConfig, device: torch.device, info: distributed.DistInfo) -> int:
    d = cfg.data
    images = load_images(d.dataset, root=d.root, split="train", download=d.download)
    test_images = _test_images(cfg)  # read before training: a missing test split fails at once
    shape = tuple(images.shape[1:])
    torch.manual_seed(cfg.seed)  # the one global seed: model initialisation
    vae = build_vae(cfg.model, shape).to(device)
    card = {"recipe": RECIPE, "shape": list(shape), **to_jsonable(dataclasses.replace(cfg, dry_run=False))}
    data = ImageStream(images, cfg.train.micro_batch_size(info.world_size), seed=cfg.seed, rank=info.rank,
                       world_size=info.world_size, hflip=d.hflip, device=device)
    objective = VAEObjective(samples=cfg.objective.samples, dequantize=cfg.model.likelihood == "gaussian")
    opt = adam(vae.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    trainer = Trainer({"model": vae}, {"model": opt}, objective, data, cfg.train, run_dir=cfg.out, recipe=RECIPE,
                      run_config=card, seed=cfg.seed, dist=info, snapshot=_snapshot_fn(cfg, test_images, device))
    result = trainer.fit()
    if result.interrupted:
        return report_stop(result, info)
    if info.is_main:
        m = evaluate_bound(trainer.ema["model"].module, test_images, cfg, device)
        update_eval(cfg.out, {**result.eval_fields(), "weights": "ema", "latent": cfg.model.latent,
                              "likelihood": cfg.model.likelihood, "train_samples": cfg.objective.samples, **m})
        print(f"done: step {result.step}; test NLL bound {m['test_nll_bound_nats']:.2f} nats "
              f"({m['test_nll_bound_bpd']:.4f} bits/dim) with {cfg.eval.samples} IWAE samples on {m['n_test']} images; "
              f"results in {cfg.out}")
    distributed.barrier(info)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
