"""`suite sweep`: a grid of `suite run`s, planned and checked before anything runs, resumable, in parallel.

The grid is the product of tasks x models x sources x budgets x precisions x seeds x variants, from flags
or a TOML spec with the same keys. Pairs that do not apply (brnn on a causal task) are dropped with one line
each; every other name and `--set` override is checked up front, so a typo fails before the first run. Each
run is the same `suite run` command in its own process, its output in `<results>/sweeps/logs/<run id>.log`.

Resumable by construction: a run's record path follows from its config (the run id ends in the config's
hash), so a run whose record says completed or budget_exhausted is skipped, an interrupted one resumes from
its checkpoint, and a failed one is left alone unless `--retry-failed`. Dense runs go first and their
variants after, so a variant always finds its parent. Executors: `local` (`--workers N` processes, each given
an equal share of the CPU threads, or one GPU each through CUDA_VISIBLE_DEVICES when there are enough).
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite import registry
from suite.config import BUDGETS, PRECISIONS, SOURCES, VARIANTS, RunConfig, build_config
from suite.errors import UserError

GRID = ("task", "model", "source", "budget", "precision", "seed", "variant")
SETTINGS = ("set", "workers", "results", "retry_failed", "executor")
DEFAULTS: dict[str, Any] = {"source": ["real"], "budget": ["small"], "precision": ["fp32"], "seed": [1],
                            "variant": ["dense"], "set": [], "workers": 1, "results": "results",
                            "retry_failed": False, "executor": "local"}
FINISHED = ("completed", "budget_exhausted")


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
        cfg = dataclasses.replace(self.cfg, variant=self.variant, parent=self.cfg.run_id)
        if self.variant.startswith("quant"):
            cfg = dataclasses.replace(cfg, device="cpu")  # as experiment.run_variant does
        return cfg.run_id

    def record_path(self, results: Path) -> Path:
        return results / self.cfg.task / self.cfg.model / f"{self.run_id}.json"

    def argv(self, results: Path) -> list[str]:
        c = self.cfg
        sets = [a for s in self.sets for a in ("--set", s)]
        return ["run", "--task", c.task, "--model", c.model, "--source", c.source, "--budget", c.budget_name,
                "--precision", c.precision, "--seed", str(c.seed), "--device", c.device, "--variant", self.variant,
                "--no-progress", "--results", str(results), *sets]


def load_spec(path: Path) -> dict[str, Any]:
    """A TOML spec: the GRID keys (a list or a comma-separated string each) and the SETTINGS."""
    try:
        spec = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"sweep spec {path} cannot be read ({err}): write it as TOML with keys "
                        f"{', '.join(GRID + SETTINGS)}") from None
    for key in spec:
        if key not in GRID + SETTINGS:
            close = difflib.get_close_matches(key, GRID + SETTINGS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"keys are {', '.join(GRID + SETTINGS)}"
            raise UserError(f"sweep spec {path}: unknown key {key!r}: {hint}")
    return spec


def grid_values(spec: dict[str, Any], key: str) -> list[Any]:
    """The values of one grid key: a list, or a comma-separated string; "all" expands tasks and models."""
    raw = spec.get(key, DEFAULTS.get(key))
    if raw is None:
        raise UserError(f"the sweep needs --{key} (a name, a comma-separated list, or all)")
    if isinstance(raw, str):
        values = [v.strip() for v in raw.split(",")]
    elif isinstance(raw, list):
        values = raw
    elif isinstance(raw, int) and not isinstance(raw, bool):
        values = [raw]  # seed = 1 in TOML
    else:
        raise UserError(f"sweep key {key} takes a name, a comma-separated string or a list, got {raw!r}")
    if values == ["all"] and key in ("task", "model"):
        return list(registry.TASKS if key == "task" else registry.MODELS)
    if key == "seed":
        try:
            return [int(v) for v in values]
        except ValueError:
            raise UserError(f"seeds must be integers, got {raw!r}") from None
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
    from suite.experiment import applicable_models

    grid = {key: grid_values(spec, key) for key in GRID}
    sets = spec.get("set", DEFAULTS["set"])
    sets = [sets] if isinstance(sets, str) else list(sets)
    dense, variants, dropped = [], [], []
    for task, model in itertools.product(grid["task"], grid["model"]):
        task_cls = registry.TASKS[task]
        if model not in applicable_models(task_cls):
            dropped.append(f"skipped {task} x {model}: not applicable ({model} is bidirectional, {task} is causal)")
            continue
        for source, budget, precision, seed in itertools.product(grid["source"], grid["budget"], grid["precision"],
                                                                 grid["seed"]):
            cfg = build_config(task, model, budget=budget, overrides=sets, options_cls=task_cls.Options,
                               presets=task_cls.presets, source=source, precision=precision, seed=seed,
                               device=device)
            dense.append(Run(cfg, "dense", tuple(sets)))  # a variant's parent is planned with it
            variants += [Run(cfg, v, tuple(sets)) for v in grid["variant"] if v != "dense"]
    if not dense:
        raise UserError("the sweep plans no run: every task x model pair was dropped")
    unique = {run.run_id: run for run in dense + variants}  # --seed 1,1 must not run one config twice at once
    return list(unique.values()), dropped


def state(run: Run, results: Path) -> str:
    """done, failed (also diverged), interrupted, or todo: from the run's record, if it has one."""
    path = run.record_path(results)
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
            finished = sum(self.counts.values())
            elapsed = time.monotonic() - self.started
            executed = finished - self.counts["skipped"]
            left = self.total - finished
            eta = f", ETA {elapsed / executed * left:.0f} s" if executed and left else ""
            view = (f"{self.counts['done'] + self.counts['skipped']} done, {self.running} running, "
                    f"{self.counts['failed'] + self.counts['interrupted']} failed, {left - self.running} queued")
            print(f"[{finished}/{self.total}] {outcome:<11} {run.run_id}{note}  ({view}; {elapsed:.0f} s{eta})",
                  flush=True)


def execute(runs: list[Run], results: Path, workers: int, retry_failed: bool) -> Counter:
    """Run what is not done yet, dense runs before variants, `workers` at a time; outcome counts."""
    progress = Progress(len(runs))
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    for env in worker_envs(workers):
        slots.put(env)
    for phase in ([r for r in runs if r.variant == "dense"], [r for r in runs if r.variant != "dense"]):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(lambda run: _one(run, results, retry_failed, slots, progress), phase):
                pass
    return progress.counts


def worker_envs(workers: int) -> list[dict[str, str]]:
    """Environment of each worker slot: an equal share of the CPU threads, and a GPU each (round robin)."""
    import torch

    threads = str(max(1, len(os.sched_getaffinity(0)) // workers))  # the cores this process may use
    envs = [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(workers)]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i, env in enumerate(envs if gpus and workers > 1 else []):
        env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)  # round robin when workers outnumber GPUs
    return envs


def _one(run: Run, results: Path, retry_failed: bool, slots: queue.Queue, progress: Progress) -> None:
    now = state(run, results)
    if STOPPING.is_set():
        progress.report("skipped", run, ": the sweep was stopped")
        return
    if now == "done" or (now == "failed" and not retry_failed):
        progress.report("skipped", run, "" if now == "done" else " (failed before: --retry-failed reruns it)")
        return
    if run.variant != "dense" and state(Run(run.cfg, "dense", run.sets), results) != "done":
        progress.report("failed", run, ": its dense parent did not finish")
        return
    argv = run.argv(results) + (["--resume"] if now == "interrupted" and run.variant == "dense" else [])
    log = results / "sweeps" / "logs" / f"{run.run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = slots.get()
    try:
        if STOPPING.is_set():  # a signal arrived while this run waited for a slot
            progress.report("skipped", run, ": the sweep was stopped")
            return
        progress.start()
        with open(log, "w") as out:
            code = _child([sys.executable, "-m", "suite.cli", *argv], out, {**os.environ, **env})
    finally:
        slots.put(env)
    after = state(run, results)
    outcome = "done" if code == 0 and after == "done" else "interrupted" if after == "interrupted" else "failed"
    progress.report(outcome, run, "" if outcome == "done" else f": exit {code}, log {log}", ran=True)


STOPPING = threading.Event()
_children: set[subprocess.Popen] = set()
_lock = threading.Lock()


def _child(argv: list[str], out: Any, env: dict[str, str]) -> int:
    """Run one `suite run` process to its end; it is known to the signal handler while it runs."""
    with _lock:
        # Own session: a terminal's Ctrl-C reaches the sweep only, which forwards it once to each run.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _children.add(proc)
        if STOPPING.is_set():  # the signal came between the check and the start
            proc.terminate()
    try:
        return proc.wait()
    finally:
        with _lock:
            _children.discard(proc)


def _forward(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGINT: pass it to every running run, which checkpoints and writes an interrupted record;
    queued runs do not start. A restarted sweep resumes the interrupted ones."""
    STOPPING.set()
    with _lock:
        for proc in _children:
            proc.send_signal(signum)


def main(spec: dict[str, Any], dry_run: bool) -> int:
    """Plan, print the plan, and (unless `dry_run`) run it; the leaderboard is rebuilt at the end."""
    from suite.cli import _resolved_device

    if spec.get("executor", "local") != "local":
        raise UserError(f"unknown executor {spec['executor']!r}: this version runs sweeps with executor local")
    workers = spec.get("workers", DEFAULTS["workers"])
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    results = Path(spec.get("results", DEFAULTS["results"]))
    runs, dropped = plan(spec, _resolved_device("auto"))
    for line in dropped:
        print(line)
    states = Counter(state(r, results) for r in runs)
    print(f"plan: {len(runs)} runs ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}), {workers} worker(s)")
    if dry_run:
        for run in runs:
            print(f"  {state(run, results):<11} suite {' '.join(run.argv(results))}")
        return 0
    STOPPING.clear()
    old = {signum: signal.signal(signum, _forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        counts = execute(runs, results, workers, bool(spec.get("retry_failed", False)))
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
