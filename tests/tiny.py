"""Tiny configurations that train in a second or two on CPU, shared by the tests."""
from __future__ import annotations

import torch

from baselines import backbone_factory
from suite.config import RunConfig, build_config
from suite.registry import MODELS, TASKS, load_plugins

load_plugins()

COMMON = ["backbone.hidden_size=16", "backbone.num_layers=1", "options.emb_size=16", "train.batch_size=4",
          "train.eval_batch_size=4"]
TASK_TINY = {
    "ptb": [*COMMON, "options.bptt=10", "options.synthetic_tokens=20000"],
    "librispeech": ["backbone.hidden_size=16", "backbone.num_layers=1", "options.synthetic_utterances=16",
                    "options.synthetic_eval_utterances=6", "train.eval_batch_size=6", "options.batch_seconds=10.0"],
    "imdb": [*COMMON, "options.synthetic_reviews=200"],
    "captioning": [*COMMON, "options.synthetic_images=120", "options.synthetic_eval_images=30",
                   "options.reference_units=400", "options.examples=1", "train.eval_batch_size=30"],
    "translation": [*COMMON, "options.synthetic_pairs=300", "options.synthetic_eval_pairs=40", "options.vocab_size=120",
                    "options.reference_units=600", "options.heatmaps=1", "train.eval_batch_size=40"],
    "video": ["backbone.hidden_size=16", "backbone.num_layers=1", "train.batch_size=8", "train.eval_batch_size=40",
              "options.synthetic_clips=80", "options.synthetic_eval_clips=40", "options.reference_units=400"],
}
"""Tiny overrides per task; the contract test fails for a registered task missing here."""
TINY = TASK_TINY["ptb"]
NEEDS_ESPEAK = {"librispeech"}
"""Tasks whose synthetic source runs espeak-ng (.ci/run installs it; elsewhere their cases skip)."""


def task_param(name: str, *values: object):
    """A pytest parameter for a task's case, skipped with the reason where its synthetic source cannot run."""
    import shutil

    import pytest

    skip = name in NEEDS_ESPEAK and shutil.which("espeak-ng") is None
    return pytest.param(name, *values, marks=pytest.mark.skipif(skip, reason="espeak-ng is not installed "
                                                                               "(apt-get install espeak-ng)"))


def tiny_config(model: str = "lstm", *overrides: str, task_name: str = "ptb", **top) -> RunConfig:
    task = TASKS[task_name]
    top.setdefault("source", "synthetic")
    top.setdefault("device", "cpu")
    return build_config(task_name, model, budget="smoke", overrides=[*TASK_TINY[task_name], *overrides],
                        options_cls=task.Options, presets=task.presets, **top)


def prepared(cfg: RunConfig):
    """(task, model) for a config, data prepared on CPU, seeded like a run."""
    torch.manual_seed(cfg.seed)
    task = TASKS[cfg.task](cfg, torch.device("cpu"))
    task.prepare()
    return task, task.build(backbone_factory(MODELS[cfg.model], cfg.backbone, task.causal))
