"""The static leaderboard site: `site/index.html`, per-run pages and SVG plots, from the leaderboard export.

It opens from the file system with no server and no network: assets are copied next to the pages and
every link is relative. Every string taken from a record or the export is escaped (html.escape, also in
attributes; URLs percent-encoded first), and a Content-Security-Policy forbids inline scripts besides.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite import plots
from suite.durable import fsync_dir
from suite.errors import UserError
from suite.leaderboard import REFERENCE_NOTE, not_finite, output_dir, output_lock
from suite.results import load_record

ASSETS = Path(__file__).with_name("site_assets")
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'"
BADGE = '<span class="badge">reference model</span>'
BUILDS = re.compile(r"\.site-\d+\.(tmp|old)")  # a build's folder while it is written, and the site it replaced


def e(value: Any) -> str:
    """Escape for element text and quoted attributes alike."""
    return html.escape(str(value), quote=True)


def href(target: Path, from_dir: Path) -> str:
    """A relative, percent-encoded, escaped link from the pages in `from_dir` to `target`."""
    return e(urllib.parse.quote(Path(os.path.relpath(target, from_dir)).as_posix()))


@dataclass
class Site:
    """Where things are: records under `results`, the finished site at `root`, files written to `build`."""

    results: Path
    root: Path
    build: Path
    records: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # relative path -> record

    def record_link(self, rel: str, page_dir: str = "") -> str:
        """Link to a record's JSON from a page in `page_dir` of the finished site."""
        return href(self.results / rel, self.root / page_dir)

    def run_page(self, rel: str) -> str:
        """File name of a record's detail page: readable, filesystem-safe, unique per record path."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(rel).stem)[:80]
        return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}.html"


def write_site(export: dict[str, Any], results_dir: Path, out_dir: Path) -> Path:
    """Write `out_dir/site/` (index, run pages, plots, assets) from the export; returns index.html's path.

    The site is built in a temporary sibling folder and swapped in, so a reader never sees half a site
    and pages of runs that no longer exist do not linger. The build holds the output folder's lock: two
    `suite leaderboard` runs into one folder take turns instead of renaming over each other's folders.
    """
    out_dir = output_dir(out_dir)
    root = out_dir / "site"
    build = out_dir / f".site-{os.getpid()}.tmp"
    with output_lock(out_dir):
        remove_stale_builds(out_dir)
        try:
            build.mkdir()
            site = Site(Path(results_dir), root, build)
            for board in export["boards"]:
                for row in board["rows"]:
                    for rel in row["records"]:
                        site.records[rel] = _load(site.results / rel)
            _write_pages(site, export)
            _swap(build, root)
        finally:
            shutil.rmtree(build, ignore_errors=True)  # gone after the swap; half a build if something above failed
    return root / "index.html"


def remove_stale_builds(out_dir: Path) -> None:
    """Delete `.site-PID.tmp` / `.site-PID.old` folders under `out_dir`. Only the holder of the folder's lock may
    call it: it is the one builder, so any such folder is the leftover of a killed build."""
    for p in Path(out_dir).iterdir():
        if BUILDS.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True)  # what stays is tried again by the next build


def _write_pages(site: Site, export: dict[str, Any]) -> None:
    """Assets, run pages, plots and the index into the build folder (private to this build until the swap)."""
    shutil.copytree(ASSETS, site.build / "assets")
    (site.build / "runs").mkdir()
    for rel, record in site.records.items():
        if record is not None:
            (site.build / "runs" / site.run_page(rel)).write_text(run_page(site, rel, record), encoding="utf-8")
    (site.build / "index.html").write_text(index_page(site, export), encoding="utf-8")


def _swap(build: Path, root: Path) -> None:
    """Put the finished build at `root` and drop the site it replaces (two renames: under the lock, nobody else
    renames in this folder, so neither can fail on a folder another build left)."""
    old = root.with_name(f".site-{os.getpid()}.old")
    if root.exists():
        root.rename(old)
    build.rename(root)
    fsync_dir(root.parent)  # the renames survive a crash; a killed build's .old is removed by the next one
    shutil.rmtree(old, ignore_errors=True)


def _load(path: Path) -> dict[str, Any] | None:
    """A record the export names; None if it vanished or broke since (the page then says so)."""
    try:
        return load_record(path)
    except UserError:
        return None


def page(title: str, body: str, depth: int = 0) -> str:
    up = "../" * depth
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{e(title)}</title>\n'
            f'<link rel="stylesheet" href="{up}assets/site.css">\n<script src="{up}assets/site.js" defer></script>\n'
            f"</head>\n<body>\n{body}\n</body>\n</html>\n")


# ---- index ----------------------------------------------------------------------------------------

def board_id(i: int, board: dict[str, Any]) -> str:
    name = "-".join(str(board[k]) for k in ("task", "source", "dataset", "budget", "precision") if board.get(k))
    return f"b{i}-" + re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def board_title(board: dict[str, Any]) -> str:
    dataset = f" ({board['dataset']})" if board.get("dataset") else ""
    return f"{board['task']} · {board['source']} data{dataset} · budget {board['budget']} · {board['precision']}"


def index_page(site: Site, export: dict[str, Any]) -> str:
    """Real-data boards first, synthetic boards in their own labelled part; a table of contents on top."""
    boards = list(enumerate(export["boards"]))
    parts = [("real", "Real data", "", [(i, b) for i, b in boards if not b["synthetic"]]),
             ("synthetic", "Synthetic data",
              "Built-in synthetic sources: a smoke test of the suite, not a benchmark. "
              "These numbers are not comparable with real-data results.",
              [(i, b) for i, b in boards if b["synthetic"]])]
    toc = "".join(f'<li><a href="#{pid}">{e(title)}</a><ul>'
                  + "".join(f'<li><a href="#{board_id(i, b)}">{e(board_title(b))}</a></li>' for i, b in items)
                  + "</ul></li>" for pid, title, _, items in parts if items)
    body = [f"<header><h1>seqsuite leaderboard</h1><p>Generated {e(export.get('generated', ''))} from "
            f"<code>{e(export.get('results_dir', site.results))}</code>.</p>{_skipped(export)}</header>",
            f'<nav><ul class="toc">{toc}</ul></nav>' if toc else "<p>No result records found.</p>"]
    for pid, title, note, items in parts:
        if items:
            sections = "".join(board_section(site, i, b) for i, b in items)
            body.append(f'<section class="part part-{pid}" id="{pid}"><h2>{e(title)}</h2>'
                        + (f'<p class="note">{e(note)}</p>' if note else "") + sections + "</section>")
    return page("seqsuite leaderboard", "\n".join(body))


def _skipped(export: dict[str, Any]) -> str:
    lines = export.get("skipped") or []
    if not lines:
        return ""
    items = "".join(f"<li>{e(line)}</li>" for line in lines)
    return f'<details class="skipped"><summary>{len(lines)} record(s) skipped</summary><ul>{items}</ul></details>'


def board_section(site: Site, i: int, board: dict[str, Any]) -> str:
    bid = board_id(i, board)
    return (f'<section class="board" id="{bid}"><h3>{e(board_title(board))}</h3>'
            f"{_reference(board.get('reference'))}{board_table(site, board)}{_legend(board)}"
            f"{board_plots(site, bid, board)}</section>")


def _legend(board: dict[str, Any]) -> str:
    """What the badge means, under a board that has a reference-model row (others render as before)."""
    if not any(r.get("reference_model", False) for r in board["rows"]):
        return ""
    return f'<p class="legend">{BADGE}: {e(REFERENCE_NOTE)}.</p>'


def _arrow(higher: bool | None) -> str:
    if higher is None:
        return ""
    word, arrow = ("higher", "↑") if higher else ("lower", "↓")
    return f' <span class="arrow" title="{word} is better">{arrow}</span>'


def _reference(ref: dict[str, Any] | None) -> str:
    ref = ref or {}
    parts = [f"{e(split)} {e(m)} {_num(v)}" for split, ms in ref.items() if isinstance(ms, dict)
             for m, v in ms.items() if isinstance(v, (int, float))]
    return f'<p class="reference">Reference ({e(ref.get("name", "none"))}): {", ".join(parts) or "none"}</p>'


def metric_columns(board: dict[str, Any]) -> list[str]:
    """Stat names of the metrics: the test primary metric first, then other test metrics, then the rest."""
    names = sorted({k for r in board["rows"] for k in r["stats"] if "/" in k})
    primary = f"test/{board['primary_metric']}"
    return [primary] + sorted((n for n in names if n != primary), key=lambda n: (not n.startswith("test/"), n))


@dataclass
class Column:
    """One table column: header HTML, numeric or text sorting, first-click direction, cell renderer."""

    header: str
    numeric: bool
    first: str  # first click "asc" or "desc" (a lower-is-better column sorts best first); "" = not sortable
    cell: Any  # row -> (sort key or None, cell HTML)
    title: str = ""
    initial: bool = False  # the export's rows come sorted by this column, best first


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _stat(row: dict[str, Any], name: str, digits: int = 2, scale: float = 1.0) -> tuple[float | None, str]:
    s = row["stats"].get(name) or {"mean": None, "n": 0}
    if not_finite(s):  # no mean: sorts with the empty cells, last either way
        return None, f'<span class="none" title="NaN or infinite in some runs: no mean">{e(not_finite(s))}</span>'
    if s["mean"] is None:
        return None, '<span class="none">–</span>'
    std = f" ± {_num(s['std'] / scale, digits)}" if s.get("std") is not None else ""
    return s["mean"], f'{_num(s["mean"] / scale, digits)}{std} <span class="n">(n={s["n"]})</span>'


def _plain(value: float | None, text: str) -> tuple[float | None, str]:
    return value, text if value is not None else '<span class="none">–</span>'


def columns(site: Site, board: dict[str, Any]) -> list[Column]:
    unit = e(board["unit"])
    cols = [Column("model", False, "asc", lambda r: (r["model"], e(r["model"]) + _badge(r))),
            Column("variant", False, "asc", lambda r: (r["variant"], e(r["variant"])))]
    for name in metric_columns(board):
        split, metric = name.split("/", 1)
        higher = board["metrics"].get(metric)
        cols.append(Column(f"{e(split)} {e(metric)}{_arrow(higher)}", True, "desc" if higher else "asc",
                           lambda r, n=name: _stat(r, n), initial=name == f"test/{board['primary_metric']}"))
    mib, mb = 2**20, 1e6
    cols += [
        Column(f"train {unit}/s{_arrow(True)}", True, "desc", lambda r: _stat(r, "train_units_per_s", 0),
               "training throughput after warm-up, mean over seeds"),
        Column(f"normalized{_arrow(True)}", True, "desc", lambda r: _stat(r, "normalized_throughput", 3),
               "training throughput divided by the reference loop measured in the same process"),
        Column(f"peak memory (MiB){_arrow(False)}", True, "asc",
               lambda r: _stat(r, "peak_memory_bytes", 1, mib)),
        Column("params", True, "asc", lambda r: _plain(r["params"], f"{r['params']:,}")),
        Column("size (MB)", True, "asc", lambda r: _plain(r["size_bytes"], _num((r["size_bytes"] or 0) / mb, 3)),
               "serialized state dict"),
        Column("status", False, "asc", lambda r: (_status(r), e(_status(r)))),
        Column("records", False, "", lambda r: (None, _links(site, r))),
    ]
    return cols


def _badge(row: dict[str, Any]) -> str:
    """The reference-model label; outside the cell's data-sort, so sorting by model still sorts by name."""
    return f" {BADGE}" if row.get("reference_model", False) else ""


def _status(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} ×{n}" for k, n in sorted(row["status"].items()))


def _links(site: Site, row: dict[str, Any]) -> str:
    links = []
    for i, rel in enumerate(row["records"]):
        record = site.records.get(rel)
        seed = f"seed {record['config']['seed']}" if record else f"record {i + 1}"
        json_link = f'<a href="{site.record_link(rel)}">json</a>' if record else "unreadable"
        page_link = f' <a href="runs/{e(site.run_page(rel))}">details</a>' if record else ""
        links.append(f'<span class="run">{e(seed)}: {json_link}{page_link}</span>')
    return " ".join(links)


def _header(col: Column) -> str:
    if not col.first:
        return f"<th>{col.header}</th>"
    sort = ("ascending" if col.first == "asc" else "descending") if col.initial else "none"
    title = f' title="{e(col.title)}"' if col.title else ""
    return (f'<th data-type="{"num" if col.numeric else "text"}" data-dir="{col.first}" aria-sort="{sort}"{title}>'
            f'<button type="button">{col.header}</button></th>')


def board_table(site: Site, board: dict[str, Any]) -> str:
    """The sortable table; it starts in the export's order, best primary metric first."""
    cols = columns(site, board)
    head = "".join(_header(c) for c in cols)
    body = []
    for row in board["rows"]:
        cells = []
        for c in cols:
            key, text = c.cell(row)
            sort = "" if key is None else (repr(float(key)) if c.numeric else str(key).lower())
            cells.append(f'<td data-sort="{e(sort)}">{text}</td>' if c.first else f"<td>{text}</td>")
        kind = "run reference-model" if row.get("reference_model", False) else "run"  # site.js sorts every tr.run
        body.append(f'<tr class="{kind}" data-key="{e(row["key"])}">{"".join(cells)}</tr>')
    for models, why in ((board.get("missing", []), "missing: no run recorded"),
                        (board.get("not_applicable", []), "n/a: not applicable to this task")):
        body += [f'<tr class="na"><td>{e(m)}</td><td colspan="{len(cols) - 1}">{e(why)}</td></tr>' for m in models]
    return (f'<div class="scroll"><table class="board-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def board_plots(site: Site, bid: str, board: dict[str, Any]) -> str:
    """The board's figures; a plot with nothing to show is left out and the page says so."""
    records = {r["key"]: [site.records[x] for x in r["records"] if site.records.get(x)] for r in board["rows"]}
    variants = [rec for recs in records.values() for rec in recs if rec["variant"] is not None]
    figures = [
        ("quality vs training throughput (Pareto front circled)",
         plots.quality_vs_throughput(board, site.build / "plots" / f"{bid}-pareto.svg")),
        ("learning curves", plots.learning_curves(board, records, site.build / "plots" / f"{bid}-curves.svg")),
    ]
    if variants:
        figures.append(("variants: sparsity / int8 vs quality, and compressed size vs quality",
                        plots.variant_tradeoff(board, variants, site.build / "plots" / f"{bid}-variants.svg")))
    shown = [f'<figure><img src="plots/{e(p.name)}" alt="{e(cap)}"><figcaption>{e(cap)}</figcaption></figure>'
             for cap, p in figures if p is not None]
    missing = [cap for cap, p in figures if p is None]
    note = f'<p class="note">Nothing to plot for: {e(", ".join(missing))}.</p>' if missing else ""
    return f'<div class="plots">{"".join(shown)}</div>{note}'


# ---- per-run pages --------------------------------------------------------------------------------

def _kv(rows: list[tuple[str, Any]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _pre(value: Any) -> str:
    return f"<pre>{e(json.dumps(value, indent=2, sort_keys=True))}</pre>"


def run_summary(r: dict[str, Any]) -> list[tuple[str, Any]]:
    """The run's key facts as (label, value) pairs; values are escaped by the caller."""
    cfg, task, used, tp = r["config"], r["task"], r["budget_used"], r["throughput"]
    synthetic = " (synthetic: not a benchmark of real data)" if r["data"]["synthetic"] else ""
    stop = f", stopped by {r['stopped_by']}" if r["stopped_by"] else ""
    rate = tp["train_units_per_s"]
    return [
        ("task", f"{task['name']} v{task['version']}, source {cfg['source']}{synthetic}"),
        ("model", f"{cfg['model']}, variant {cfg['variant']}, {r['model']['params']:,} params, "
                  f"{r['model']['flops_per_unit']:,} FLOPs per {task['unit']}"),
        ("status", f"{r['status']}{stop}" + (f": {r['error']}" if r["error"] else "")),
        ("budget", f"{cfg['budget_name']}: {used['units']:,} {task['unit']} in {used['seconds']:.1f} s, "
                   f"{used['steps']:,} steps, {used['epochs']:.3f} epochs"),
        ("precision, device, seed", f"{cfg['precision']}, {cfg['device']}, seed {cfg['seed']}"),
        ("training throughput", "–" if rate is None else f"{rate:,.0f} {task['unit']}/s"
                                f" (normalized {_num(tp['normalized'], 3)})"),
        ("peak memory", f"{r['memory']['peak_bytes'] / 2**20:,.1f} MiB ({r['memory']['kind']})"),
        ("size", "–" if r["model"]["size_bytes"] is None else f"{r['model']['size_bytes']:,} bytes"),
        ("created", r["created"]),
    ]


def _metrics_table(r: dict[str, Any]) -> str:
    higher = r["task"]["metrics"]
    rows = "".join(f"<tr><td>{e(split)}</td><td>{e(m)}{_arrow(higher.get(m))}</td><td>{_num(v, 4)}</td></tr>"
                   for split, ms in r["metrics"].items() for m, v in ms.items())
    return ('<table class="metrics"><thead><tr><th>split</th><th>metric</th><th>value</th></tr></thead>'
            f"<tbody>{rows or '<tr><td colspan=3>no metrics (the run did not finish)</td></tr>'}</tbody></table>")


def _variant_block(site: Site, r: dict[str, Any]) -> str:
    v = r["variant"]
    if v is None:
        return ""
    parent = next((rel for rel, rec in site.records.items() if rec and rec["run_id"] == v["parent_run_id"]), None)
    link = f'<p>Parent run: <a href="{e(site.run_page(parent))}">{e(v["parent_run_id"])}</a></p>' if parent else \
        f"<p>Parent run: {e(v['parent_run_id'])} (not on this leaderboard)</p>"
    fields = [(k, v[k]) for k in ("name", "sparsity", "size_bytes", "parent_size_bytes", "compressed_bytes",
                                  "parent_compressed_bytes", "latency_ms", "parent_latency_ms", "finetune_units")]
    fields += [(f"Δ {k}", d) for k, d in v["quality_delta"].items()] + [("note", n) for n in v["notes"]]
    return f"<h2>Variant</h2>{link}{_kv(fields)}"


def _artifacts(site: Site, r: dict[str, Any]) -> str:
    """The run's output files (written beside its record): PNGs shown inline, other files linked."""
    files = sorted((r.get("artifacts") or {}).items())
    if not files:
        return ""
    link = {name: href(site.results / rel, site.root / "runs") for name, rel in files}
    images = "".join(f'<figure><img src="{e(link[n])}" alt="{e(n)}"><figcaption>{e(n)}</figcaption></figure>'
                     for n, rel in files if rel.endswith(".png"))
    others = "".join(f'<li><a href="{e(link[n])}">{e(n)}</a></li>' for n, rel in files if not rel.endswith(".png"))
    return f"<h2>Outputs</h2>{images}" + (f"<ul>{others}</ul>" if others else "")


def run_page(site: Site, rel: str, r: dict[str, Any]) -> str:
    """A run's page: summary, metrics, variant, learning curve, config, data and environment."""
    name = site.run_page(rel)
    curve = plots.run_curve(r, site.build / "plots" / "runs" / Path(name).with_suffix(".svg"))
    img = (f'<img src="../plots/runs/{e(curve.name)}" alt="learning curve of {e(r["run_id"])}">' if curve
           else "<p>No validation points were recorded.</p>")
    title = f"{r['config']['model']} · {r['config']['variant']} · seed {r['config']['seed']}"
    env = [(k, _text(v)) for k, v in sorted(r["environment"].items())]
    body = (f'<nav><a href="../index.html">← leaderboard</a> · '
            f'<a href="{site.record_link(rel, "runs")}">record JSON</a></nav>'
            f"<h1>{e(title)}</h1><p><code>{e(r['run_id'])}</code></p>{_kv(run_summary(r))}"
            f"<h2>Metrics</h2>{_metrics_table(r)}{_reference(r['reference'])}{_variant_block(site, r)}"
            f"<h2>Learning curve</h2>{img}{_artifacts(site, r)}<h2>Config</h2>{_pre(r['config'])}"
            f"<h2>Data</h2>{_pre(r['data'])}<h2>Environment</h2>{_kv(env)}")
    return page(f"{title} — seqsuite run", body, depth=1)
