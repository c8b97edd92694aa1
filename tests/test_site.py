"""The static site from real records, driven in real headless Chromium: sorting, links, images, console, escaping.

The browser tests skip where Debian's chromium is absent (CI installs it); the rest run everywhere.
"""
import copy
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from matplotlib import rc_context
from matplotlib.colors import to_hex
from tiny import tiny_config

from suite import experiment, leaderboard, plots, site, variant_run
from suite.results import load_record, record_path, write_record

CHROMIUM = Path("/usr/lib/chromium/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost"]
EVIL = "<img src=x onerror=alert(1)>"
EVIL_RUN = 'evil-"quoted"&<b>bold'  # quotes, ampersand and a tag, but no slash: the run id is also a file name
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian chromium is not installed at {CHROMIUM} "
                                    "(apt-get install -y chromium; CI installs it)")


def _tiny(model: str, seed: int = 1):
    return tiny_config(model, "budget.max_units=1000", "budget.max_seconds=None", "budget.eval_every_units=250",
                       seed=seed)


def _copy_as(record: dict, run_id: str, **edits) -> dict:
    """A hand-edited copy of a real record; `section__field=value` sets record[section][field]."""
    out = copy.deepcopy(record)
    out["run_id"] = run_id
    for dotted, value in edits.items():
        node = out
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Records of lstm (2 seeds), gru, a pruned and an int8 lstm, a gru renamed to HTML, a copy on 'real' data."""
    results = tmp_path_factory.mktemp("results")
    threads = torch.get_num_threads()
    # Models this small run fastest on one thread; two OpenMP threads on a busy 2-core machine stall 100x.
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("suite.reference.MEASURE_SECONDS", 0.05)  # still measured, only shorter: saves ~3 s a run
            parent, parent_path = experiment.run(_tiny("lstm"), results, progress_bar=False)
            experiment.run(_tiny("lstm", 2), results, progress_bar=False)
            gru, _ = experiment.run(_tiny("gru"), results, progress_bar=False)
        variant_run.run_variant("prune-magnitude-50", 0, parent, parent_path, results, progress_bar=False)
        variant_run.run_variant("quant-dynamic-int8", 0, parent, parent_path, results, progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    evil = _copy_as(gru, EVIL_RUN, model__name=EVIL, config__model=EVIL)
    real = _copy_as(gru, gru["run_id"] + "-real", config__source="real", data__source="real", data__synthetic=False)
    for record in (evil, real):
        write_record(record, record_path(results, record))
    export = leaderboard.build_export(results)
    start = time.perf_counter()
    index = site.write_site(export, results, tmp_path_factory.mktemp("out"))
    return export, index, time.perf_counter() - start


def synthetic_board(export: dict) -> tuple[int, dict]:
    return next((i, b) for i, b in enumerate(export["boards"]) if b["synthetic"])


def test_pareto_front_respects_the_metric_direction():
    points = [(10.0, 5.0), (20.0, 6.0), (15.0, 7.0), (5.0, 4.0), (20.0, 5.5)]
    assert plots.pareto_front(points, higher_is_better=False) == [3, 0, 4]  # fast and low loss win
    assert plots.pareto_front(points, higher_is_better=True) == [2, 1]
    assert plots.pareto_front([], higher_is_better=True) == []


def test_plots_skip_when_empty_and_are_fast_and_deterministic(built, tmp_path):
    export, _, _ = built
    _, board = synthetic_board(export)
    empty = {**board, "rows": []}
    assert plots.quality_vs_throughput(empty, tmp_path / "a.svg") is None
    assert plots.learning_curves(empty, {}, tmp_path / "b.svg") is None
    assert plots.variant_tradeoff(board, [], tmp_path / "c.svg") is None
    assert list(tmp_path.iterdir()) == []
    start = time.perf_counter()
    first = plots.quality_vs_throughput(board, tmp_path / "one.svg").read_bytes()
    assert time.perf_counter() - start < 1.0
    assert plots.quality_vs_throughput(board, tmp_path / "two.svg").read_bytes() == first


def test_site_is_offline_escaped_and_split_by_source(built):
    export, index, seconds = built
    text = index.read_text()
    assert seconds < 10 and EVIL not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "http://" not in text and "https://" not in text  # no CDN, nothing fetched
    real, synthetic = text.index('id="real"'), text.index('id="synthetic"')
    assert 0 < real < synthetic and text.count('class="board"') == len(export["boards"]) == 2
    assert "/real/" in text[real:synthetic] and "/synthetic/" not in text[real:synthetic]
    assert "/real/" not in text[synthetic:] and "not comparable with real-data results" in text[synthetic:]
    runs = list((index.parent / "runs").glob("*.html"))
    assert len(runs) == sum(len(r["records"]) for b in export["boards"] for r in b["rows"]) == 7
    assert all(EVIL not in p.read_text() for p in runs)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


class Visit:
    """A page opened from a file: URL, with console errors, page errors, dialogs and non-file requests kept."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page()
        self.errors, self.dialogs, self.requests = [], [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("requestfailed", lambda req: self.errors.append(f"failed to load {req.url}"))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.route("**/*", self._only_files)
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")

    def _only_files(self, route) -> None:
        if route.request.url.startswith("file:"):
            return route.continue_()
        self.requests.append(route.request.url)
        return route.abort()

    def rows(self, board_id: str) -> list[str]:
        return self.page.eval_on_selector_all(f"#{board_id} tbody tr.run", "rows => rows.map(r => r.dataset.key)")


@needs_chromium
def test_sorting_by_the_primary_metric_orders_rows_by_the_exported_means(built, browser):
    export, index, _ = built
    i, board = synthetic_board(export)
    bid = site.board_id(i, board)
    order = [r["key"] for r in board["rows"]]  # the export's order: best test ppl first
    mean = {r["key"]: r["stats"]["test/ppl"]["mean"] for r in board["rows"]}
    ascending = sorted(order, key=lambda k: mean[k])  # ppl: lower is better, so best first is ascending
    descending = sorted(order, key=lambda k: -mean[k])  # ties keep their order either way
    speed = {r["key"]: r["stats"]["train_units_per_s"]["mean"] for r in board["rows"]}
    size = {r["key"]: r["size_bytes"] for r in board["rows"]}
    visit = Visit(browser, index)
    primary = visit.page.locator(f"#{bid} th", has_text="test ppl")
    assert visit.rows(bid) == order == ascending and primary.get_attribute("aria-sort") == "ascending"
    primary.locator("button").click()
    assert visit.rows(bid) == descending != ascending and primary.get_attribute("aria-sort") == "descending"
    shown = visit.page.eval_on_selector_all(f"#{bid} tbody tr.run td:nth-child(3)", "c => c.map(x => x.dataset.sort)")
    assert [float(x) for x in shown] == sorted(mean.values(), reverse=True)
    primary.locator("button").click()
    assert visit.rows(bid) == ascending
    visit.page.locator(f"#{bid} th", has_text="train tokens/s").locator("button").click()
    fastest = sorted((k for k in order if speed[k] is not None), key=lambda k: -speed[k])
    assert visit.rows(bid) == fastest + [k for k in order if speed[k] is None]  # int8 has no training speed
    visit.page.locator(f"#{bid} th", has_text="size (MB)").locator("button").click()  # 846665 < 1331729: numeric
    assert visit.rows(bid) == sorted(order, key=lambda k: size[k]) and len(set(map(len, map(str, size.values())))) > 1
    primary.locator("button").click()  # another column was active: back to best first
    assert visit.rows(bid) == ascending and primary.get_attribute("aria-sort") == "ascending"
    na = visit.page.eval_on_selector_all(f"#{bid} tbody tr.na", "rows => rows.map(r => r.textContent)")
    assert na and all(("n/a" in t) or ("missing" in t) for t in na)  # still below the runs
    assert visit.page.eval_on_selector(f"#{bid} tbody tr:last-child", "r => r.className") == "na"
    assert visit.errors == [] and visit.requests == []


def _targets(visit: Visit, selector: str, attribute: str) -> list[str]:
    return visit.page.eval_on_selector_all(selector, f"els => els.map(e => e.{attribute})")


@needs_chromium
def test_every_link_and_image_resolves_and_the_console_stays_clean(built, browser):
    _, index, _ = built
    pages, seen = [index], set()
    while pages:
        path = pages.pop()
        if path in seen:
            continue
        seen.add(path)
        visit = Visit(browser, path)
        for url in _targets(visit, "a[href]", "href") + _targets(visit, "img[src]", "src"):
            parsed = urllib.parse.urlparse(url)
            assert parsed.scheme == "file", url
            target = Path(urllib.parse.unquote(parsed.path))
            assert target.is_file(), f"{path.name} links to a missing {target}"
            if parsed.fragment:
                assert visit.page.locator(f"#{parsed.fragment}").count() == 1, url
            if target.suffix == ".html":
                pages.append(target)
        sizes = visit.page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
        assert all(sizes), f"an image on {path.name} did not load"
        assert visit.errors == [] and visit.requests == [] and visit.dialogs == [], path
        visit.page.close()
    assert len(seen) == 8  # the index and the seven run pages


@needs_chromium
def test_a_model_name_with_html_renders_as_text(built, browser):
    export, index, _ = built
    visit = Visit(browser, index)
    cell = visit.page.locator("tbody tr.run td:first-child", has_text=EVIL)
    assert cell.count() == 1 and cell.inner_text() == EVIL
    assert visit.page.locator('img[src="x"], [onerror], b').count() == 0  # nothing injected
    row = next(r for b in export["boards"] for r in b["rows"] if r["model"] == EVIL)
    visit.page.locator(f'tr[data-key="{row["key"]}"] a', has_text="details").click()
    visit.page.wait_for_load_state("load")
    assert visit.page.locator("h1").inner_text().startswith(EVIL) and EVIL_RUN in visit.page.inner_text("body")
    assert visit.page.locator('img[src="x"], [onerror], b').count() == 0
    assert visit.dialogs == [] and visit.errors == []


@pytest.fixture(scope="module")
def with_reference(built, tmp_path_factory):
    """lstm (an old record: no flag), gru, a real-data gru, and the Transformer reference model: copies of real
    records, the transformer's test ppl halfway between gru's and lstm's and its training speed the slowest."""
    export, _, _ = built
    results = Path(export["results_dir"])
    _, board = synthetic_board(export)
    first = {r["model"]: load_record(results / r["records"][0]) for r in board["rows"] if r["variant"] == "dense"}
    lstm, gru = first["lstm"], first["gru"]
    lstm["model"].pop("reference_model", None)
    ppl = (lstm["metrics"]["test"]["ppl"] + gru["metrics"]["test"]["ppl"]) / 2
    slowest = min(r["throughput"]["train_units_per_s"] for r in (lstm, gru)) / 2
    transformer = _copy_as(gru, gru["run_id"] + "-transformer", config__model="transformer",
                           model__name="transformer", model__reference_model=True, metrics__test__ppl=ppl,
                           throughput__train_units_per_s=slowest)
    real = _copy_as(gru, gru["run_id"] + "-real", config__source="real", data__source="real", data__synthetic=False)
    out = tmp_path_factory.mktemp("reference")
    for record in (lstm, gru, transformer, real):
        write_record(record, record_path(out / "results", record))
    ref_export = leaderboard.build_export(out / "results")
    return ref_export, site.write_site(ref_export, out / "results", out)


def test_the_reference_model_gets_its_own_marker_and_legend_entry_in_the_plots(with_reference, tmp_path):
    export, index = with_reference
    i, board = synthetic_board(export)
    with rc_context(plots.STYLE):
        fig, ax = plots.plt.subplots()  # pyplot as suite.plots set it up (Agg)
        try:
            plots.draw_quality_vs_throughput(ax, board)
            handles, labels = ax.get_legend_handles_labels()
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
        finally:
            plots.plt.close(fig)
    marker = {label: (h.get_paths()[0].vertices.round(6).tolist(), float(h.get_sizes()[0]))
              for h, label in zip(handles, labels, strict=True)}
    reference = marker.pop("transformer (reference model)")
    del marker["Pareto front"]
    assert sorted(marker) == ["gru", "lstm"] and marker["gru"] == marker["lstm"]  # recurrent rows alike
    assert reference[0] != marker["gru"][0] and reference[1] > marker["gru"][1]  # another shape, larger
    assert legend == labels  # every row is in the legend, named as above
    bid = site.board_id(i, board)
    svg = (index.parent / "plots" / f"{bid}-pareto.svg").read_text()
    assert svg.count(">transformer (reference model)</text>") == 1  # text stays text in the saved file
    curves = (index.parent / "plots" / f"{bid}-curves.svg").read_text()
    colors = {r["model"]: to_hex(plots.COLORS[n]) for n, r in enumerate(board["rows"])}
    dashed = [p for p in ET.fromstring(curves).iter("{http://www.w3.org/2000/svg}path")
              if "stroke-dasharray" in p.get("style", "")]
    # the transformer's curve and its legend sample are dashed, nothing else is
    assert len(dashed) == 2 and all(f"stroke: {colors['transformer']}" in p.get("style") for p in dashed)
    assert ">transformer (reference model)</text>" in curves


@needs_chromium
def test_the_reference_row_is_marked_explained_and_sorts_by_its_values(with_reference, browser):
    export, index = with_reference
    i, board = synthetic_board(export)
    bid = site.board_id(i, board)
    (ref,) = [r for r in board["rows"] if r["reference_model"]]
    mean = {r["key"]: r["stats"]["test/ppl"]["mean"] for r in board["rows"]}
    speed = {r["key"]: r["stats"]["train_units_per_s"]["mean"] for r in board["rows"]}
    name = {r["key"]: r["model"] for r in board["rows"]}
    visit = Visit(browser, index)
    marked = visit.page.locator("tr.reference-model")
    assert marked.count() == 1 and marked.get_attribute("data-key") == ref["key"]
    assert marked.locator("td").first.inner_text() == "transformer reference model"
    assert marked.locator("td").first.get_attribute("data-sort") == "transformer"  # the badge is not sorted on
    assert marked.locator("td:first-child .badge").inner_text() == "reference model"
    assert visit.page.locator(".badge").count() == 2  # the row's and the legend's
    legend = visit.page.locator(f"#{bid} p.legend")
    assert legend.count() == 1 and "a non-recurrent model shown for comparison" in legend.inner_text()
    (real,) = [site.board_id(n, b) for n, b in enumerate(export["boards"]) if not b["synthetic"]]
    assert visit.page.locator(f"#{real} p.legend, #{real} tr.reference-model").count() == 0
    assert visit.rows(bid) == sorted(mean, key=mean.get) and visit.rows(bid)[1] == ref["key"]  # between the two
    primary = visit.page.locator(f"#{bid} th", has_text="test ppl").locator("button")
    primary.click()
    assert visit.rows(bid) == sorted(mean, key=lambda k: -mean[k]) and visit.rows(bid)[1] == ref["key"]
    visit.page.locator(f"#{bid} th", has_text="train tokens/s").locator("button").click()
    assert visit.rows(bid) == sorted(speed, key=lambda k: -speed[k]) and visit.rows(bid)[-1] == ref["key"]
    visit.page.locator(f"#{bid} th", has_text="model").first.locator("button").click()
    assert [name[k] for k in visit.rows(bid)] == ["gru", "lstm", "transformer"]  # by name, the badge aside
    assert visit.errors == [] and visit.requests == []
