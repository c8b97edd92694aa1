"""One dense run from config to record: resolve the task and backbone, train, evaluate, write the record,
holding the run's lock and catching stop signals at every stage. Variants of a trained run are in
suite/variant_run.py, which builds on the pieces here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from baselines import backbone_factory
from suite import compress, distributed, durable, interrupts, registry, run_lock
from suite.config import RunConfig
from suite.distributed import World
from suite.environment import fingerprint, peak_memory
from suite.errors import UserError
from suite.precision import PrecisionPolicy
from suite.reference import reference_throughput
from suite.results import FINISHED, SCHEMA_VERSION, load_record, write_record
from suite.runner import Outcome, Trainer, evaluate, seed_everything
from tasks.base import Task


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is visible: use --device cpu")
    return torch.device(name)


def check_applicable(task_cls: type[Task], model_cls: type[nn.Module]) -> None:
    if task_cls.causal and not model_cls.causal:
        raise UserError(f"{model_cls.name} is not applicable to {task_cls.name}: the task is causal (a model may "
                        f"not see future inputs) and {model_cls.name} is bidirectional, so use a causal model "
                        f"such as {', '.join(applicable_models(task_cls))}")


def applicable_models(task_cls: type[Task]) -> list[str]:
    return [n for n, m in registry.MODELS.items() if m.causal or not task_cls.causal]


def checkpoint_dir(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / "checkpoints" / run_id


def setup(cfg: RunConfig, world: World = World()) -> tuple[Task, nn.Module, torch.device]:
    task_cls, model_cls = registry.get("task", cfg.task), registry.get("model", cfg.model)
    check_applicable(task_cls, model_cls)
    if world.size > 1 and not task_cls.shards:
        raise UserError(f"task {cfg.task} does not split its batches over processes: run it without torchrun")
    device = distributed.start(world, resolve_device(cfg.device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(cfg.seed)
    task = task_cls(cfg, device)
    task.world = world
    task.prepare()
    model = task.build(backbone_factory(model_cls, cfg.backbone, task_cls.causal)).to(device)
    return task, model, device


def current_world(cfg: RunConfig) -> World:
    """The processes this run was started with; they must be the ones its config (and run id) names."""
    world = distributed.current()
    if world.size != cfg.world_size:
        raise UserError(f"the config names world_size {cfg.world_size} but {world.size} process(es) run it: "
                        f"start it with torchrun --nproc_per_node {cfg.world_size}, or build the config with "
                        f"world_size={world.size}")
    return world


def record_file(results_dir: Path, cfg: RunConfig) -> Path:
    """Where the record of `cfg` is written: it follows from the config alone."""
    return Path(results_dir) / cfg.task / cfg.model / f"{cfg.run_id}.json"


def finished_record(path: Path) -> dict[str, Any] | None:
    """The record at `path` if it holds a finished run (its final metrics), else None: also when it cannot be
    read, since a corrupt file holds no result to keep."""
    if not path.is_file():
        return None
    try:
        record = load_record(path)
    except UserError as exc:
        print(f"note: {exc}; the run writes it anew", file=sys.stderr)
        return None
    return record if record["status"] in FINISHED else None


@contextlib.contextmanager
def sole_writer(cfg: RunConfig, results_dir: Path, main: bool = True) -> Iterator[None]:
    """Catch stop signals and hold the run's lock (rank 0 of a torchrun holds it for all ranks); the holder
    clears what writers that died mid-write left of this run's record and checkpoints."""
    ckpt = checkpoint_dir(results_dir, cfg.run_id)
    with interrupts.guard(), (run_lock.one_writer(ckpt, cfg.run_id) if main else contextlib.nullcontext()):
        if main:
            for target in (record_file(results_dir, cfg), ckpt / "last.pt", ckpt / "best.pt"):
                durable.remove_temporaries(target)
        yield


def run(cfg: RunConfig, results_dir: Path, resume: bool = False, progress_bar: bool | None = None,
        rerun: bool = False) -> tuple[dict[str, Any], Path]:
    """Train one dense run and write its record; returns (record, path), or (None, None) on ranks other than 0
    of a torchrun, which only train. A finished record is returned as it is unless `rerun`.

    A stop signal at any stage after setup writes an `interrupted` record naming the stage; the checkpoint
    lets `resume` continue there (a run stopped in its final evaluation is evaluated again, not retrained)."""
    world = current_world(cfg)
    path = record_file(results_dir, cfg)
    with sole_writer(cfg, results_dir, world.main):
        done = finished_record(path)
        if done is not None and not rerun:
            return done, path
        try:
            return _run(cfg, results_dir, world, resume, progress_bar)
        finally:
            distributed.stop(world)


@dataclasses.dataclass
class RunState:
    """What one dense run has built so far: what an interrupted or failed record is made of."""

    stage: str = "setup"
    task: Task | None = None
    model: nn.Module | None = None
    device: torch.device | None = None
    trainer: Trainer | None = None
    record: dict[str, Any] | None = None


def _run(cfg: RunConfig, results_dir: Path, world: World, resume: bool, progress_bar: bool | None
         ) -> tuple[dict[str, Any], Path]:
    state, path = RunState(), record_file(results_dir, cfg)
    try:
        state.task, state.model, state.device = setup(cfg, world)
        state.stage = "reference"
        # Every rank computes the reference line (some tasks train a twin for it, cached): no rank waits that
        # long for rank 0 at a collective, and one process draws from its RNG exactly as before training.
        reference = state.task.reference()
        if world.size > 1:
            seed_everything(cfg.seed * 1000 + world.rank)  # the same weights and reference, then dropout of its own
        state.stage = "training"
        state.trainer = Trainer(cfg, state.task, state.model, state.device, checkpoint_dir(results_dir, cfg.run_id),
                                progress_bar=progress_bar, world=world)
        if not world.main:
            with contextlib.suppress(interrupts.Interrupted):
                state.trainer.run(resume)
            return None, None  # the group is left together with rank 0, which then evaluates alone
        state.record = base_record(cfg, state.task, state.model, state.device, reference=reference)
        return _train_and_record(state, path, results_dir, resume)
    except interrupts.Interrupted as stop:
        if state.stage == "done":  # the record is written whole: a signal now changes nothing
            return state.record, path
        if not world.main or state.model is None:
            raise  # nothing was built: there is nothing to resume, and no record to write
        state.stage = state.trainer.stage if state.stage == "training" else state.stage
        return write_stopped(state, path, results_dir, "interrupted", stop.name), path


def _train_and_record(state: RunState, path: Path, results_dir: Path, resume: bool) -> tuple[dict[str, Any], Path]:
    """Rank 0's part of a run: the record around training, the final evaluation and the output files."""
    task, model, device, trainer, record = state.task, state.model, state.device, state.trainer, state.record
    record["throughput"]["reference_units_per_s"] = reference_throughput(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the reference loop's memory is not the run's
    try:
        outcome = trainer.run(resume)
        distributed.stop(trainer.world)  # every rank leaves the group at the same point (NCCL expects it)
        metrics = {}
        if outcome.status in FINISHED:
            state.stage = "evaluation"
            model.load_state_dict(torch.load(trainer.best_path, map_location=device)["model"])
            metrics = {s: evaluate(task, model, trainer.policy, s)[0] for s in ("valid", "test")}
            state.stage = "outputs"
            record["model"]["architecture"] = architecture(model)  # the context it was evaluated with is known now
            record["artifacts"] = _artifacts(task, model, trainer.policy, path.with_suffix(""), results_dir, record)
    except UserError:
        raise
    except Exception as exc:  # keep what we know about a crashed run, then let the CLI report it
        state.stage = trainer.stage if state.stage == "training" else state.stage
        write_stopped(state, path, results_dir, "failed", None, error=f"{type(exc).__name__}: {exc}")
        raise
    state.stage = "record"
    fill_outcome(record, outcome, trainer, metrics, device)
    record.update(stage=None, checkpoint=_relative(trainer.best_path, results_dir) if trainer.best_path.exists()
                  else None)
    with interrupts.deferred():
        save_record(record, path)
        if outcome.status in FINISHED:
            trainer.last_path.unlink(missing_ok=True)  # only needed to resume; best.pt stays for variants
        state.stage = "done"
    return record, path


def write_stopped(state: RunState, path: Path, results_dir: Path, status: str, stopped_by: str | None,
             error: str | None = None) -> dict[str, Any]:
    """Write the record of a run stopped at `state.stage`: no final metrics, the progress so far."""
    record = state.record or base_record(state.task.cfg, state.task, state.model, state.device,
                                         reference={"name": state.task.reference_name})
    if state.trainer is not None:
        fill_outcome(record, Outcome(status, stopped_by, state.trainer.progress), state.trainer, {}, state.device)
    best = state.trainer.best_path if state.trainer is not None else None
    record.update(status=status, stopped_by=stopped_by, stage=state.stage, error=error, metrics={},
                  checkpoint=_relative(best, results_dir) if best is not None and best.exists() else None)
    save_record(record, path)
    return record


def save_record(record: dict[str, Any], path: Path) -> Path:
    """Write `record`, unless it is unfinished and a finished record of the same run is there: a rerun that
    is stopped or fails never replaces a finished result."""
    if record["status"] not in FINISHED and finished_record(path) is not None:
        print(f"note: {path} holds this run's finished record, which stays; the {record['status']} rerun's "
              "checkpoint is kept", file=sys.stderr)
        return path
    return write_record(record, path)


def _artifacts(task: Task, model: nn.Module, policy: PrecisionPolicy, out_dir: Path, results_dir: Path,
               record: dict[str, Any]) -> dict[str, str]:
    """The task's output files beside the record; a failure there (a full disk, a plotting error) is noted
    in the record instead of losing the finished run."""
    try:
        with policy.autocast(), torch.no_grad():
            files = task.write_artifacts(model.eval(), out_dir)
    except Exception as exc:  # the metrics are final already; the files are extras
        record["error"] = f"output files not written: {type(exc).__name__}: {exc}"
        print(f"warning: {record['error']}", file=sys.stderr)
        return {}
    return {name: _relative(file, results_dir) for name, file in sorted(files.items())}


def _relative(path: Path, results_dir: Path) -> str:
    """Checkpoint paths are stored relative to the results directory, so a moved tree keeps working."""
    return os.path.relpath(path, results_dir)


def base_record(cfg: RunConfig, task: Task, model: nn.Module, device: torch.device,
                reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record's fields known before training; status starts as failed until training ends. A variant
    passes its parent's reference line, which the dense run already computed (some tasks train it)."""
    info = task.data_info()
    return {
        "schema_version": SCHEMA_VERSION, "run_id": cfg.run_id, "created": dt.datetime.now(dt.UTC).isoformat(),
        "status": "failed", "stopped_by": None, "error": None, "stage": None, "non_finite": [],
        "task": {"name": task.name, "version": task.version, "unit": task.unit, "causal": task.causal,
                 "primary_metric": task.primary_metric, "metrics": dict(task.metrics),
                 "reference_name": task.reference_name},
        "model": {"name": cfg.model, "causal": type(model_backbone(model)).causal,
                  "params": sum(p.numel() for p in model.parameters()), "flops_per_unit": task.flops_per_unit(model),
                  "size_bytes": compress.serialized_size(model)[0],
                  "reference_model": bool(getattr(type(model_backbone(model)), "reference_model", False)),
                  "architecture": architecture(model)},
        "config": cfg.to_dict(),
        "data": {**info, "synthetic": cfg.source == "synthetic"},
        "metrics": {}, "reference": task.reference() if reference is None else reference, "learning_curve": [],
        "budget_used": {"seconds": 0.0, "units": 0, "epochs": 0.0, "steps": 0, "max_seconds": None,
                        "unit_limit": None},
        "throughput": {"unit": task.unit, "train_units_per_s": None, "per_device_units_per_s": None,
                       "eval_units_per_s": None, "reference_units_per_s": None, "normalized": None},
        "memory": peak_memory(device), "variant": None, "checkpoint": None,
        "environment": fingerprint(device, cfg.seed),
    }


def model_backbone(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


def architecture(model: nn.Module) -> dict[str, Any] | None:
    """What a self-describing backbone says of itself (the Transformer: kind, sizes, its parameters outside
    embeddings and the LSTM count they were matched to, the longest context it was given), with the decoder
    of an encoder-decoder task; None for the recurrent baselines, whose config says it all."""
    parts = {name: part.describe() for name, part in (("backbone", model_backbone(model)),
                                                      ("decoder", getattr(model, "decoder", None)))
             if callable(getattr(part, "describe", None))}
    return parts or None


def fill_outcome(record: dict[str, Any], outcome: Outcome, trainer: Trainer, metrics: dict[str, Any],
                 device: torch.device) -> None:
    p = outcome.progress
    record.update(status=outcome.status, stopped_by=outcome.stopped_by, metrics=metrics,
                  learning_curve=p.curve, memory=peak_memory(device))
    limit = trainer.unit_limit
    record["budget_used"] = {"seconds": p.seconds, "units": p.units, "epochs": p.units / trainer.task.units_per_epoch(),
                             "steps": p.steps, "max_seconds": trainer.cfg.budget.max_seconds,
                             "unit_limit": None if limit == float("inf") else limit}
    train = (p.measured_units / p.measured_seconds) if p.measured_seconds else None
    reference = record["throughput"]["reference_units_per_s"]
    per_device = train / trainer.world.size if train else None
    record["throughput"].update(train_units_per_s=train, per_device_units_per_s=per_device,
                                normalized=train / reference if train and reference else None,
                                eval_units_per_s=(p.eval_units / p.eval_seconds) if p.eval_seconds else None)
