"""One writer per run id, and a finished record is replaced only on request: real `suite run` processes, two at
once, reruns with and without --rerun, leftovers of killed writers, and what a run says about a checkpoint
it does not resume."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_signals import DENSE, QUANT, ROOT, only_record, same_numbers, suite

from suite.results import load_record


def record_file(results: Path) -> Path:
    (path,) = (results / "ptb" / "lstm").glob("*-dense-*.json")
    return path


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    done = suite(results, *DENSE)
    assert done.returncode == 0, done.stderr
    return results


@pytest.mark.slow
def test_a_second_identical_run_names_the_holder_and_exits_2(tmp_path: Path) -> None:
    results = tmp_path / "results"
    longer = [*DENSE, "--set", "budget.max_units=30000"]
    first = subprocess.Popen([sys.executable, "-m", "suite.cli", *longer, "--results", str(results)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    owners = list((results / "checkpoints").glob("*/run.owner"))
    deadline = time.monotonic() + 120
    while not owners and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
        owners = list((results / "checkpoints").glob("*/run.owner"))
    assert owners and first.poll() is None, "the first run did not take its lock"
    second = suite(results, *longer)
    first.communicate(timeout=600)
    assert first.returncode == 0
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith(f"error: run {owners[0].parent.name} is already running (pid {first.pid} on ")
    assert only_record(results)["status"] == "completed"


@pytest.mark.slow
def test_a_finished_run_is_not_trained_again_without_rerun(finished: Path) -> None:
    path = record_file(finished)
    before = path.read_bytes()
    again = suite(finished, *DENSE, "--resume")
    assert again.returncode == 0, again.stderr
    assert "this run has finished already; nothing was trained (add --rerun to train it again)" in again.stdout
    assert path.read_bytes() == before


@pytest.mark.slow
def test_a_stopped_rerun_keeps_the_finished_record_until_it_finishes(finished: Path) -> None:
    path = record_file(finished)
    before, whole = path.read_bytes(), only_record(finished)
    cut = suite(finished, *DENSE, "--rerun", stage="training")
    assert cut.returncode == 143
    assert "holds this run's finished record, which stays" in cut.stderr
    assert "continue with the same command and --rerun --resume" in cut.stderr
    assert path.read_bytes() == before
    resumed = suite(finished, *DENSE, "--rerun", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final = only_record(finished)
    assert final["created"] != whole["created"]  # replaced, by a run that ends where the first one did
    same_numbers(final, whole)


@pytest.mark.slow
def test_a_killed_run_leaves_no_lock_and_its_leftovers_go_at_the_next_start(tmp_path: Path) -> None:
    results = tmp_path / "results"
    longer = [*DENSE, "--set", "budget.max_units=30000"]
    killed = subprocess.Popen([sys.executable, "-m", "suite.cli", *longer, "--results", str(results)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(results.glob("checkpoints/*/best.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.kill()  # SIGKILL: no handler runs, as when the OOM killer or a node failure ends a run
    killed.wait()
    (ckpt,) = results.glob("checkpoints/*")
    record = results / "ptb" / "lstm" / f"{ckpt.name}.json"
    # What a write cut by the kill leaves: this run's in-flight files, named after the dead process.
    leftovers = [record.with_name(f".{record.name}.{killed.pid}.tmp"), ckpt / f".last.pt.{killed.pid}.tmp",
                 ckpt / f".best.pt.{killed.pid}.tmp"]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a file")
    again = suite(results, *longer, "--resume")
    assert again.returncode == 0, again.stderr
    assert not [p for p in leftovers if p.exists()] and load_record(record)["status"] == "completed"


@pytest.mark.slow
def test_a_checkpoint_not_resumed_is_mentioned(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert suite(results, *DENSE, stage="training").returncode == 143
    restart = suite(results, *DENSE)
    assert restart.returncode == 0, restart.stderr
    assert "holds an unfinished run of this config; starting over without --resume" in restart.stderr


@pytest.mark.slow
def test_resume_of_a_variant_that_does_not_train_says_so(finished: Path) -> None:
    variant = suite(finished, *DENSE, *QUANT, "--resume")
    assert variant.returncode == 0, variant.stderr
    assert "note: this variant does not train, so there is nothing to resume: it is measured again" in variant.stderr
