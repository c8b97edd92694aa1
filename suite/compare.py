"""`suite compare BASE NEW`: the CI gate. Exit 1 when quality or speed regressed beyond tolerance.

Both sides are leaderboard exports (or results directories exported on the fly), so the gate reads
the same aggregated numbers as every other view. Rows match on (task, model, variant, precision,
budget, source, real dataset, device class); the config digest is ignored so a changed default still compares.

A value that is not finite (NaN, infinity, or null where a record stored one) is never a number to compare:
in NEW, where BASE has finite values, it is a regression whatever the metric's direction; in BASE it is no
baseline, and the row says so without failing. Both sides are read only through `parse_json`/`load_record`.
"""
from __future__ import annotations

import math
import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite import leaderboard, registry
from suite.errors import UserError
from suite.show import table

ALPHA = 0.05  # significance level of Welch's test when both sides have two or more values
TOLERANCES = {"quality": 0.01, "throughput": 0.10, "memory": 0.20}  # relative change allowed, per kind
THROUGHPUTS = ("normalized_throughput", "train_units_per_s")  # normalized first: raw CI speed is noisy
MEMORY = "peak_memory_bytes"
FINGERPRINT = ("device_name", "torch", "cuda")  # git_commit is expected to differ between BASE and NEW
HEADER = ["row", "metric", "status", "base", "new", "change", "decided by"]
# (BASE, NEW) -> (status, why) for a metric the two sides cannot compare by value. A side is "ok" (finite values
# only), "not finite" (some value NaN, infinite or null) or "none" (no value); (ok, ok) goes to `decide`.
UNCOMPARABLE = {
    ("ok", "not finite"): ("regressed", "not finite in NEW"),
    ("ok", "none"): ("missing", "no values in NEW"),
    ("none", "ok"): ("new", "no values in BASE"),
    ("none", "not finite"): ("new", "no values in BASE; not finite in NEW"),
    ("not finite", "ok"): ("new", "not finite in BASE: no baseline"),
    ("not finite", "not finite"): ("new", "not finite in BASE: no baseline; not finite in NEW"),
    ("not finite", "none"): ("missing", "not finite in BASE: no baseline; no values in NEW"),
}


@dataclass(frozen=True)
class Line:
    """One compared (row, metric), or one row present on one side only (metric '-')."""

    row: str
    metric: str
    status: str  # improved | unchanged | regressed | missing (not in NEW) | new (not in BASE)
    base: dict[str, Any] | None  # leaderboard stats: mean, std, n, values
    new: dict[str, Any] | None
    change: float | None  # (new - base) / |base|
    decided: str


@dataclass(frozen=True)
class Comparison:
    lines: list[Line]
    notes: list[str]  # environment differences and merged configs, printed above the table

    def count(self, status: str) -> int:
        return sum(line.status == status for line in self.lines)


# --- statistics -------------------------------------------------------------------------------


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes, 6.4).

    The fraction converges fast for x < (a + 1) / (a + b + 2); above that we use I_x(a, b) = 1 - I_{1-x}(b, a).
    """
    if x <= 0.0 or x >= 1.0:
        return min(max(x, 0.0), 1.0)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) * _beta_fraction(a, b, x) / a


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300  # stands in for a zero denominator, as in Numerical Recipes' FPMIN
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for coef in (even, odd):
            d = 1.0 + coef * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + coef / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (df may be fractional, as in Welch)."""
    return betainc(df / 2, 0.5, df / (df + t * t))


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test of mean(b) - mean(a): (t, Welch-Satterthwaite df, two-sided p)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    if va + vb == 0:  # both sides constant: any difference is certain, none is no evidence
        return (0.0, math.inf, 1.0) if diff == 0 else (math.copysign(math.inf, diff), math.inf, 0.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, t_two_sided_p(t, df)


def decide(base: dict[str, Any], new: dict[str, Any], higher: bool, tol: float) -> tuple[str, float, str]:
    """(status, relative change, how decided) for one metric.

    Rule: let change = (new - base) / |base| of the means. The metric regressed (or improved) when
    |change| > tol in the bad (good) direction AND, if both sides have >= 2 values, Welch's two-sided
    p < ALPHA; with one value on either side the tolerance alone decides. Anything else is unchanged.
    """
    b, n = base["mean"], new["mean"]
    change = (n - b) / abs(b) if b else (0.0 if n == b else math.copysign(math.inf, n - b))
    shown_tol = f"tol {tol * 100:g}%"
    significant, how = True, f"threshold, {shown_tol}"
    if base["n"] >= 2 and new["n"] >= 2:
        p = welch(base["values"], new["values"])[2]
        significant, how = p < ALPHA, f"Welch p={p:.3g}, {shown_tol}"
    if abs(change) <= tol or not significant:
        return "unchanged", change, how
    return ("improved" if (n > b) == higher else "regressed"), change, how


# --- matching ---------------------------------------------------------------------------------


def load_side(path: Path, side: str) -> dict[str, Any]:
    """A results directory (exported now) or a leaderboard JSON export; an empty side is an error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{side} {path} does not exist: give a results directory or a leaderboard JSON export")
    try:
        export = leaderboard.build_export(path) if path.is_dir() else leaderboard.load_export(path)
    except UserError as exc:
        raise UserError(f"{side} {exc}") from None
    leaderboard.warn_skipped(export)
    if not any(board["rows"] for board in export["boards"]):
        raise UserError(f"{side} {path} holds no result records")
    return export


def _index(export: dict[str, Any], side: str) -> tuple[dict[tuple, dict[str, Any]], list[str]]:
    """Rows by match key; rows sharing a key (different config digests) have their values merged."""
    rows: dict[tuple, dict[str, Any]] = {}
    for board in export["boards"]:
        for row in board["rows"]:
            key = (board["task"], row["model"], row["variant"], board["precision"], board["budget"],
                   board["source"], board.get("dataset", ""), row["device_class"])  # older exports lack dataset
            seen = rows.get(key)
            stats = {m: leaderboard.restat(s) for m, s in row["stats"].items()}  # whoever wrote the export
            if seen is None:
                rows[key] = {"metrics": board["metrics"], "stats": stats, "env": row["environment"],
                             "digests": [row["config_digest"]], "unfinished": _unfinished(row)}
                continue
            seen["unfinished"] += _unfinished(row)
            seen["stats"] = {m: _merge(seen["stats"].get(m), stats.get(m)) for m in sorted({*seen["stats"], *stats})}
            seen["digests"].append(row["config_digest"])
    notes = [f"{side}: {_label(k)} merges the values of configs {', '.join(r['digests'])}"
             for k, r in rows.items() if len(r["digests"]) > 1]
    return rows, notes


def _merge(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    """One statistic over the runs of two rows, non-finite values included."""
    runs = [[*s["values"], *[None] * s["not_finite"]] for s in (a, b) if s]
    return leaderboard.stat([v for values in runs for v in values])


def _unfinished(row: dict[str, Any]) -> int:
    """Runs of a row that diverged, failed or were interrupted: they never reach the statistics."""
    return sum(n for status, n in row["status"].items() if status not in leaderboard.FINISHED)


def _label(key: tuple) -> str:
    task, model, variant, precision, budget, source, dataset, device = key
    where = f"{source}:{dataset}" if dataset else source
    return f"{task}/{where}/{budget}/{precision} {model}:{variant} {device}"


def _metric_plan(base: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(stats name, kind, higher is better) for every metric compared in one matched row."""
    directions = {**base["metrics"], **new["metrics"]}
    tests = sorted({m for m in (*base["stats"], *new["stats"]) if m.startswith("test/")})
    plan = [(m, "quality", directions[m[5:]]) for m in tests if m[5:] in directions]
    # The normalized figure decides when BASE has one to compare against and NEW reports it (a non-finite one
    # included: that is a regression, not a reason to fall back on the raw figure).
    b, n = (_state(side["stats"].get(THROUGHPUTS[0])) for side in (base, new))
    normalized = b == "ok" and n != "none"
    plan.append((THROUGHPUTS[0] if normalized else THROUGHPUTS[1], "throughput", True))
    plan.append((MEMORY, "memory", False))
    return plan


def _state(stat: dict[str, Any] | None) -> str:
    """'ok', 'not finite' or 'none': what one side holds of a metric (see UNCOMPARABLE)."""
    if stat and stat["not_finite"]:
        return "not finite"
    return "ok" if stat and stat["n"] else "none"


def _why(reason: str, base: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    """UNCOMPARABLE's reason with, after each 'not finite in SIDE', how many of that side's runs it was."""
    for side, stat in (("BASE", base), ("NEW", new)):
        if stat and stat["not_finite"]:
            counted = f"not finite in {side} ({stat['not_finite']} of {stat['not_finite'] + stat['n']} runs)"
            reason = reason.replace(f"not finite in {side}", counted)
    return reason


def _compare_row(label: str, base: dict[str, Any], new: dict[str, Any], tols: dict[str, Any]) -> list[Line]:
    lines = []
    if new["unfinished"] > base["unfinished"]:  # a run that diverged or failed is a regression, not a gap
        lines.append(Line(label, "unfinished runs", "regressed", None, None, None,
                          f"{base['unfinished']} in BASE, {new['unfinished']} in NEW: diverged, failed or interrupted"))
    for name, kind, higher in _metric_plan(base, new):
        b, n = base["stats"].get(name), new["stats"].get(name)
        states = (_state(b), _state(n))
        if states == ("none", "none"):
            continue  # measured on neither side (a variant's training speed, say): nothing to gate
        if states != ("ok", "ok"):
            status, reason = UNCOMPARABLE[states]
            lines.append(Line(label, name, status, b, n, None, _why(reason, b, n)))
            continue
        tol = tols["metrics"].get(name, tols["kinds"][kind])
        status, change, how = decide(b, n, higher, tol)
        lines.append(Line(label, name, status, b, n, change, how))
    return lines


def _environment_notes(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """One line per distinct difference of the environment fingerprint between matched rows."""
    notes = []
    for base, new in pairs:
        diffs = [f"{k} {base.get(k)!r} -> {new.get(k)!r}" for k in FINGERPRINT if base.get(k) != new.get(k)]
        note = "environment differs (BASE -> NEW): " + "; ".join(diffs)
        if diffs and note not in notes:
            notes.append(note)
    return notes


def compare(base: dict[str, Any], new: dict[str, Any], tolerances: dict[str, Any] | None = None) -> Comparison:
    """Compare two leaderboard exports row by row and metric by metric."""
    tols = tolerances or {"kinds": dict(TOLERANCES), "metrics": {}}
    base_rows, base_notes = _index(base, "BASE")
    new_rows, new_notes = _index(new, "NEW")
    lines: list[Line] = []
    for key in sorted(base_rows.keys() | new_rows.keys(), key=lambda k: tuple(map(str, k))):
        b, n = base_rows.get(key), new_rows.get(key)
        if b is None or n is None:
            status, where = ("new", "BASE") if b is None else ("missing", "NEW")
            lines.append(Line(_label(key), "-", status, None, None, None, f"row not in {where}"))
        else:
            lines += _compare_row(_label(key), b, n, tols)
    pairs = [(base_rows[k]["env"], new_rows[k]["env"]) for k in sorted(base_rows.keys() & new_rows.keys(), key=str)]
    return Comparison(lines, _environment_notes(pairs) + base_notes + new_notes)


# --- configuration and output -----------------------------------------------------------------


def known_metrics(*exports: dict[str, Any]) -> set[str]:
    """Names a config file may set a tolerance for: test metrics of registered or compared tasks, speed, memory."""
    declared = [t.metrics for t in registry.TASKS.values()] + [b["metrics"] for e in exports for b in e["boards"]]
    return {f"test/{m}" for metrics in declared for m in metrics} | {*THROUGHPUTS, MEMORY}


def load_tolerances(path: Path | None, known: set[str]) -> dict[str, Any]:
    """Defaults, overridden by a TOML file with a [kinds] table (quality, throughput, memory) and a
    [metrics] table ("test/ppl" = 0.02); values are relative (0.02 = 2%). Unknown keys are refused."""
    tols: dict[str, Any] = {"kinds": dict(TOLERANCES), "metrics": {}}
    if path is None:
        return tols
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read compare config {path} ({exc})") from None
    unknown = sorted(data.keys() - {"kinds", "metrics"})
    if unknown:
        raise UserError(f"compare config {path}: unknown key {unknown[0]!r}; it has [kinds] and [metrics] tables only")
    for section, allowed in (("kinds", set(TOLERANCES)), ("metrics", known)):
        entries = data.get(section, {})
        if not isinstance(entries, dict):
            raise UserError(f"compare config {path}: {section} must be a table, e.g. [{section}]")
        for key, value in entries.items():
            if key not in allowed:
                raise UserError(f"compare config {path}: unknown key {section}.{key}; "
                                f"known: {', '.join(sorted(allowed))}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise UserError(f"compare config {path}: {section}.{key} = {value!r} must be a relative "
                                "tolerance >= 0 (0.05 allows 5%)")
            tols[section][key] = float(value)
    return tols


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def _value(stat: dict[str, Any] | None) -> str:
    if leaderboard.not_finite(stat):
        return leaderboard.not_finite(stat)
    if not stat or not stat["n"]:
        return "-"
    if stat["n"] == 1:
        return _number(stat["mean"])
    return f"{_number(stat['mean'])} +/- {_number(stat['std'])} (n={stat['n']})"


def _cells(line: Line) -> list[str]:
    change = "-" if line.change is None else f"{line.change * 100:+.2f}%"
    return [line.row, line.metric, line.status, _value(line.base), _value(line.new), change, line.decided]


def summary(result: Comparison) -> str:
    return ", ".join(f"{result.count(s)} {s}" for s in ("regressed", "improved", "unchanged", "missing", "new"))


def render_text(result: Comparison) -> str:
    """Notes, the table, and a one-line count: what `suite compare` prints."""
    rows = table([HEADER, *(_cells(line) for line in result.lines)])
    return "\n".join([*(f"note: {n}" for n in result.notes), rows, f"compare: {summary(result)}"])


def render_markdown(result: Comparison) -> str:
    """The same as a GitHub-flavoured Markdown table, for a CI job summary."""
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [f"### suite compare: {summary(result)}", ""]
    out += [f"- {n}" for n in result.notes] + ([""] if result.notes else [])
    out += [row(HEADER), row(["---"] * len(HEADER)), *(row(_cells(line)) for line in result.lines)]
    return "\n".join(out) + "\n"


def main_compare(base: Path, new: Path, config: Path | None, markdown: Path | None,
                 fail_on_missing: bool = False) -> int:
    """Print the comparison and write it as Markdown when asked. Exit 1 on any regression (or, with
    fail_on_missing, on a row or metric missing from NEW), else 0. A bad path is a UserError (exit 2):
    CI must not read a typo as a regression."""
    if markdown is not None:
        check_markdown(Path(markdown))  # before the work, so nothing is printed in vain
    base_export, new_export = load_side(base, "BASE"), load_side(new, "NEW")
    result = compare(base_export, new_export, load_tolerances(config, known_metrics(base_export, new_export)))
    print(render_text(result))
    if markdown is not None:
        write_markdown(Path(markdown), render_markdown(result))
    failed = result.count("regressed") or (fail_on_missing and result.count("missing"))
    return 1 if failed else 0


def check_markdown(path: Path) -> None:
    """Refuse a --markdown path that names a folder, or lies under a file, in one line."""
    if path.is_dir():
        raise UserError(f"--markdown {path} is a directory: give a file, e.g. {path / 'compare.md'}")
    above = next((p for p in path.parents if p.exists()), None)  # the nearest part of the path that exists
    if above is not None and not above.is_dir():
        raise UserError(f"cannot write --markdown {path}: {above} is a file, not a directory")


def write_markdown(path: Path, text: str) -> None:
    """The summary, written in place: the target may be a CI file such as $GITHUB_STEP_SUMMARY, or even a
    device, that a rename from a temporary file would replace or could not reach."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write --markdown {path} ({exc.strerror or exc})") from None
