"""Open a finished run folder for evaluation, whatever recipe wrote it.

Each recipe provides a ``load_run(run_dir, *, device, ema, step)`` that rebuilds its networks from
``config.json`` and its checkpoint of Trainer step ``step`` (``None``: the latest). The object it
returns offers what evaluation needs: ``shape`` (one sample), ``step``, ``data`` (the recipe's data
settings: ``dataset``, ``root``), ``sampler(...)`` (a :class:`~genkit.sampling.Sampler`) and, for
models with a density, ``density(...)`` (a :class:`~genkit.eval.density.Density`).
:func:`checkpoint_progress` says how far training had come at a checkpoint (steps of the sampled
network, seconds of training), for curves over checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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


RUN_LOADERS: dict[str, Callable[..., Any]] = {"reflow": _reflow, "monoflow": _monoflow, "reflow_gan": _reflow_gan}
"""recipe name (``config.json``'s ``recipe``) -> loader."""

SAMPLED_MODELS: dict[str, str] = {"reflow": "model", "monoflow": "generator", "reflow_gan": "generator"}
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


def eval_main(config_cls: Callable[..., Any], evaluate: Callable[[Any], dict], argv: list[str] | None, prog: str) -> int:
    """An evaluation CLI: parse ``config_cls``, evaluate, merge into the run's eval.json, print one JSON line."""
    import tyro

    from genkit.train.logging import update_eval

    cfg = tyro.cli(config_cls, args=argv, prog=prog)
    values = evaluate(cfg)
    update_eval(cfg.run, values)
    print(json.dumps(values))
    return 0
