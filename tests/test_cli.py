"""The command line as a user drives it: real subprocesses, exit codes, one-line errors."""
import json
import subprocess
import sys

import pytest

from suite.results import load_record


def suite(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "suite.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def test_brnn_on_ptb_is_not_applicable(tmp_path):
    proc = suite("run", "--task", "ptb", "--model", "brnn", "--source", "synthetic", "--results", str(tmp_path))
    assert_one_line_error(proc, "brnn is not applicable to ptb", "rnn, lstm, gru, resrnn")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, fragments", [
    (["--task", "ptbb", "--model", "gru"], ["unknown task 'ptbb'", "did you mean ptb?"]),
    (["--task", "ptb", "--model", "gur"], ["unknown model 'gur'", "did you mean gru?"]),
    (["--task", "ptb", "--model", "gru", "--set", "train.lr=fast"], ["train.lr must be float"]),
    (["--task", "ptb", "--model", "gru", "--set", "model.hidden=3"], ["unknown config key 'model.hidden'"]),
    (["--task", "ptb", "--model", "gru", "--finetune-units", "10"], ["apply to variant runs only"]),
    (["--task", "ptb", "--model", "gru", "--variant", "prune-magnitude-50"], ["no dense parent record", "--parent"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, fragments):
    assert_one_line_error(suite("run", "--source", "synthetic", "--results", str(tmp_path), *args), *fragments)


def test_no_network_says_where_to_put_the_files(tmp_path):
    import os
    env = {**os.environ, "SUITE_DATA_DIR": str(tmp_path / "cache"), "SUITE_DATA_MIRROR": "http://127.0.0.1:9"}
    proc = suite("run", "--task", "ptb", "--model", "lstm", "--results", str(tmp_path), env=env)
    assert_one_line_error(proc, "cannot download http://127.0.0.1:9/ptb.train.txt", str(tmp_path / "cache" / "ptb"),
                          "--source synthetic")


def test_list_prints_every_kind_and_the_matrix():
    proc = suite("list")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for word in ("ptb", "tokens", "ppl (lower is better)", "smoke", "paper", "bf16", "quant-dynamic-int8",
                 "prune-magnitude-90"):
        assert word in out
    matrix = out.split("applicability")[1].splitlines()
    header = next(line.split() for line in matrix if line.split()[:1] == ["task"])
    row = next(line.split() for line in matrix if line.split()[:1] == ["ptb"])
    assert dict(zip(header, row)) == {"task": "ptb", "rnn": "yes", "lstm": "yes", "gru": "yes", "brnn": "n/a",
                                      "resrnn": "yes", "transformer": "yes"}


def test_run_then_show(tmp_path):
    proc = suite("run", "--task", "ptb", "--model", "gru", "--source", "synthetic", "--budget", "smoke",
                 "--device", "cpu", "--results", str(tmp_path), "--set", "budget.max_seconds=3",
                 "--set", "options.synthetic_tokens=40000")
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / proc.stdout.split("record: ")[1].strip().split(str(tmp_path) + "/")[1]
    record = load_record(path)
    assert record["status"] == "budget_exhausted" and record["stopped_by"] == "max_seconds"
    assert path.parent == tmp_path / "ptb" / "gru"
    shown = suite("show", str(path))
    assert shown.returncode == 0, shown.stderr
    ppl = record["metrics"]["test"]["ppl"]
    assert f"ppl {ppl:.4g}" in shown.stdout and "SYNTHETIC" in shown.stdout and record["run_id"] in shown.stdout
    variant = suite("run", "--task", "ptb", "--model", "gru", "--source", "synthetic", "--budget", "smoke",
                    "--device", "cpu", "--results", str(tmp_path), "--set", "budget.max_seconds=3",
                    "--set", "options.synthetic_tokens=40000", "--variant", "quant-dynamic-int8")
    assert variant.returncode == 0, variant.stderr
    assert f"quant-dynamic-int8 of {record['run_id']}: test ppl" in variant.stdout
    (child,) = (tmp_path / "ptb" / "gru").glob("*quant-dynamic-int8*.json")
    assert load_record(child)["variant"]["parent_record"] == str(path)
    path.write_text(json.dumps({**record, "status": "bogus"}))
    assert_one_line_error(suite("show", str(path)), "invalid at status")


def test_diverged_run_exits_1_and_keeps_a_record(tmp_path):
    proc = suite("run", "--task", "ptb", "--model", "gru", "--source", "synthetic", "--budget", "smoke",
                 "--results", str(tmp_path), "--set", "train.optimizer=sgd", "--set", "train.lr=3e38",
                 "--set", "options.synthetic_tokens=20000")
    assert proc.returncode == 1 and "NaN/inf" in proc.stderr
    (path,) = (tmp_path / "ptb" / "gru").glob("*.json")
    assert load_record(path)["status"] == "diverged"
