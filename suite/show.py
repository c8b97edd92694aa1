"""Plain-text rendering of records and tables for the terminal."""
from __future__ import annotations

from typing import Any


def table(rows: list[list[Any]], indent: int = 0) -> str:
    """Left-aligned columns separated by two spaces."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    return "\n".join(" " * indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _shown(value: Any) -> str:
    """A metric's value; null is how a record stores a NaN or infinite one."""
    if value is None:
        return "not finite"
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _metrics(values: dict[str, Any]) -> str:
    return "  ".join(f"{k} {_shown(v)}" for k, v in values.items())


def _model(r: dict[str, Any]) -> str:
    """'gru: 2 x 650, 1,234 params, 5,678 FLOPs/token'. The schema leaves config.backbone free-form (a plugin's
    backbone names other sizes), so the layers, width and cell are shown where the record has them."""
    bb, unit = r["config"]["backbone"], r["task"]["unit"].rstrip("s")
    size = " x ".join(str(bb[k]) for k in ("num_layers", "hidden_size") if bb.get(k) is not None)
    shape = " ".join(str(p) for p in (size, bb.get("cell")) if p)
    parts = [shape, f"{r['model']['params']:,} params", f"{r['model']['flops_per_unit']:,} FLOPs/{unit}"]
    return f"{r['config']['model']}: " + ", ".join(p for p in parts if p)


def _reference(ref: dict[str, Any]) -> str:
    """'unigram: test ppl 300; valid ppl 310': per split; the schema requires only the name, the rest is free-form."""
    parts = [f"{k} {_metrics(v) if isinstance(v, dict) else v}" for k, v in ref.items() if k != "name"]
    return f"{ref['name']}: " + "; ".join(parts)


def summary(r: dict[str, Any]) -> str:
    """A readable page about one record; what a valid but sparse record lacks is left out, not an error."""
    cfg, task, used, env = r["config"], r["task"], r["budget_used"], r["environment"]
    higher = "higher" if task["metrics"][task["primary_metric"]] else "lower"
    stop = f" (stopped by {r['stopped_by']})" if r["stopped_by"] else ""
    stop += f" during {r['stage']}" if r.get("stage") else ""
    rows = [
        ["run", r["run_id"]],
        ["status", r["status"] + stop + (f": {r['error']}" if r["error"] else "")],
        ["task", f"{task['name']} v{task['version']}, unit {task['unit']}, source {r['data']['source']}"
                 + ("  [SYNTHETIC: not a benchmark of real data]" if r["data"]["synthetic"] else "")],
        ["model", _model(r)],
        ["budget", f"{cfg['budget_name']}: {used['seconds']:.1f} s of {used['max_seconds'] or 'unlimited'}"
                   f"{' s' if used['max_seconds'] else ''}, {used['units']:,} {task['unit']} "
                   f"({used['epochs']:.2f} epochs, {used['steps']:,} steps)"],
        ["precision", f"{cfg['precision']} on {env['device']} ({env['device_name']}), seed {cfg['seed']}"],
    ]
    for split, values in r["metrics"].items():
        rows.append([f"{split}", _metrics(values) + f"   ({task['primary_metric']}: {higher} is better)"])
    rows.append(["reference", _reference(r["reference"])])
    tp = r["throughput"]
    fmt = lambda x: f"{x:,.0f}" if x else "-"  # noqa: E731
    rows.append(["throughput", f"train {fmt(tp['train_units_per_s'])} {tp['unit']}/s, "
                 f"eval {fmt(tp['eval_units_per_s'])} {tp['unit']}/s"])
    rows.append(["memory", f"peak {r['memory']['peak_bytes'] / 2**20:,.1f} MiB ({r['memory']['kind']})"])
    curve = r["learning_curve"]
    if curve:
        points = ", ".join(f"{p['units']:,}: {_shown(p['valid'].get(task['primary_metric'], '-'))}"
                           for p in curve[-6:])
        rows.append(["curve", f"{len(curve)} evals, last: {points}"])
    if r["variant"]:
        rows += _variant_rows(r["variant"])
    rows.append(["environment", f"torch {env['torch']}, git {env['git_commit']}, host {env['hostname']}"])
    return table(rows)


def _variant_rows(v: dict[str, Any]) -> list[list[str]]:
    rows = [["variant", f"{v['name']} of {v['parent_run_id']}"]]
    if v["latency_ms"] is None:  # an interrupted variant: measured nothing yet
        rows.append(["measured", "not yet (the variant was interrupted)"])
    else:
        rows += [["sparsity", f"{v['sparsity']:.1%}"],
                 ["size", f"{v['size_bytes']:,} B (parent {v['parent_size_bytes']:,} B); "
                          f"zlib {v['compressed_bytes']:,} B (parent {v['parent_compressed_bytes']:,} B)"],
                 ["latency", f"{v['latency_ms']:.3f} ms (parent {v['parent_latency_ms']:.3f} ms), batch 1 x 35"],
                 ["delta", _metrics(v["quality_delta"])]]
    rows += [["note", n] for n in v["notes"]]
    return rows
