"""`suite sweep --executor slurm` on a real single-node Slurm cluster (munge, slurmctld, slurmd, slurmdbd with
mariadb; .ci/slurm-cluster.sh): job arrays with a concurrency limit, one job cancelled mid-run and submitted
again, one requeued by Slurm mid-run, every record present once; the time-limit signal; settings checks."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import TINY

from suite import sweep, sweep_slurm
from suite.errors import UserError

pytestmark = pytest.mark.usefixtures("cache")
UNITS = 60000
LONG = [*TINY, f"budget.max_units={UNITS}", "budget.max_seconds=None", "budget.checkpoint_every_seconds=0.5"]


def sweep_argv(results: Path, models: str, sets: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "suite.cli", "sweep", "--task", "ptb", "--model", models, "--source", "synthetic",
            "--budget", "smoke", "--results", str(results), "--executor", "slurm", "--workers", "2",
            *[a for s in sets for a in ("--set", s)], *extra]


def jobs_in_log(log: Path) -> list[tuple[str, bool]]:
    """(Slurm job, resumed?) of every attempt the run's log shows."""
    return [(m.group(1), "--resume" in m.group(2))
            for m in re.finditer(r"^--- Slurm job (\S+): (.*)$", log.read_text(), re.M)]


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_cancelled_and_a_requeued_job_both_end_with_their_record_once(tmp_path: Path, slurm_cluster: str) -> None:
    results = tmp_path / "results"
    proc = subprocess.Popen(sweep_argv(results, "gru,lstm", LONG), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    runs, _ = sweep.plan({"task": "ptb", "model": "gru,lstm", "source": "synthetic", "budget": "smoke", "set": LONG},
                         "cpu")
    logs = {r.cfg.model: sweep.log_path(r, results) for r in runs}
    ckpt = {r.cfg.model: results / "checkpoints" / r.run_id / "last.pt" for r in runs}
    # gru's job is cancelled (the sweep submits the run again, with --resume) and lstm's requeued (Slurm starts
    # the same job again), each as soon as its run is under way with a checkpoint.
    actions, first = {"gru": ["scancel"], "lstm": ["scontrol", "requeue"]}, {}
    while len(first) < 2:
        for model in set(actions) - set(first):
            if ckpt[model].exists():
                first[model] = jobs_in_log(logs[model])[0][0]
                subprocess.run([*actions[model], first[model]], check=True)
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    cancelled, requeued = first["gru"], first["lstm"]
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    found = [json.loads(p.read_text()) for p in sorted(results.glob("ptb/*/*.json"))]
    assert sorted(r["config"]["model"] for r in found) == ["gru", "lstm"]  # each exactly once
    assert all(r["status"] == "completed" and r["budget_used"]["units"] >= UNITS for r in found)
    again = jobs_in_log(logs["gru"])
    assert len(again) == 2 and again[0][0] != again[1][0] and again[1][1]  # a new job that resumed
    assert "submitted again" in out and f"job {cancelled} CANCELLED" in out
    slurm_again = jobs_in_log(logs["lstm"])
    assert [job for job, _ in slurm_again] == [requeued, requeued] and slurm_again[1][1]  # the same job, resumed
    assert "interrupted: ptb/lstm" in logs["lstm"].read_text()  # the first attempt checkpointed on SIGTERM
    array = cancelled.split("_")[0]  # the first array: both runs, two at a time
    text = (results / "sweeps" / "slurm" / array / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in text and "#SBATCH --cpus-per-task=1" in text  # the array and its limit
    assert "#SBATCH --requeue" in text and "#SBATCH --open-mode=append" in text


@pytest.mark.slow
def test_the_time_limit_signal_checkpoints_and_the_job_requeues_itself(tmp_path: Path, slurm_cluster: str) -> None:
    """Slurm's SIGUSR2 before the time limit (sent here by hand): the run checkpoints, the job requeues itself
    and resumes; the sweep sees one finished record."""
    results = tmp_path / "results"
    proc = subprocess.Popen(sweep_argv(results, "gru", LONG), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    (run,), _ = sweep.plan({"task": "ptb", "model": "gru", "source": "synthetic", "budget": "smoke", "set": LONG},
                           "cpu")
    wait_for(lambda: (results / "checkpoints" / run.run_id / "last.pt").exists())
    job = jobs_in_log(sweep.log_path(run, results))[0][0]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    attempts = jobs_in_log(sweep.log_path(run, results))
    assert [j for j, _ in attempts] == [job, job] and attempts[1][1]
    assert "interrupted: ptb/gru" in sweep.log_path(run, results).read_text()
    record = json.loads(run.record_path(results).read_text())
    assert record["status"] == "completed"


@pytest.mark.slow
def test_a_signalled_slurm_sweep_cancels_its_jobs_and_resumes_when_started_again(tmp_path: Path,
                                                                                  slurm_cluster: str) -> None:
    results = tmp_path / "results"
    argv = sweep_argv(results, "rnn,gru", LONG)
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(list(results.glob("checkpoints/*/last.pt"))) == 2)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 143, out
    states = {json.loads(p.read_text())["status"] for p in results.glob("ptb/*/*.json")}
    assert states == {"interrupted"}, out  # both jobs cancelled; both runs checkpointed first
    ours = {job for log in results.glob("sweeps/logs/*.log") for job, _ in jobs_in_log(log)}
    queued = ["squeue", "-h", "-o", "%i"]
    wait_for(lambda: not ours & set(subprocess.run(queued, capture_output=True, text=True).stdout.split()), 30)
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    found = [json.loads(p.read_text()) for p in results.glob("ptb/*/*.json")]
    assert sorted(r["config"]["model"] for r in found) == ["gru", "rnn"]
    assert all(r["status"] == "completed" for r in found)


def test_the_executor_carries_partition_account_time_cpus_and_gpus(tmp_path: Path, slurm_cluster: str) -> None:
    ex = sweep_slurm.executor(tmp_path, {"partition": "debug", "account": "lab", "time": 90, "cpus_per_run": 8,
                                         "gpus_per_run": 4}, workers=3, procs=4)
    p = ex.parameters
    assert (p["partition"], p["account"], p["time"], p["cpus_per_task"], p["gpus_per_node"], p["array_parallelism"]) \
        == ("debug", "lab", 90, 8, 4, 3)
    default = sweep_slurm.executor(tmp_path, {}, workers=1, procs=2).parameters
    assert default["cpus_per_task"] == 2 and default["time"] == 60 and "gpus_per_node" not in default
    variants = sweep_slurm.executor(tmp_path, {"cpus_per_run": 8, "gpus_per_run": 4}, workers=3, procs=4,
                                    variants=True).parameters
    assert (variants["cpus_per_task"], variants["gpus_per_node"]) == (2, 1)  # a variant runs in one process


def test_a_multi_gpu_run_is_launched_through_torchrun() -> None:
    given = {"task": "ptb", "model": "gru", "source": "synthetic", "budget": "smoke", "set": TINY, "gpus_per_run": 4}
    (run,), _ = sweep.plan(given, sweep.run_device(given, "slurm"))
    command = run.command(Path("r"))
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert "SIGUSR2" in command[5] and command[command.index("--device") + 1] == "cuda"
    assert run.cfg.world_size == 4
    assert sweep.run_device({"gpus_per_run": 4}, "slurm") == "cuda"
    assert sweep.run_device({}, "slurm") == sweep.run_device({"procs_per_run": 2}, "local") == "cpu"


def test_without_sbatch_the_slurm_executor_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="--executor slurm needs Slurm's sbatch on PATH"):
        sweep_slurm.executor(tmp_path, {}, workers=1, procs=1)
