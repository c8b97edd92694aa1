"""Reference lines that are the task's own model with one thing taken away (no attention, no image),
trained through the one runner on the same data and evaluated like any run.

The twin trains for a fixed number of units, with the run's RNG state left untouched, and its metrics
are cached under the data dir keyed by the twin's config digest and the data checksum, so that each
(config, data) pair pays for it once.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from suite.config import Budget
from suite.fetch import data_dir
from suite.registry import MODELS
from tasks.base import Task


def twin_reference(task: Task, changes: dict[str, Any], units: int, data_checksum: str) -> dict[str, Any]:
    """{"name": task.reference_name, "valid": metrics, "test": metrics} of the task's model trained with
    `changes` applied to its options, for `units` training units."""
    # Imported here: suite.runner imports tasks (for the Task type), so a module-level import is circular.
    from suite.runner import Trainer, evaluate, seed_everything

    cfg = dataclasses.replace(task.cfg, options=dataclasses.replace(task.cfg.options, **changes),
                              budget=Budget(max_units=units, checkpoint_every_seconds=1e9))
    path = data_dir() / "references" / f"{task.name}-{cfg.digest()[:16]}-{data_checksum[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    twin = copy.copy(task)  # shares the prepared data, which training and evaluation only read
    twin.cfg = cfg
    devices = [task.device] if task.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), tempfile.TemporaryDirectory() as tmp:  # the run's RNG untouched
        seed_everything(cfg.seed)
        model = twin.build(lambda n: MODELS[cfg.model](n, cfg.backbone)).to(task.device)
        trainer = Trainer(cfg, twin, model, task.device, Path(tmp), progress_bar=False)
        trainer.run()
        model.load_state_dict(torch.load(trainer.best_path, map_location=task.device)["model"])
        reference = {"name": task.reference_name,
                     **{s: evaluate(twin, model, trainer.policy, s)[0] for s in ("valid", "test")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_path.write_text(json.dumps(reference))
    os.replace(tmp_path, path)
    return reference
