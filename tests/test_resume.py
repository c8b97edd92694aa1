"""Kill a real run with SIGTERM, resume it, and get the uninterrupted run's numbers (CPU, same seed)."""
import signal
import subprocess
import sys
import time

import pytest

from suite.results import load_record

ARGS = ["run", "--task", "ptb", "--model", "lstm", "--source", "synthetic", "--budget", "smoke", "--device", "cpu",
        "--set", "budget.max_seconds=None", "--set", "budget.max_units=60000",
        "--set", "budget.eval_every_units=15000", "--set", "budget.checkpoint_every_seconds=1.0",
        "--set", "backbone.hidden_size=32", "--set", "options.emb_size=32", "--set", "options.synthetic_tokens=40000"]


def command(results):
    return [sys.executable, "-m", "suite.cli", *ARGS, "--results", str(results)]


@pytest.mark.slow
def test_resume_after_sigterm_equals_uninterrupted(tmp_path):
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    (reference,) = (tmp_path / "whole" / "ptb" / "lstm").glob("*.json")
    reference = load_record(reference)

    proc = subprocess.Popen(command(tmp_path / "split"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "split" / "checkpoints" / reference["run_id"] / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    record_path = tmp_path / "split" / "ptb" / "lstm" / f"{reference['run_id']}.json"
    interrupted = load_record(record_path)
    assert interrupted["status"] == "interrupted" and interrupted["stopped_by"] == "SIGTERM"
    assert 0 < interrupted["budget_used"]["units"] < 60000

    resumed = subprocess.run([*command(tmp_path / "split"), "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    final = load_record(record_path)
    assert final["status"] == "completed" and final["budget_used"]["units"] == reference["budget_used"]["units"]
    for split in ("valid", "test"):
        assert final["metrics"][split]["ppl"] == pytest.approx(reference["metrics"][split]["ppl"], rel=1e-6)
    assert [p["units"] for p in final["learning_curve"]] == [p["units"] for p in reference["learning_curve"]]
    assert [p["valid"]["ppl"] for p in final["learning_curve"]] == pytest.approx(
        [p["valid"]["ppl"] for p in reference["learning_curve"]], rel=1e-6)
