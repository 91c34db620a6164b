"""How the bench suite's steps run: the deadline, a record of each step under ``<work>/steps``, each
command tee'd into its log and signalled at the deadline, the training time limits, the packing of the
results; and what a run folder says. The whole story (parts, resumption, time guard, exit statuses) is in
genkit/bench/suite.py, which plans the steps and binds this runner to its data and its report."""

from __future__ import annotations

import codecs
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from genkit.errors import GenkitError
from genkit.train.checkpoint import read_json_object

if TYPE_CHECKING:
    from genkit.bench.suite import Step, SuiteConfig

Outcome = Literal["done", "deadline", "failed", "error", "interrupted"]
GRACE_S = 20.0  # from SIGTERM (a trainer checkpoints) to SIGKILL
TAR_LIMIT = 15 * 2**20  # the GPU tool brings back files of at most 16 MB


# ---- what a run folder says ---------------------------------------------------------------------------
def checkpoint_step(run: Path) -> int | None:
    from genkit.train.checkpoint import latest_checkpoint, read_card

    path = latest_checkpoint(run / "checkpoints")
    return None if path is None else int(read_card(path)["step"])


def trained_minutes(run: Path) -> float:
    """Training minutes the trainer counted up to the run's latest checkpoint (0 without one)."""
    from genkit.train.checkpoint import latest_checkpoint, load_trainer_state

    path = latest_checkpoint(run / "checkpoints")
    return 0.0 if path is None else float(load_trainer_state(path).get("train_seconds", 0.0)) / 60


def pairs_ready(run: Path) -> bool:
    from genkit.pairs import check_pairs

    try:
        check_pairs(run / "pairs")
    except GenkitError:
        return False
    return True


# ---- running steps ------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Runner(ABC):
    """Runs a part's steps under the deadline and packs the results after each one. What it needs of the
    part (its data, the machine's description, its summary) a subclass gives: genkit.bench.suite.Suite."""

    def __init__(self, cfg: SuiteConfig, steps: list[Step], out: Path, plan: list[Step] | None = None) -> None:
        """``steps``: what this invocation runs; ``plan``: the part's whole plan (default ``steps``), whose steps
        run by earlier invocations (``--only``) are reported and packed too."""
        self.cfg, self.steps, self.out = cfg, steps, out
        self.plan = steps if plan is None else plan
        self.t0 = time.monotonic()
        self.deadline = self.t0 + 60 * cfg.deadline_minutes
        self.this_run: dict[str, str] = {}  # step -> what happened in this invocation
        self.notes: list[str] = []
        self.outcome: Outcome = "interrupted"
        self.error = ""
        self.errors: dict[str, str] = {}  # step -> why it failed or was not started
        self.machine: dict[str, str] = {}
        self._procs: dict[str, subprocess.Popen] = {}  # step -> its running command
        self._stopping = False  # stop_all was called: start no command
        self._lock = threading.Lock()

    def left(self) -> float:
        """Minutes to the deadline."""
        return (self.deadline - time.monotonic()) / 60

    def record_path_of(self, name: str) -> Path:
        return self.cfg.work / "steps" / f"{name}.json"

    def record_path(self, step: Step) -> Path:
        return self.record_path_of(step.name)

    def record(self, step: Step) -> dict:
        return read_json_object(self.record_path(step))

    def reported(self) -> list[Step]:
        """The steps the summary and the tarball cover, in the plan's order: this invocation's, and those of
        the plan an earlier invocation ran (their records exist), so that e.g. ``--only cifar-rf-nll`` after
        ``--only cifar-rf cifar-rf-fid`` still reports the run and its FID-C."""
        names = {s.name for s in self.steps}
        return [s for s in self.plan if s.name in names or self.record_path(s).is_file()]

    def say(self, message: str) -> None:
        with self._lock:
            print(f"[suite {self.left():5.2f} min left] {message}", flush=True)

    # -- what the part gives
    @abstractmethod
    def prepare_data(self) -> str:
        """Unpack the part's data set if missing; one line saying what was done."""

    @abstractmethod
    def machine_info(self) -> dict[str, str]:
        """The machine the summary names."""

    @abstractmethod
    def summarize(self) -> dict:
        """The summary of this invocation (summary-<part>.json)."""

    @abstractmethod
    def markdown(self, summary: dict) -> str:
        """The summary as markdown (summary-<part>.md)."""

    # -- one invocation of the whole part
    def run(self) -> Outcome:
        def stop(signum, frame):  # SIGTERM/SIGHUP: stop the running command, pack, exit
            raise SystemExit(128 + signum)

        old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            self.machine = self.machine_info()
            self.notes.append(self.prepare_data())
            self.say(self.notes[-1])
            self.outcome = self.run_steps()
        except GenkitError as e:
            self.outcome, self.error = "error", " ".join(str(e).split())
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            text = self.pack()
            if self.error:
                print(f"error: {self.error}", file=sys.stderr, flush=True)
            print(text, flush=True)
        return self.outcome

    def run_steps(self) -> Outcome:
        """Run the steps not done earlier, up to ``--parallel`` at once. A step starts when the steps it
        ``needs`` are done (the first such step in plan order first); a ``solo`` step starts when nothing
        runs and holds the others off until it ends. A failed step stops new starts (with --keep-going
        only the steps that need it are left out); a step refused or stopped by the deadline stops new
        starts. Steps already running always end by themselves (or by the deadline)."""
        from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

        pending: list[Step] = []
        for step in self.steps:
            if self.record(step).get("status") == "done":
                self.this_run[step.name] = "skipped"
                self.say(f"{step.name}: done earlier, skipped ({self.record_path(step)})")
            else:
                pending.append(step)
        if not pending:
            self.say(f"all {len(self.steps)} steps were done earlier: nothing to run")
            return "done"
        outcomes: dict[str, Outcome] = {}
        running: dict[Future, Step] = {}
        stopped = False
        with ThreadPoolExecutor(self.cfg.parallel) as pool:
            try:
                while True:
                    for step in [] if stopped else list(pending):
                        if len(running) >= self.cfg.parallel or any(s.solo for s in running.values()):
                            break
                        waits, missing = self._needs(step, pending, running)
                        if missing:
                            pending.remove(step)
                            self.this_run[step.name] = "blocked"
                            self.errors[step.name] = f"step {step.name} not started: it needs {missing}, which is not done"
                            self.say(self.errors[step.name])
                            stopped = not self.cfg.keep_going
                            if stopped:
                                break
                        elif waits:
                            continue
                        elif step.solo and running:
                            break  # it goes next, alone
                        else:
                            pending.remove(step)
                            running[pool.submit(self.run_step, step)] = step
                    if not running:
                        break
                    finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in finished:
                        step = running.pop(future)
                        outcome = outcomes[step.name] = future.result()
                        self.say(f"{step.name}: {self.this_run.get(step.name, outcome)}")
                        self.pack()
                        if outcome == "failed" and self.cfg.keep_going:
                            self.say(f"{self.errors[step.name]}; going on (--keep-going)")
                        elif outcome != "done":
                            stopped = True
            except BaseException:  # Ctrl-C, SIGTERM of the suite, or an error: stop the running commands too
                self.stop_all()
                raise
        self.error = "; ".join(self.errors.values())
        if "deadline" in outcomes.values():
            return "deadline"
        return "failed" if self.errors else "done"

    def _needs(self, step: Step, pending: list[Step], running: dict) -> tuple[bool, str]:
        """(whether a step it needs is yet to run or running, the first step it needs that will not be done)."""
        waits = False
        for need in step.needs:
            if read_json_object(self.record_path_of(need)).get("status") == "done":
                continue
            if any(s.name == need for s in (*pending, *running.values())):
                waits = True
            else:
                return waits, need
        return waits, ""

    def run_step(self, step: Step) -> Outcome:
        return self.run_training(step) if step.train is not None else self.run_once(step)

    def stop_all(self) -> None:
        """SIGTERM every running command, SIGKILL those still alive after the grace period."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs.values())
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        end = time.monotonic() + GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)

    def refuse(self, step: Step, need: float) -> Outcome:
        self.this_run[step.name] = "refused"
        self.say(f"{step.name}: not started, it needs about {need:.2f} min and the deadline is nearer; "
                 "run the same command again to continue")
        return "deadline"

    def run_once(self, step: Step) -> Outcome:
        if self.left() < step.minutes:
            return self.refuse(step, step.minutes)
        rc, seconds, stdout, killed = self.execute(step, step.argv())
        rows = [json.loads(line) for line in stdout.splitlines() if _is_json(line)]
        status = "done" if rc == 0 and not killed else ("partial" if killed else "failed")
        self.save(step, status, step.command(), rc, seconds, rows=rows)
        return self.judge(step, status, rc, killed)

    def run_training(self, step: Step) -> Outcome:
        e, budget = self.cfg.expect, step.train
        trained = trained_minutes(step.run)
        reserve = step.minutes + (e.pairs if step.pairs and not pairs_ready(step.run) else 0.0)
        avail = self.left() - reserve
        want = max(budget - trained, 0.0) if budget else e.min_train
        if want > 0 and avail < min(want, e.min_train):
            return self.refuse(step, reserve + min(want, e.min_train))
        limit = trained + max(avail, 0.0)
        limit = min(budget, limit) if budget else limit
        rc, seconds, _, killed = self.execute(step, step.argv(limit))
        ev, ckpt_step = read_json_object(step.run / "eval.json"), checkpoint_step(step.run)
        if killed or rc != 0:
            status = "partial" if killed or rc == 130 else "failed"
        elif ev.get("step") != ckpt_step:
            status = "failed"
            self.notes.append(f"{step.name}: eval.json is at step {ev.get('step')}, the latest checkpoint at {ckpt_step}")
        elif not ev.get("time_limit_reached"):
            status = "done"  # the recipe's steps were reached
        elif budget and float(ev.get("train_seconds", 0.0)) >= 60 * budget - 0.1:
            status = "done"  # its training minutes are spent: the marker later steps wait for
        else:
            status = "partial"  # stopped at the deadline's time limit: continue next time
        self.save(step, status, step.command(limit), rc, seconds, time_limit=limit,
                  trained_step=ev.get("step"), train_seconds=ev.get("train_seconds"))
        if status == "partial":
            self.say(f"{step.name}: trained {trained_minutes(step.run):.2f} of "
                     f"{budget or 'its'} minutes before the deadline; run the same command again to continue")
            return "deadline"
        return self.judge(step, status, rc, killed)

    def judge(self, step: Step, status: str, rc: int, killed: bool) -> Outcome:
        if status == "done":
            return "done"
        if killed:
            self.say(f"{step.name}: stopped at the deadline; run the same command again")
            return "deadline"
        log = self.cfg.work / "logs" / f"{step.name}.log"
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith("=== ")]
        last = lines[-1] if lines else "(no output)"
        self.errors[step.name] = f"step {step.name} failed (exit {rc}): {last.strip()} (log: {log})"
        return "failed"

    def save(self, step: Step, status: str, command: str, rc: int, seconds: float, **extra) -> None:
        from genkit.train.checkpoint import write_json_atomic

        rec = self.record(step)
        runs = rec.get("invocations", []) + [{"command": command, "rc": rc, "seconds": round(seconds, 2), "date": _now()}]
        rec |= {"name": step.name, "status": status, "invocations": runs,
                "seconds_total": round(sum(r["seconds"] for r in runs), 2), **extra}
        self.record_path(step).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.record_path(step), rec)
        self.this_run[step.name] = status

    def execute(self, step: Step, argv: list[str]) -> tuple[int, float, str, bool]:
        """Run one command, tee'ing stdout and stderr into its log; (exit status, seconds, stdout, killed)."""
        log_path = self.cfg.work / "logs" / f"{step.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = shlex.join(["python", *argv])
        self.say(f"{step.name}: {command}")
        captured: list[str] = []
        lock = threading.Lock()
        echo = self.cfg.parallel == 1  # several commands at once: their output goes to their logs only
        with open(log_path, "ab") as log:
            log.write(f"\n=== {_now()} $ {command}\n".encode())
            log.flush()
            start = time.monotonic()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if self.cfg.smoke:  # tiny networks: one thread is fastest, and spares a shared CPU
                env.setdefault("OMP_NUM_THREADS", "1")
            # its own process group (the deadline signals the command and its children), same session (a
            # GPU tool that ends the session's processes when the command returns still ends these)
            with self._lock:
                if self._stopping:
                    raise SystemExit(1)  # the suite is stopping: this command does not start
                proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=env, process_group=0)
                self._procs[step.name] = proc

            def pump(stream, sink, keep: bool) -> None:
                decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
                for chunk in iter(lambda: stream.read1(1 << 16), b""):
                    text = decode.decode(chunk)
                    with lock:
                        log.write(chunk)
                        log.flush()
                        if echo:
                            sink.write(text)
                            sink.flush()
                    if keep:
                        captured.append(text)

            pumps = [threading.Thread(target=pump, args=(proc.stdout, sys.stdout, True), daemon=True),
                     threading.Thread(target=pump, args=(proc.stderr, sys.stderr, False), daemon=True)]
            for t in pumps:
                t.start()
            killed = False
            try:
                while True:
                    try:
                        proc.wait(timeout=1.0)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    now = time.monotonic()
                    if now > self.deadline and not killed:
                        self.say(f"{step.name}: deadline reached, SIGTERM")
                        _signal(proc, signal.SIGTERM)
                        killed = True
                    elif killed and now > self.deadline + GRACE_S:
                        _signal(proc, signal.SIGKILL)
            except BaseException:  # Ctrl-C or SIGTERM of the suite: stop the child too
                _signal(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal(proc, signal.SIGKILL)
                raise
            finally:
                for t in pumps:
                    t.join(timeout=5)
                with self._lock:
                    self._procs.pop(step.name, None)
            seconds = time.monotonic() - start
            log.write(f"=== exit {proc.returncode} after {seconds:.1f} s\n".encode())
        return proc.returncode, seconds, "".join(captured), killed

    # -- results
    def pack(self) -> str:
        """Write summary-<part>.{json,md} and results-<part>.tar.gz into the out folder; returns the markdown."""
        from genkit.train.checkpoint import write_json_atomic

        part = self.cfg.part
        try:
            summary = self.summarize()
            text = self.markdown(summary)
        except Exception as e:  # noqa: BLE001 -- a bug in the report must not cost the results: pack them anyway
            error = f"{type(e).__name__}: {e}"
            summary = {"part": part, "status": "summary failed", "error": error, "date": _now()}
            text = f"## genkit bench suite: {part}: summary failed ({error}); the run folders are in the tarball"
        for folder in (self.cfg.work, self.out):
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / f"summary-{part}.json", summary)
            tmp = folder / f".summary-{part}.md.tmp"
            tmp.write_text(text)
            os.replace(tmp, folder / f"summary-{part}.md")
        dropped = write_tarball(self.out / f"results-{part}.tar.gz", self.files(), self.cfg.work)
        if dropped:
            self.say(f"results-{part}.tar.gz: left out {dropped} snapshot PNGs to stay under 16 MB")
        count = sum(1 for p in self.out.rglob("*") if p.is_file())
        if count > 8:
            self.say(f"warning: {self.out} holds {count} files; only 8 come back from the GPU machine")
        return text

    def files(self) -> list[Path]:
        from genkit.eval.nll import PROGRESS_FILE

        work, found = self.cfg.work, []
        reported = self.reported()
        for run in dict.fromkeys(s.run for s in reported if s.run is not None):
            # (PROGRESS_FILE: the batches of a bits/dim evaluation the deadline cut short, with their seconds)
            found += [run / n for n in ("eval.json", "config.json", "metrics.jsonl", "fid_curve.json", "comparison.json",
                                        "comparison.md", PROGRESS_FILE) if (run / n).is_file()]
            found += sorted(run.glob("*.png")) + sorted((run / "samples").glob("*.png"))
        for step in reported:
            found += [p for p in (work / "logs" / f"{step.name}.log", self.record_path(step)) if p.is_file()]
        found += [work / f"summary-{self.cfg.part}.{ext}" for ext in ("json", "md")]
        return found


def _is_json(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """Signal the command's process group (it was started as a group of its own)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def write_tarball(path: Path, files: list[Path], base: Path) -> int:
    """Pack ``files`` (named relative to ``base``) into ``path`` atomically; returns how many snapshot PNGs
    (``samples/step_*.png``) were left out to keep it under :data:`TAR_LIMIT`."""
    import tarfile

    snapshots = [p for p in files if p.parent.name == "samples" and p.name.startswith("step_")]
    tmp = path.with_name(f".{path.name}.tmp")
    for drop in (0, len(snapshots) // 2, len(snapshots)):
        skip = set(snapshots[: drop]) if drop else set()  # oldest first: file names sort by step
        with tarfile.open(tmp, "w:gz") as tar:
            for p in files:
                if p not in skip and p.is_file():
                    tar.add(p, arcname=str(p.relative_to(base)))
        if tmp.stat().st_size <= TAR_LIMIT:
            break
    os.replace(tmp, path)
    return drop


