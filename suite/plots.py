"""Leaderboard plots as SVG files (matplotlib, Agg): quality vs throughput, learning curves, variant trade-offs.

Every function takes data from the leaderboard export or from records, writes one SVG and returns its
path, or returns None (writing nothing) when there is nothing to plot. Output is deterministic: fixed
SVG ids, no date, text kept as text, and no mathtext, so a `$` in a model name is shown as typed.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window, whatever the user's default backend is
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

STYLE = {"svg.hashsalt": "seqsuite", "svg.fonttype": "none", "text.parse_math": False,
         "font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100}
COLORS = plt.get_cmap("tab10").colors
REFERENCE = {"marker": "*", "s": 140}  # a reference-model row's point: a large star among the recurrent dots


@contextmanager
def _figure(path: Path, ncols: int = 1) -> Iterator[list[Any]]:
    """A figure with `ncols` axes, saved to `path` as SVG and closed (also on error)."""
    with matplotlib.rc_context(STYLE):
        fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), squeeze=False)
        try:
            yield list(axes[0])
            fig.tight_layout()
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, format="svg", metadata={"Date": None})
        finally:
            plt.close(fig)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points (throughput, quality) that no other point beats on both axes, by throughput."""
    sign = 1 if higher_is_better else -1

    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        ge = a[0] >= b[0] and sign * a[1] >= sign * b[1]
        return ge and (a[0] > b[0] or sign * a[1] > sign * b[1])

    front = [i for i, p in enumerate(points) if not any(beats(q, p) for q in points)]
    return sorted(front, key=lambda i: points[i][0])


def row_label(row: dict[str, Any]) -> str:
    """'gru', 'lstm (prune-magnitude-50)', 'transformer (reference model)': the legend says which is which."""
    tags = [] if row["variant"] == "dense" else [row["variant"]]
    tags += ["reference model"] if row.get("reference_model", False) else []
    return f"{row['model']} ({', '.join(tags)})" if tags else row["model"]


def _mean(row: dict[str, Any], key: str) -> float | None:
    return row["stats"].get(key, {}).get("mean")


def quality_vs_throughput(board: dict[str, Any], path: Path) -> Path | None:
    """Per board: test primary metric against training throughput, the Pareto front drawn and circled."""
    if not _speed_and_quality(board):
        return None  # e.g. only int8 variants, which are not trained and so have no throughput
    with _figure(path) as (ax,):
        draw_quality_vs_throughput(ax, board)
    return path


def _speed_and_quality(board: dict[str, Any]) -> list[tuple[dict[str, Any], tuple[float, float]]]:
    """(row, (throughput, test primary metric)) for the rows that have both."""
    metric = board["primary_metric"]
    return [(r, (_mean(r, "train_units_per_s"), _mean(r, f"test/{metric}"))) for r in board["rows"]
            if _mean(r, "train_units_per_s") and _mean(r, f"test/{metric}") is not None]


def draw_quality_vs_throughput(ax: Any, board: dict[str, Any]) -> None:
    """The quality-vs-throughput plot on `ax` (apart from saving, so its artists can be inspected)."""
    metric, higher = board["primary_metric"], board["metrics"].get(board["primary_metric"], False)
    rows = _speed_and_quality(board)
    points = [p for _, p in rows]
    front = pareto_front(points, higher)
    for i, (row, (x, y)) in enumerate(rows):
        style = REFERENCE if row.get("reference_model", False) else {}
        ax.scatter([x], [y], color=COLORS[i % 10], label=row_label(row), zorder=3, **style)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, zorder=2)
    ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=160, facecolors="none",
               edgecolors="k", label="Pareto front", zorder=4)
    xs = [x for x, _ in points]
    if max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"training throughput ({board['unit']}/s, higher is better)")
    ax.set_ylabel(f"test {metric} ({'higher' if higher else 'lower'} is better)")
    ax.legend(fontsize=7)


def learning_curves(board: dict[str, Any], records: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Per board: validation primary metric against training units, one line per run, one colour per row."""
    metric = board["primary_metric"]
    lines = []
    for i, row in enumerate(board["rows"]):
        for n, record in enumerate(records.get(row["key"], [])):
            pts = [(p["units"], p["valid"].get(metric)) for p in record["learning_curve"]]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                style = "--" if row.get("reference_model", False) else "-"  # a reference model's curves stand apart
                lines.append((pts, COLORS[i % 10], style, row_label(row) if n == 0 else None))
    if not lines:
        return None
    with _figure(path) as (ax,):
        for pts, color, style, label in lines:
            ax.plot(*zip(*pts), marker="o", ms=3, ls=style, color=color, label=label)
        ax.set_xlabel(f"training {board['unit']}")
        ax.set_ylabel(f"valid {metric}")
        ax.legend(fontsize=7)
    return path


def run_curve(record: dict[str, Any], path: Path) -> Path | None:
    """One run's learning curve: every validation metric and the training loss against units."""
    curve = record["learning_curve"]
    names = sorted({k for p in curve for k, v in p["valid"].items() if v is not None})
    if not names:
        return None
    with _figure(path) as (ax,):
        for i, name in enumerate(names):
            pts = [(p["units"], p["valid"][name]) for p in curve if p["valid"].get(name) is not None]
            ax.plot(*zip(*pts), marker="o", ms=3, color=COLORS[i % 10], label=f"valid {name}")
        losses = [(p["units"], p["train_loss"]) for p in curve if p.get("train_loss") is not None]
        if losses:
            twin = ax.twinx()
            twin.plot(*zip(*losses), ls=":", color="gray", label="train loss")
            twin.set_ylabel("train loss")
            twin.grid(False)
        ax.set_xlabel(f"training {record['task']['unit']}")
        ax.legend(fontsize=7, loc="upper right")
    return path


def _families(variants: list[dict[str, Any]], metric: str) -> dict[str, list[tuple[str, float, float, float]]]:
    """Variant records grouped by parent: (name, sparsity, quality, compressed bytes), the parent first."""
    families: dict[str, list[tuple[str, float, float, float]]] = {}
    for r in variants:
        v, quality = r["variant"], r["metrics"].get("test", {}).get(metric)
        delta = v["quality_delta"].get(f"test/{metric}")
        if quality is None:
            continue
        family = families.setdefault(f"{r['config']['model']} seed {r['config']['seed']}", [])
        if not family and delta is not None:  # the parent's figures, as measured next to its variant
            family.append(("dense", 0.0, quality - delta, v["parent_compressed_bytes"]))
        family.append((v["name"], v["sparsity"], quality, v["compressed_bytes"]))
    return families


def variant_tradeoff(board: dict[str, Any], variants: list[dict[str, Any]], path: Path) -> Path | None:
    """Sparsity (pruning) or int8 (quantization) against quality, and compressed size against quality."""
    metric = board["primary_metric"]
    families = _families(variants, metric)
    if not families:
        return None
    with _figure(path, ncols=2) as (left, right):
        for i, (label, points) in enumerate(sorted(families.items())):
            color = COLORS[i % 10]
            pruned = sorted((p for p in points if not p[0].startswith("quant")), key=lambda p: p[1])
            quant = [p for p in points if p[0].startswith("quant")]
            left.plot([p[1] for p in pruned], [p[2] for p in pruned], marker="o", color=color, label=label)
            for p in quant:
                left.scatter([p[1]], [p[2]], marker="s", color=color, label=f"{label}: {p[0]}")
            right.scatter([p[3] / 1e6 for p in points], [p[2] for p in points], color=color)
            for name, _, quality, size in points:
                right.annotate(name, (size / 1e6, quality), fontsize=6, xytext=(3, 3), textcoords="offset points")
        left.set_xlabel("sparsity (fraction of weights zero)")
        right.set_xlabel("compressed size (MB)")
        for ax in (left, right):
            ax.set_ylabel(f"test {metric}")
        left.legend(fontsize=7)
    return path
