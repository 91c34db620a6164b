"""What the bench suite reports: a part's summary (``summary-<part>.json``: the numbers, the exact
commands, device, torch version, date) and its markdown (``summary-<part>.md``, printed last). The
functions read the runner's records and run folders; what they need of the plan comes as arguments.
The whole story is in genkit/bench/suite.py."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from genkit.bench.suite_runner import _now
from genkit.train.checkpoint import read_json_object

if TYPE_CHECKING:
    from genkit.bench.suite import Step
    from genkit.bench.suite_runner import Runner


# ---- summaries ----------------------------------------------------------------------------------------
def machine_info(device: str) -> dict[str, str]:
    import torch

    from genkit.bench.sampling import device_name
    from genkit.cli import resolve_device

    return {"device": device_name(resolve_device(device)), "torch": torch.__version__, "python": sys.executable}


STAGE_NAMES = {"rf": "1-RF", "reflow": "2-RF", "distill": "2-RF + distillation"}
FLOOR = "fid_classifier_floor_train_vs_test"


def summarize(suite: Runner, *, dataset: str | None, nfe: tuple[int, ...], gan_recipes: Collection[str]) -> dict:
    """The summary of ``suite``'s part: the part's ``dataset`` (None: speed), the ``nfe`` of its FID-C and the
    recipes of its GAN runs come from its plan."""
    cfg = suite.cfg
    reported = suite.reported()
    mine = {s.name for s in suite.steps}
    steps = []
    for step in reported:
        rec = suite.record(step)
        here = suite.this_run.get(step.name, "not reached") if step.name in mine else "not selected (--only)"
        steps.append({"name": step.name, "status": rec.get("status", "not run"), "this_invocation": here,
                      "seconds_total": rec.get("seconds_total"), "commands": [r["command"] for r in rec.get("invocations", [])]})
    out = {"part": cfg.part, "status": {"done": "complete", "deadline": "incomplete"}.get(suite.outcome, suite.outcome),
           "error": suite.error, "smoke": cfg.smoke, **suite.machine, "date": _now(), "work": str(cfg.work),
           "deadline_minutes": cfg.deadline_minutes, "parallel": cfg.parallel, "elapsed_minutes": round((time.monotonic() - suite.t0) / 60, 2),
           "notes": suite.notes, "steps": steps}
    by_name = {s.name: s for s in reported}
    if cfg.part == "speed":
        out["results"] = {name.removeprefix("speed-"): suite.record(s).get("rows", []) for name, s in by_name.items()}
        return out
    evs = {s.name: read_json_object(s.run / "eval.json") for s in reported if s.train is not None}
    # the classifier and the comparison by their folders: --only may leave their steps out of this invocation
    clf = read_json_object(cfg.work / f"{dataset}-classifier" / "eval.json")
    results: dict = {"classifier": {k: clf.get(k) for k in ("step", "test_accuracy", "n_test", "train_seconds")}}
    floors = [ev[FLOOR] for ev in evs.values() if FLOOR in ev]
    if floors:
        results["fid_floor_train_vs_test"] = floors[0]
    if cfg.part.startswith("gans-"):
        out["results"] = results | gan_results(suite, evs, cfg.work / f"{dataset}-gans-compare", gan_recipes)
        return out
    results["stages"] = []
    for stage in ("rf", "reflow", "distill"):
        step = by_name.get(f"{dataset}-{stage}")
        if step is None:
            continue
        ev = evs[step.name]
        row = {"stage": stage, **_trained(suite, step, ev),
               "straightness": ev.get("straightness"), "transport_cost": ev.get("transport_cost"),
               "fid_classifier": {k: ev.get(f"fid_classifier_nfe{k}") for k in nfe},
               "fid_seconds": {k: ev.get(f"fid_classifier_seconds_nfe{k}") for k in nfe}, "fid_n": ev.get("fid_classifier_n")}
        partial = _nll_partial(step.run)
        if partial and "nll_bpd" not in ev:
            row["nll_partial"] = partial
        if "nll_bpd" in ev:
            row |= {k: ev.get(k) for k in ("nll_bpd", "nll_bpd_stderr", "nll_n", "nll_seconds", "nll_solver", "nll_rtol",
                                              "nll_nfe_per_solve", "nll_precision")}
        results["stages"].append(row)
    out["results"] = results
    return out


def _trained(suite: Runner, step: Step, ev: dict) -> dict:
    """A training step's run, steps, training minutes (counted and budget), command minutes and throughput."""
    return {"run": str(step.run), "step": ev.get("step"), "train_minutes": _div(ev.get("train_seconds"), 60),
            "budget_minutes": step.train, "wall_minutes": _div(suite.record(step).get("seconds_total"), 60),
            "samples_per_second": _steady_throughput(step.run / "metrics.jsonl")}


def _nll_partial(run: Path) -> dict | None:
    """What a bits/dim evaluation cut short by the deadline finished: images, their seconds and NFE per solve."""
    from genkit.eval.nll import PROGRESS_FILE

    batches = read_json_object(run / PROGRESS_FILE).get("batches", {})
    if not batches:
        return None
    images = sum(len(b["log_prob"]) for b in batches.values())
    seconds = sum(b["seconds"] for b in batches.values())
    nfe = [b["nfe"] for b in batches.values() if "nfe" in b]
    return {"batches": len(batches), "images": images, "seconds": round(seconds, 1),
            "nfe_per_batch": round(sum(nfe) / len(nfe), 1) if nfe else None}


def _steady_throughput(metrics: Path) -> float | None:
    """Median ``samples_per_sec`` of a run's log lines after the first (which holds start-up and compilation)."""
    import statistics

    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    rates = [r["samples_per_sec"] for r in rows[1:] if "samples_per_sec" in r]
    return statistics.median(rates) if rates else None


def gan_results(suite: Runner, evs: dict[str, dict], compare: Path, gan_recipes: Collection[str]) -> dict:
    """Each GAN run's training and FID-C curve, and their comparison (comparison.json, comparison.md)."""
    runs = []
    for step in suite.reported():
        if step.module not in gan_recipes:
            continue
        ev, points = evs[step.name], read_json_object(step.run / "fid_curve.json").get("points", [])
        last = points[-1] if points else {}
        runs.append({"name": step.name, **_trained(suite, step, ev),
                     "steps_per_second": _div(ev.get("step"), ev.get("train_seconds") or None),
                     "checkpoint_every": read_json_object(step.run / "config.json").get("train", {}).get("checkpoint_every"),
                     "fid_points": len(points), "generator_steps": last.get("generator_steps"), "fid_last": last.get("fid"),
                     "fid_n": ev.get("fid_classifier_n")})
    table = compare / "comparison.md"
    return {"runs": runs, "comparison": read_json_object(compare / "comparison.json") or None,
            "comparison_table": table.read_text() if table.is_file() else None}


def _div(x, d: float | None):
    return None if x is None or d is None else x / d


def _f(x, spec: str = ".4g") -> str:
    return "–" if x is None else format(x, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


TRAIN_NOTE = ("train min: training minutes counted by the trainer (--train.time-limit); command min: wall time of "
              "the training command(s), with start-up, data and the final evaluation")
JPEG = "this CIFAR-10 is a JPEG re-encoding: no number here is comparable to published CIFAR-10 numbers"
GANS = ("every GAN trains on the same data (no flips) at the same batch; networks, optimisers and update ratios "
        "are each recipe's preset's")
CAVEATS = {"mnist": "the distilled student is trained for one step: NFE 1 is its number", "cifar": JPEG,
           "gans-mnist": GANS, "gans-cifar": f"{GANS}; {JPEG}"}


def _fid_notes(res: dict, n: int | None, caveat: str) -> tuple[str, str]:
    """(the FID-C floor line, the classifier line) under a part's table."""
    clf = res["classifier"]
    return ((f"FID-C floor (train vs test, N = {_f(n, 'd')}): {_f(res.get('fid_floor_train_vs_test'))}. FID-C uses "
             f"a genkit classifier's features: not comparable to Inception FID; {caveat}."),
            f"FID-C classifier: test accuracy {_f(clf.get('test_accuracy'))} after {_f(clf.get('step'), 'd')} steps.")


def markdown(summary: dict) -> str:
    """The summary as markdown: the numbers, then every command with its wall time, device and date."""
    part, res = summary["part"], summary.get("results", {})
    lines = [f"## genkit bench suite: {part}{' (smoke)' if summary['smoke'] else ''}: {summary['status']}", ""]
    if summary["error"]:
        lines += [f"error: {summary['error']}", ""]
    if part == "speed":
        overhead = ("case", "batch", "bare_img_per_s", "trainer_img_per_s", "overhead_pct", "overhead_pct_min",
                    "overhead_pct_max", "bf16", "compile_mode")
        cols = {"trainer-overhead": overhead, "trainer-overhead-cudagraphs": overhead,
                "sampling": ("preset", "nfe", "batch", "img_per_s", "ms_per_nfe_img", "params_M", "bf16", "compile"),
                "pairs-memory": ("pairs", "shards", "host_peak_MiB", "gpu_peak_MiB", "seconds", "pairs_per_s", "compile",
                                 "compile_seconds")}
        for name, keys in cols.items():
            rows = res.get(name, [])
            lines += [f"{name} ({rows[0]['device'] if rows else 'not measured'}):", ""]
            lines += _table(keys, [[str(r.get(k, "–")) for k in keys] for r in rows]) + [""]
    elif part.startswith("gans-"):
        lines += [(res.get("comparison_table") or "No comparison yet: its step has not run.").rstrip(), ""]
        header = ["run", "Trainer steps", "generator steps", "train min", "command min", "steps/s", "checkpoint every",
                  "FID-C points", "last FID-C"]
        lines += _table(header, [[r["name"], _f(r["step"], "d"), _f(r["generator_steps"], "d"), _f(r["train_minutes"], ".2f"),
                                  _f(r["wall_minutes"], ".2f"), _f(r["steps_per_second"], ".1f"), _f(r["checkpoint_every"], "d"),
                                  str(r["fid_points"]), _f(r["fid_last"])] for r in res["runs"]]) + [""]
        n = next((r["fid_n"] for r in res["runs"] if r["fid_n"]), None)
        lines += [(f"{TRAIN_NOTE}; steps/s: Trainer steps per training second, what --rates.* guess (checkpoint "
                   "intervals follow from them); a ReFlow-GAN or WGAN-GP Trainer step is a critic step (5 per generator step)."),
                  *_fid_notes(res, n, CAVEATS[part]), ""]
    elif res:
        nfe = list(res["stages"][0]["fid_classifier"]) if res["stages"] else []
        header = ["stage", "steps", "train min", "command min", "train img/s", "straightness",
                  *(f"FID-C NFE {k}" for k in nfe)]
        if part == "cifar":
            header += ["bits/dim (K=1)", "NLL images", "NLL s", "NLL NFE"]
        rows = []
        for r in res["stages"]:
            row = [STAGE_NAMES[r["stage"]], _f(r["step"], "d"), _f(r["train_minutes"], ".2f"), _f(r["wall_minutes"], ".2f"),
                   _f(r["samples_per_second"], ".0f"), _f(r["straightness"]), *(_f(r["fid_classifier"][k]) for k in nfe)]
            if part == "cifar":
                bpd = "–" if r.get("nll_bpd") is None else f"{r['nll_bpd']:.4f} ± {_f(r.get('nll_bpd_stderr'), '.4f')}"
                if r.get("nll_partial"):
                    p = r["nll_partial"]
                    bpd = f"cut short: {p['images']} images in {p['seconds']} s"
                row += [bpd, _f(r.get("nll_n"), "d"), _f(r.get("nll_seconds"), ".1f"), _f(r.get("nll_nfe_per_solve"), ".1f")]
            rows.append(row)
        lines += _table(header, rows) + [""]
        n = next((r["fid_n"] for r in res["stages"] if r["fid_n"]), None)
        times = "; ".join(f"{STAGE_NAMES[r['stage']]} " + ", ".join(_f(r["fid_seconds"][k], ".1f") for k in nfe)
                          for r in res["stages"])
        floor, classifier = _fid_notes(res, n, CAVEATS[part])
        lines += [f"{TRAIN_NOTE} (and teacher pairs); train img/s: the median of the run's logged samples_per_sec "
                  "after its first log line.", floor,
                  f"FID-C seconds for N = {_f(n, 'd')} samples at NFE {', '.join(map(str, nfe))}: {times}.", classifier, ""]
    rows = [[s["name"], s["status"], s["this_invocation"], _f(s["seconds_total"], ".1f"),
             "<br>".join(f"`{c}`" for c in s["commands"]) or "–"] for s in summary["steps"]]
    lines += _table(["step", "status", "this invocation", "wall s (all)", "commands"], rows) + [""]
    lines += [f"device {summary.get('device', '?')}, torch {summary.get('torch', '?')}, python = {summary.get('python', '?')}, "
              f"{summary['date']}; {summary['elapsed_minutes']} of {summary['deadline_minutes']} min used; "
              + "; ".join(summary["notes"])]
    if summary.get("parallel", 1) > 1:
        lines[-1] += (f"; up to {summary['parallel']} steps ran at once (--parallel): they shared the device, "
                      "and their wall times overlap")
    return "\n".join(lines)
