"""A stop signal at every stage of a real `suite run` process leaves an interrupted record (naming the stage)
and what `--resume` needs, and the resumed run ends at the uninterrupted run's numbers; a run that crashes
reports only a record that exists. The signal is a real one, sent by the process to itself at the named
moment (tests/stop_at.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import TASK_TINY, TINY

from suite.results import load_record

ROOT = Path(__file__).resolve().parents[1]
DENSE = ["run", "--task", "ptb", "--model", "lstm", "--source", "synthetic", "--budget", "smoke", "--device", "cpu",
         "--no-progress", *[a for s in [*TINY, "budget.max_units=2000", "budget.max_seconds=None",
                                        "budget.eval_every_units=800"] for a in ("--set", s)]]
FINETUNE = ["--variant", "prune-magnitude-50", "--finetune-units", "400"]
QUANT = ["--variant", "quant-dynamic-int8"]


def suite(results: Path, *argv: str, stage: str | None = None, sig: str = "SIGTERM") -> subprocess.CompletedProcess:
    """`suite ARGV --results RESULTS` in its own process; with `stage`, a signal arrives at that stage."""
    driver = [str(ROOT / "tests" / "stop_at.py"), stage, sig, "--"] if stage else ["-m", "suite.cli"]
    env = {**os.environ, "SUITE_DATA_DIR": str(results.parent / "cache")}
    return subprocess.run([sys.executable, *driver, *argv, "--results", str(results)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=env)


def only_record(results: Path, pattern: str = "*-dense-*.json") -> dict:
    (path,) = (results / "ptb" / "lstm").glob(pattern)
    return load_record(path)


def flat(metrics: dict) -> dict[str, float]:
    """{"valid": {"ppl": x}} -> {"valid/ppl": x}, which pytest.approx compares."""
    return {f"{split}/{name}": value for split, values in metrics.items() for name, value in values.items()}


def same_numbers(got: dict, want: dict) -> None:
    assert got["status"] == want["status"] and got["budget_used"]["units"] == want["budget_used"]["units"]
    assert flat(got["metrics"]) == pytest.approx(flat(want["metrics"]), rel=1e-6)
    assert [p["units"] for p in got["learning_curve"]] == [p["units"] for p in want["learning_curve"]]
    assert [p["valid"]["ppl"] for p in got["learning_curve"]] == pytest.approx(
        [p["valid"]["ppl"] for p in want["learning_curve"]], rel=1e-6)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """An uninterrupted dense run and its two variants: the numbers every interrupted run must end at."""
    results = tmp_path_factory.mktemp("whole") / "results"
    for argv in (DENSE, [*DENSE, *FINETUNE], [*DENSE, *QUANT]):
        done = suite(results, *argv)
        assert done.returncode == 0, done.stderr
    return results


DENSE_STAGES = [
    # (where the signal arrives, the stage the record names, last.pt kept, the resume must not train)
    ("reference", "reference", False, False),
    ("training", "training", True, False),
    ("final-validation", "evaluation", True, True),
    ("test-evaluation", "evaluation", True, True),
    ("outputs", "outputs", True, True),
]


@pytest.mark.slow
@pytest.mark.parametrize("at, stage, checkpoint, evaluate_only", DENSE_STAGES)
def test_a_signal_at_each_stage_leaves_a_record_and_resumes_to_the_same_numbers(
        whole: Path, tmp_path: Path, at: str, stage: str, checkpoint: bool, evaluate_only: bool) -> None:
    results = tmp_path / "results"
    cut = suite(results, *DENSE, stage=at)
    assert cut.returncode == 143, cut.stderr
    assert f"stopped during {stage}: continue with the same command and --resume" in cut.stderr
    record = only_record(results)
    assert (record["status"], record["stopped_by"], record["stage"], record["metrics"]) == \
        ("interrupted", "SIGTERM", stage, {})
    last = results / "checkpoints" / record["run_id"] / "last.pt"
    assert last.exists() == checkpoint
    resumed = suite(results, *DENSE, "--resume", stage="forbid-training" if evaluate_only else None)
    assert resumed.returncode == 0, resumed.stderr
    final = only_record(results)
    same_numbers(final, only_record(whole))
    assert final["stage"] is None and not last.exists()


@pytest.mark.slow
def test_sigusr2_and_sigint_name_themselves_in_the_record_and_the_exit_code(tmp_path: Path) -> None:
    for sig in ("SIGUSR2", "SIGINT"):
        results = tmp_path / sig
        cut = suite(results, *DENSE, stage="training", sig=sig)
        assert cut.returncode == 128 + signal.Signals[sig].value, cut.stderr
        record = only_record(results)
        assert (record["status"], record["stopped_by"], record["stage"]) == ("interrupted", sig, "training")


@pytest.mark.slow
def test_a_signal_during_setup_writes_nothing_and_says_so(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cut = suite(results, *DENSE, stage="setup")
    assert cut.returncode == 143
    lines = cut.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM before anything resumable existed")
    assert not list(results.glob("ptb/**/*.json"))


@pytest.mark.slow
def test_a_signal_while_the_record_is_written_waits_for_it(whole: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    done = suite(results, *DENSE, stage="record")
    assert done.returncode == 0, done.stderr
    record = only_record(results)
    same_numbers(record, only_record(whole))
    assert not (results / "checkpoints" / record["run_id"] / "last.pt").exists()
    assert not [p for p in results.rglob(".*") if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("variant, at, stage, pattern", [
    (QUANT, "variant", "variant", "*quant*.json"),
    (FINETUNE, "training", "training", "*prune*.json"),
])
def test_a_signal_in_a_variant_leaves_its_record_and_resumes(whole: Path, tmp_path: Path, variant: list[str],
                                                             at: str, stage: str, pattern: str) -> None:
    results = tmp_path / "results"
    shutil.copytree(whole, results, ignore=shutil.ignore_patterns("*quant*", "*prune*"))
    cut = suite(results, *DENSE, *variant, stage=at)
    assert cut.returncode == 143, cut.stderr
    record = only_record(results, pattern)
    assert (record["status"], record["stage"], record["metrics"]) == ("interrupted", stage, {})
    assert record["variant"]["name"] == variant[1] and record["variant"]["latency_ms"] is None
    shown = subprocess.run([sys.executable, "-m", "suite.cli", "show", str(next(results.rglob(pattern)))],
                           capture_output=True, text=True, cwd=ROOT)
    assert shown.returncode == 0 and "interrupted" in shown.stdout, shown.stderr
    resumed = suite(results, *DENSE, *variant, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final, want = only_record(results, pattern), only_record(whole, pattern)
    assert flat(final["metrics"]) == pytest.approx(flat(want["metrics"]), rel=1e-6)
    assert final["variant"]["sparsity"] == want["variant"]["sparsity"]


CRASHES = [
    # (where it crashes, what the one error line must say, the record status left)
    ("crash-setup", "no record was written", None),
    ("crash-training", "has status failed", "failed"),
]


@pytest.mark.slow
@pytest.mark.parametrize("at, says, status", CRASHES)
def test_a_crash_mentions_only_a_record_that_exists(tmp_path: Path, at: str, says: str, status: str | None) -> None:
    results = tmp_path / "results"
    crashed = suite(results, *DENSE, stage=at)
    assert crashed.returncode == 1
    lines = crashed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the run failed (RuntimeError: boom") and says in lines[0]
    records = [json.loads(p.read_text()) for p in results.glob("ptb/lstm/*.json")]
    assert [r["status"] for r in records] == ([status] if status else [])
    if status:
        assert records[0]["stage"] == "training" and "boom in training" in records[0]["error"]


@pytest.mark.slow
def test_a_signal_while_the_twin_reference_trains_resumes_the_twin(tmp_path: Path) -> None:
    """Translation's reference line is a twin without attention, trained before the run: a signal then leaves
    the twin's checkpoint beside its cache entry, and the resumed run ends at the uninterrupted numbers."""
    argv = ["run", "--task", "translation", "--model", "gru", "--source", "synthetic", "--budget", "smoke",
            "--device", "cpu", "--no-progress",
            *[a for s in [*TASK_TINY["translation"], "budget.max_units=600", "budget.max_seconds=None"]
              for a in ("--set", s)]]
    whole = suite(tmp_path / "whole" / "results", *argv)  # each results folder has a data cache of its own
    assert whole.returncode == 0, whole.stderr
    results = tmp_path / "split" / "results"
    cut = suite(results, *argv, stage="twin-training")
    assert cut.returncode == 143, cut.stderr
    (path,) = (results / "translation" / "gru").glob("*.json")
    assert (load_record(path)["status"], load_record(path)["stage"]) == ("interrupted", "reference")
    (twin_checkpoint,) = (results.parent / "cache" / "references").glob("*.checkpoint/last.pt")
    resumed = suite(results, *argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    (want,) = (tmp_path / "whole" / "results" / "translation" / "gru").glob("*.json")
    final, want = load_record(path), load_record(want)
    twin = {s: final["reference"][s] for s in ("valid", "test")}
    assert flat(twin) == pytest.approx(flat({s: want["reference"][s] for s in ("valid", "test")}), rel=1e-6)
    assert flat(final["metrics"]) == pytest.approx(flat(want["metrics"]), rel=1e-6)
    assert not twin_checkpoint.parent.exists()
