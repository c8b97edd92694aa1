"""Tiny configurations that train in a second or two on CPU, shared by the tests."""
from __future__ import annotations

import torch

from suite.config import RunConfig, build_config
from suite.registry import MODELS, TASKS, load_plugins

load_plugins()

TINY = ["backbone.hidden_size=16", "backbone.num_layers=1", "options.emb_size=16", "options.bptt=10",
        "train.batch_size=4", "train.eval_batch_size=4", "options.synthetic_tokens=20000"]


def tiny_config(model: str = "lstm", *overrides: str, **top) -> RunConfig:
    task = TASKS["ptb"]
    top.setdefault("source", "synthetic")
    top.setdefault("device", "cpu")
    return build_config("ptb", model, budget="smoke", overrides=[*TINY, *overrides], options_cls=task.Options,
                        presets=task.presets, **top)


def prepared(cfg: RunConfig):
    """(task, model) for a config, data prepared on CPU, seeded like a run."""
    torch.manual_seed(cfg.seed)
    task = TASKS[cfg.task](cfg, torch.device("cpu"))
    task.prepare()
    return task, task.build(lambda n: MODELS[cfg.model](n, cfg.backbone))
