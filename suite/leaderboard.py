"""Records -> leaderboard: load every record, group, aggregate over seeds, export as JSON.

The JSON export (`leaderboard.json`) is the one structure every view reads: Markdown, the static
site, W&B and `suite compare`. Records stay the single source of truth; nothing here is edited by hand.

Grouping: one board per (task, source, dataset, budget, precision), where the dataset is the real dataset
a task names in its record (captioning's coco or flickr8k, video's ucf101 or csv: their metrics are not
comparable); one row per (model, variant, device class, config without seed), aggregated over seeds. Only
completed and budget-exhausted runs enter the statistics; every run is counted in the row's status.

Strict JSON: a statistic is a mean over finite values only. A metric a run recorded as NaN, infinite or null
(a record stores a non-finite number as null) is counted in the statistic's `not_finite`, and then the mean
and std are null: the mean over seeds is not a number, and no view may rank the row by its other seeds.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from filelock import FileLock

from suite import registry
from suite.config import identity
from suite.durable import atomic_write_text, remove_temporaries
from suite.errors import UserError
from suite.results import finite, load_record, parse_json

FORMAT, VERSION = "seqsuite-leaderboard", 1
FINISHED = ("completed", "budget_exhausted")
LOCK = ".leaderboard.lock"  # in the output folder: one `suite leaderboard` at a time writes there
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


def stat(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value), count and the finite values (compare's Welch
    test), and `not_finite`: how many values were NaN, infinite or null. One such value nulls mean and std."""
    good = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    bad = len(values) - len(good)
    mean = std = None
    if good and not bad:
        try:
            mean = statistics.fmean(good)
            std = statistics.stdev(good) if len(good) > 1 else None
        except OverflowError:  # values near the float limit: the statistic itself is not finite
            good, bad = [], len(good)
    return {"mean": mean, "std": std, "n": len(good), "values": good, "not_finite": bad}


def not_finite(stat: dict[str, Any] | None) -> str:
    """'not finite (k of n)' when k of a statistic's n runs had a NaN, infinite or null value, else '': the words
    every view (Markdown, site, compare) uses for a statistic that has no mean for that reason."""
    bad = (stat or {}).get("not_finite") or 0
    return f"not finite ({bad} of {bad + stat['n']})" if bad else ""


def restat(read: dict[str, Any]) -> dict[str, Any]:
    """A statistic read back from an export (ours, an older one, or one whose NaN tokens were read as null),
    recomputed from its values so that mean, n and not_finite agree with `stat` whoever wrote it."""
    return stat([*read.get("values", []), *[None] * int(read.get("not_finite") or 0)])


def _metric(done: list[dict[str, Any]], name: str) -> list[float | None]:
    """A test/valid metric of every finished run that reports it; null (a non-finite value) is kept."""
    split, metric = name.split("/", 1)
    return [r["metrics"][split][metric] for r in done if metric in r["metrics"].get(split, {})]


def _speed(done: list[dict[str, Any]], key: str) -> list[float | None]:
    """A throughput figure of the runs that measured one. Null means not measured (a variant, a run shorter than
    its warm-up) unless the record's `non_finite` (schema v3) names it: then it was NaN or infinite."""
    pointer = f"/throughput/{key}"
    return [r["throughput"][key] for r in done
            if r["throughput"][key] is not None or pointer in r.get("non_finite", ())]


def _row(key: tuple, runs: list[tuple[Path, dict[str, Any]]], results_dir: Path) -> dict[str, Any]:
    first = runs[0][1]
    done = [r for _, r in runs if r["status"] in FINISHED]
    metric_names = sorted({f"{s}/{m}" for r in done for s, ms in r["metrics"].items() for m in ms})
    stats = {name: stat(_metric(done, name)) for name in metric_names}
    stats["train_units_per_s"] = stat(_speed(done, "train_units_per_s"))
    stats["normalized_throughput"] = stat(_speed(done, "normalized"))
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
    """A leaderboard JSON written by `write_outputs` (NaN/Infinity tokens of other writers read as null), checked
    for its format marker and its shape; anything else fails with one sentence."""
    try:
        data = parse_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a leaderboard export ({_reason(exc)})") from None
    if isinstance(data, dict) and "schema_version" in data and "run_id" in data:
        raise UserError(f"{path} is a result record, not a leaderboard export: pass the results directory it is in")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a seqsuite leaderboard export (no format marker {FORMAT!r})")
    boards = data.get("boards")
    if not isinstance(boards, list) or not all(isinstance(b, dict) and isinstance(b.get("rows"), list) for b in boards):
        raise UserError(f"{path} is a damaged leaderboard export (its boards are not a list of boards with rows): "
                        "write it again with `suite leaderboard`")
    data.setdefault("skipped", [])
    return data


def _reason(exc: Exception) -> str:
    """An OS or decoding error in a few words (UnicodeDecodeError's own text holds the bytes it choked on)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: byte {exc.start}"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def warn_skipped(export: dict[str, Any]) -> None:
    for line in export["skipped"]:
        print(f"warning: skipped {line}", file=sys.stderr)


def output_dir(out_dir: Path) -> Path:
    """`out_dir`, created if need be; a file in its place or above it is the user's to fix, in one line."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"cannot write the leaderboard into {out_dir}: it is a file, not a directory (pass --out DIR)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output directory {out_dir} ({_reason(exc)}): pass --out DIR") from None
    return out_dir


def output_lock(out_dir: Path) -> FileLock:
    """The lock every writer into `out_dir` holds (leaderboard files, the site): one builder at a time, so
    whatever in-flight file or folder the holder finds there is the leftover of a killed build."""
    return FileLock(Path(out_dir) / LOCK)


def write_outputs(export: dict[str, Any], results_dir: Path, out_dir: Path) -> list[Path]:
    """leaderboard.json (strict JSON: no NaN or Infinity token) and LEADERBOARD.md under `out_dir`, each
    written atomically and fsynced, under the folder's lock."""
    from suite.markdown import render

    out_dir = output_dir(out_dir)
    # `stat` leaves nothing non-finite; `finite` covers the rest (a record's 1e999 is read as infinity).
    texts = {"leaderboard.json": json.dumps(finite(export), indent=1, allow_nan=False) + "\n",
             "LEADERBOARD.md": render(export, results_dir, out_dir)}
    with output_lock(out_dir):
        for name, text in texts.items():
            remove_temporaries(out_dir / name)  # of a killed writer: we hold the lock, so none is live
            atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in texts]
