"""`suite sweep --executor local` (the default): `--workers N` runs at once on this machine, each in its own
process with an equal share of the CPU threads, and one GPU each (or `--gpus-per-run` GPUs each)."""
from __future__ import annotations

import os
import queue
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from suite import sweep
from suite.errors import UserError
from suite.sweep import Progress, Run

_children: set[subprocess.Popen] = set()


def execute(runs: list[Run], results: Path, workers: int, retry_failed: bool, progress: Progress,
            gpus_per_run: int = 0) -> Counter:
    """Run what is not done yet, dense runs before variants, `workers` at a time; outcome counts."""
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    for env in worker_envs(workers, max(r.procs for r in runs), gpus_per_run):
        slots.put(env)
    for phase in sweep.phases(runs):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(lambda run: _one(run, results, retry_failed, slots, progress), phase):
                pass
    return progress.counts


def worker_envs(workers: int, procs: int = 1, gpus_per_run: int = 0) -> list[dict[str, str]]:
    """Environment of each worker slot: an equal share of the CPU threads per process, and its GPUs: one each
    (round robin) by default, or `gpus_per_run` GPUs of its own."""
    import torch

    threads = str(max(1, len(os.sched_getaffinity(0)) // (workers * procs)))  # the cores this process may use
    envs = [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(workers)]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus_per_run:
        if gpus_per_run * workers > gpus:
            raise UserError(f"--gpus-per-run {gpus_per_run} x --workers {workers} needs {gpus_per_run * workers} "
                            f"GPUs and {gpus} are visible: lower --workers, or use --procs-per-run on the CPU")
        for i, env in enumerate(envs):
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(i * gpus_per_run, (i + 1) * gpus_per_run))
        return envs
    for i, env in enumerate(envs if gpus and workers > 1 else []):
        env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)  # round robin when workers outnumber GPUs
    return envs


def _one(run: Run, results: Path, retry_failed: bool, slots: queue.Queue, progress: Progress) -> None:
    if not sweep.should_run(run, results, retry_failed, progress):
        return
    command = run.command(results, resume=sweep.resumable(run, results))
    log = sweep.log_path(run, results)
    env = slots.get()
    try:
        if sweep.STOPPING.is_set():  # a signal arrived while this run waited for a slot
            progress.report("skipped", run, ": the sweep was stopped")
            return
        progress.start()
        with open(log, "w") as out:
            code = _child(command, out, {**os.environ, **env})
    finally:
        slots.put(env)
    after = sweep.state(run, results)
    outcome = "done" if code == 0 and after == "done" else "interrupted" if after == "interrupted" else "failed"
    progress.report(outcome, run, "" if outcome == "done" else f": exit {code}, log {log}", ran=True)


def _child(argv: list[str], out: Any, env: dict[str, str]) -> int:
    """Run one `suite run` process to its end; it is known to the signal handler while it runs."""
    with sweep.LOCK:
        # Own session: a terminal's Ctrl-C reaches the sweep only, which forwards it once to each run.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _children.add(proc)
        if sweep.STOPPING.is_set():  # the signal came between the check and the start
            proc.terminate()
    try:
        return proc.wait()
    finally:
        with sweep.LOCK:
            _children.discard(proc)


def stop(signum: int) -> None:
    """Pass the sweep's signal to every running run (the caller holds sweep.LOCK)."""
    for proc in _children:
        proc.send_signal(signum)
