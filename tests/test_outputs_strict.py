"""Issue 21 (items 3, 7, 8): strict JSON out, non-finite metrics in the gate, concurrent site builds, bad paths.

Records are written by hand (no training): a minimal schema-valid record per (model, seed), written with
`allow_nan=True` where a foreign writer's NaN/Infinity tokens are the case under test.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from suite import cli
from suite.compare import HEADER
from suite.leaderboard import build_export, write_outputs
from suite.results import SCHEMA_VERSION

NAN, INF = float("nan"), float("inf")
ROOT = Path(__file__).resolve().parents[1]


def record(seed: int = 1, model: str = "gru", **test: float) -> dict:
    """A schema-valid record of a made-up task with one lower-is-better and one higher-is-better metric."""
    metrics = {"ppl": 100.0, "accuracy": 0.8, **test}
    return {
        "schema_version": 2, "run_id": f"toy-{model}-s{seed}", "created": "2026-01-01T00:00:00+00:00",
        "status": "completed", "stopped_by": "max_units", "error": None,
        "task": {"name": "toy", "version": 1, "unit": "tokens", "causal": True, "primary_metric": "ppl",
                 "metrics": {"ppl": False, "accuracy": True}, "reference_name": "unigram"},
        "model": {"name": model, "causal": True, "params": 1000, "flops_per_unit": 2000, "size_bytes": 4000},
        "config": {"task": "toy", "model": model, "source": "synthetic", "budget_name": "smoke", "precision": "fp32",
                   "seed": seed, "variant": "dense", "parent": None, "device": "cpu", "finetune_units": 0,
                   "budget": {}, "train": {}, "backbone": {"hidden_size": 16, "num_layers": 1, "cell": None},
                   "options": {}},
        "data": {"source": "synthetic", "synthetic": True},
        "metrics": {"valid": {"ppl": 110.0}, "test": metrics},
        "reference": {"name": "unigram", "test": {"ppl": 300.0}},
        "learning_curve": [{"units": 100, "epoch": 0.1, "seconds": 1.0, "valid": {"ppl": 110.0}}],
        "budget_used": {"seconds": 1.0, "units": 100, "epochs": 0.1, "steps": 5, "max_seconds": None,
                        "unit_limit": 100},
        "throughput": {"unit": "tokens", "train_units_per_s": 1000.0, "eval_units_per_s": 2000.0,
                       "reference_units_per_s": 500.0, "normalized": 2.0},
        "memory": {"kind": "rss", "peak_bytes": 10**8},
        "variant": None, "checkpoint": None,
        "environment": {"device": "cpu", "device_name": "cpu", "driver": None, "cuda": None, "cudnn": None,
                        "torch": "2", "torchvision": None, "torchaudio": None, "git_commit": "abc", "seeds": {},
                        "hostname": "h"},
    }


def write(results: Path, rec: dict) -> Path:
    """As a foreign writer would: Python's json defaults, NaN and Infinity written as bare tokens."""
    path = results / rec["task"]["name"] / rec["model"]["name"] / f"{rec['run_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, allow_nan=True))
    return path


def results_dir(root: Path, *records: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rec in records:
        write(root, rec)
    return root


def strict(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict parsers (browsers, jq, Go) do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def gate(tmp_path: Path, base: Path, new: Path) -> tuple[int, dict[str, dict[str, str]]]:
    """`suite compare BASE NEW --markdown F` through the CLI's own entry point: (exit code, rows by metric)."""
    md = tmp_path / "compare.md"
    code = cli.main(["compare", str(base), str(new), "--markdown", str(md)])
    lines = [line for line in md.read_text().splitlines() if line.startswith("|")][2:]
    rows = [dict(zip(HEADER, (c.strip() for c in line.strip("|").split(" | ")))) for line in lines]
    return code, {r["metric"]: r for r in rows}


# --- non-finite metrics in the gate -------------------------------------------------------------------


def foreign_export(results: Path, out: Path, name: str, value: float) -> Path:
    """The export of `results` with one statistic made non-finite, as a writer with json's defaults leaves it."""
    export = build_export(results)
    export["boards"][0]["rows"][0]["stats"][name] = {"mean": value, "std": None, "n": 1, "values": [value]}
    out.write_text(json.dumps(export, allow_nan=True))
    return out


def new_side(tmp_path: Path, form: str, name: str, value: float) -> Path:
    """NEW with `name` non-finite: a results directory, our own leaderboard.json of it, or a foreign export."""
    if form == "foreign export":
        return foreign_export(results_dir(tmp_path / "clean", record()), tmp_path / "foreign.json", name, value)
    new = results_dir(tmp_path / "new", record(**{name.split("/")[1]: value}))
    if form == "records":
        return new
    write_outputs(build_export(new), new, tmp_path / "out")
    return tmp_path / "out" / "leaderboard.json"


@pytest.mark.parametrize("form, name, value", [
    ("records", "test/ppl", NAN),  # lower is better: a NaN read as 'improved' before
    ("records", "test/accuracy", NAN),  # higher is better
    ("records", "test/ppl", INF),
    ("records", "test/accuracy", -INF),
    ("our export", "test/ppl", NAN),
    ("our export", "test/accuracy", INF),
    ("foreign export", "test/ppl", NAN),
    ("foreign export", "test/accuracy", NAN),
    ("foreign export", "normalized_throughput", NAN),  # higher is better
    ("foreign export", "normalized_throughput", INF),
    ("foreign export", "peak_memory_bytes", NAN),  # lower is better
    ("foreign export", "peak_memory_bytes", INF),
])
def test_a_non_finite_metric_in_new_is_a_regression_in_every_direction(tmp_path, form, name, value):
    base = results_dir(tmp_path / "base", record())
    code, rows = gate(tmp_path, base, new_side(tmp_path, form, name, value))
    assert code == 1
    assert rows[name]["status"] == "regressed" and rows[name]["decided by"].startswith("not finite in NEW")
    assert rows[name]["new"].startswith("not finite")
    assert {r["status"] for m, r in rows.items() if m != name} == {"unchanged"}


@pytest.mark.parametrize("form, name, value", [
    ("records", "test/ppl", NAN),
    ("records", "test/accuracy", -INF),
    ("foreign export", "peak_memory_bytes", INF),
])
def test_a_non_finite_base_is_no_baseline_and_does_not_fail(tmp_path, form, name, value):
    base = new_side(tmp_path, form, name, value)
    code, rows = gate(tmp_path, base, results_dir(tmp_path / "now", record()))
    assert code == 0
    assert rows[name]["status"] == "new" and rows[name]["decided by"] == "not finite in BASE (1 of 1 runs): no baseline"


@pytest.mark.skipif(SCHEMA_VERSION < 3, reason="records name their non-finite numbers from schema v3 on")
def test_a_throughput_the_record_names_as_non_finite_is_not_a_missing_one(tmp_path):
    """A null speed is 'not measured' unless the record's `non_finite` names it."""
    new = {**record(), "schema_version": 3, "stage": None, "non_finite": ["/throughput/normalized"]}
    new["throughput"]["normalized"] = None
    write(tmp_path / "new", new)
    code, rows = gate(tmp_path, results_dir(tmp_path / "base", record()), tmp_path / "new")
    assert code == 1 and rows["normalized_throughput"]["decided by"] == "not finite in NEW (1 of 1 runs)"


def test_one_non_finite_seed_of_several_fails_the_gate_and_says_how_many(tmp_path):
    base = results_dir(tmp_path / "base", record(1), record(2, ppl=101.0))
    new = results_dir(tmp_path / "new", record(1), record(2, ppl=NAN))
    code, rows = gate(tmp_path, base, new)
    assert code == 1 and rows["test/ppl"]["decided by"] == "not finite in NEW (1 of 2 runs)"
    assert rows["test/ppl"]["new"] == "not finite (1 of 2)"


def test_the_leaderboard_export_is_strict_json_and_says_what_was_not_finite(tmp_path):
    results = results_dir(tmp_path / "results", record(1), record(2, ppl=NAN), record(1, "lstm", accuracy=INF))
    big = json.loads((results / "toy" / "lstm" / "toy-lstm-s1.json").read_text())
    (results / "toy" / "lstm" / "toy-lstm-s1.json").write_text(
        json.dumps(big).replace('"train_units_per_s": 1000.0', '"train_units_per_s": 1e999'))  # parses as inf
    out = tmp_path / "out"
    assert cli.main(["leaderboard", "--results", str(results), "--out", str(out)]) == 0
    export = strict((out / "leaderboard.json").read_text())
    rows = {r["model"]: r["stats"] for r in export["boards"][0]["rows"]}
    assert rows["gru"]["test/ppl"] == {"mean": None, "std": None, "n": 1, "values": [100.0], "not_finite": 1}
    assert rows["gru"]["test/accuracy"]["mean"] == 0.8 and rows["gru"]["test/accuracy"]["not_finite"] == 0
    assert rows["lstm"]["test/accuracy"]["not_finite"] == 1 and rows["lstm"]["train_units_per_s"]["not_finite"] == 1
    assert "not finite (1 of 2)" in (out / "LEADERBOARD.md").read_text()
    assert "not finite (1 of 2)" in (out / "site" / "index.html").read_text()


# --- bad paths: one line, exit 2 ------------------------------------------------------------------------


def path_cases(tmp: Path) -> dict[str, list[str]]:
    """Each case's CLI arguments, with the files they need made under `tmp`."""
    results = results_dir(tmp / "results", record())
    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "binary.json").write_bytes(bytes(range(256)))
    (tmp / "summary_dir").mkdir()
    record_file = next(results.glob("*/*/*.json"))
    return {
        "leaderboard --out FILE": ["leaderboard", "--results", str(results), "--out", str(tmp / "a_file")],
        "leaderboard --out under a FILE": ["leaderboard", "--results", str(results), "--out", str(tmp / "a_file/x")],
        "leaderboard --results FILE": ["leaderboard", "--results", str(tmp / "a_file")],
        "compare --markdown DIR": ["compare", str(results), str(results), "--markdown", str(tmp / "summary_dir")],
        "compare --markdown under a FILE": ["compare", str(results), str(results), "--markdown",
                                            str(tmp / "a_file" / "compare.md")],
        "compare a missing path": ["compare", str(results), str(tmp / "nowhere")],
        "compare a text file": ["compare", str(results), str(tmp / "a_file")],
        "compare a binary file": ["compare", str(tmp / "binary.json"), str(results)],
        "compare a record, not an export": ["compare", str(results), str(record_file)],
        "show a folder": ["show", str(results)],
    }


@pytest.fixture(scope="module")
def path_runs(tmp_path_factory):
    """Every path case as a real `suite` process, all started at once (each pays the import of torch)."""
    cases = path_cases(tmp_path_factory.mktemp("paths"))
    procs = {name: subprocess.Popen([sys.executable, "-m", "suite.cli", *args], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, args in cases.items()}
    return {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}


@pytest.mark.parametrize("case, message", [
    ("leaderboard --out FILE", r"error: cannot write the leaderboard into .*a_file: it is a file, not a directory"),
    ("leaderboard --out under a FILE", r"error: cannot create the output directory .*a_file/x \("),
    ("leaderboard --results FILE", r"error: no results directory at .*a_file"),
    ("compare --markdown DIR", r"error: --markdown .*summary_dir is a directory: give a file, e.g. .*compare\.md"),
    ("compare --markdown under a FILE", r"error: cannot write --markdown .*compare\.md: .*a_file is a file, not a"),
    ("compare a missing path", r"error: NEW .*nowhere does not exist"),
    ("compare a text file", r"error: NEW .*a_file is not a leaderboard export \(Expecting value"),
    ("compare a binary file", r"error: BASE .*binary\.json is not a leaderboard export \(not UTF-8 text"),
    ("compare a record, not an export", r"error: NEW .*s1\.json is a result record, not a leaderboard export: "
                                        "pass the results directory"),
    ("show a folder", r"error: .*results is a directory: pass one result record"),
])
def test_a_bad_path_is_one_line_and_exit_2(path_runs, case, message):
    code, out, err = path_runs[case]
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert re.match(message, err), err


@pytest.mark.parametrize("sparse", [
    {"config": {"backbone": {}}},  # the case: a KeyError before
    {"config": {"backbone": {"hidden_size": 8}}},
    {"reference": {"name": "unigram", "test": 5, "valid": {"ppl": None}}},
    {"metrics": {"test": {"ppl": None, "accuracy": 0.8}}},
])
def test_show_leaderboard_and_site_read_a_valid_but_sparse_record(tmp_path, sparse):
    rec = record()
    for key, part in sparse.items():
        rec[key] = {**rec[key], **part}
    results = results_dir(tmp_path / "results", rec)
    path = next(results.glob("*/*/*.json"))
    assert cli.main(["show", str(path)]) == 0
    assert cli.main(["leaderboard", "--results", str(results), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "site" / "index.html").is_file()


def test_show_prints_what_a_sparse_record_has(tmp_path, capsys):
    rec = record(ppl=NAN)
    rec["config"]["backbone"] = {}
    path = write(tmp_path, rec)
    assert cli.main(["show", str(path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["model"].split(None, 1)[1] == "gru: 1,000 params, 2,000 FLOPs/token"
    assert "ppl not finite" in lines["test"] and "accuracy 0.8" in lines["test"]


# --- concurrent builds into one folder ------------------------------------------------------------------


def leaderboard_process(results: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "suite.cli", "leaderboard", "--results", str(results),
                             "--out", str(out)], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_whole(out: Path) -> None:
    """A complete site and strict exports, and nothing left over from a build."""
    assert (out / "site" / "index.html").read_text().rstrip().endswith("</html>")
    assert len(list((out / "site" / "runs").glob("*.html"))) == 3
    assert strict((out / "leaderboard.json").read_text())["boards"]
    assert (out / "LEADERBOARD.md").read_text().startswith("# Leaderboard")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".leaderboard.lock"]
    assert leftovers == []


def test_two_leaderboard_builds_into_one_folder_both_succeed(tmp_path):
    results = results_dir(tmp_path / "results", record(1), record(2), record(1, "lstm"))
    out = tmp_path / "out"
    for _ in range(3):  # the race is a matter of timing: a few rounds, each pair started together
        procs = [leaderboard_process(results, out) for _ in range(2)]
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr
        assert_whole(out)


def test_the_next_build_removes_what_a_killed_build_left(tmp_path):
    results = results_dir(tmp_path / "results", record(1), record(2), record(1, "lstm"))
    out = tmp_path / "out"
    for leftover in (".site-123.tmp", ".site-123.old"):
        (out / leftover / "runs").mkdir(parents=True)
        (out / leftover / "index.html").write_text("<html>half")
    (out / f".leaderboard.json.{os.getpid() + 1}.tmp").write_text("{")
    assert cli.main(["leaderboard", "--results", str(results), "--out", str(out)]) == 0
    assert_whole(out)



def _build_many(results: Path, out: Path, times: int) -> None:
    """One racing builder: `times` site builds of an empty export (assets and index only, a few ms each)."""
    from suite.site import write_site

    export = {"generated": "", "results_dir": str(results), "skipped": [], "boards": []}
    for _ in range(times):
        write_site(export, results, out)


def test_many_site_builds_racing_into_one_folder_never_fail(tmp_path):
    """The swap's two renames are a window of microseconds: many quick builds in four processes hit it."""
    import multiprocessing

    results, out = results_dir(tmp_path / "results"), tmp_path / "out"
    fork = multiprocessing.get_context("fork")  # the children start with suite already imported
    procs = [fork.Process(target=_build_many, args=(results, out, 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert (out / "site" / "index.html").is_file() and (out / "site" / "assets").is_dir()
    assert [p.name for p in out.iterdir() if p.name.startswith(".site-")] == []
