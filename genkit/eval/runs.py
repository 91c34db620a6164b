"""Open a finished run folder for evaluation, whatever recipe wrote it.

Each recipe provides a ``load_run(run_dir, *, device, ema)`` that rebuilds its networks from
``config.json`` and its latest checkpoint. The object it returns offers what evaluation needs:
``shape`` (one sample), ``data`` (the recipe's data settings: ``dataset``, ``root``),
``sampler(...)`` (a :class:`~genkit.sampling.Sampler`) and, for models with a density,
``density(...)`` (a :class:`~genkit.eval.density.Density`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


def recipe_of(run_dir: str | Path) -> str:
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text())["recipe"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise GenkitError(f"{run_dir} is not a run folder (no readable config.json with a recipe): point --run at a --out folder") from None


def load_eval_run(run_dir: str | Path, *, device: torch.device, ema: bool = True) -> Any:
    """The run's model, ready to evaluate (EMA weights unless ``ema=False``)."""
    recipe = recipe_of(run_dir)
    if recipe not in RUN_LOADERS:
        raise GenkitError(f"runs of recipe '{recipe}' cannot be evaluated yet (known: {', '.join(sorted(RUN_LOADERS))})")
    return RUN_LOADERS[recipe](Path(run_dir), device=device, ema=ema)


def eval_main(config_cls: Callable[..., Any], evaluate: Callable[[Any], dict], argv: list[str] | None, prog: str) -> int:
    """An evaluation CLI: parse ``config_cls``, evaluate, merge into the run's eval.json, print one JSON line."""
    import tyro

    from genkit.train.logging import update_eval

    cfg = tyro.cli(config_cls, args=argv, prog=prog)
    values = evaluate(cfg)
    update_eval(cfg.run, values)
    print(json.dumps(values))
    return 0
