"""`suite sweep --executor slurm`: each planned run is one job of a submitit job array, running the same
`suite run` command as the local executor (under torchrun when a run has several processes).

Preemption and time limits go through the runner's own signal handling. Slurm signals every process of a
job: SIGTERM on scancel, `scontrol requeue` and preemption, and SIGUSR2 shortly before the time limit
(submitit's `--signal=USR2@90`). The run checkpoints on either and writes an interrupted record. The job then
exits without a result, because submitit would report a result file left by the first attempt of a job that
Slurm starts again. On SIGUSR2 the job requeues itself first; a requeued job starts the same command again,
which resumes. A job that ends with its run interrupted (cancelled, or preempted without requeue) is submitted
again with `--resume`, up to RESUBMITS times, unless the sweep itself is stopping.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from suite import sweep
from suite.errors import UserError
from suite.sweep import Progress, Run

RESUBMITS = 2
"""Times a run whose job ended interrupted is submitted again."""
MAX_RESTARTS = 20
"""Time-limit requeues of one job (each goes on from the last checkpoint); then the job just ends."""
_jobs: set[Any] = set()


class SlurmRun:
    """The job of one run: its `suite run` command in a child process, the output appended to its log."""

    def __init__(self, command: list[str], resume_command: list[str], record: Path, checkpoint: Path, log: Path,
                 procs: int):
        self.command, self.resume_command, self.record, self.checkpoint, self.log, self.procs = (
            command, resume_command, record, checkpoint, log, procs)
        self._signal: int | None = None

    def __call__(self) -> int:
        now = sweep.record_state(self.record)
        if now == "done":  # a requeued job whose run had finished after all
            return 0
        command = self.resume_command if now == "interrupted" or self.checkpoint.is_file() else self.command
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", self.procs))
        threads = str(max(1, cpus // self.procs))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        # Replaces submitit's handlers: SIGTERM is only noted (Slurm signals the run itself), and SIGUSR2 must
        # not make submitit requeue the job before the run has checkpointed.
        for signum in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(signum, self._note)
        with open(self.log, "a") as out:
            out.write(f"--- Slurm job {job_name()}: {' '.join(command)}\n")
            out.flush()
            # SIGUSR2 ignored in the child: torchrun would die of it; the runner installs its own handler.
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
            code = child.wait()
        if self._signal is not None and code != 0:
            restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0))
            if self._signal == signal.SIGUSR2 and sweep.record_state(self.record) == "interrupted" and \
                    restarts < MAX_RESTARTS and "SLURM_JOB_ID" in os.environ:
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
            os._exit(code)  # no result file: a job Slurm starts again writes the real one
        return code

    def _note(self, signum: int, frame: Any) -> None:
        self._signal = signum


def job_name() -> str:
    """This job as submitit and scancel name it: ARRAY_TASK for an array task, else the job id."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    return env.get("SLURM_JOB_ID", "?")


def executor(folder: Path, spec: dict[str, Any], workers: int, procs: int, variants: bool = False) -> Any:
    """A submitit SlurmExecutor with the sweep's partition, account, time, CPUs and GPUs per run; a variant
    runs in one process, so its jobs ask for one process's share (and one GPU at most)."""
    import shutil

    import submitit

    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm needs Slurm's sbatch on PATH: run the sweep on a cluster's login node, "
                        "or use --executor local")
    ex = submitit.SlurmExecutor(folder=folder / "%j")
    gpus, cpus = spec.get("gpus_per_run") or None, spec.get("cpus_per_run") or procs
    if variants:
        gpus, cpus = gpus and 1, max(1, cpus // procs)
    params: dict[str, Any] = {
        "job_name": "seqsuite", "nodes": 1, "ntasks_per_node": 1, "time": spec.get("time") or 60,
        "cpus_per_task": cpus, "gpus_per_node": gpus, "array_parallelism": workers,
        "partition": spec.get("partition"), "account": spec.get("account"), "stderr_to_stdout": True,
        "additional_parameters": {"requeue": True}}  # submitit adds --open-mode=append: a requeued job's log goes on
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def execute(runs: list[Run], results: Path, spec: dict[str, Any], workers: int, retry_failed: bool,
            progress: Progress) -> Counter:
    """Submit what is not done yet as job arrays, dense runs before variants, and follow the jobs to the end."""
    procs = max(r.procs for r in runs)
    for variants, phase in enumerate(sweep.phases(runs)):
        ex = executor(results / "sweeps" / "slurm", spec, workers, procs, variants=bool(variants))
        todo = [r for r in phase if sweep.should_run(r, results, retry_failed, progress)]
        for attempt in range(RESUBMITS + 1):
            if not todo or sweep.STOPPING.is_set():
                break
            jobs = _submit(ex, todo, results)
            ended = _follow(jobs, results, progress, last=attempt == RESUBMITS)
            todo = [run for run, outcome in ended if outcome == "interrupted" and not sweep.STOPPING.is_set()]
    return progress.counts


def _submit(ex: Any, runs: list[Run], results: Path) -> list[tuple[Any, Run]]:
    from suite.experiment import checkpoint_dir

    calls = [SlurmRun(run.command(results), run.command(results, resume=True), run.record_path(results),
                      checkpoint_dir(results, run.run_id) / "last.pt", sweep.log_path(run, results), run.procs)
             for run in runs]
    with sweep.LOCK:
        if sweep.STOPPING.is_set():
            return []
        with ex.batch():
            jobs = [ex.submit(call) for call in calls]
        _jobs.update(jobs)
        if sweep.STOPPING.is_set():  # a signal arrived during the submission, in this very thread
            stop()
    for job, run in zip(jobs, runs):
        print(f"submitted {run.run_id} as Slurm job {job.job_id}", flush=True)
    return list(zip(jobs, runs))


def _follow(jobs: list[tuple[Any, Run]], results: Path, progress: Progress, last: bool) -> list[tuple[Run, str]]:
    """Wait for every job to end; report each run's outcome from its record. (run, outcome) per job."""
    pending, ended, started, begun = dict(jobs), [], set(), time.monotonic()
    while pending:
        # One sacct call refreshes every job's state; asked for every few seconds (submitit alone waits up to
        # half a job's age, so a cancelled job would be noticed minutes late), less often as the sweep goes on.
        next(iter(pending)).done(force_check=True)
        for job, run in list(pending.items()):
            if job.job_id not in started and (job.state in ("RUNNING", "COMPLETING") or job.done()):
                started.add(job.job_id)
                progress.start()
            if job.done():
                del pending[job]
                ended.append((run, _report(job, run, results, progress, last)))
        if pending:
            time.sleep(min(30.0, max(2.0, (time.monotonic() - begun) / 20)))
    with sweep.LOCK:
        _jobs.difference_update(job for job, _ in jobs)
    return ended


def _report(job: Any, run: Run, results: Path, progress: Progress, last: bool) -> str:
    # A job killed outright (TIMEOUT after the warning, NODE_FAIL) may leave a checkpoint and no interrupted
    # record: that run can go on too.
    now = sweep.state(run, results)
    outcome = "done" if now == "done" else "interrupted" if now != "failed" and sweep.resumable(run, results) \
        else "failed"
    again = outcome == "interrupted" and not last and not sweep.STOPPING.is_set()
    note = "" if outcome == "done" else f": job {job.job_id} {job.state}, log {sweep.log_path(run, results)}"
    progress.report("requeued" if again else outcome, run, note + (", submitted again" if again else ""), ran=True)
    return outcome


def stop() -> None:
    """Cancel every job of the sweep (the caller holds sweep.LOCK): Slurm's SIGTERM makes each run checkpoint."""
    for job in _jobs:
        job.cancel(check=False)
