"""`suite compare`: a real tiny run gives the record format; edited copies of its export give the cases."""
import copy
import json
import math
import shutil
import statistics

import pytest
from tiny import tiny_config

from suite import experiment
from suite.compare import HEADER, main_compare, t_two_sided_p, welch
from suite.errors import UserError
from suite.leaderboard import build_export, stat

mpmath = pytest.importorskip("mpmath")  # installed with torch (through sympy): an independent t distribution


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cfg = tiny_config("gru", "budget.max_units=500", "budget.max_seconds=None")
    out = tmp_path_factory.mktemp("results")
    experiment.run(cfg, out, progress_bar=False)
    return out


@pytest.fixture(scope="module")
def export(results):
    return build_export(results)


def edited(export, **stats):
    """A copy of the export whose one row has the given metrics replaced by these values."""
    out = copy.deepcopy(export)
    row = out["boards"][0]["rows"][0]
    for name, values in stats.items():
        row["stats"][name.replace("__", "/")] = stat(values)
    return out


def value(export, name):
    return export["boards"][0]["rows"][0]["stats"][name]["mean"]


def gate(tmp_path, base, new, config=None, fail_on_missing=False):
    """Run the gate on two exports written to files; (exit code, table rows read back from the Markdown)."""
    paths = []
    for name, side in (("base", base), ("new", new)):
        if isinstance(side, dict):
            (tmp_path / f"{name}.json").write_text(json.dumps(side))
            side = tmp_path / f"{name}.json"
        paths.append(side)
    md = tmp_path / "summary" / "compare.md"
    code = main_compare(paths[0], paths[1], config, md, fail_on_missing=fail_on_missing)
    return code, read_markdown(md.read_text())


def read_markdown(text):
    table = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in table]
    assert cells[0] == HEADER and set(cells[1]) == {"---"}
    return [dict(zip(HEADER, row)) for row in cells[2:]]


def statuses(rows):
    return {r["metric"]: r["status"] for r in rows}


def test_identical_sides_from_a_real_run_are_unchanged(results, export, tmp_path, capsys):
    code, rows = gate(tmp_path, results, export)  # a results directory against its own JSON export
    assert code == 0
    assert statuses(rows) == {"test/ppl": "unchanged", "normalized_throughput": "unchanged",
                              "peak_memory_bytes": "unchanged"}
    assert {r["change"] for r in rows} == {"+0.00%"} and rows[0]["decided by"] == "threshold, tol 1%"
    assert rows[0]["row"] == "ptb/synthetic/smoke/fp32 gru:dense cpu"
    out = capsys.readouterr().out
    assert "note:" not in out
    assert out.rstrip().endswith("compare: 0 regressed, 0 improved, 3 unchanged, 0 missing, 0 new")


def test_perplexity_beyond_tolerance_regresses_and_the_reverse_improves(export, tmp_path):
    ppl = value(export, "test/ppl")
    code, rows = gate(tmp_path, export, edited(export, test__ppl=[ppl * 1.02]))
    assert code == 1 and statuses(rows)["test/ppl"] == "regressed" and rows[0]["change"] == "+2.00%"
    assert rows[0]["new"] == f"{ppl * 1.02:.4g}"
    code, rows = gate(tmp_path, export, edited(export, test__ppl=[ppl * 0.98]))
    assert code == 0 and statuses(rows)["test/ppl"] == "improved" and rows[0]["change"] == "-2.00%"
    code, rows = gate(tmp_path, export, edited(export, test__ppl=[ppl * 1.005]))  # inside the 1% tolerance
    assert code == 0 and statuses(rows)["test/ppl"] == "unchanged"


def test_throughput_gates_on_the_normalized_figure_when_both_sides_have_it(export, tmp_path):
    norm, raw = value(export, "normalized_throughput"), value(export, "train_units_per_s")
    code, rows = gate(tmp_path, export, edited(export, normalized_throughput=[norm * 0.85]))
    assert code == 1 and statuses(rows)["normalized_throughput"] == "regressed"
    # The CI machine was twice as slow, the reference loop too: the normalized figure is flat.
    code, rows = gate(tmp_path, export, edited(export, train_units_per_s=[raw * 0.5]))
    assert code == 0 and statuses(rows)["normalized_throughput"] == "unchanged"
    assert "train_units_per_s" not in statuses(rows)
    # NEW without a normalized figure (a v1 record): the raw figure decides, and its halving is caught.
    code, rows = gate(tmp_path, export, edited(export, normalized_throughput=[], train_units_per_s=[raw * 0.5]))
    assert code == 1 and statuses(rows)["train_units_per_s"] == "regressed" and rows[1]["change"] == "-50.00%"


def test_memory_has_a_generous_tolerance(export, tmp_path):
    peak = value(export, "peak_memory_bytes")
    assert gate(tmp_path, export, edited(export, peak_memory_bytes=[peak * 1.15]))[0] == 0
    code, rows = gate(tmp_path, export, edited(export, peak_memory_bytes=[peak * 1.3]))
    assert code == 1 and statuses(rows)["peak_memory_bytes"] == "regressed"


def independent_welch_p(a, b):
    """Welch's t and df from the textbook formulas, the p-value by integrating the t density (mpmath)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(b) - statistics.mean(a)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    density = lambda x: mpmath.gamma((df + 1) / 2) / (mpmath.sqrt(df * mpmath.pi) * mpmath.gamma(df / 2)) \
        * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    return float(2 * mpmath.quad(density, [abs(t), mpmath.inf]))


def test_welch_needs_significance_as_well_as_the_tolerance(export, tmp_path):
    base, noisy = [100.0, 101.0, 99.0], [100.0, 125.0, 110.0]  # mean +11.7%, far beyond 1%, but noisy
    p = independent_welch_p(base, noisy)
    assert 0.05 < p < 0.5
    code, rows = gate(tmp_path, edited(export, test__ppl=base), edited(export, test__ppl=noisy))
    assert code == 0 and rows[0]["status"] == "unchanged" and rows[0]["decided by"] == f"Welch p={p:.3g}, tol 1%"
    assert rows[0]["new"] == "111.7 +/- 12.58 (n=3)"
    clear = [103.0, 103.5, 102.5]
    p = independent_welch_p(base, clear)
    assert p < 0.05
    code, rows = gate(tmp_path, edited(export, test__ppl=base), edited(export, test__ppl=clear))
    assert code == 1 and rows[0]["status"] == "regressed" and rows[0]["decided by"] == f"Welch p={p:.3g}, tol 1%"
    # Significant but inside the tolerance: unchanged.
    code, rows = gate(tmp_path, edited(export, test__ppl=base), edited(export, test__ppl=[100.5, 100.6, 100.4]))
    assert code == 0 and rows[0]["status"] == "unchanged"
    # No spread on either side: the difference is certain.
    code, rows = gate(tmp_path, edited(export, test__ppl=[100.0, 100.0]), edited(export, test__ppl=[90.0, 90.0]))
    assert rows[0]["status"] == "improved" and rows[0]["decided by"] == "Welch p=0, tol 1%"


def test_welch_matches_the_textbook_example():
    # R: t.test(extra ~ group, data = sleep) -> t = -1.8608, df = 17.776, p-value = 0.07939
    g1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    g2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    t, df, p = welch(g2, g1)
    assert (round(t, 4), round(df, 3), round(p, 5)) == (-1.8608, 17.776, 0.07939)
    assert p == pytest.approx(independent_welch_p(g2, g1), rel=1e-9)


@pytest.mark.parametrize("df, t_crit", [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042)])
def test_t_distribution_against_the_t_table(df, t_crit):
    assert t_two_sided_p(t_crit, df) == pytest.approx(0.05, abs=2e-4)  # two-sided 5% critical values


def test_t_distribution_against_closed_forms_and_mpmath():
    for t in (0.0, 0.3, 1.0, 4.0, 50.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-12, abs=1e-15)  # Cauchy
        assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-12, abs=1e-15)
    for df, t in ((0.7, 3.0), (3.3, 1.7), (17.776, 1.8608), (250.5, 2.5), (4000.0, 0.1)):
        exact = mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True)
        assert t_two_sided_p(t, df) == pytest.approx(float(exact), rel=1e-10)


def test_rows_on_one_side_are_missing_or_new(export, tmp_path):
    renamed = copy.deepcopy(export)
    renamed["boards"][0]["rows"][0]["model"] = "lstm"
    code, rows = gate(tmp_path, export, renamed)
    assert code == 0 and [(r["row"], r["status"], r["decided by"]) for r in rows] == [
        ("ptb/synthetic/smoke/fp32 gru:dense cpu", "missing", "row not in NEW"),
        ("ptb/synthetic/smoke/fp32 lstm:dense cpu", "new", "row not in BASE")]
    assert gate(tmp_path, export, renamed, fail_on_missing=True)[0] == 1
    assert gate(tmp_path, renamed, export, fail_on_missing=True)[0] == 1
    code, rows = gate(tmp_path, export, edited(export, test__ppl=[]))  # NEW's runs had no test metric
    assert code == 0 and rows[0]["status"] == "missing" and rows[0]["new"] == "-"


def test_markdown_has_one_line_per_comparison(export, tmp_path, capsys):
    code, rows = gate(tmp_path, export, edited(export, test__ppl=[value(export, "test/ppl") * 2]))
    text = (tmp_path / "summary" / "compare.md").read_text()
    assert text.startswith("### suite compare: 1 regressed, 0 improved, 2 unchanged, 0 missing, 0 new\n")
    assert [r["metric"] for r in rows] == ["test/ppl", "normalized_throughput", "peak_memory_bytes"]
    assert rows[0]["status"] == "regressed" and rows[0]["change"] == "+100.00%"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["row", "metric", "status", "base", "new", "change", "decided", "by"]
    assert len(printed) == 1 + len(rows) + 1  # header, one line per comparison, the count


def test_config_file_overrides_tolerances(export, tmp_path):
    ppl = value(export, "test/ppl")
    config = tmp_path / "compare.toml"
    config.write_text("[kinds]\nquality = 0.05\n")
    code, rows = gate(tmp_path, export, edited(export, test__ppl=[ppl * 1.02]), config)
    assert code == 0 and rows[0]["status"] == "unchanged" and rows[0]["decided by"] == "threshold, tol 5%"
    config.write_text('[kinds]\nquality = 0.05\n\n[metrics]\n"test/ppl" = 0.001\n')  # the metric's own wins
    code, rows = gate(tmp_path, export, edited(export, test__ppl=[ppl * 1.005]), config)
    assert code == 1 and rows[0]["status"] == "regressed" and rows[0]["decided by"] == "threshold, tol 0.1%"


@pytest.mark.parametrize("text, message", [
    ("quality = 0.1\n", "unknown key 'quality'; it has .kinds. and .metrics. tables only"),
    ("[kinds]\nspeed = 0.1\n", "unknown key kinds.speed; known: memory, quality, throughput"),
    ('[metrics]\n"test/pll" = 0.1\n', "unknown key metrics.test/pll; known: .*test/ppl"),
    ('[kinds]\nquality = "5%"\n', "kinds.quality = '5%' must be a relative tolerance >= 0"),
    ("[kinds]\nquality = -0.1\n", "must be a relative tolerance"),
    ("[kinds\n", "cannot read compare config"),
])
def test_bad_config_is_refused_in_one_line(export, tmp_path, text, message):
    config = tmp_path / "compare.toml"
    config.write_text(text)
    with pytest.raises(UserError, match=message) as info:
        gate(tmp_path, export, export, config)
    assert "\n" not in str(info.value)


def test_a_different_environment_is_reported_above_the_table(export, tmp_path, capsys):
    other = copy.deepcopy(export)
    env = other["boards"][0]["rows"][0]["environment"]
    torch_version, env["torch"], env["cuda"], env["git_commit"] = env["torch"], "2.12.0", "12.8", "f" * 40
    assert gate(tmp_path, export, other)[0] == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"note: environment differs (BASE -> NEW): torch {torch_version!r} -> '2.12.0'; " \
                         "cuda None -> '12.8'"
    assert printed[1].startswith("row")
    assert "- note" not in (tmp_path / "summary" / "compare.md").read_text()
    assert "- environment differs" in (tmp_path / "summary" / "compare.md").read_text()


def test_rows_of_two_configs_on_one_side_are_merged_and_noted(results, tmp_path, capsys):
    new = tmp_path / "new"
    shutil.copytree(results, new)
    (path,) = new.glob("ptb/gru/*.json")
    record = json.loads(path.read_text())
    record["config"]["train"]["lr"] *= 2  # another config digest, same match key
    record["config"]["seed"] = record["environment"]["seeds"]["torch"] = 2
    record["run_id"] += "-lr2"
    path.with_name(record["run_id"] + ".json").write_text(json.dumps(record))
    digests = sorted(r["config_digest"] for r in build_export(new)["boards"][0]["rows"])
    code, rows = gate(tmp_path, results, new)
    assert code == 0 and statuses(rows)["test/ppl"] == "unchanged" and rows[0]["new"].endswith("(n=2)")
    out = capsys.readouterr().out
    assert "note: NEW: ptb/synthetic/smoke/fp32 gru:dense cpu merges the values of configs " in out
    assert all(d in out for d in digests)


def test_bad_sides_are_refused(export, tmp_path):
    with pytest.raises(UserError, match="BASE .*nowhere does not exist"):
        main_compare(tmp_path / "nowhere", tmp_path, None, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="NEW .*empty holds no result records"):
        gate(tmp_path, export, tmp_path / "empty")


def test_a_diverged_run_is_a_regression_not_a_gap(tmp_path):
    from tiny import tiny_config

    from suite import experiment
    from suite.compare import main_compare

    units = ["budget.max_units=400", "budget.max_seconds=None"]
    experiment.run(tiny_config("gru", *units), tmp_path / "base", progress_bar=False)
    diverging = tiny_config("gru", *units, "train.optimizer=sgd", "train.lr=3e38")
    experiment.run(diverging, tmp_path / "new", progress_bar=False)
    summary = tmp_path / "summary.md"
    assert main_compare(tmp_path / "base", tmp_path / "new", None, summary) == 1
    assert "| unfinished runs | regressed |" in summary.read_text()
