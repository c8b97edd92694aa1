import json
import math

import pytest
from tiny import tiny_config

from suite import experiment
from suite.errors import UserError
from suite.results import load_record, validate, write_record


@pytest.fixture(scope="module")
def record_file(tmp_path_factory):
    cfg = tiny_config("gru", "budget.max_units=2000", "budget.max_seconds=None")
    _, path = experiment.run(cfg, tmp_path_factory.mktemp("results"), progress_bar=False)
    return path


def test_record_round_trips_and_carries_what_the_issue_lists(record_file):
    raw = json.loads(record_file.read_text())
    assert load_record(record_file) == raw
    assert raw["schema_version"] == 3 and raw["status"] == "completed" and raw["stopped_by"] == "max_units"
    assert raw["stage"] is None and raw["non_finite"] == []
    assert raw["config"]["model"] == "gru" and raw["config"]["backbone"]["hidden_size"] == 16
    assert raw["data"]["synthetic"] is True and set(raw["data"]["checksums"]) == {"train", "valid", "test"}
    assert raw["metrics"]["test"]["ppl"] > 0 and raw["learning_curve"][-1]["units"] == raw["budget_used"]["units"]
    assert raw["budget_used"]["units"] >= 2000 and raw["throughput"]["train_units_per_s"] > 0
    tp = raw["throughput"]
    assert tp["reference_units_per_s"] > 0
    assert tp["normalized"] == pytest.approx(tp["train_units_per_s"] / tp["reference_units_per_s"], rel=1e-12)
    assert raw["model"]["size_bytes"] > 4 * raw["model"]["params"]  # fp32 weights plus pickle framing
    assert raw["memory"]["kind"] == "rss" and raw["memory"]["peak_bytes"] > 10 * 2**20
    env = raw["environment"]
    assert env["torch"].startswith("2.11.0") and env["seeds"]["torch"] == 1 and env["hostname"]
    assert raw["model"]["params"] > 0 and raw["model"]["flops_per_unit"] > 0
    assert raw["reference"]["optimal"]["ppl"] < raw["reference"]["test"]["ppl"]


def test_corrupt_and_invalid_records_are_refused(record_file, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(record_file.read_text()[:-40])
    with pytest.raises(UserError, match=r"bad.json is not valid JSON"):
        load_record(bad)
    data = json.loads(record_file.read_text())
    data["status"] = "finished"
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"invalid at status: 'finished' is not one of"):
        load_record(bad)
    data = json.loads(record_file.read_text())
    data["schema_version"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match="schema version 99, this seqsuite reads 1..3: upgrade seqsuite"):
        load_record(bad)
    with pytest.raises(UserError, match="no result record at"):
        load_record(tmp_path / "missing.json")


def test_write_is_atomic_and_stores_non_finite_as_null(record_file, tmp_path):
    data = json.loads(record_file.read_text())
    data["metrics"]["valid"]["ppl"] = math.nan
    data["learning_curve"][0]["train_loss"] = -math.inf
    out = write_record(data, tmp_path / "r.json")
    strict = json.loads(out.read_text(), parse_constant=lambda token: pytest.fail(f"{token} in a record"))
    assert strict["metrics"]["valid"]["ppl"] is None and strict["learning_curve"][0]["train_loss"] is None
    assert strict["non_finite"] == ["/learning_curve/0/train_loss", "/metrics/valid/ppl"]  # the reason for each null
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind
    data["run_id"] = ""
    with pytest.raises(ValueError, match="run_id"):
        validate(data)


def test_version_1_records_load_through_the_migration(record_file, tmp_path):
    v1 = json.loads(record_file.read_text())
    v1["schema_version"] = 1
    del v1["model"]["size_bytes"], v1["stage"], v1["non_finite"]
    for key in ("reference_units_per_s", "normalized"):
        del v1["throughput"][key]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(v1))
    record = load_record(old)
    assert record["schema_version"] == 3 and record["model"]["size_bytes"] is None and record["stage"] is None
    assert record["throughput"]["normalized"] is None and record["metrics"] == v1["metrics"]
    assert json.loads(old.read_text())["schema_version"] == 1  # migration happens in memory only


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_a_foreign_records_non_finite_tokens_read_as_null(record_file, tmp_path, token):
    """Python's json writes NaN and Infinity by default; such a record must not bring them into the suite."""
    text = record_file.read_text()
    value = json.loads(text)["metrics"]["test"]["ppl"]
    foreign = tmp_path / "foreign.json"
    foreign.write_text(text.replace(f'"ppl": {json.dumps(value)}', f'"ppl": {token}', 1))
    assert token in foreign.read_text()
    assert load_record(foreign)["metrics"]["test"]["ppl"] is None
