"""FID curves over checkpoints (``fid_curve.json``) and the comparison of runs by them.

    python -m genkit.eval.fid --run runs/monoflow-mnist --features classifier --classifier runs/classifier-mnist \
        --checkpoints all                                     # -> runs/monoflow-mnist/fid_curve.json, fid_curve.png
    python -m genkit.eval.compare --runs runs/monoflow-mnist runs/wgan-gp-mnist --out runs/compare-mnist

A run's ``fid_curve.json`` (:class:`FIDCurve`) holds one :class:`CurvePoint` per evaluated checkpoint:
the Trainer step, the **generator steps** (optimizer steps of the sampled network, counted by the
Trainer: a GAN trained with 5 critic steps per generator step has 1,000 generator steps at Trainer
step 5,000; for a flow they equal the Trainer steps), the seconds of training so far, and the FID.
:func:`compare_runs` reads several runs' curves and reports each run at equal budgets (plus any
``--steps`` / ``--seconds`` asked for): **equal generator steps**, the largest generator-step count at
which every run has an evaluated checkpoint (:func:`equal_steps_budget`; runs checkpointed on a shared
grid of generator steps are then read at exactly the same count), and **equal time**, the shortest run's
training time (:func:`equal_time_budget`). A run's value at a budget is its FID at the last evaluated
checkpoint at or before the budget, in time up to a tolerance of max(1 s, 1%) (:func:`point_at`,
:func:`time_tolerance`: runs given the same ``--train.time-limit`` stop some milliseconds apart); the
table says which checkpoint that was.
Written to ``--out``: ``comparison.md`` (one markdown table, also printed), ``comparison.json`` (the same
numbers) and ``comparison.png`` (FID against generator steps and against seconds, one line per run).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from genkit.errors import GenkitError

__all__ = [
    "CURVE_FILE", "Comparison", "CompareConfig", "CurvePoint", "FIDCurve", "RunCurve", "compare_runs", "equal_steps_budget",
    "equal_time_budget", "extend_curve", "main", "point_at", "read_curve", "run_label", "time_tolerance",
]

CURVE_FILE = "fid_curve.json"
Axis = Literal["generator_steps", "train_seconds"]


# ---- the curve file -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurvePoint:
    """FID of one checkpoint, with how far training had come (:class:`genkit.eval.runs.CheckpointProgress`)."""

    step: int
    """Trainer steps (a GAN's critic steps under several critic steps per generator step)"""
    generator_steps: int
    """optimizer steps of the sampled network: a GAN's generator steps, a flow's steps"""
    train_seconds: float | None
    """wall time of training up to the checkpoint, summed over resumes (None: not recorded, an old checkpoint)"""
    fid: float
    sample_seconds: float
    """wall time of sampling and feature extraction for this point"""


@dataclass(frozen=True)
class FIDCurve:
    """FID of a run's checkpoints under one setting: the run folder's ``fid_curve.json``.

    ``settings``: ``metric`` (``fid_inception`` or ``fid_classifier``), ``extractor``, ``ref``, ``n``,
    ``n_ref``, ``ref_subset`` (which reference images), ``solver``, ``nfe`` (network evaluations per
    sample of a fixed-step solver; ``"adaptive"`` for dopri5, with its ``atol`` and ``rtol``; None for
    one-shot generators), ``weights``, ``precision``, ``seed``: what eval.json records with one FID. ``points``: one per checkpoint, by increasing ``step``.
    """

    settings: dict[str, str | int | None]
    points: tuple[CurvePoint, ...]


def read_curve(run_dir: str | Path) -> FIDCurve | None:
    """The run's ``fid_curve.json`` (``None`` if there is none); a one-line error if it is unreadable."""
    path = Path(run_dir) / CURVE_FILE
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
        return FIDCurve(dict(card["settings"]), tuple(CurvePoint(**p) for p in card["points"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise GenkitError(f"{path} is not a FID curve ({type(e).__name__}: {e}): delete it and run "
                          f"python -m genkit.eval.fid --run {run_dir} --checkpoints all") from None


def extend_curve(run_dir: str | Path, settings: dict[str, str | int | None], steps: Sequence[int],
                 fid_at: Callable[[int], tuple[float, float]], *,
                 only_missing: bool = False) -> dict[int, tuple[float, float]]:
    """Evaluate the checkpoints of Trainer ``steps`` into the run's ``fid_curve.json`` and draw ``fid_curve.png``.

    ``fid_at(step) -> (FID, seconds)`` evaluates one checkpoint. Points already in the file are kept when
    they were made with the same ``settings`` (a file of other settings is replaced, with a note on
    stderr); ``only_missing`` skips the steps it already has. The file is rewritten after each point, so
    a killed command keeps what it finished, and each point is reported on stderr as a JSON line.
    Returns ``{step: (FID, seconds)}`` of the checkpoints evaluated by this call.
    """
    from genkit.eval.runs import checkpoint_progress
    from genkit.plots import save_curves
    from genkit.train.checkpoint import write_json_atomic

    run_dir = Path(run_dir)
    old = read_curve(run_dir)
    if old is not None and old.settings != settings:
        print(f"replacing {run_dir / CURVE_FILE}: it was made with other settings {old.settings}", file=sys.stderr)
    points = {p.step: p for p in old.points} if old is not None and old.settings == settings else {}
    done: dict[int, tuple[float, float]] = {}
    for step in sorted(s for s in set(steps) if not (only_missing and s in points)):
        fid, seconds = done[step] = fid_at(step)
        progress = checkpoint_progress(run_dir, step)
        points[step] = CurvePoint(step, progress.generator_steps, progress.train_seconds, fid, seconds)
        ordered = [points[s] for s in sorted(points)]
        write_json_atomic(run_dir / CURVE_FILE, {"settings": settings, "points": [asdict(p) for p in ordered]})
        print(json.dumps({"fid_curve": asdict(points[step])}), file=sys.stderr)
    if points:
        ordered = [points[s] for s in sorted(points)]
        label = f"{settings['weights']} weights{_sampling(settings)}"
        save_curves({label: ([p.generator_steps for p in ordered], [p.fid for p in ordered])}, run_dir / "fid_curve.png",
                    xlabel="generator steps (flows: steps)", ylabel=f"FID ({settings['extractor']}, N={settings['n']})",
                    title=f"{run_dir.name}: FID over training")
    return done


# ---- equal budgets ---------------------------------------------------------------------------------------
TIME_TOLERANCE_SECONDS = 1.0
TIME_TOLERANCE_FRACTION = 0.01


def time_tolerance(seconds: float) -> float:
    """The slack of a budget of ``seconds`` of training: max(1 s, 1% of it).

    Runs given the same ``--train.time-limit`` stop at the first step past it and write their last
    checkpoint then, some milliseconds apart; without slack, the run that stopped first would push every
    other run back to its previous checkpoint, up to a whole checkpoint interval earlier.
    """
    return max(TIME_TOLERANCE_SECONDS, TIME_TOLERANCE_FRACTION * seconds)


def point_at(points: Sequence[CurvePoint], axis: Axis, budget: float) -> CurvePoint | None:
    """The last checkpoint (largest step) whose ``axis`` value is known and at most ``budget`` (None: none is);
    on ``train_seconds`` at most ``budget + time_tolerance(budget)``."""
    limit = budget + time_tolerance(budget) if axis == "train_seconds" else budget
    within = [p for p in points if getattr(p, axis) is not None and getattr(p, axis) <= limit]
    return max(within, key=lambda p: p.step, default=None)


def equal_steps_budget(curves: Sequence[FIDCurve]) -> tuple[int | None, bool]:
    """``(budget, shared)``: the largest generator-step count at which every curve has an evaluated point
    (``shared`` True), so that every run is read at exactly that count.

    Time-limited runs end off any shared checkpoint grid, so their final counts differ; the smallest of
    them would read every other run up to a checkpoint interval earlier. If the curves share no count at
    all, the budget is that smallest final count (``shared`` False: each run is read at its last point at
    or before it). ``(None, False)`` without curves.
    """
    counts = [{p.generator_steps for p in c.points} for c in curves if c.points]
    shared = set.intersection(*counts) if counts else set()
    if shared:
        return max(shared), True
    return (min(max(c) for c in counts) if counts else None), False


def equal_time_budget(curves: Sequence[FIDCurve]) -> float | None:
    """The shortest training time of the curves: the minimum over curves of their largest ``train_seconds``
    (read within :func:`time_tolerance`). Curves without recorded times take no part; None if none has one."""
    reached = [max(v) for c in curves if (v := [p.train_seconds for p in c.points if p.train_seconds is not None])]
    return min(reached) if reached else None


# ---- labels ----------------------------------------------------------------------------------------------
def _reflow_label(card: Mapping[str, Any]) -> str:
    stage = card.get("stage", "rf")
    if stage == "distill":
        return f"distilled flow, {card.get('distill', {}).get('steps', 1)} step(s)"
    return {"rf": "rectified flow", "reflow": "reflow"}.get(stage, stage)


def _monoflow_label(card: Mapping[str, Any]) -> str:
    o = card.get("objective", {})
    label = f"MonoFlow h={o.get('h', 'identity')}"
    label += ", particle" if o.get("form") == "particle" else ""
    label += f", {o['d_steps']} D steps" if o.get("d_steps", 1) > 1 else ""
    return label + (f", {o['g_steps']} G steps" if o.get("g_steps", 1) > 1 else "")


def _reflow_gan_label(card: Mapping[str, Any]) -> str:
    o = card.get("objective", {})
    label = {"reflow_gan": "ReFlow-GAN", "wgan_gp": "WGAN-GP"}.get(o.get("kind", "reflow_gan"), str(o.get("kind")))
    label += f", gp weight {o['gp_weight']:g}" if o.get("gp_weight") is not None else ""
    label += f", gp centre {o['gp_center']:g}" if o.get("gp_center") is not None else ""
    return label + (f", {o['critic_steps']}:1" if o.get("critic_steps", 5) != 5 else "")


LABELS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "reflow": _reflow_label, "monoflow": _monoflow_label, "reflow_gan": _reflow_gan_label}
"""recipe -> short label from the run's config.json: what tells runs of that recipe apart."""


def run_label(run_dir: str | Path) -> str:
    """A short label for the run from its config.json (e.g. ``MonoFlow h=log_sigmoid``, ``WGAN-GP``)."""
    from genkit.eval.runs import recipe_of

    recipe = recipe_of(run_dir)
    if recipe not in LABELS:
        return Path(run_dir).name
    return LABELS[recipe](json.loads((Path(run_dir) / "config.json").read_text()))


# ---- the comparison --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunCurve:
    label: str
    run: Path
    curve: FIDCurve


@dataclass(frozen=True)
class Comparison:
    """Runs at equal budgets. ``budgets[j] = (axis, value)``; ``picks[i][j]``: run ``i``'s point at budget ``j``;
    ``notes``: caveats printed under the table (e.g. no generator-step count shared by every run)."""

    runs: tuple[RunCurve, ...]
    budgets: tuple[tuple[Axis, float], ...]
    picks: tuple[tuple[CurvePoint | None, ...], ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        shared = {k: self.runs[0].curve.settings.get(k) for k in COMPARABLE}
        return {"settings": shared, "notes": list(self.notes),
                "budgets": [{"axis": a, "value": v, "read_up_to": _limit(a, v)} for a, v in self.budgets],
                "runs": [{"label": r.label, "run": str(r.run), "solver": r.curve.settings.get("solver"),
                          "nfe": r.curve.settings.get("nfe"),
                          "at_budgets": [None if p is None else asdict(p) for p in picks],
                          "final": asdict(r.curve.points[-1])} for r, picks in zip(self.runs, self.picks)]}

    def markdown(self) -> str:
        """One table: a row per run, FID at each budget (with the checkpoint used), then the final point."""
        s = self.runs[0].curve.settings
        head = ["run", *(f"FID @ {_budget(a, v)}" for a, v in self.budgets), "final FID", "generator steps",
                "Trainer steps", "train seconds"]
        rows = [[r.label, *(_cell(p, a) for p, (a, _) in zip(picks, self.budgets)),
                 f"{r.curve.points[-1].fid:.4g}", f"{r.curve.points[-1].generator_steps:,}", f"{r.curve.points[-1].step:,}",
                 _seconds(r.curve.points[-1].train_seconds)] for r, picks in zip(self.runs, self.picks)]
        lines = [f"FID ({s.get('extractor')}, {s.get('ref')}, N={s.get('n')}); at a budget: each run's last checkpoint at "
                 f"or before it (its generator steps or seconds in brackets), in seconds up to max({TIME_TOLERANCE_SECONDS:g} s, "
                 f"{TIME_TOLERANCE_FRACTION:.0%}) later (runs given the same time limit stop some ms apart).", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        notes = ["", *(f"Note: {n}" for n in self.notes)] if self.notes else []
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows] + notes) + "\n"


COMPARABLE = ("metric", "extractor", "ref", "n", "ref_subset")
"""settings that must agree for FIDs to be compared (solver, NFE, weights and seed may differ); ``ref_subset``
is absent (None) from curves made before reference subsets were seeded random ones, which used the first N"""


def _sampling(settings: Mapping[str, Any]) -> str:
    """How a flow's curve drew its samples, ``", euler 100 NFE"`` or ``", dopri5 (adaptive)"`` (one-shot
    generators: nothing to say)."""
    nfe = settings.get("nfe")
    if nfe is None:
        return ""
    return f", {settings.get('solver')} ({nfe})" if isinstance(nfe, str) else f", {settings.get('solver')} {nfe} NFE"


def _seconds(s: float | None) -> str:
    return "n/a" if s is None else f"{s:,.0f} s"


def _budget(axis: Axis, value: float) -> str:
    return f"{int(value):,} generator steps" if axis == "generator_steps" else _seconds(value)


def _limit(axis: Axis, value: float) -> float:
    """The largest ``axis`` value read at a budget of ``value`` (:func:`point_at`)."""
    return value + time_tolerance(value) if axis == "train_seconds" else value


def _cell(p: CurvePoint | None, axis: Axis) -> str:
    if p is None:
        return "n/a"
    at = f"{p.generator_steps:,}" if axis == "generator_steps" else _seconds(p.train_seconds)
    return f"{p.fid:.4g} ({at})"


def compare_runs(runs: Sequence[str | Path], labels: Sequence[str] = (), *, steps: Sequence[int] = (),
                 seconds: Sequence[float] = ()) -> Comparison:
    """Read each run's fid_curve.json and pick every run's point at the common budgets.

    Budgets, in increasing order per axis: :func:`equal_steps_budget` (the largest generator-step count
    every run has a point at) and ``steps``; :func:`equal_time_budget` (the shortest run's train_seconds,
    runs with recorded times only) and ``seconds``; each run read by :func:`point_at`. ``labels``: one per run
    (default: :func:`run_label` plus the solver and NFE of a flow's curve, with the folder name added where
    two runs would share a label).
    """
    if not runs:
        raise GenkitError("compare needs at least one run: --runs R1 R2 ...")
    if labels and len(labels) != len(runs):
        raise GenkitError(f"--labels got {len(labels)} labels for {len(runs)} runs: "
                          "give one per run, in the order of --runs")
    curves = []
    for run in runs:
        curve = read_curve(run)
        if curve is None or not curve.points:
            raise GenkitError(f"{run} has no {CURVE_FILE}: run python -m genkit.eval.fid --run {run} --checkpoints all "
                              "(with the same --features, --ref and --n for every run)")
        curves.append(curve)
    for key in COMPARABLE:
        values = {c.settings.get(key) for c in curves}
        if len(values) > 1:
            raise GenkitError(f"the runs' FID curves differ in {key} ({', '.join(map(str, sorted(values, key=str)))}): "
                              "compute every curve with the same --features, --ref and --n")
    names = list(labels) or [run_label(r) + _sampling(c.settings) for r, c in zip(runs, curves)]
    if not labels:
        names = [f"{n} [{Path(r).name}]" if names.count(n) > 1 else n for n, r in zip(names, runs)]
    equal_steps, shared = equal_steps_budget(curves)
    notes = () if shared else ((
        f"no generator-step count has an evaluated checkpoint in every run: the equal-steps budget is the smallest "
        f"final count ({equal_steps:,}), and runs are read at their last checkpoint at or before it, possibly "
        "up to a checkpoint interval earlier (checkpoint the runs on the same generator steps to compare them exactly)"),)
    budgets: list[tuple[Axis, float]] = []
    for axis, extra, common in (("generator_steps", steps, equal_steps), ("train_seconds", seconds, equal_time_budget(curves))):
        budgets += [(axis, v) for v in sorted(set(extra) | ({common} - {None}))]
    picks = tuple(tuple(point_at(c.points, a, v) for a, v in budgets) for c in curves)
    return Comparison(tuple(RunCurve(n, Path(r), c) for n, r, c in zip(names, runs, curves)), tuple(budgets), picks, notes)


def save_comparison(comparison: Comparison, out: str | Path) -> Path:
    """Write comparison.md, comparison.json and comparison.png into ``out``; returns the markdown file."""
    from genkit.plots import CurvePanel, save_curve_panels
    from genkit.train.checkpoint import write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "comparison.json", comparison.to_json())
    s = comparison.runs[0].curve.settings
    ylabel = f"FID ({s.get('extractor')}, N={s.get('n')})"
    marks = {axis: tuple(v for a, v in comparison.budgets if a == axis) for axis in ("generator_steps", "train_seconds")}
    panels = [CurvePanel({r.label: ([p.generator_steps for p in r.curve.points], [p.fid for p in r.curve.points])
                          for r in comparison.runs}, xlabel="generator steps", ylabel=ylabel,
                         vlines=marks["generator_steps"], title="equal generator steps")]
    timed = {r.label: ([p.train_seconds for p in pts], [p.fid for p in pts]) for r in comparison.runs
             if (pts := [p for p in r.curve.points if p.train_seconds is not None])}
    if timed:
        panels.append(CurvePanel(timed, xlabel="seconds of training", ylabel=ylabel, vlines=marks["train_seconds"],
                                 title="equal wall time"))
    save_curve_panels(panels, out / "comparison.png", title=f"{s.get('ref')}: FID over training")
    path = out / "comparison.md"
    tmp = out / f".{path.name}.tmp"
    tmp.write_text(comparison.markdown())
    tmp.replace(path)
    return path


# ---- command line: python -m genkit.eval.compare --runs R1 R2 ... --out DIR ---------------------------------
@dataclass(frozen=True)
class CompareConfig:
    """Compare runs by their FID curves (python -m genkit.eval.fid --run R --checkpoints all) at equal
    generator steps and equal wall time: comparison.md (printed), comparison.json, comparison.png."""

    runs: tuple[Path, ...]
    """run folders, each with a fid_curve.json"""
    out: Path
    """folder for comparison.md, comparison.json, comparison.png"""
    labels: tuple[str, ...] = ()
    """one label per run (default: from each run's config.json, e.g. 'MonoFlow h=identity', 'WGAN-GP')"""
    steps: tuple[int, ...] = ()
    """more generator-step budgets for the table (the largest count every run has a checkpoint at is always there)"""
    seconds: tuple[float, ...] = ()
    """more budgets in seconds of training (the shortest run's time is always there; read within max(1 s, 1%))"""


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(CompareConfig, args=argv, prog="python -m genkit.eval.compare")
    comparison = compare_runs(cfg.runs, cfg.labels, steps=cfg.steps, seconds=cfg.seconds)
    print(save_comparison(comparison, cfg.out).read_text(), end="")
    return 0


if __name__ == "__main__":
    from genkit.cli import run_main

    sys.exit(run_main(main))
