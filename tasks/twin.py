"""Reference lines that are the task's own model with one thing taken away (no attention, no image),
trained through the one runner on the same data and evaluated like any run.

The twin trains under the run's own budget (or for a fixed number of units), with the run's random
state left untouched, and its metrics are cached under the data dir keyed by the twin's config digest,
the task's version and metrics, the data checksum and a digest of the code that trains it, so that each
(config, data, code) triple pays for it once and a variant reuses its parent's. A stop signal while it
trains checkpoints it beside that cache entry, and the next run that needs the line continues from there.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from suite.config import Budget, RunConfig
from suite.distributed import World
from suite.durable import atomic_write_text
from suite.errors import UserError
from suite.fetch import data_dir, file_lock
from suite.registry import MODELS
from tasks.base import Task

REFERENCE_VERSION = 2
"""Part of every cache key: bump it when what a cached reference means changes."""
CODE_PACKAGES = ("suite", "tasks", "baselines")
"""The packages whose source trains and scores a twin: an edit to any of them retrains cached lines."""


@functools.cache
def code_digest(root: Path = Path(__file__).resolve().parents[1], packages: tuple[str, ...] = CODE_PACKAGES) -> str:
    """sha256 over the paths and bytes of the .py files of `packages` under `root`. Part of the cache key, so
    that a line cached by older model or task code (a resized decoder, a changed metric) is not read back
    as this code's; a task version and REFERENCE_VERSION only catch the changes someone remembered to mark."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def twin_reference(task: Task, changes: dict[str, Any], units: int | None, data_checksum: str,
                   model: str | None = None) -> dict[str, Any]:
    """{"name": task.reference_name, "valid": metrics, "test": metrics} of the task's model trained with
    `changes` applied to its options: for `units` training units, or under the run's own budget if None.
    A twin without a backbone names one `model` for every run, so that all of them share one cached line."""
    budget = task.cfg.budget if units is None else Budget(max_units=units)
    # A variant of a run shares its reference: the key ignores what makes a variant.
    # Under torchrun the twin is the one-process run's: one rank trains it, the others read its cache entry.
    cfg = dataclasses.replace(task.cfg, options=dataclasses.replace(task.cfg.options, **changes), variant="dense",
                              model=model or task.cfg.model, world_size=1,
                              parent=None, finetune_units=0,
                              budget=dataclasses.replace(budget, eval_every_units=None, checkpoint_every_seconds=1e9))
    key = json.dumps([REFERENCE_VERSION, task.version, sorted(task.metrics), cfg.digest(), data_checksum,
                      code_digest()])
    path = data_dir() / "references" / f"{task.name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    with file_lock(path):  # one process trains a line; others started beside it (sweep workers, ranks) read it
        if path.is_file():
            return json.loads(path.read_text())
        return _train_twin(task, cfg, path)


def _train_twin(task: Task, cfg: RunConfig, path: Path) -> dict[str, Any]:
    """Train, score and cache the twin of `cfg`; its checkpoint sits beside the cache entry until then."""
    # Imported here: suite.runner imports tasks (for the Task type), so a module-level import is circular.
    from baselines import backbone_factory
    from suite.runner import Trainer, evaluate, rng_state, seed_everything, set_rng_state

    twin = copy.copy(task)  # shares the prepared data, which training and evaluation only read
    twin.cfg, twin.world = cfg, World()
    ckpt_dir = path.with_name(f"{path.stem}.checkpoint")
    saved = rng_state()  # the run's random streams (torch, CUDA, numpy, Python) come back untouched
    try:
        seed_everything(cfg.seed)
        model = twin.build(backbone_factory(MODELS[cfg.model], cfg.backbone, task.causal)).to(task.device)
        trainer = Trainer(cfg, twin, model, task.device, ckpt_dir, progress_bar=False)
        _check(trainer.run(resume=trainer.last_path.exists()), task.reference_name)
        model.load_state_dict(torch.load(trainer.best_path, map_location=task.device)["model"])
        reference = {"name": task.reference_name,
                     **{s: evaluate(twin, model, trainer.policy, s)[0] for s in ("valid", "test")}}
    finally:
        set_rng_state(saved)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(reference))
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return reference


def _check(outcome: Any, name: str) -> None:
    """Only a finished twin is a reference: a divergence is an error (a signal raised Interrupted already)."""
    if outcome.status not in ("completed", "budget_exhausted"):
        raise UserError(f"the {name} reference line {outcome.status} ({outcome.stopped_by}): "
                        "lower train.lr or raise the reference's unit count, then run again")
