"""Checkpoints as data: safetensors weights, a JSON card, a tensors-only trainer state.

One checkpoint is a folder ``checkpoints/step_<8 digits>/``::

    config.json              {"recipe", "step", "config", "models": {name: {param: shape}}}
    <name>.safetensors       weights of each model
    <name>.ema.safetensors   EMA weights of each model
    trainer.pt               optimizer / LR-schedule / RNG / data state, loadable with
                             torch.load(weights_only=True): tensors and plain Python values only

A folder is written under a temporary name and renamed into place when complete
(``os.replace`` is atomic), so a run killed at any moment leaves every earlier
checkpoint intact; half-written temporaries are ignored and cleaned up.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from genkit.errors import GenkitError

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_OLD_DIR = re.compile(r"^\.old-(step_\d{8})-\d+$")  # a checkpoint being replaced by a new save of its step


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json_object(path: Path) -> dict:
    """A JSON object file's content; ``{}`` if the file is missing, unreadable or not a JSON object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def model_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    models: Mapping[str, nn.Module],
    ema: Mapping[str, nn.Module],
    trainer_state: Mapping[str, Any],
    recipe: str,
    config: Mapping[str, Any],
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep``.

    A kill at any moment leaves the newest complete checkpoint loadable: the new one is written in a
    temporary folder and renamed into place; one that replaces its own step is first moved aside (and
    put back by :func:`recover_interrupted` if the kill came in between); pruned ones are renamed away
    before they are deleted."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    recover_interrupted(root)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    card = {
        "recipe": recipe,
        "step": step,
        "config": dict(config),
        "models": {name: model_shapes(m) for name, m in models.items()},
    }
    for name, m in models.items():
        save_model(m, str(tmp / f"{name}.safetensors"), metadata={"recipe": recipe, "step": str(step)})
    for name, m in ema.items():
        save_model(m, str(tmp / f"{name}.ema.safetensors"), metadata={"recipe": recipe, "step": str(step)})
    torch.save(dict(trainer_state), tmp / "trainer.pt")
    write_json_atomic(tmp / "config.json", card)
    for f in tmp.iterdir():
        _fsync(f)
    if final.exists():  # the same step saved again (e.g. a finished run started once more)
        old = root / f".old-{step_dir_name(step)}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync(root)
    for stale in list_checkpoints(root)[:-keep] if keep > 0 else []:
        doomed = root / f".del-{stale.name}-{os.getpid()}"
        os.replace(stale, doomed)  # gone from the listing at once; a kill mid-delete leaves only .del-*
        shutil.rmtree(doomed)
    return final


def recover_interrupted(root: str | Path) -> None:
    """Tidy what a kill during :func:`save_checkpoint` left under ``root``: a checkpoint moved aside to be
    replaced (``.old-step_*``) goes back if its step is missing, else away; half-deleted (``.del-*``) and
    unfinished (``.tmp-*``, of other processes) folders go. Only the process that writes checkpoints calls it."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.iterdir():
        old = _OLD_DIR.match(p.name)
        if old and not (root / old.group(1)).exists():
            os.replace(p, root / old.group(1))
        elif old or p.name.startswith(".del-") or (p.name.startswith(".tmp-") and not p.name.endswith(f"-{os.getpid()}")):
            shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_card(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json``; a one-line error if it is not a genkit checkpoint."""
    card_path = Path(path) / "config.json"
    try:
        with open(card_path) as f:
            card = json.load(f)
    except (OSError, ValueError) as e:  # (json.JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise GenkitError(f"{path} is not a genkit checkpoint ({card_path.name}: {e}); point at a checkpoints/step_* folder") from None
    if not isinstance(card, dict) or "recipe" not in card or "models" not in card:
        raise GenkitError(f"{card_path} lacks 'recipe'/'models': not a genkit checkpoint")
    return card


def check_compatible(path: str | Path, *, recipe: str, models: Mapping[str, nn.Module]) -> dict[str, Any]:
    """Refuse, in one line, a checkpoint of another recipe or with other weight shapes."""
    card = read_card(path)
    if card["recipe"] != recipe:
        raise GenkitError(
            f"checkpoint {path} was written by recipe '{card['recipe']}', not '{recipe}': "
            "use another --out folder or the matching recipe"
        )
    for name, model in models.items():
        saved = card["models"].get(name)
        if saved is None:
            raise GenkitError(f"checkpoint {path} has no model '{name}' (it has {sorted(card['models'])}): use another --out folder")
        want = model_shapes(model)
        for key in sorted(set(saved) | set(want)):
            if saved.get(key) != want.get(key):
                raise GenkitError(
                    f"checkpoint {path}: '{name}.{key}' has shape {saved.get(key)} but the model expects "
                    f"{want.get(key)}: use the options the checkpoint was trained with, or another --out folder"
                )
    return card


RESUME_MAY_CHANGE = frozenset({
    "preset", "out", "device", "dry_run", "data.root", "data.download",
    "train.steps", "train.time_limit", "train.log_every", "train.sample_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.tensorboard", "train.progress", "train.compile", "train.compile_mode",
    "train.precision", "pairs.compile", "sample", "eval",
    "teacher_step",  # (the reflow recipe holds a stage to the teacher step it started from)
})
"""Run-config settings (dotted names; a section stands for all of its fields) that a resumed run may change:
how long and how verbosely it trains, where it runs and finds its data, how it is judged. Every other
setting (data set, model, optimizer, objective, seed, stage, teacher, batch size...) is what the
checkpoint was trained with."""


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_run(path: str | Path, config: Mapping[str, Any]) -> None:
    """Refuse, in one line, to resume checkpoint ``path`` under a run config that differs from the one it was
    trained with in a setting outside :data:`RESUME_MAY_CHANGE` (compared where both configs have it)."""
    saved = _flatten(read_card(path).get("config", {}))
    new = _flatten(json.loads(json.dumps(dict(config), default=str)))  # as config.json would hold it

    def may_change(key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[:i]) in RESUME_MAY_CHANGE for i in range(1, len(parts) + 1))

    differ = [k for k in sorted(saved.keys() & new.keys()) if saved[k] != new[k] and not may_change(k)]
    if differ:
        shown = "; ".join(f"{k}: {saved[k]!r} -> {new[k]!r}" for k in differ[:4]) + ("; ..." if len(differ) > 4 else "")
        raise GenkitError(
            f"{Path(path).parent.parent} holds a run trained with other settings ({shown}): resuming it would mix "
            "them; use another --out folder, or the settings it was trained with"
        )


def load_weights(path: str | Path, name: str, model: nn.Module, *, ema: bool = False) -> None:
    """Load ``<name>[.ema].safetensors`` from checkpoint ``path`` into ``model`` (strict)."""
    file = Path(path) / (f"{name}.ema.safetensors" if ema else f"{name}.safetensors")
    if not file.is_file():
        raise GenkitError(f"checkpoint {path} lacks {file.name}: it is incomplete or not a genkit checkpoint")
    try:
        with safe_open(str(file), framework="pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error type for damaged files
        raise GenkitError(f"cannot read {file}: damaged or incomplete ({type(e).__name__}: {e})") from None
    want = model_shapes(model)
    for key, shape in shapes.items():
        if key in want and want[key] != shape:
            raise GenkitError(f"{file}: '{key}' has shape {shape} but the model expects {want[key]}")
    missing, unexpected = load_model(model, str(file), strict=False, device=str(next(iter(model.state_dict().values())).device) if want else "cpu")
    if missing or unexpected:
        raise GenkitError(f"{file} does not match the model (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer.pt`` of checkpoint ``path``, read with ``weights_only=True`` (never runs code)."""
    file = Path(path) / "trainer.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GenkitError(f"checkpoint {path} lacks trainer.pt: it is incomplete") from None
    except (pickle.UnpicklingError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GenkitError(f"refusing to load {file}: it holds more than tensors and plain values ({first})") from None
    except (EOFError, OSError, RuntimeError, ValueError) as e:  # truncated, empty, a folder, not a torch file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GenkitError(f"cannot read {file}: damaged or incomplete ({first})") from None
