"""LEADERBOARD.md from the leaderboard export: one table per board, real data before synthetic data."""
from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from suite.leaderboard import REFERENCE_NOTE, not_finite

ARROW = {True: "↑", False: "↓"}
REFERENCE_MARK = " (reference model)"  # "model", not just "reference": a board's reference line is another thing
REFERENCE_LEGEND = f"(reference model): {REFERENCE_NOTE}."


MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()!#|~])")


def cell(value: Any) -> str:
    """Record text for a table: HTML escaped, Markdown syntax (links, images, emphasis, pipes) backslashed."""
    text = " ".join(str(value).split())  # newlines and tabs would end the row
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def number(stats: dict[str, Any] | None, digits: int = 4, scale: float = 1.0) -> str:
    """'mean ± std (n)' with `digits` significant figures; 'not finite (k of n)'; '-' when nothing was measured."""
    if not_finite(stats):
        return not_finite(stats)
    if not stats or stats["mean"] is None:
        return "-"
    fmt = (lambda x: f"{x:,.0f}") if abs(stats["mean"] / scale) >= 1000 else (lambda x: f"{x:.{digits}g}")
    text = fmt(stats["mean"] / scale)
    if stats["std"] is not None:
        text += f" ± {fmt(stats['std'] / scale)}"
    return f"{text} ({stats['n']})" if stats["n"] > 1 else text


def render(export: dict[str, Any], results_dir: Path, out_dir: Path) -> str:
    real = [b for b in export["boards"] if not b["synthetic"]]
    synthetic = [b for b in export["boards"] if b["synthetic"]]
    lines = ["# Leaderboard", "", f"Generated {export['generated']} from `{cell(results_dir)}`. Records are the "
             "source of truth; this file is derived from them (`suite leaderboard`).", ""]
    lines += [f"- skipped: {cell(s)}" for s in export["skipped"]]
    lines += ["", "## Real data", ""]
    lines += [line for b in real for line in board_table(b, results_dir, out_dir)] or ["No real-data runs yet.", ""]
    if synthetic:
        lines += ["## Synthetic data (built-in generators: not benchmarks of real data)", ""]
        lines += [line for b in synthetic for line in board_table(b, results_dir, out_dir)]
    return "\n".join(lines).rstrip() + "\n"


def board_table(board: dict[str, Any], results_dir: Path, out_dir: Path) -> list[str]:
    primary, higher = board["primary_metric"], board["metrics"][board["primary_metric"]]
    others = [m for m in board["metrics"] if m != primary]
    ref = board["reference"]
    ref_value = ref.get("test").get(primary) if isinstance(ref.get("test"), dict) else None  # free-form in records
    reference = f"; reference {cell(ref['name'])}: {ref_value:.4g}" if isinstance(ref_value, int | float) else ""
    dataset = f" {cell(board['dataset'])}" if board.get("dataset") else ""
    head = [f"### {cell(board['task'])} · {cell(board['source'])}{dataset} · budget {cell(board['budget'])} · "
            f"{cell(board['precision'])}", "",
            f"Primary metric: test {cell(primary)} {ARROW[higher]} ({'higher' if higher else 'lower'} is better)"
            + reference, ""]
    unit = cell(board["unit"])
    columns = ["#", "model", "variant", f"test {cell(primary)} {ARROW[higher]}", *(f"test {cell(m)}" for m in others),
               f"valid {cell(primary)}", f"train {unit}/s", "normalized", "peak memory (MiB)", "params", "size (MB)",
               "status", "records"]
    rows = [_row(i + 1, r, primary, others, results_dir, out_dir) for i, r in enumerate(board["rows"])]
    rows += [["", cell(m), "", "n/a: not applicable to this task", *[""] * (len(columns) - 4)]
             for m in board["not_applicable"]]
    rows += [["", cell(m), "dense", "missing: no run", *[""] * (len(columns) - 4)] for m in board["missing"]]
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    legend = [REFERENCE_LEGEND, ""] if any(r.get("reference_model", False) for r in board["rows"]) else []
    return head + table + ["| " + " | ".join(r) + " |" for r in rows] + [""] + legend


def _row(rank: int, row: dict[str, Any], primary: str, others: list[str], results_dir: Path,
         out_dir: Path) -> list[str]:
    s = row["stats"]
    links = ", ".join(f"[{i + 1}]({quote(os.path.relpath(Path(results_dir) / rec, out_dir))})"
                      for i, rec in enumerate(row["records"]))
    status = ", ".join(f"{cell(k)} {v}" for k, v in sorted(row["status"].items()))
    size = row["variant_info"]["size_bytes"] if row["variant_info"] else row["size_bytes"]
    device = "" if row["device_class"] == "cpu" else f" ({cell(row['device_class'])})"
    mark = REFERENCE_MARK if row.get("reference_model", False) else ""
    return [str(rank), cell(row["model"]) + mark + device, cell(row["variant"]), number(s.get(f"test/{primary}")),
            *(number(s.get(f"test/{m}")) for m in others), number(s.get(f"valid/{primary}")),
            number(s["train_units_per_s"], 3), number(s["normalized_throughput"], 3),
            number(s["peak_memory_bytes"], 4, 2**20), f"{row['params']:,}",
            f"{size / 1e6:.2f}" if size else "-", status, links]
