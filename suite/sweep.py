"""`suite sweep`: a grid of `suite run`s, planned and checked before anything runs, resumable, in parallel.

The grid is the product of tasks x models x sources x budgets x precisions x seeds x variants, from flags
or a TOML spec with the same keys. Pairs that do not apply (brnn on a causal task) are dropped with one line
each; every other name and `--set` override is checked up front, so a typo fails before the first run. Each
run is the same `suite run` command in its own process, its output in `<results>/sweeps/logs/<run id>.log`.

Resumable by construction: a run's record path follows from its config (the run id ends in the config's
hash), so a run whose record says completed or budget_exhausted is skipped, an interrupted one resumes from
its checkpoint, and a failed one is left alone unless `--retry-failed`. Dense runs go first and their
variants after, so a variant always finds its parent. Executors: `local` (suite/sweep_local.py: `--workers N`
processes on this machine) and `slurm` (suite/sweep_slurm.py: submitit job arrays). With `--gpus-per-run` or
`--procs-per-run` each run is launched under torchrun and trains with DDP.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite import experiment, registry, variant_run
from suite.config import BUDGETS, PRECISIONS, SOURCES, VARIANTS, RunConfig, build_config
from suite.errors import UserError
from suite.results import FINISHED
from suite.sweep_spec import DEFAULTS, GRID, check_spec

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class Run:
    """One planned `suite run`: its dense config (a variant's parent's) and the variant."""

    cfg: RunConfig
    variant: str
    sets: tuple[str, ...] = ()
    """The `--set` overrides as given: the run's process rebuilds `cfg` from them."""

    @property
    def run_id(self) -> str:
        if self.variant == "dense":
            return self.cfg.run_id
        return variant_run.variant_config(self.cfg, self.cfg.run_id, self.variant).run_id

    @property
    def procs(self) -> int:
        """Processes of this run: its world size (a variant runs in one)."""
        return self.cfg.world_size if self.variant == "dense" else 1

    def record_path(self, results: Path) -> Path:
        return results / self.cfg.task / self.cfg.model / f"{self.run_id}.json"

    def argv(self, results: Path) -> list[str]:
        c = self.cfg
        sets = [a for s in self.sets for a in ("--set", s)]
        argv = ["run", "--task", c.task, "--model", c.model, "--source", c.source, "--budget", c.budget_name,
                "--precision", c.precision, "--seed", str(c.seed), "--device", c.device, "--variant", self.variant,
                "--no-progress", "--results", str(results), *sets]
        if self.variant != "dense" and c.world_size > 1:  # the flags alone name the one-process parent
            argv += ["--parent", str(Run(c, "dense", self.sets).record_path(results))]
        return argv

    def command(self, results: Path, resume: bool = False) -> list[str]:
        """The process to start: `suite run ...`, under torchrun when the run has several processes."""
        launcher = [sys.executable, "-m", "suite.cli"]
        if self.procs > 1:  # torchrun passes Slurm's time-limit warning (SIGUSR2) on to its workers too
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={self.procs}", "--signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2",
                        "-m", "suite.cli"]
        return [*launcher, *self.argv(results), *(["--resume"] if resume and self.variant == "dense" else [])]


def grid_values(spec: dict[str, Any], key: str) -> list[Any]:
    """One grid key's values in a checked spec, from a list or a comma-separated string; "all" tasks or models."""
    raw = spec.get(key, DEFAULTS.get(key))
    if raw is None:
        raise UserError(f"the sweep needs --{key} (a name, a comma-separated list, or all)")
    values = [v.strip() for v in raw.split(",")] if isinstance(raw, str) else raw if isinstance(raw, list) else [raw]
    if values == ["all"] and key in ("task", "model"):
        return list(registry.TASKS if key == "task" else registry.MODELS)
    if key == "seed":
        return [int(v) for v in values]  # checked: integers, or their digits from a comma-separated string
    allowed = {"source": SOURCES, "budget": tuple(BUDGETS), "precision": PRECISIONS, "variant": VARIANTS}.get(key)
    for value in values:
        if key in ("task", "model"):
            registry.get(key, value)  # raises with the closest names
        elif value not in allowed:
            close = difflib.get_close_matches(value, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(allowed)}"
            raise UserError(f"unknown {key} {value!r} in the sweep: {hint}")
    return values


def plan(spec: dict[str, Any], device: str) -> tuple[list[Run], list[str]]:
    """(runs, one line per dropped combination): dense runs first, then variants; every config is built
    now, so a bad override fails before anything runs."""
    check_spec(spec)  # a spec built by code is checked as one from a file or from flags
    grid = {key: grid_values(spec, key) for key in GRID}
    world = procs_per_run(spec)
    sets = setting(spec, "set")
    sets = [sets] if isinstance(sets, str) else sets
    dense, variants, dropped = [], [], []
    for task, model in itertools.product(grid["task"], grid["model"]):
        task_cls = registry.TASKS[task]
        if model not in experiment.applicable_models(task_cls):
            dropped.append(f"skipped {task} x {model}: not applicable ({model} is bidirectional, {task} is causal)")
            continue
        for source, budget, precision, seed in itertools.product(grid["source"], grid["budget"], grid["precision"],
                                                                 grid["seed"]):
            cfg = build_config(task, model, budget=budget, overrides=sets, options_cls=task_cls.Options,
                               presets=task_cls.presets, source=source, precision=precision, seed=seed,
                               device=device, world_size=world)
            dense.append(Run(cfg, "dense", tuple(sets)))  # a variant's parent is planned with it
            variants += [Run(cfg, v, tuple(sets)) for v in grid["variant"] if v != "dense"]
    if not dense:
        raise UserError("the sweep plans no run: every task x model pair was dropped")
    unique = {run.run_id: run for run in dense + variants}  # --seed 1,1 must not run one config twice at once
    return list(unique.values()), dropped


def setting(spec: dict[str, Any], key: str) -> Any:
    """A setting of a checked spec, or its default when unset."""
    value = spec.get(key)
    return DEFAULTS[key] if value is None else value


def procs_per_run(spec: dict[str, Any]) -> int:
    """DDP processes per run: one per GPU with --gpus-per-run, else --procs-per-run (CPU gloo), else one."""
    gpus, procs = setting(spec, "gpus_per_run"), setting(spec, "procs_per_run")
    if gpus and procs and procs != gpus:
        raise UserError(f"--procs-per-run {procs} and --gpus-per-run {gpus} disagree: a run has one process per GPU")
    return gpus or procs or 1


def state(run: Run, results: Path) -> str:
    """done, failed (also diverged), interrupted, or todo: from the run's record, if it has one."""
    return record_state(run.record_path(results))


def record_state(path: Path) -> str:
    if not path.is_file():
        return "todo"
    try:
        status = json.loads(path.read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "todo"  # a damaged record: the run writes it again
    return "done" if status in FINISHED else "interrupted" if status == "interrupted" else "failed"


@dataclass
class Progress:
    """The sweep's live view: one line per finished run with done / running / failed / queued and an ETA."""

    total: int
    counts: Counter = dataclasses.field(default_factory=Counter)
    running: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def start(self) -> None:
        with self.lock:
            self.running += 1

    def report(self, outcome: str, run: Run, note: str = "", ran: bool = False) -> None:
        with self.lock:
            self.counts[outcome] += 1
            self.running -= ran
            finished = sum(n for kind, n in self.counts.items() if kind != "requeued")  # requeued runs come back
            elapsed = time.monotonic() - self.started
            executed = finished - self.counts["skipped"]
            left = self.total - finished
            eta = f", ETA {elapsed / executed * left:.0f} s" if executed and left else ""
            view = (f"{self.counts['done'] + self.counts['skipped']} done, {self.running} running, "
                    f"{self.counts['failed'] + self.counts['interrupted']} failed, {left - self.running} queued")
            print(f"[{finished}/{self.total}] {outcome:<11} {run.run_id}{note}  ({view}; {elapsed:.0f} s{eta})",
                  flush=True)


def phases(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """Dense runs, then variants: a variant always finds its parent finished."""
    return [r for r in runs if r.variant == "dense"], [r for r in runs if r.variant != "dense"]


def log_path(run: Run, results: Path) -> Path:
    log = results / "sweeps" / "logs" / f"{run.run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


def should_run(run: Run, results: Path, retry_failed: bool, progress: Progress) -> bool:
    """False (reported as skipped or failed) for a run that is done, failed before, has no parent, or comes
    after a signal stopped the sweep."""
    now = state(run, results)
    if STOPPING.is_set():
        progress.report("skipped", run, ": the sweep was stopped")
        return False
    if now == "done" or (now == "failed" and not retry_failed):
        progress.report("skipped", run, "" if now == "done" else " (failed before: --retry-failed reruns it)")
        return False
    if run.variant != "dense" and state(Run(run.cfg, "dense", run.sets), results) != "done":
        progress.report("failed", run, ": its dense parent did not finish")
        return False
    return True


STOPPING = threading.Event()
LOCK = threading.RLock()  # re-entrant: the signal handler may run in the thread that holds it
"""Held while a run or job starts and while a signal is passed on, so that none is missed."""


def _forward(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGINT: pass it to every running run (local) or cancel every job (Slurm, whose SIGTERM reaches
    the run); each run checkpoints and writes an interrupted record, queued runs do not start, and the same
    sweep started again resumes them."""
    from suite import sweep_local, sweep_slurm

    STOPPING.set()
    with LOCK:
        sweep_local.stop(signum)
        sweep_slurm.stop()


def run_device(spec: dict[str, Any], executor: str) -> str:
    """cuda with --gpus-per-run; cpu for --procs-per-run and for Slurm jobs without GPUs (the login node's own
    GPUs say nothing about the nodes'); else what this machine has."""
    from suite.cli import _resolved_device

    if setting(spec, "gpus_per_run"):
        return "cuda"
    if executor == "slurm" or setting(spec, "procs_per_run"):
        return "cpu"
    return _resolved_device("auto")


def resumable(run: Run, results: Path) -> bool:
    """An interrupted record, or a checkpoint left by a run killed before it could write one."""
    last = experiment.checkpoint_dir(results, run.run_id) / "last.pt"
    return state(run, results) == "interrupted" or last.is_file()


def settings(spec: dict[str, Any]) -> tuple[str, int]:
    """(executor, workers) of a checked spec, the executor known and the Slurm settings only with it."""
    executor = setting(spec, "executor")
    if executor not in EXECUTORS:
        close = difflib.get_close_matches(executor, EXECUTORS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(EXECUTORS)}"
        raise UserError(f"unknown executor {executor!r}: {hint}")
    if executor == "local" and any(spec.get(k) is not None for k in ("partition", "account", "time", "cpus_per_run")):
        raise UserError("--partition, --account, --time and --cpus-per-run are Slurm settings: add --executor slurm")
    return executor, setting(spec, "workers")


def main(spec: dict[str, Any], dry_run: bool) -> int:
    """Check the spec (flags too), plan, print the plan, and (unless `dry_run`) run it; then the leaderboard."""
    executor, workers = settings(check_spec(spec))
    results = Path(setting(spec, "results"))
    runs, dropped = plan(spec, run_device(spec, executor))
    for line in dropped:
        print(line)
    states = Counter(state(r, results) for r in runs)
    print(f"plan: {len(runs)} runs ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}), "
          f"{workers} at once, executor {executor}")
    if dry_run:
        for run in runs:
            print(f"  {state(run, results):<11} {' '.join(run.command(results))}")
        return 0
    STOPPING.clear()
    old = {signum: signal.signal(signum, _forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        counts = _execute(executor, runs, results, workers, spec)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    print("\n".join(summary(runs, results)))
    print("sweep: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if STOPPING.is_set():
        print("sweep stopped by a signal: run the same command again to resume it", file=sys.stderr)
        return 143
    _leaderboard(results)
    unfinished = sum(state(r, results) != "done" for r in runs)  # failures left from before count too
    return 1 if unfinished else 0


def _execute(executor: str, runs: list[Run], results: Path, workers: int, spec: dict[str, Any]) -> Counter:
    from suite import sweep_local, sweep_slurm

    progress, retry = Progress(len(runs)), setting(spec, "retry_failed")
    if executor == "slurm":
        return sweep_slurm.execute(runs, results, spec, workers, retry, progress)
    return sweep_local.execute(runs, results, workers, retry, progress, setting(spec, "gpus_per_run"))


def summary(runs: list[Run], results: Path) -> list[str]:
    """A table of every planned run: its record's status and test primary metric, or that it has none."""
    rows = [["task", "model", "variant", "source", "budget", "precision", "seed", "status", "test metric"]]
    for run in runs:
        c, path = run.cfg, run.record_path(results)
        status, metric = "no record", ""
        if path.is_file():
            try:
                record = json.loads(path.read_text())
                name = record["task"]["primary_metric"]
                status, value = record["status"], record["metrics"].get("test", {}).get(name)
                metric = f"{name} {value:.4g}" if value is not None else ""
            except (OSError, ValueError, KeyError, TypeError):
                status = "unreadable record"
        rows.append([c.task, c.model, run.variant, c.source, c.budget_name, c.precision, str(c.seed), status, metric])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


def _leaderboard(results: Path) -> None:
    from suite.leaderboard import build_export, write_outputs

    export = build_export(results)
    if any(b["rows"] for b in export["boards"]):
        written = write_outputs(export, results, results)
        print(f"leaderboard: {written[1]}")
