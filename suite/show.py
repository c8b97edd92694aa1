"""Plain-text rendering of records and tables for the terminal."""
from __future__ import annotations

from typing import Any


def table(rows: list[list[Any]], indent: int = 0) -> str:
    """Left-aligned columns separated by two spaces."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    return "\n".join(" " * indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _metrics(values: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in values.items())


def summary(r: dict[str, Any]) -> str:
    """A readable page about one record."""
    cfg, task, used, env = r["config"], r["task"], r["budget_used"], r["environment"]
    higher = "higher" if task["metrics"][task["primary_metric"]] else "lower"
    bb = cfg["backbone"]
    stop = f" (stopped by {r['stopped_by']})" if r["stopped_by"] else ""
    rows = [
        ["run", r["run_id"]],
        ["status", r["status"] + stop + (f": {r['error']}" if r["error"] else "")],
        ["task", f"{task['name']} v{task['version']}, unit {task['unit']}, source {r['data']['source']}"
                 + ("  [SYNTHETIC: not a benchmark of real data]" if r["data"]["synthetic"] else "")],
        ["model", f"{cfg['model']}: {bb['num_layers']} x {bb['hidden_size']}"
                  + (f" {bb['cell']}" if bb["cell"] else "") + f", {r['model']['params']:,} params, "
                  f"{r['model']['flops_per_unit']:,} FLOPs/{task['unit'].rstrip('s')}"],
        ["budget", f"{cfg['budget_name']}: {used['seconds']:.1f} s of {used['max_seconds'] or 'unlimited'}"
                   f"{' s' if used['max_seconds'] else ''}, {used['units']:,} {task['unit']} "
                   f"({used['epochs']:.2f} epochs, {used['steps']:,} steps)"],
        ["precision", f"{cfg['precision']} on {env['device']} ({env['device_name']}), seed {cfg['seed']}"],
    ]
    for split, values in r["metrics"].items():
        rows.append([f"{split}", _metrics(values) + f"   ({task['primary_metric']}: {higher} is better)"])
    ref = {k: v for k, v in r["reference"].items() if k != "name"}
    rows.append(["reference", f"{r['reference']['name']}: "
                 + "; ".join(f"{k} {_metrics(v)}" for k, v in ref.items())])
    tp = r["throughput"]
    fmt = lambda x: f"{x:,.0f}" if x else "-"  # noqa: E731
    rows.append(["throughput", f"train {fmt(tp['train_units_per_s'])} {tp['unit']}/s, "
                 f"eval {fmt(tp['eval_units_per_s'])} {tp['unit']}/s"])
    rows.append(["memory", f"peak {r['memory']['peak_bytes'] / 2**20:,.1f} MiB ({r['memory']['kind']})"])
    curve = r["learning_curve"]
    if curve:
        points = ", ".join(f"{p['units']:,}: {p['valid'].get(task['primary_metric'], float('nan')):.4g}"
                           for p in curve[-6:])
        rows.append(["curve", f"{len(curve)} evals, last: {points}"])
    if r["variant"]:
        rows += _variant_rows(r["variant"])
    rows.append(["environment", f"torch {env['torch']}, git {env['git_commit']}, host {env['hostname']}"])
    return table(rows)


def _variant_rows(v: dict[str, Any]) -> list[list[str]]:
    rows = [["variant", f"{v['name']} of {v['parent_run_id']}"],
            ["sparsity", f"{v['sparsity']:.1%}"],
            ["size", f"{v['size_bytes']:,} B (parent {v['parent_size_bytes']:,} B); zlib {v['compressed_bytes']:,} B "
                     f"(parent {v['parent_compressed_bytes']:,} B)"],
            ["latency", f"{v['latency_ms']:.3f} ms (parent {v['parent_latency_ms']:.3f} ms), batch 1 x 35"],
            ["delta", _metrics(v["quality_delta"])]]
    rows += [["note", n] for n in v["notes"]]
    return rows
