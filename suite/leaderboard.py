"""Records -> leaderboard: load every record, group, aggregate over seeds, export as JSON.

The JSON export (`leaderboard.json`) is the one structure every view reads: Markdown, the static
site, W&B and `suite compare`. Records stay the single source of truth; nothing here is edited by hand.

Grouping: one board per (task, source, dataset, budget, precision), where the dataset is the real dataset
a task names in its record (captioning's coco or flickr8k, video's ucf101 or csv: their metrics are not
comparable); one row per (model, variant, device class, config without seed), aggregated over seeds. Only
completed and budget-exhausted runs enter the statistics; every run is counted in the row's status.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from suite import registry
from suite.config import identity
from suite.errors import UserError
from suite.results import atomic_write_text, load_record

FORMAT, VERSION = "seqsuite-leaderboard", 1
FINISHED = ("completed", "budget_exhausted")
REFERENCE_NOTE = ("a non-recurrent model shown for comparison, trained under the same budget as the recurrent models "
                  "and ranked with them")  # what every view's legend says a reference-model row is


def load_all(results_dir: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """Every record at results_dir/<task>/<model>/*.json; a bad one is skipped with a one-line reason."""
    found, skipped = [], []
    for path in sorted(Path(results_dir).glob("*/*/*.json")):
        if path.parts[-3] in ("checkpoints", "site", "baselines"):
            continue
        try:
            found.append((path, load_record(path)))
        except UserError as exc:
            skipped.append(str(exc))
    return found, skipped


def device_class(record: dict[str, Any]) -> str:
    """'cpu' or the GPU's name, with ' x N' for a run on N processes: runs compare only within one class (CPU
    speed is normalized instead)."""
    env, world = record["environment"], record["config"].get("world_size", 1)
    name = env["device_name"] if env["device"].startswith("cuda") else "cpu"
    return f"{name} x{world}" if world > 1 else name


def dataset(record: dict[str, Any]) -> str:
    """The real dataset a record's task names ("" for synthetic data and tasks with only one dataset)."""
    data = record["data"]
    return "" if data.get("synthetic") else str(data.get("dataset") or "")


def config_digest(record: dict[str, Any]) -> str:
    """Hash of the config without seed and device: seeds of one setting aggregate into one row."""
    cfg = {k: v for k, v in identity(record["config"]).items() if k not in ("seed", "device", "parent")}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]


def row_key(record: dict[str, Any]) -> tuple[str, ...]:
    """(task, source, budget, precision, model:variant, device class, config digest): one leaderboard row."""
    c = record["config"]
    return (c["task"], c["source"], c["budget_name"], c["precision"], f"{c['model']}:{c['variant']}",
            device_class(record), config_digest(record))


def stat(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value), count and the values (compare's Welch test)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def _row(key: tuple, runs: list[tuple[Path, dict[str, Any]]], results_dir: Path) -> dict[str, Any]:
    first = runs[0][1]
    done = [r for _, r in runs if r["status"] in FINISHED]
    metric_names = sorted({f"{s}/{m}" for r in done for s, ms in r["metrics"].items() for m in ms})
    stats = {name: stat([r["metrics"].get(name.split("/")[0], {}).get(name.split("/")[1]) for r in done])
             for name in metric_names}
    stats["train_units_per_s"] = stat([r["throughput"]["train_units_per_s"] for r in done])
    stats["normalized_throughput"] = stat([r["throughput"]["normalized"] for r in done])
    stats["peak_memory_bytes"] = stat([r["memory"]["peak_bytes"] for r in done])
    status: dict[str, int] = {}
    for _, r in runs:
        status[r["status"]] = status.get(r["status"], 0) + 1
    variant = first["variant"]
    return {
        "key": "/".join(key), "model": first["config"]["model"], "variant": first["config"]["variant"],
        # A non-recurrent model shown for comparison; records from before the flag existed are recurrent.
        "reference_model": bool(first["model"].get("reference_model", False)),
        "device_class": key[5], "config_digest": key[6], "applicable": True,
        "seeds": sorted(r["config"]["seed"] for _, r in runs), "status": status, "stats": stats,
        "params": first["model"]["params"], "size_bytes": first["model"].get("size_bytes"),
        "variant_info": None if variant is None else {k: variant[k] for k in (
            "parent_run_id", "sparsity", "size_bytes", "parent_size_bytes", "latency_ms", "parent_latency_ms")},
        "records": [os.path.relpath(p, results_dir) for p, _ in runs],
        "run_ids": [r["run_id"] for _, r in runs],
        "environment": {k: first["environment"].get(k) for k in ("device_name", "torch", "cuda", "git_commit")},
    }


def _sort_key(row: dict[str, Any], higher: bool, primary: str) -> tuple:
    mean = row["stats"].get(f"test/{primary}", {}).get("mean")
    return (mean is None, -(mean or 0) if higher else (mean or 0), row["model"], row["variant"])


def build_export(results_dir: Path) -> dict[str, Any]:
    """The leaderboard JSON structure for every record under `results_dir`."""
    records, skipped = load_all(results_dir)
    groups: dict[tuple, dict[tuple, list]] = {}
    for path, r in records:
        row = row_key(r)
        groups.setdefault((*row[:2], dataset(r), *row[2:4]), {}).setdefault(row, []).append((path, r))
    boards = [_board(key, rows, results_dir) for key, rows in sorted(groups.items())]
    return {"format": FORMAT, "version": VERSION, "generated": dt.datetime.now(dt.UTC).isoformat(),
            "results_dir": str(results_dir), "skipped": skipped, "boards": boards}


def _board(key: tuple, rows: dict[tuple, list], results_dir: Path) -> dict[str, Any]:
    task, source, dataset_name, budget, precision = key
    first = next(iter(rows.values()))[0][1]
    t = first["task"]
    built = sorted((_row(k, runs, results_dir) for k, runs in rows.items()),
                   key=lambda r: _sort_key(r, t["metrics"][t["primary_metric"]], t["primary_metric"]))
    models = {r["model"] for r in built}
    task_cls = registry.TASKS.get(task)
    applicable = _applicable(task_cls) if task_cls else sorted(models)
    not_applicable = [m for m in registry.MODELS if m not in applicable]
    return {"task": task, "source": source, "dataset": dataset_name, "synthetic": source == "synthetic",
            "budget": budget,
            "precision": precision, "unit": t["unit"], "primary_metric": t["primary_metric"],
            "metrics": t["metrics"], "reference": first["reference"], "rows": built,
            "not_applicable": not_applicable, "missing": [m for m in applicable if m not in models]}


def _applicable(task_cls: type) -> list[str]:
    return [n for n, m in registry.MODELS.items() if m.causal or not task_cls.causal]


def load_export(path: Path) -> dict[str, Any]:
    """A leaderboard JSON written by `write_outputs`, checked for its format marker."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read leaderboard export {path} ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a seqsuite leaderboard export (no format marker {FORMAT!r})")
    return data


def warn_skipped(export: dict[str, Any]) -> None:
    for line in export["skipped"]:
        print(f"warning: skipped {line}", file=sys.stderr)


def write_outputs(export: dict[str, Any], results_dir: Path, out_dir: Path) -> list[Path]:
    """leaderboard.json and LEADERBOARD.md under `out_dir`, each written atomically."""
    from suite.markdown import render

    out_dir.mkdir(parents=True, exist_ok=True)
    return [atomic_write_text(out_dir / "leaderboard.json", json.dumps(export, indent=1) + "\n"),
            atomic_write_text(out_dir / "LEADERBOARD.md", render(export, results_dir, out_dir))]
