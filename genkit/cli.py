"""Recipe command lines: a frozen dataclass config, TOML presets, tyro, one-line errors.

``python -m genkit.recipes.<name> --preset P --train.steps 100`` resolves a config in
three layers: the dataclass defaults, then ``recipes/<name>/P.toml``, then the command
line. ``--help`` lists every field with its (preset-adjusted) default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from genkit.errors import GenkitError

if typing.TYPE_CHECKING:
    import torch

T = TypeVar("T")


def recipes_dir() -> Path:
    """Folder of TOML presets: ``$GENKIT_RECIPES`` if set; else ``recipes/`` of the source tree this
    package runs from (a checkout or an editable install); else the copy installed with the package
    (``genkit/presets``, package data of the wheel)."""
    env = os.environ.get("GENKIT_RECIPES")
    if env:
        return Path(env)
    tree = Path(__file__).resolve().parents[1]
    if (tree / "pyproject.toml").is_file() and (tree / "recipes").is_dir():
        return tree / "recipes"
    from importlib.resources import files

    return Path(str(files("genkit") / "presets"))


def available_presets(recipe: str) -> list[str]:
    return sorted(p.stem for p in (recipes_dir() / recipe).glob("*.toml"))


def load_preset(recipe: str, name: str) -> dict[str, Any]:
    path = recipes_dir() / recipe / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(available_presets(recipe)) or "none found"
        raise GenkitError(f"unknown preset '{name}' for recipe '{recipe}' (known: {known}); presets live in {path.parent}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise GenkitError(f"preset {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise GenkitError(f"cannot read preset {path} ({e.strerror or e}): check the file") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check a TOML value against a field's type, converting lists to tuples and ints to floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        if value not in args:
            raise GenkitError(f"{where} = {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except GenkitError as e:
                errors.append(str(e))
        raise GenkitError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise GenkitError(f"{where} must be a list, got {value!r}")
        inner = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(inner) != len(value):
            raise GenkitError(f"{where} needs {len(inner)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(inner, value))
    if tp in (int, float) and isinstance(value, bool):  # (a bool is an int to Python: `steps = true` is 1)
        raise GenkitError(f"{where} must be {tp.__name__}, got {value!r}")
    if tp is float and isinstance(value, int):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise GenkitError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def apply_overrides(config: T, overrides: Mapping[str, Any], where: str = "") -> T:
    """``dataclasses.replace`` applied recursively from a nested mapping (a parsed preset)."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        path = f"{where}{key}"
        if name not in names:
            raise GenkitError(f"unknown setting '{path}' (known here: {', '.join(sorted(names))})")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise GenkitError(f"'{path}' is a section: write it as a [{path}] table")
            changes[name] = apply_overrides(current, value, f"{path}.")
        else:
            changes[name] = _coerce(hints[name], value, path)
    return dataclasses.replace(config, **changes)


def _preset_from_argv(argv: Sequence[str]) -> str | None:
    """The ``--preset`` of the command line; the last one if given twice (as for every flag, and as the
    config then records it)."""
    preset = None
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
        elif arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
    return preset


def parse_config(config_cls: Callable[[], T], recipe: str, argv: Sequence[str] | None = None, description: str = "") -> T:
    """Resolve defaults -> preset -> command line into a frozen config."""
    import tyro  # imported here: only command lines need it

    argv = list(sys.argv[1:] if argv is None else argv)
    default = config_cls()
    preset = _preset_from_argv(argv)
    if preset is not None:
        default = apply_overrides(default, load_preset(recipe, preset))
    return tyro.cli(
        type(default), default=default, args=argv, prog=f"python -m genkit.recipes.{recipe}",
        description=description,
    )


def to_jsonable(config: Any) -> Any:
    """A config dataclass as plain JSON values (Paths as strings, tuples as lists)."""

    def convert(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [convert(x) for x in v]
        return v

    return convert(dataclasses.asdict(config))


def print_config(config: Any) -> None:
    print(json.dumps(to_jsonable(config), indent=2, sort_keys=True))


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a recipe's ``main``; a :class:`GenkitError` becomes ``error: ...`` on stderr, exit 2."""
    try:
        return main(argv)
    except GenkitError as e:
        message = " ".join(str(e).split())  # one line, whatever the message held
        print(f"error: {message}", file=sys.stderr)
        return 2


def resolve_device(name: str) -> torch.device:
    """``auto`` (this rank's CUDA device if any, else the CPU), ``cpu``, ``cuda``, ``cuda:N``."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # (mps, meta, xpu...: genkit runs on CPUs and CUDA)
        raise GenkitError(f"unknown or unsupported device '{name}': use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenkitError(f"device '{name}' requested but CUDA is not available: use --device cpu")
    if device.type == "cuda" and device.index is None:  # this process's GPU: torchrun's LOCAL_RANK, else 0
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GenkitError(f"--device {name} under torchrun would put every rank on one GPU: use --device cuda "
                          "(each rank takes the GPU of its LOCAL_RANK)")
    return device


def check_out_folder(out: Path) -> None:
    """Refuse, in one line, an ``--out`` that cannot become a folder: a file, or a path through one."""
    out = Path(out)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "" if path == out else f" ({path} is a file)"
                raise GenkitError(f"--out {out} is a file{where}: pass a folder")
            return


def run_recipe(config: Any, run: Callable[[Any, torch.device, Any], int]) -> int:
    """The common tail of a recipe's ``main``, after parsing and checking its config.

    ``--dry-run`` prints the resolved config; otherwise picks the device, joins the process
    group when launched by torchrun, calls ``run(config, device, dist_info)`` and leaves the
    group again whatever happens.
    """
    import torch

    from genkit.train import distributed

    if config.dry_run:
        print_config(config)
        return 0
    check_out_folder(config.out)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    info = distributed.init(device)
    try:
        return run(config, device, info)
    finally:
        distributed.shutdown()


@dataclass(frozen=True)
class RunFolder:
    """What a run folder says about itself: the resolved config, one sample's shape, the latest checkpoint."""

    config: Any
    shape: tuple[int, ...]
    checkpoint: Path
    step: int


def open_run(run_dir: str | Path, recipe: str, config_cls: Callable[[], T], *, step: int | None = None) -> RunFolder:
    """Read ``run_dir/config.json`` (written by ``recipe``) back into its frozen config; one-line errors.

    ``step``: the checkpoint of that Trainer step (``None``: the latest); a step without a
    checkpoint is a one-line error naming the steps that have one.
    """
    from genkit.train import checkpoint as ckpt

    run_dir = Path(run_dir)
    try:
        card = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise GenkitError(f"{run_dir} is not a run folder (no readable config.json): point at a --out folder") from None
    if card.get("recipe") != recipe:
        raise GenkitError(f"{run_dir} is a run of recipe '{card.get('recipe')}', not '{recipe}'")
    default = config_cls()
    fields = {f.name for f in dataclasses.fields(default)}
    config = apply_overrides(default, {k: v for k, v in card.items() if k in fields})  # the card also holds recipe, shape
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    if not found:
        raise GenkitError(f"{run_dir} has no checkpoint yet: train it first")
    path = found[-1] if step is None else run_dir / "checkpoints" / ckpt.step_dir_name(step)
    if path not in found:
        steps = ", ".join(str(ckpt.read_card(p)["step"]) for p in found)
        raise GenkitError(f"{run_dir} has no checkpoint at step {step} (it has steps {steps}): pick one of these, "
                          "or none for the latest")
    return RunFolder(config, tuple(card.get("shape", ())), path, int(ckpt.read_card(path)["step"]))


def load_network(run: RunFolder, recipe: str, name: str, net: Any, *, ema: bool, device: Any) -> Any:
    """``net`` with model ``name``'s (EMA) weights from the run's latest checkpoint, frozen, in eval mode."""
    from genkit.train import checkpoint as ckpt

    ckpt.check_compatible(run.checkpoint, recipe=recipe, models={name: net})
    ckpt.load_weights(run.checkpoint, name, net, ema=ema)
    return net.to(device).eval().requires_grad_(False)


def report_stop(result: Any, info: Any) -> int:
    """Say where a stopped run's checkpoint is (rank 0) and return the exit status of a stop, 130."""
    if info.is_main:
        print(f"stopped at step {result.step}; checkpoint {result.checkpoint}. Run the same command to resume.",
              file=sys.stderr)
    return 130
