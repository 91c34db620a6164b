"""Open a finished run folder for evaluation, whatever recipe wrote it.

Each recipe provides a ``load_run(run_dir, *, device, ema, step)`` that rebuilds its networks from
``config.json`` and its checkpoint of Trainer step ``step`` (``None``: the latest). The object it
returns offers what evaluation needs: ``shape`` (one sample), ``step``, ``data`` (the recipe's data
settings: ``dataset``, ``root``), ``sampler(...)`` (a :class:`~genkit.sampling.Sampler`) and, for
models with a density, ``density(...)`` (a :class:`~genkit.eval.density.Density`).
:func:`checkpoint_progress` says how far training had come at a checkpoint (steps of the sampled
network, seconds of training), for curves over checkpoints. :func:`eval_images` picks the images of a
split that an evaluation uses (the same for FID and NLL), and :func:`eval_main` runs an evaluation CLI and
records its results in ``eval.json``, replacing what an earlier evaluation of the same family recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genkit.errors import GenkitError


def _reflow(run_dir: Path, **kw: Any) -> Any:
    from genkit.recipes.reflow import load_run

    return load_run(run_dir, **kw)


def _monoflow(run_dir: Path, **kw: Any) -> Any:
    from genkit.recipes.monoflow import load_run

    return load_run(run_dir, **kw)


def _reflow_gan(run_dir: Path, **kw: Any) -> Any:
    from genkit.recipes.reflow_gan import load_run

    return load_run(run_dir, **kw)


def _vae(run_dir: Path, **kw: Any) -> Any:
    from genkit.recipes.vae import load_run

    return load_run(run_dir, **kw)


RUN_LOADERS: dict[str, Callable[..., Any]] = {"reflow": _reflow, "monoflow": _monoflow, "reflow_gan": _reflow_gan,
                                              "vae": _vae}
"""recipe name (``config.json``'s ``recipe``) -> loader."""

SAMPLED_MODELS: dict[str, str] = {"reflow": "model", "monoflow": "generator", "reflow_gan": "generator",
                                  "vae": "model"}
"""recipe name -> the Trainer model whose (EMA) weights ``load_run`` samples from."""


def recipe_of(run_dir: str | Path) -> str:
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text())["recipe"]
    except (OSError, ValueError, KeyError, TypeError):  # (ValueError: bad JSON or bytes that are not UTF-8)
        raise GenkitError(f"{run_dir} is not a run folder (no readable config.json with a recipe): point --run at a --out folder") from None


def _evaluable_recipe(run_dir: str | Path) -> str:
    recipe = recipe_of(run_dir)
    if recipe not in RUN_LOADERS:
        raise GenkitError(f"runs of recipe '{recipe}' cannot be evaluated yet (known: {', '.join(sorted(RUN_LOADERS))})")
    return recipe


def load_eval_run(run_dir: str | Path, *, device: torch.device, ema: bool = True, step: int | None = None) -> Any:
    """The run's model at checkpoint ``step`` (a Trainer step; ``None``: the latest), ready to evaluate
    (EMA weights unless ``ema=False``). A step without a checkpoint is a one-line error naming those there are."""
    return RUN_LOADERS[_evaluable_recipe(run_dir)](Path(run_dir), device=device, ema=ema, step=step)


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Trainer steps of the run's checkpoints, in increasing order (``[]`` before the first)."""
    from genkit.train import checkpoint as ckpt

    return [int(ckpt.read_card(p)["step"]) for p in ckpt.list_checkpoints(Path(run_dir) / "checkpoints")]


@dataclass(frozen=True)
class CheckpointProgress:
    """How far training had come at one checkpoint."""

    step: int
    """Trainer steps (a GAN's Trainer counts the steps of the player updated every step: critic steps
    under an update ratio such as ``{"generator": 5}``)"""
    generator_steps: int
    """optimizer steps of the sampled network (``SAMPLED_MODELS``): a GAN's generator steps, a flow's steps;
    counted by the Trainer (its EMA updates of that network), so true for any update ratio"""
    train_seconds: float | None
    """wall time of training up to the checkpoint, summed over resumes (``None``: not recorded, an old checkpoint)"""


def checkpoint_progress(run_dir: str | Path, step: int) -> CheckpointProgress:
    """Read the trainer state of the run's checkpoint of Trainer step ``step`` (which must exist)."""
    from genkit.train import checkpoint as ckpt

    state = ckpt.load_trainer_state(Path(run_dir) / "checkpoints" / ckpt.step_dir_name(step))
    model = SAMPLED_MODELS[_evaluable_recipe(run_dir)]
    seconds = state.get("train_seconds")
    return CheckpointProgress(int(state["step"]), int(state["ema_updates"][model]),
                              None if seconds is None else float(seconds))


SUBSET_SEED = 0
"""Seed of the fixed random subset :func:`subset_indices` draws (documented: cached statistics rely on it)."""


def subset_indices(total: int, n: int) -> Tensor | None:
    """Which ``n`` of ``total`` items an evaluation uses: ``None`` (all of them) when ``n >= total``, else
    ``(n,)`` int64 indices in increasing order, the first ``n`` of ``torch.randperm(total)`` from a CPU
    generator seeded :data:`SUBSET_SEED`: the same subset in every call and process (the first ``n`` items
    of a folder sorted by class would hold only the first classes)."""
    if n < 1 or total < 1:
        raise GenkitError(f"a subset needs n >= 1 of total >= 1 items, got n={n}, total={total}")
    if n >= total:
        return None
    order = torch.randperm(total, generator=torch.Generator().manual_seed(SUBSET_SEED))
    return order[:n].sort().values


def subset_description(total: int, n: int) -> str:
    """What :func:`subset_indices` takes, in words, for eval.json: ``"all 10000"`` or
    ``"seeded random 1000 of 10000 (seed 0)"``."""
    if n >= total:
        return f"all {total}"
    return f"seeded random {n} of {total} (seed {SUBSET_SEED})"


def eval_images(data: Any, split: str, n: int) -> tuple[Tensor, int]:
    """The images of ``split`` of a run's data (``dataset``, ``root``, ``download``) that an evaluation of
    ``n`` images uses (``n = 0``: all), uint8 ``(N, C, H, W)`` on the CPU with ``N = min(n, split size)``,
    and the split size. Fewer than the split: the fixed subset of :func:`subset_indices`, which
    :func:`subset_description` describes."""
    from genkit.data.images import load_images

    images = load_images(data.dataset, root=data.root, split=split, download=data.download)
    total = len(images)
    index = subset_indices(total, total if n == 0 else n)
    return (images if index is None else images[index]), total


def eval_main(config_cls: Callable[..., Any], evaluate: Callable[[Any], dict], argv: list[str] | None, prog: str,
              family: Callable[[Any], str]) -> int:
    """An evaluation CLI: parse ``config_cls``, evaluate, record in the run's eval.json
    (:func:`genkit.train.logging.update_eval`, replacing the family ``family(cfg)`` names), print one JSON line."""
    import tyro

    cfg = tyro.cli(config_cls, args=argv, prog=prog)
    values = evaluate(cfg)
    from genkit.train.logging import update_eval

    update_eval(cfg.run, values, family=family(cfg))
    print(json.dumps(values))
    return 0
