"""The contract every non-PTB task keeps (PTB's own tests cover it there): every budget preset builds,
the precision policies train, the pruning and int8 variants write records against their dense parent,
the leaderboard shows the task's metrics with their directions and `suite compare` gates on them."""
from __future__ import annotations

import copy
import html
import math
import re
from pathlib import Path

import pytest
from tiny import TASK_TINY, prepared, task_param, tiny_config

from suite import experiment, variant_run
from suite.compare import compare
from suite.config import BUDGETS, build_config
from suite.leaderboard import build_export, stat
from suite.markdown import render
from suite.registry import TASKS
from suite.site import write_site

NEW_TASKS = [task_param(t) for t in TASKS if t != "ptb"]
pytestmark = pytest.mark.usefixtures("cache")


def test_every_task_has_tiny_settings_for_the_tests() -> None:
    assert set(TASK_TINY) == set(TASKS)


@pytest.mark.parametrize("task_name", NEW_TASKS)
@pytest.mark.parametrize("budget", list(BUDGETS))
def test_every_budget_preset_builds_a_model(task_name: str, budget: str) -> None:
    task_cls = TASKS[task_name]
    cfg = build_config(task_name, "lstm", budget=budget, options_cls=task_cls.Options, presets=task_cls.presets,
                       source="synthetic", device="cpu",
                       overrides=[o for o in TASK_TINY[task_name] if o.startswith("options.synthetic")])
    for key, value in task_cls.presets.get(budget, {}).items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value  # the preset reached the config
    task, model = prepared(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0 and task.flops_per_unit(model) > 0


def test_paper_presets_state_the_published_configurations() -> None:
    imdb, translation = TASKS["imdb"].presets["paper"], TASKS["translation"].presets["paper"]
    assert (imdb["backbone.num_layers"], imdb["backbone.hidden_size"], imdb["budget.max_epochs"]) == (2, 256, 10)
    assert (translation["options.attention"], translation["backbone.hidden_size"]) == ("additive", 512)
    captioning = TASKS["captioning"].presets["paper"]
    assert (captioning["options.encoder"], captioning["options.alpha_c"]) == ("resnet101", 1.0)
    speech = TASKS["librispeech"].presets["paper"]
    assert (speech["backbone.num_layers"], speech["backbone.hidden_size"], speech["budget.max_epochs"]) == (4, 320, 30)
    assert TASKS["librispeech"].Options().train_subset == "train-clean-100"
    video = TASKS["video"].presets["paper"]
    assert (video["backbone.hidden_size"], video["options.frames"], video["options.pooling"]) == (256, 16, "mean")
    for module, anchors in (("tasks.imdb", ("86.5", "Dai & Le 2015", "91.2")),
                            ("tasks.translation", ("28 BLEU", "about 21", "about 14")),
                            ("tasks.captioning", ("Flickr8k 19.5", "Flickr30k 19.1", "COCO 24.3", "COCO 27.7")),
                            ("tasks.librispeech", ("7.7 / 21.9", "about 11 on test-clean", "5.8 on dev-clean")),
                            ("tasks.video", ("68.2 %", "67.4 %", "82.6 %"))):
        doc = __import__(module, fromlist=["_"]).__doc__
        assert all(a in doc for a in anchors)


@pytest.mark.parametrize("task_name", NEW_TASKS)
def test_precision_policies_train(task_name: str, tmp_path: Path) -> None:
    for model, precision in (("gru", "fp16"), ("lstm", "bf16")):
        cfg = tiny_config(model, "budget.max_units=300", "budget.max_seconds=None", task_name=task_name,
                          precision=precision)
        record, _ = experiment.run(cfg, tmp_path, progress_bar=False)
        assert record["status"] == "completed" and record["config"]["precision"] == precision
        assert all(math.isfinite(v) for v in record["metrics"]["test"].values())


@pytest.fixture(scope="module", params=NEW_TASKS)
def dense(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    results = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUITE_DATA_DIR", str(results / "cache"))
        cfg = tiny_config("lstm", "budget.max_units=2000", "budget.max_seconds=None", task_name=request.param)
        record, path = experiment.run(cfg, results, progress_bar=False)
    return request.param, results, record, path


@pytest.mark.parametrize("variant", ["prune-magnitude-50", "quant-dynamic-int8"])
def test_variants_write_their_own_record_against_the_parent(dense: tuple, variant: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    task_name, results, parent, parent_path = dense
    monkeypatch.setenv("SUITE_DATA_DIR", str(results / "cache"))
    record, path = variant_run.run_variant(variant, 0, parent, parent_path, results, progress_bar=False)
    v, primary = record["variant"], record["task"]["primary_metric"]
    assert path != parent_path and v["parent_run_id"] == parent["run_id"] and record["config"]["variant"] == variant
    delta = record["metrics"]["test"][primary] - parent["metrics"]["test"][primary]
    assert v["quality_delta"][f"test/{primary}"] == pytest.approx(delta, abs=1e-9)
    assert v["size_bytes"] > 0 and v["parent_size_bytes"] > 0 and v["latency_ms"] > 0
    if variant.startswith("prune"):
        assert v["sparsity"] == pytest.approx(0.5, abs=1e-3) and v["compressed_bytes"] < v["parent_compressed_bytes"]
    else:
        assert v["size_bytes"] < v["parent_size_bytes"]


def test_leaderboard_and_compare_use_the_tasks_metrics(dense: tuple, tmp_path: Path) -> None:
    task_name, results, record, _ = dense
    export = build_export(results)
    board = next(b for b in export["boards"] if b["task"] == task_name)
    task_cls = TASKS[task_name]
    # A run declares the metrics of its data (video: mAP and F1 for multi-label tags); the task, all it can report.
    declared, primary_name = record["task"]["metrics"], record["task"]["primary_metric"]
    assert declared.items() <= task_cls.metrics.items() and primary_name in declared
    assert board["metrics"] == declared and board["primary_metric"] == primary_name
    assert board["reference"]["name"] == task_cls.reference_name
    markdown = render(export, results, tmp_path)
    higher = declared[primary_name]
    arrow, word = ("↑", "higher") if higher else ("↓", "lower")
    assert f"Primary metric: test {primary_name} {arrow} ({word} is better)" in markdown
    worse = copy.deepcopy(export)
    row = next(b for b in worse["boards"] if b["task"] == task_name)["rows"][0]
    primary = f"test/{primary_name}"
    mean = row["stats"][primary]["mean"]
    row["stats"][primary] = stat([mean * 0.5 - 1 if higher else mean * 2 + 1])
    statuses = {(line.metric, line.status) for line in compare(export, worse).lines}
    assert (primary, "regressed") in statuses
    assert not any(s == "regressed" for _, s in {(line.metric, line.status) for line in compare(export, export).lines})


def test_the_run_page_shows_the_attention_heatmaps(dense: tuple, tmp_path: Path) -> None:
    task_name, results, record, _ = dense
    images = [rel for rel in record.get("artifacts", {}).values() if rel.endswith(".png")]
    if not images:
        pytest.skip(f"{task_name} writes no images")
    index = write_site(build_export(results), results, tmp_path)
    page = next(p for p in (index.parent / "runs").iterdir() if record["run_id"][:40] in p.name)
    sources = re.findall(r'<img src="([^"]+\.png)"', page.read_text())
    assert len(sources) == len(images) == 1 and (page.parent / html.unescape(sources[0])).resolve().is_file()
    assert any(f">{name}</a>" in page.read_text() for name in record["artifacts"] if not name.startswith(("attention",
                                                                                                       "example")))
