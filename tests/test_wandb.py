"""W&B export with the real wandb library, offline: every run file is read back with `wandb leet inspect`.

Pinned to the versions whose file layout and reader these tests were written against (STACK-NOTES).
"""
import json
import os
import subprocess
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
import wandb
from tiny import TINY, tiny_config

from suite import experiment, leaderboard, tracking
from suite.config import build_config
from suite.registry import TASKS
from suite.results import record_path, write_record

WANDB, WORKSPACES = "0.31.0", "0.4.13"
SHORT = ["budget.max_units=1000", "budget.max_seconds=None"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Real records: gru with a four-point learning curve, lstm on the same board, gru on a second board."""
    out = tmp_path_factory.mktemp("results")
    curve, _ = experiment.run(tiny_config("gru", *SHORT, "budget.eval_every_units=250"), out, progress_bar=False)
    small = build_config("ptb", "gru", budget="small", overrides=[*TINY, *SHORT], options_cls=TASKS["ptb"].Options,
                         presets=TASKS["ptb"].presets, source="synthetic", device="cpu")
    with pytest.MonkeyPatch.context() as mp:  # one reference measurement (~1 s each) serves all three runs
        mp.setattr(experiment, "reference_throughput", lambda device: curve["throughput"]["reference_units_per_s"])
        experiment.run(tiny_config("lstm", *SHORT), out, progress_bar=False)
        experiment.run(small, out, progress_bar=False)
    return out, curve


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """wandb offline, every file it writes (runs, cache, settings, netrc) inside tmp_path, fresh settings."""
    for name in [n for n in os.environ if n.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(name, raising=False)
    dirs = {"HOME": "home", "WANDB_DIR": "runs", "WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data",
            "WANDB_CONFIG_DIR": "config"}
    for var, sub in dirs.items():
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.teardown()  # wandb reads the environment once per process: start each test from scratch
    yield tmp_path / "runs" / "wandb"
    wandb.teardown()


def inspect(run_dir: str | Path, summary: bool) -> list[dict]:
    """The run file read back by wandb's own reader: the summary object, or one dict per record."""
    args = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *(["--summary"] if summary else []),
            str(run_dir)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()] if not summary else [json.loads(out)]


def parse_spec(text: str):
    """(wandb_workspaces.reports.v2, the Report) parsed straight from a spec file's text."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # wandb-workspaces' own pydantic-v1 validators
        import wandb_workspaces.reports.v2 as wr
        from wandb_workspaces.reports.v2 import internal
    return wr, wr.Report._from_model(internal.ReportViewspec.model_validate_json(text))


def test_versions_are_the_ones_these_tests_read():
    assert wandb.__version__ == WANDB and version("wandb") == WANDB
    assert version("wandb-workspaces") == WORKSPACES


def test_a_record_logs_config_tags_summary_and_every_curve_point(results, offline, capsys):
    record = results[1]
    run_dir = tracking.log_run(record, "seqsuite-test", None)
    assert run_dir and Path(run_dir).parent == offline and Path(run_dir).name.startswith("offline-run-")
    assert f"wandb sync {run_dir}" in capsys.readouterr().out
    got = inspect(run_dir, summary=True)[0]
    c = record["config"]
    assert got["state"] == "finished" and got["project"] == "seqsuite-test" and got["name"] == record["run_id"]
    assert got["config"] == {**c, "environment": record["environment"], "data": record["data"]}
    assert got["tags"] == [c["task"], c["model"], c["variant"], c["precision"], c["budget_name"], c["source"]]
    s, tp = got["summary"], record["throughput"]
    assert s["valid/ppl"] == record["metrics"]["valid"]["ppl"] and s["test/ppl"] == record["metrics"]["test"]["ppl"]
    assert s["throughput/train_units_per_s"] == tp["train_units_per_s"] and tp["normalized"] > 0
    assert s["throughput/normalized"] == tp["normalized"]
    assert s["memory/peak_bytes"] == record["memory"]["peak_bytes"]
    assert (s["model/params"], s["model/flops_per_unit"]) == (record["model"]["params"],
                                                              record["model"]["flops_per_unit"])
    assert (s["status"], s["stopped_by"]) == ("completed", "max_units")
    history = [r["history"]["item"] for r in inspect(run_dir, summary=False) if r["type"] == "history"]
    curve = record["learning_curve"]
    assert len(curve) == 4
    assert [(h["_step"], h["units"], h["valid/ppl"]) for h in history] == \
        [(p["units"], p["units"], p["valid"]["ppl"]) for p in curve]
    assert [(h["train_loss"], h["lr"], h["seconds"]) for h in history] == \
        [(p["train_loss"], p["lr"], p["seconds"]) for p in curve]


@pytest.mark.parametrize("case", ["invalid project", "online without a key"])
def test_a_wandb_failure_returns_none_with_one_warning(results, case, dead_url, monkeypatch, capsys):
    project = "bad/name" if case == "invalid project" else "seqsuite-test"
    if case == "online without a key":
        monkeypatch.setenv("WANDB_MODE", "online")
        monkeypatch.setenv("WANDB_BASE_URL", dead_url)
    start = time.perf_counter()
    assert tracking.log_run(results[1], project, None) is None
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: W&B logging failed, the local record is kept")


def test_logged_in_but_no_server_falls_back_to_offline(results, offline, dead_url, monkeypatch, capsys):
    host = dead_url.removeprefix("http://")
    netrc = Path(os.environ["HOME"]) / ".netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {'a' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("WANDB_BASE_URL", dead_url)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setattr(tracking, "INIT_TIMEOUT", 1.0)
    assert tracking.choose_mode() == "online"
    run_dir = tracking.log_run(results[1], "seqsuite-test", None)
    assert run_dir and Path(run_dir).parent == offline
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "logged offline instead" in warnings[0]
    assert inspect(run_dir, summary=True)[0]["summary"]["test/ppl"] == results[1]["metrics"]["test"]["ppl"]


def test_leaderboard_tables_and_report_spec_offline(results, offline, tmp_path, capsys):
    export = leaderboard.build_export(results[0])
    assert [(b["budget"], len(b["rows"])) for b in export["boards"]] == [("small", 1), ("smoke", 2)]
    spec = tracking.log_leaderboard(export, "seqsuite-test", None, tmp_path / "out")
    assert spec == str(tmp_path / "out" / "wandb-report.json")
    out = capsys.readouterr().out
    assert f"python -m suite.tracking publish {spec} --project seqsuite-test" in out

    [run_dir] = offline.glob("offline-run-*")
    summary = inspect(run_dir, summary=True)[0]["summary"]
    for board in export["boards"]:
        key = tracking.board_key(board)
        assert summary[key]["nrows"] == len(board["rows"])
        table = json.loads((run_dir / "files" / summary[key]["path"]).read_text())
        assert table["columns"][:4] == ["model", "variant", "device_class", "test/ppl mean"]
        assert [(r[0], r[1], r[3], r[5]) for r in table["data"]] == \
            [(r["model"], r["variant"], r["stats"]["test/ppl"]["mean"], 1) for r in board["rows"]]

    wr, report = parse_spec(Path(spec).read_text())
    assert report.project == "seqsuite-test" and report.title == "seqsuite leaderboard"
    headings = [b for b in report.blocks if isinstance(b, wr.H2)]
    assert len(headings) == len(export["boards"]) == 2
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    runs, tables = grids[0::2], grids[1::2]
    for board, grid, table in zip(export["boards"], runs, tables, strict=True):
        [runset] = grid.runsets
        assert runset.groupby == ["config.model.value"] and f"'{board['budget']}'" in str(runset.filters)
        assert [type(p).__name__ for p in grid.panels] == ["ScatterPlot", "LinePlot"]
        assert grid.panels[0].y.name == "test/ppl" and grid.panels[1].y[0].name == "valid/ppl"
        assert table.panels[0].table_name == tracking.board_key(board)
        assert run_dir.name.rsplit("-", 1)[1] in str(table.runsets[0].filters)


def test_publish_command_fails_cleanly_without_a_login(tmp_path, dead_url, monkeypatch):
    spec = tmp_path / "wandb-report.json"
    spec.write_text(tracking.spec_json(tracking.build_report(
        {"boards": [], "generated": "now", "results_dir": "r"}, "p", None, None)))
    assert tracking.load_report(spec.read_text()).blocks == []
    monkeypatch.setenv("WANDB_BASE_URL", dead_url)
    monkeypatch.delenv("WANDB_MODE")
    done = subprocess.run([sys.executable, "-m", "suite.tracking", "publish", str(spec), "--entity", "e"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith(f"error: could not publish {spec}")


def test_the_leaderboard_table_flags_the_reference_model(results, offline, tmp_path):
    """A Transformer reference-model record beside old records without the flag: the logged table's
    reference_model column reads True for it and False for the recurrent rows."""
    root, curve = results
    transformer = json.loads(json.dumps(curve))
    transformer["run_id"] += "-transformer"
    transformer["config"]["model"] = transformer["model"]["name"] = "transformer"
    transformer["model"]["reference_model"] = True
    for path in root.glob("*/*/*.json"):
        record = json.loads(path.read_text())
        record["model"].pop("reference_model", None)  # written before the flag existed
        write_record(record, record_path(tmp_path / "results", record))
    write_record(transformer, record_path(tmp_path / "results", transformer))
    export = leaderboard.build_export(tmp_path / "results")
    tracking.log_leaderboard(export, "seqsuite-test", None, tmp_path / "out")
    [run_dir] = offline.glob("offline-run-*")
    summary = inspect(run_dir, summary=True)[0]["summary"]
    flags = {}
    for board in export["boards"]:
        table = json.loads((run_dir / "files" / summary[tracking.board_key(board)]["path"]).read_text())
        column = table["columns"].index("reference_model")
        flags.update({(tracking.board_key(board), r[0]): r[column] for r in table["data"]})
    assert flags == {("ptb-synthetic-small-fp32", "gru"): False, ("ptb-synthetic-smoke-fp32", "gru"): False,
                     ("ptb-synthetic-smoke-fp32", "lstm"): False, ("ptb-synthetic-smoke-fp32", "transformer"): True}
