import json
import re
import statistics
import subprocess
import sys

import pytest
from tiny import TINY, tiny_config

from suite import experiment
from suite.leaderboard import build_export, write_outputs
from suite.results import load_record, record_path, write_record

UNITS = ["budget.max_units=1200", "budget.max_seconds=None"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """lstm x 2 seeds, gru x 1 (synthetic), one record relabelled as real data, one with an HTML model name."""
    root = tmp_path_factory.mktemp("results")
    runs = [experiment.run(tiny_config(m, *UNITS, seed=s), root, progress_bar=False)
            for m, s in (("lstm", 1), ("lstm", 2), ("gru", 1))]
    real = json.loads(runs[2][1].read_text())
    real["config"]["source"] = real["data"]["source"] = "real"
    real["data"]["synthetic"] = False
    real["run_id"] += "-real"
    write_record(real, record_path(root, real))
    evil = json.loads(runs[0][1].read_text())
    evil["config"]["model"] = evil["model"]["name"] = "<b>x</b>|y![t](http://evil.invalid/t.png)"
    evil["run_id"] += "-evil"
    write_record(evil, root / "ptb" / "evil" / "evil.json")
    return root, runs


def board(export, source):
    (found,) = [b for b in export["boards"] if b["source"] == source]
    return found


def test_rows_aggregate_seeds_and_sort_by_the_primary_metric(results):
    root, runs = results
    synthetic = board(build_export(root), "synthetic")
    lstm = next(r for r in synthetic["rows"] if r["model"] == "lstm")
    ppl = [load_record(p)["metrics"]["test"]["ppl"] for _, p in runs[:2]]
    assert lstm["seeds"] == [1, 2] and lstm["stats"]["test/ppl"]["n"] == 2
    assert lstm["stats"]["test/ppl"]["mean"] == pytest.approx(statistics.fmean(ppl), rel=1e-12)
    assert lstm["stats"]["test/ppl"]["std"] == pytest.approx(statistics.stdev(ppl), rel=1e-12)
    means = [r["stats"]["test/ppl"]["mean"] for r in synthetic["rows"]]
    assert means == sorted(means)  # perplexity: lower is better, best first
    assert synthetic["not_applicable"] == ["brnn"] and set(synthetic["missing"]) == {"rnn", "resrnn", "transformer"}
    assert board(build_export(root), "real")["rows"][0]["model"] == "gru"


def test_markdown_separates_synthetic_and_escapes_record_strings(results, tmp_path):
    root, _ = results
    out = tmp_path / "out"
    written = write_outputs(build_export(root), root, out)
    assert [p.name for p in written] == ["leaderboard.json", "LEADERBOARD.md"]
    text = (out / "LEADERBOARD.md").read_text()
    real_part, synthetic_part = text.split("## Synthetic data")
    assert "### ptb · real · budget smoke · fp32" in real_part and "· synthetic ·" not in real_part
    assert "### ptb · synthetic · budget smoke · fp32" in synthetic_part
    assert "&lt;b&gt;x&lt;/b&gt;\\|y\\!\\[t\\]\\(http://evil.invalid/t.png\\)" in text and "<b>" not in text
    assert "| brnn |  | n/a: not applicable to this task |" in text and "| rnn | dense | missing: no run |" in text
    for link in [part.split(")")[0] for part in text.split("](")[1:]]:
        assert (out / link).resolve().is_file(), link
    assert json.loads((out / "leaderboard.json").read_text())["format"] == "seqsuite-leaderboard"


def test_a_corrupt_record_is_skipped_by_path_not_fatal(results, tmp_path):
    root, runs = results
    bad = root / "ptb" / "lstm" / "broken.json"
    bad.write_text(runs[0][1].read_text()[:100])
    try:
        proc = subprocess.run([sys.executable, "-m", "suite.cli", "leaderboard", "--results", str(root), "--out",
                               str(tmp_path)], capture_output=True, text=True, timeout=120)
    finally:
        bad.unlink()
    assert proc.returncode == 0, proc.stderr
    assert f"warning: skipped result record {bad} is not valid JSON" in proc.stderr
    assert "broken.json" in (tmp_path / "LEADERBOARD.md").read_text()  # listed as skipped, not as a row


def test_two_runs_writing_into_one_results_directory_lose_nothing(tmp_path):
    base = [sys.executable, "-m", "suite.cli", "run", "--task", "ptb", "--source", "synthetic", "--budget",
            "smoke", "--device", "cpu", "--results", str(tmp_path), "--no-progress"]
    sets = [a for kv in [*TINY, *UNITS] for a in ("--set", kv)]
    procs = [subprocess.Popen([*base, "--model", m, *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for m in ("rnn", "lstm")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    export = build_export(tmp_path)
    assert sorted(r["model"] for r in board(export, "synthetic")["rows"]) == ["lstm", "rnn"]
    assert export["skipped"] == [] and not list(tmp_path.rglob(".*.tmp"))


def test_real_datasets_of_one_task_get_their_own_boards_and_never_meet_in_compare(results, tmp_path):
    """A task with two real datasets (captioning's coco and flickr8k, video's ucf101 and csv) must not rank or
    compare one dataset's runs against the other's."""
    from suite.compare import compare

    root, runs = results
    for name in ("coco", "flickr8k"):
        record = json.loads(runs[2][1].read_text())
        record["config"]["source"] = record["data"]["source"] = "real"
        record["data"].update(synthetic=False, dataset=name)
        record["metrics"]["test"]["ppl"] *= 2 if name == "flickr8k" else 1  # would read as a regression
        record["run_id"] += f"-{name}"
        write_record(record, record_path(tmp_path / name, record))
        write_record(record, record_path(tmp_path / "both", record))
    export = build_export(tmp_path / "both")
    assert sorted(b["dataset"] for b in export["boards"]) == ["coco", "flickr8k"]
    text = write_outputs(export, tmp_path / "both", tmp_path / "out")[1].read_text()
    assert "### ptb · real coco · budget smoke · fp32" in text and "### ptb · real flickr8k ·" in text
    assert all(b["dataset"] == "" for b in build_export(root)["boards"])  # synthetic, or no dataset named
    result = compare(build_export(tmp_path / "coco"), build_export(tmp_path / "flickr8k"))
    assert result.count("regressed") == 0 and result.count("missing") == result.count("new") == 1


def _reference_copy(record: dict, ppl: float) -> dict:
    """A real record relabelled as the Transformer reference model would write it, with its own test ppl."""
    out = json.loads(json.dumps(record))
    out["run_id"] += "-transformer"
    out["config"]["model"] = out["model"]["name"] = "transformer"
    out["model"]["reference_model"] = True
    out["metrics"]["test"]["ppl"] = ppl
    return out


def _write_reference_results(root, runs, with_transformer: bool = True):
    """lstm x 2 as old records (no flag), gru flagged False, a real-data gru (no reference row on its board),
    and the transformer reference model with a test ppl halfway between gru's and lstm's."""
    lstm = [json.loads(p.read_text()) for _, p in runs[:2]]
    gru = json.loads(runs[2][1].read_text())
    for record in lstm:
        record["model"].pop("reference_model", None)  # written before the flag existed
    gru["model"]["reference_model"] = False
    real = json.loads(json.dumps(gru))
    real["config"]["source"] = real["data"]["source"] = "real"
    real["data"]["synthetic"] = False
    real["run_id"] += "-real"
    lstm_mean = statistics.fmean(r["metrics"]["test"]["ppl"] for r in lstm)
    gru_ppl = gru["metrics"]["test"]["ppl"]
    assert lstm_mean != gru_ppl
    transformer = [_reference_copy(gru, (lstm_mean + gru_ppl) / 2)] if with_transformer else []
    for record in [*lstm, gru, real, *transformer]:
        write_record(record, record_path(root, record))
    return root


def _md_rows(section: str) -> list[list[str]]:
    """The data rows of the Markdown tables in `section`, as cell lists (header and separator dropped)."""
    lines = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| # |")]
    return [line[2:-2].split(" | ") for line in lines]


def test_reference_model_rows_are_flagged_and_rank_by_their_metric(results, tmp_path):
    from suite.compare import compare

    root = _write_reference_results(tmp_path / "with", results[1])
    export = build_export(root)
    rows = board(export, "synthetic")["rows"]
    assert [(r["model"], r["reference_model"]) for r in rows if r["model"] == "transformer"] == [("transformer", True)]
    assert {r["model"]: r["reference_model"] for r in rows if r["model"] != "transformer"} == \
        {"lstm": False, "gru": False}  # no key (old record) and an explicit False read alike
    means = [r["stats"]["test/ppl"]["mean"] for r in rows]
    assert means == sorted(means) and [r["model"] for r in rows].index("transformer") == 1  # between the two
    assert [r["reference_model"] for r in board(export, "real")["rows"]] == [False]
    # compare treats it as any model: itself after a JSON round trip is unchanged; added to a base, it is new
    same = compare(export, json.loads(json.dumps(export)))
    assert same.count("regressed") == same.count("new") == same.count("missing") == 0
    assert any("transformer:dense" in line.row and line.status == "unchanged" for line in same.lines)
    base = build_export(_write_reference_results(tmp_path / "without", results[1], with_transformer=False))
    added = compare(base, export)
    new = [line.row for line in added.lines if line.status == "new"]
    assert added.count("regressed") == 0 and len(new) == 1 and "transformer:dense" in new[0]


def test_markdown_marks_the_reference_row_and_explains_it_once(results, tmp_path):
    from suite.markdown import REFERENCE_LEGEND

    root = _write_reference_results(tmp_path / "results", results[1])
    export = build_export(root)
    ppl = {r["model"]: r["stats"]["test/ppl"]["mean"] for r in board(export, "synthetic")["rows"]}
    best, worst = sorted(["gru", "lstm"], key=ppl.get)
    text = write_outputs(export, root, root / "out")[1].read_text()
    real_part, synthetic_part = text.split("## Synthetic data")
    rows = _md_rows(synthetic_part)
    assert [r[:2] for r in rows[:3]] == [["1", best], ["2", "transformer (reference model)"], ["3", worst]]
    assert sum("(reference model)" in c for r in rows for c in r) == 1
    assert text.count(REFERENCE_LEGEND) == 1 and "a non-recurrent model" in REFERENCE_LEGEND
    lines = synthetic_part.splitlines()
    legend = lines.index(REFERENCE_LEGEND)
    assert lines[legend - 1] == "" and lines[legend - 2].startswith("| ")  # a paragraph after the table, not a row
    assert "(reference model)" not in real_part and [r[1] for r in _md_rows(real_part)][0] == "gru"


def test_a_board_without_reference_rows_renders_as_before(results, tmp_path):
    with_root = _write_reference_results(tmp_path / "with", results[1])
    without_root = _write_reference_results(tmp_path / "without", results[1], with_transformer=False)
    with_text, without_text = (write_outputs(build_export(r), r, r / "out")[1].read_text().split("## Real data")[1]
                               for r in (with_root, without_root))
    with_real, with_synthetic = with_text.split("## Synthetic data")
    without_real, without_synthetic = without_text.split("## Synthetic data")
    assert with_real == without_real  # byte for byte: the real board never had a reference row
    assert "reference model" not in without_synthetic

    def unranked(section: str) -> list[str]:
        return [re.sub(r"^\| \d+ \|", "| # |", line) for line in section.splitlines()]

    from suite.markdown import REFERENCE_LEGEND

    kept = [line for line in unranked(with_synthetic) if "transformer (reference model)" not in line]
    legend = kept.index(REFERENCE_LEGEND)
    # without its record, a registered transformer is listed as missing instead
    before = [line for line in unranked(without_synthetic) if not line.startswith("|  | transformer | dense | missing")]
    assert kept[:legend - 1] + kept[legend + 1:] == before  # only the row, the legend and the ranks differ
