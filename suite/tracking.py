"""Weights & Biases: one W&B run per result record; the leaderboard as W&B tables and a W&B Report.

Everything here is derived from the local records, which stay the source of truth: a W&B failure prints
one warning and never fails the run. Offline unless the user is logged in or sets the mode (WANDB_MODE,
`wandb offline`); offline runs upload later with `wandb sync DIR`, an offline report spec with
`python -m suite.tracking publish FILE`. wandb is imported inside the functions: it takes ~0.5 s.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shlex
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from suite.leaderboard import row_key as leaderboard_row_key

DEFAULT_PROJECT = "seqsuite"
INIT_TIMEOUT = 15.0  # seconds before an online start with no network gives up (wandb's default is 90)
REPORT_FILE = "wandb-report.json"


def log_run(record: dict[str, Any], project: str | None, entity: str | None) -> str | None:
    """Log one finished record as a W&B run: its URL (online) or local run directory (offline); None on failure."""
    try:
        c = record["config"]
        run = _start(project, entity, job_type="run", name=record["run_id"], group=row_key(record),
                     notes=record["error"], tags=[c["task"], c["model"], c["variant"], c["precision"],
                                                  c["budget_name"], c["source"]],
                     config={**c, "environment": record["environment"], "data": record["data"]})
        with _finishing(run):
            for point in record["learning_curve"]:
                run.log(flatten(point), step=int(point["units"]))
            run.summary.update(run_summary(record))
        return _announce(run, "W&B run")
    except Exception as exc:  # W&B is a view: whatever breaks there, the local record is already written
        _warn(f"W&B logging failed, the local record is kept ({_first_line(exc)})")
        return None


def row_key(record: dict[str, Any]) -> str:
    """The record's leaderboard row key: the W&B group, so the seeds of one row group together."""
    return "/".join(leaderboard_row_key(record))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as 'a/b' keys (W&B's metric sections); None values are left out."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif value is not None:
            flat[f"{prefix}{key}"] = value
    return flat


def run_summary(record: dict[str, Any]) -> dict[str, Any]:
    """Final values of a record: 'valid/ppl', 'test/ppl', 'throughput/normalized', 'memory/peak_bytes', ..."""
    parts = {k: record[k] for k in ("throughput", "memory", "budget_used", "reference", "variant")}
    return {**flatten(record["metrics"]), **flatten(parts), **flatten(record["model"], "model/"),
            "status": record["status"], "stopped_by": record["stopped_by"] or "", "run_id": record["run_id"]}


def log_leaderboard(export: dict[str, Any], project: str | None, entity: str | None, out_dir: Path) -> str | None:
    """Each board as a wandb.Table in one run, plus a Report with one section per board.

    The report spec is always written to out_dir/wandb-report.json; online it is also saved and its URL
    returned, offline the command that publishes it later is printed and the spec's path returned.
    """
    project = project or DEFAULT_PROJECT
    table_run, online = _log_tables(export, project, entity)
    try:
        path = Path(out_dir) / REPORT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec_json(build_report(export, project, entity, table_run)) + "\n")
    except Exception as exc:
        _warn(f"could not build the W&B report ({_first_line(exc)})")
        return None
    if online:
        try:
            url = publish_report(path, project, entity)
            print(f"W&B report: {url}")
            return url
        except Exception as exc:
            _warn(f"could not save the W&B report, its spec is kept ({_first_line(exc)})")
    print(f"W&B report spec: {path}\npublish it (after `wandb sync` of the offline runs) with: "
          f"{publish_command(path, project, entity)}")
    return str(path)


def board_key(board: dict[str, Any]) -> str:
    """A board's table name in W&B, e.g. 'ptb-synthetic-smoke-fp32'."""
    return "-".join(p for p in (board["task"], board["source"], board.get("dataset"), board["budget"],
                                 board["precision"]) if p)


def board_table(board: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of one board: one row per leaderboard row, metric means over seeds."""
    primary = f"test/{board['primary_metric']}"
    others = sorted({name for row in board["rows"] for name in row["stats"] if "/" in name} - {primary})
    plain = ["train_units_per_s", "normalized_throughput", "peak_memory_bytes"]
    columns = ["model", "variant", "device_class", f"{primary} mean", f"{primary} std", f"{primary} n",
               *others, *plain, "params", "size_bytes", "reference_model", "status", "seeds", "key"]
    rows = []
    for row in board["rows"]:
        stats = row["stats"]
        best = stats.get(primary, {"mean": None, "std": None, "n": 0})
        rows.append([row["model"], row["variant"], row["device_class"], best["mean"], best["std"], best["n"],
                     *(stats.get(name, {}).get("mean") for name in others + plain), row["params"],
                     row["size_bytes"], row.get("reference_model", False),
                     ", ".join(f"{k} {n}" for k, n in sorted(row["status"].items())),
                     ",".join(map(str, row["seeds"])), row["key"]])
    return columns, rows


def _log_tables(export: dict[str, Any], project: str, entity: str | None) -> tuple[str | None, bool]:
    """(run id, online) of the run holding every board's table; (None, False) if W&B failed."""
    try:
        import wandb

        stamp = dt.datetime.fromisoformat(export["generated"]).strftime("%Y%m%d-%H%M%S")
        run = _start(project, entity, job_type="leaderboard", name=f"leaderboard-{stamp}",
                     config={"results_dir": export["results_dir"], "generated": export["generated"],
                             "boards": [board_key(b) for b in export["boards"]]})
        with _finishing(run):
            tables = {board_key(b): wandb.Table(*board_table(b)) for b in export["boards"]}
            run.log(tables)
        _announce(run, "W&B leaderboard tables")
        return (None, False) if run.disabled else (run.id, not run.offline)
    except Exception as exc:
        _warn(f"W&B logging of the leaderboard tables failed ({_first_line(exc)})")
        return None, False


def build_report(export: dict[str, Any], project: str, entity: str | None, table_run: str | None) -> Any:
    """The W&B Report (wandb-workspaces), runsets without entity/project so it serialises offline."""
    wr = _workspaces()
    blocks = [block for board in export["boards"] for block in _section(wr, board, table_run)]
    return wr.Report(project=project, entity=entity or "", title="seqsuite leaderboard", width="fluid",
                     description=f"Generated {export['generated']} from {export['results_dir']}.", blocks=blocks)


def _section(wr: Any, board: dict[str, Any], table_run: str | None) -> list[Any]:
    """Heading, note, and the board's runs (table grouped by model, quality vs throughput, learning curves)."""
    from wandb_workspaces import expr

    primary, unit = board["primary_metric"], board["unit"]
    higher = board["metrics"][primary]
    label = "synthetic data" if board["synthetic"] else "real data"
    keys = {"task": board["task"], "source": board["source"], "budget_name": board["budget"],
            "precision": board["precision"]}
    quality = wr.SummaryMetric(f"test/{primary}")
    runs = wr.Runset(name=board_key(board), filters=expr.And(*(expr.Config(k) == v for k, v in keys.items())),
                     groupby=["config.model"], order=[wr.OrderBy(quality, ascending=not higher)])
    panels = [wr.ScatterPlot(title=f"test {primary} vs training throughput ({unit}/s)",
                             x=wr.SummaryMetric("throughput/train_units_per_s"), y=quality),
              wr.LinePlot(title=f"valid {primary} vs {unit}", x="units", y=[f"valid/{primary}"])]
    blocks = [wr.H2(f"{board['task']}: {label}, budget {board['budget']}, {board['precision']}"),
              wr.P(f"Primary metric: test {primary}, {'higher' if higher else 'lower'} is better. "
                   f"Reference line ({board['reference']['name']}): {board['reference']['test'].get(primary)}."),
              wr.PanelGrid(runsets=[runs], panels=panels)]
    if table_run:
        table = wr.Runset(name="leaderboard", filters=expr.And(expr.Metric("ID") == table_run))
        blocks.append(wr.PanelGrid(runsets=[table], hide_run_sets=True,
                                   panels=[wr.WeavePanelSummaryTable(table_name=board_key(board))]))
    return blocks


def _workspaces() -> Any:
    """wandb_workspaces.reports.v2, imported without its pydantic-v1 deprecation warnings (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.reports.v2.internal  # noqa: F401  (wr.internal below)
    return wr


def spec_json(report: Any) -> str:
    """The report's viewspec as JSON (wandb-workspaces' own model, as the server stores it)."""
    return report._to_model().model_dump_json(by_alias=True, exclude_none=True)


def load_report(text: str) -> Any:
    """A Report back from `spec_json` output."""
    wr = _workspaces()
    return wr.Report._from_model(wr.internal.ReportViewspec.model_validate_json(text))


def publish_report(spec_path: Path, project: str | None, entity: str | None) -> str:
    """Save a report spec to W&B (needs a login); its URL. Project and entity default to the spec's, then yours."""
    import wandb

    report = load_report(Path(spec_path).read_text())
    report.project = project or report.project
    report.entity = entity or report.entity or wandb.Api().default_entity
    for block in report.blocks:  # runsets name their project only now: naming it earlier needs the API
        for runset in getattr(block, "runsets", []):
            runset.entity, runset.project = report.entity, report.project
    report.save()
    return report.url


def publish_command(path: Path, project: str, entity: str | None) -> str:
    command = f"python -m suite.tracking publish {shlex.quote(str(path))} --project {shlex.quote(project)}"
    return command + (f" --entity {shlex.quote(entity)}" if entity else "")


def choose_mode() -> str | None:
    """None when the user chose a mode (WANDB_MODE, `wandb offline`): wandb follows it. Else online only
    with credentials for the configured server (WANDB_BASE_URL honoured), offline otherwise."""
    import wandb
    from wandb.sdk.lib import wbauth

    settings = wandb.setup().settings
    if settings.mode != "online" or "WANDB_MODE" in os.environ:
        return None
    try:
        logged_in = bool(settings.api_key or settings.identity_token_file
                         or wbauth.read_netrc_auth(host=settings.base_url))
    except wandb.errors.AuthenticationError:  # a malformed key is still a login attempt: let online report it
        logged_in = True
    return "online" if logged_in else "offline"


def _start(project: str | None, entity: str | None, **init: Any) -> Any:
    """wandb.init in the chosen mode; an automatic online start that fails falls back to offline."""
    import wandb

    settings = wandb.Settings(init_timeout=INIT_TIMEOUT, console="off", silent=True,
                              x_disable_stats=True)  # system stats would describe this logging process
    init.update(project=project or DEFAULT_PROJECT, entity=entity, settings=settings)
    mode = choose_mode()
    if mode != "online":
        return wandb.init(mode=mode, **init)
    try:
        return wandb.init(mode="online", **init)
    except wandb.errors.Error as exc:
        run = wandb.init(mode="offline", **init)
        _warn(f"W&B online start failed, logged offline instead ({_first_line(exc)})")
        return run


@contextlib.contextmanager
def _finishing(run: Any) -> Iterator[None]:
    """Finish the run however the block ends; a failed block marks the run failed."""
    try:
        yield
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


def _announce(run: Any, what: str) -> str | None:
    """Say where the run went (one line on stdout); None for a disabled run (WANDB_MODE=disabled)."""
    if run.disabled:
        return None
    if run.offline:
        where = run.settings.sync_dir
        print(f"{what} (offline): {where}; upload with: wandb sync {shlex.quote(where)}")
    else:
        where = run.url
        print(f"{what}: {where}")
    return where


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """`python -m suite.tracking publish FILE`: save an offline report spec to W&B."""
    top = argparse.ArgumentParser(prog="python -m suite.tracking", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(required=True, metavar="{publish}")
    publish = sub.add_parser("publish", help="save a report spec written offline by `suite leaderboard --wandb`")
    publish.add_argument("spec", type=Path, help=f"the {REPORT_FILE} to publish")
    publish.add_argument("--project", help="W&B project (default: the spec's)")
    publish.add_argument("--entity", help="W&B entity (default: the spec's, else your default entity)")
    args = top.parse_args(argv)
    try:
        print(f"W&B report: {publish_report(args.spec, args.project, args.entity)}")
    except Exception as exc:
        print(f"error: could not publish {args.spec} ({_first_line(exc)})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
