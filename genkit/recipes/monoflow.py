"""MonoFlow: a GAN trained as a particle flow in training time (SPEC section 3).

    python -m genkit.recipes.monoflow --preset toy                  # 8gaussians, CPU, about a minute
    python -m genkit.recipes.monoflow --preset mnist --out runs/monoflow-mnist
    python -m genkit.recipes.monoflow --preset cifar10 --objective.h log_sigmoid
    python -m genkit.recipes.monoflow --preset toy --objective.form particle --objective.g-steps 3

A logistic discriminator ``D ~ log p/q`` (BCE, real 1 / fake 0) and a generator trained on
``-E h(D(G(z)))`` (``--objective.form direct``) or on the MSE to frozen particle targets
``sg[x + step_size * grad_x h(D(x))]`` (``--objective.form particle``, which allows several generator
steps per discriminator step). ``h``: identity (reverse KL, "logit"), log_sigmoid (non-saturating),
softplus (the minimax loss, shifted by ``--objective.shift``), arcsinh, exp (forward KL).
Defaults follow the MonoFlow code (SPEC 3(d)): DCGAN nets with BatchNorm, Adam d_lr 2e-4, g_lr 1e-4,
betas (0.5, 0.999), batch 128, one discriminator step per generator step.
Run folder as in :mod:`genkit.recipes.gan`; on 2-D data the end also draws the generator-free
particle flow (:func:`genkit.particles.particle_flow`) with the same ``h`` in samples/particles.png.
The same command with the same ``--out`` resumes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from genkit.cli import run_main
from genkit.errors import GenkitError
from genkit.objectives.gan import H_FUNCTIONS, MonoFlow, h_function
from genkit.recipes import gan
from genkit.recipes.gan import DataConfig, GANModelConfig, GANOptimConfig, GANSampleConfig, LoadedGAN, Players
from genkit.train import TrainConfig

RECIPE = "monoflow"


@dataclass(frozen=True)
class MonoFlowObjectiveConfig:
    h: str = "identity"
    """increasing h of the log-ratio: identity, log_sigmoid, softplus, arcsinh, exp"""
    form: Literal["direct", "particle"] = "direct"
    """generator loss: direct -E h(D(G(z))), or particle (MSE to frozen targets x + step_size grad h(D(x)))"""
    step_size: float = 1.0
    """particle step epsilon of the particle form"""
    shift: float = 5.0
    """C of the minimax variant h(d) = softplus(d + C)"""
    d_steps: int = 1
    """discriminator steps per generator step"""
    g_steps: int = 1
    """generator steps per discriminator step (particle form only: the targets stay frozen meanwhile)"""


@dataclass(frozen=True)
class MonoFlowSampleConfig(GANSampleConfig):
    particle_steps: int = 200
    """2-D data: moves of the generator-free particle flow drawn at the end (samples/particles.png; 0: none)"""


@dataclass(frozen=True)
class MonoFlowConfig:
    """MonoFlow GAN: logistic discriminator ~ log p/q, generator following grad h(log p/q)."""

    preset: str | None = None
    """preset from recipes/monoflow/<name>.toml (applied before other flags)"""
    out: Path = Path("runs/monoflow")
    """run folder; running again with the same folder resumes"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    dry_run: bool = False
    """print the resolved config and exit"""
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="mnist"))
    model: GANModelConfig = field(default_factory=lambda: GANModelConfig(g_width=32, d_width=32, d_norm="batch"))
    objective: MonoFlowObjectiveConfig = field(default_factory=MonoFlowObjectiveConfig)
    optim: GANOptimConfig = field(default_factory=GANOptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=7000, batch_size=128))
    sample: MonoFlowSampleConfig = field(default_factory=MonoFlowSampleConfig)


def players(cfg: MonoFlowConfig) -> Players:
    o = cfg.objective
    if o.h not in H_FUNCTIONS:
        raise GenkitError(f"unknown h '{o.h}' (known: {', '.join(H_FUNCTIONS)})")
    if o.d_steps < 1 or o.g_steps < 1:
        raise GenkitError(f"--objective.d-steps and --objective.g-steps must be >= 1, got {o.d_steps} and {o.g_steps}")
    if o.d_steps > 1 and o.g_steps > 1:
        raise GenkitError("set either --objective.d-steps or --objective.g-steps above 1, not both")
    if cfg.sample.particle_steps < 0:
        raise GenkitError(f"--sample.particle-steps must be >= 0, got {cfg.sample.particle_steps}")
    if o.g_steps > 1 and o.form != "particle":
        raise GenkitError("several generator steps per discriminator step need --objective.form particle "
                          "(the direct loss equals the flow only for one step, SPEC 3(b))")
    objective = MonoFlow(latent_dim=cfg.model.latent_dim, h=o.h, shift=o.shift, form=o.form, step_size=o.step_size)
    update_every = {"generator": o.d_steps} if o.g_steps == 1 else {"discriminator": o.g_steps}
    picture = _particle_picture(o.h, o.shift, cfg.sample.particle_steps) if cfg.sample.particle_steps else None
    return Players(objective, "discriminator", update_every, penalty=False, toy_extra=picture)


# Generator-free particle flow for the 2-D picture: PARTICLE_N particles from N(0, I), each move
# x <- x + PARTICLE_STEP_SIZE * grad h(D(x)) after 5 Adam steps refitting D (genkit.particles).
PARTICLE_N, PARTICLE_STEP_SIZE = 500, 0.02


def _particle_picture(h: str, shift: float, steps: int):
    """``toy_extra`` drawing the particle flow with the run's ``h`` (``shift`` included) for ``steps`` moves."""
    h_fn = h_function(h, shift=shift)
    label = f"softplus(d + {shift:g})" if h == "softplus" else h

    def draw(out: Path, dataset: str, seed: int) -> dict:
        from genkit.data.toy import sample_toy
        from genkit.eval.distances import energy_distance
        from genkit.particles import particle_flow
        from genkit.plots import save_trajectories
        from genkit.seeding import derive_seed

        g = torch.Generator().manual_seed(derive_seed(seed, "particles"))
        x_0 = torch.randn(PARTICLE_N, 2, generator=g)
        flow = particle_flow(x_0, lambda n, gen: sample_toy(dataset, n, generator=gen), steps=steps,
                             step_size=PARTICLE_STEP_SIZE, h=h_fn, generator=g)
        save_trajectories(flow.xs, out / "samples" / "particles.png",
                          title=f"{dataset}: particle flow without generator, h = {label}")
        held_out, other = (sample_toy(dataset, PARTICLE_N,
                                      generator=torch.Generator().manual_seed(derive_seed(seed, purpose)))
                           for purpose in ("heldout", "heldout2"))
        return {"particle_flow_n": PARTICLE_N,
                "particle_flow_energy_distance": float(energy_distance(flow.xs[-1], held_out)),
                "particle_flow_energy_distance_data_floor": float(energy_distance(other, held_out))}

    return draw


def main(argv: Sequence[str] | None = None) -> int:
    return gan.main(RECIPE, MonoFlowConfig, players, argv, description=__doc__.split("\n\n")[0])


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu", ema: bool = True,
             step: int | None = None) -> LoadedGAN:
    """A MonoFlow run's (EMA) generator at checkpoint ``step`` (``None``: the latest); ``.sampler()`` draws
    ``(n, *shape)`` samples."""
    return gan.load_run(run_dir, RECIPE, MonoFlowConfig, device=device, ema=ema, step=step)


if __name__ == "__main__":
    sys.exit(run_main(main))
