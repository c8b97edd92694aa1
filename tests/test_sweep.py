"""`suite sweep` with the local executor: the plan and its checks, real runs in real processes, skipping what
is done, and a sweep killed by a signal and started again ending with every record exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import TINY

from suite import sweep
from suite.cli import main
from suite.errors import UserError
from suite.registry import load_plugins

load_plugins()
pytestmark = pytest.mark.usefixtures("cache")
QUICK = [*TINY, "budget.max_units=600", "budget.max_seconds=None"]


def spec(tmp_path: Path, **extra) -> dict:
    return {"task": "ptb", "model": "rnn,gru", "source": "synthetic", "budget": "smoke", "set": QUICK,
            "results": str(tmp_path / "results"), **extra}


def records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("ptb/*/*.json"))]


def test_the_plan_drops_what_does_not_apply_and_orders_parents_first(capsys: pytest.CaptureFixture) -> None:
    runs, dropped = sweep.plan({"task": "ptb,imdb", "model": "all", "source": "synthetic", "budget": "smoke",
                                "seed": "1,2", "variant": "dense,quant-dynamic-int8"}, "cpu")
    assert dropped == ["skipped ptb x brnn: not applicable (brnn is bidirectional, ptb is causal)"]
    assert len(runs) == (5 + 6) * 2 * 2  # ptb: all but brnn, imdb: all six (the transformer included)
    kinds = [r.variant for r in runs]
    assert kinds == sorted(kinds, key=lambda v: v != "dense")  # every dense run before any variant
    assert len({r.run_id for r in runs}) == len(runs)
    again, _ = sweep.plan({"task": "ptb", "model": "gru,gru", "source": "synthetic", "seed": [1, 1],
                           "variant": "prune-magnitude-50"}, "cpu")
    assert [r.variant for r in again] == ["dense", "prune-magnitude-50"]  # parent added, duplicates dropped
    assert [r.cfg.seed for r in sweep.plan({"task": "ptb", "model": "gru", "seed": 3}, "cpu")[0]] == [3]


@pytest.mark.parametrize("given, message", [
    ({"task": "ptbb", "model": "gru"}, "unknown task 'ptbb': did you mean ptb"),
    ({"task": "ptb", "model": "gru", "precision": "fp33"}, "unknown precision 'fp33' in the sweep: did you mean"),
    ({"task": "ptb", "model": "gru", "seed": "1,x"}, "--seed must be an integer, a list of integers or a comma-sep"),
    ({"task": "ptb", "model": "gru", "set": ["train.lrr=1"]}, "unknown config key 'train.lrr': did you mean train.lr"),
    ({"task": "ptb"}, "the sweep needs --model"),
    ({"task": "ptb", "model": "gru", "seed": 1.5}, "--seed must be an integer, .* got 1.5"),
])
def test_bad_names_fail_before_anything_runs(given: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        sweep.plan(given, "cpu")


def test_a_spec_file_with_an_unknown_key_names_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "grid.toml").write_text('task = "ptb"\nmodels = "gru"\n')
    assert main(["sweep", str(tmp_path / "grid.toml"), "--dry-run"]) == 2
    assert "unknown key 'models': did you mean 'model'?" in capsys.readouterr().err


def test_a_sweep_runs_everything_once_then_skips_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    given = spec(tmp_path, variant="dense,quant-dynamic-int8", workers=2)
    assert sweep.main(given, dry_run=False) == 0
    results = tmp_path / "results"
    found = records(results)
    assert sorted((r["config"]["model"], r["config"]["variant"]) for r in found) == [
        ("gru", "dense"), ("gru", "quant-dynamic-int8"), ("rnn", "dense"), ("rnn", "quant-dynamic-int8")]
    runs, _ = sweep.plan(given, "cpu")
    assert {str(r.record_path(results)) for r in runs} == {str(p) for p in sorted(results.glob("ptb/*/*.json"))}
    assert all(r["status"] in ("completed", "budget_exhausted") for r in found)
    assert (results / "LEADERBOARD.md").is_file()
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("ptb ")]
    ppl = {(r["config"]["model"], r["config"]["variant"]): r["metrics"]["test"]["ppl"] for r in found}
    assert len(table) == 4 and all(f"{ppl[(row[1], row[2])]:.4g}" == row[-1] for row in table)
    assert sweep.main(given, dry_run=False) == 0
    out = capsys.readouterr().out
    assert out.count(" skipped ") == 4 and "sweep: 4 skipped" in out


def test_failed_runs_are_left_alone_unless_retried(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    given = spec(tmp_path, model="gru")
    (run,), _ = sweep.plan(given, "cpu")
    path = run.record_path(tmp_path / "results")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "failed"}))
    assert sweep.main(given, dry_run=False) == 1  # a failure left in the grid
    assert "--retry-failed reruns it" in capsys.readouterr().out
    assert sweep.main({**given, "retry_failed": True}, dry_run=False) == 0
    assert json.loads(path.read_text())["status"] in ("completed", "budget_exhausted")


def test_a_failing_run_does_not_stop_the_sweep_and_names_its_log(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   dead_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUITE_DATA_MIRROR", dead_url)  # real PTB from a dead server: each run fails in its process
    given = spec(tmp_path, source="real")
    code = sweep.main(given, dry_run=False)
    out = capsys.readouterr().out
    assert code == 1 and "failed" in out and "/sweeps/logs/" in out
    logs = sorted((tmp_path / "results" / "sweeps" / "logs").glob("*.log"))
    assert len(logs) == 2 and all("error: cannot download" in log.read_text() for log in logs)


@pytest.mark.slow
def test_a_sweep_killed_by_a_signal_resumes_and_ends_with_every_record_once(tmp_path: Path) -> None:
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "suite.cli", "sweep", "--task", "ptb", "--model", "rnn,lstm,gru,resrnn",
            "--source", "synthetic", "--budget", "smoke", "--results", str(results), "--workers", "2",
            *[a for s in [*TINY, "budget.max_units=40000", "budget.max_seconds=None",
                          "budget.checkpoint_every_seconds=0.5"] for a in ("--set", s)]]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    deadline = time.monotonic() + 120
    while not list(results.glob("checkpoints/*/*.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until a run is under way and has checkpointed
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 143, out
    assert "stopped by a signal" in out
    interrupted = [r for r in records(results) if r["status"] == "interrupted"]
    assert interrupted, out  # the running runs wrote their interrupted records
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    found = records(results)
    assert sorted(r["config"]["model"] for r in found) == ["gru", "lstm", "resrnn", "rnn"]  # each exactly once
    assert all(r["status"] in ("completed", "budget_exhausted") for r in found)


@pytest.mark.parametrize("given, message", [
    ({"executor": "slurmm"}, "unknown executor 'slurmm': did you mean 'slurm'?"),
    ({"partition": "gpu"}, "are Slurm settings: add --executor slurm"),
    ({"procs_per_run": 2, "gpus_per_run": 4}, "--procs-per-run 2 and --gpus-per-run 4 disagree"),
    ({"procs_per_run": 0}, "--procs-per-run must be a whole number >= 1, got 0"),
    ({"procs_per_run": 3}, r"train.batch_size \(4\) is the global batch and must divide evenly over the 3"),
    ({"workers": 0}, "--workers must be a whole number >= 1"),
    ({"executor": "slurm", "time": "1h"}, "--time must be a whole number >= 1, got '1h'"),
])
def test_bad_executor_settings_fail_before_anything_runs(tmp_path: Path, given: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        sweep.main(spec(tmp_path, **given), dry_run=True)


def test_gpus_per_run_needs_that_many_gpus_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from suite import sweep_local

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="--gpus-per-run 2 x --workers 2 needs 4 GPUs and 0 are visible"):
        sweep_local.worker_envs(2, 2, gpus_per_run=2)
    envs = sweep_local.worker_envs(1, 2)
    assert envs[0]["OMP_NUM_THREADS"] == str(max(1, len(os.sched_getaffinity(0)) // 2))  # a share per process


@pytest.mark.slow
def test_a_local_sweep_trains_each_run_on_two_processes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    given = spec(tmp_path, model="gru", procs_per_run=2, variant="dense,quant-dynamic-int8")
    assert sweep.main(given, dry_run=True) == 0
    shown = capsys.readouterr().out
    assert "-m torch.distributed.run --standalone --nproc_per_node=2 --signals_to_handle=" in shown
    assert "SIGUSR2 -m suite.cli run --task ptb --model gru --source synthetic --budget smoke --precision fp32 " \
           "--seed 1 --device cpu" in shown
    assert sweep.main(given, dry_run=False) == 0
    found = {r["config"]["variant"]: r for r in records(tmp_path / "results")}
    assert found["dense"]["config"]["world_size"] == 2 and found["dense"]["status"] == "completed"
    assert found["dense"]["throughput"]["per_device_units_per_s"] > 0
    variant = found["quant-dynamic-int8"]  # compressed in one process, from the two-process parent
    assert variant["config"]["world_size"] == 1 and variant["variant"]["parent_run_id"] == found["dense"]["run_id"]
