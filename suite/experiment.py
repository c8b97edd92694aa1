"""One run from config to record: resolve the task and backbone, train, evaluate, write the record.

Dense runs train through the runner; variant runs load their dense parent's best weights, compress
them (suite/compress.py), optionally fine-tune, and measure quality, size and latency against it.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from baselines import backbone_factory
from suite import compress, distributed, registry
from suite.config import Budget, RunConfig, config_from_dict
from suite.distributed import World
from suite.environment import fingerprint, peak_memory
from suite.errors import UserError
from suite.precision import PrecisionPolicy
from suite.reference import reference_throughput
from suite.results import SCHEMA_VERSION, load_record, record_path, write_record
from suite.runner import Outcome, Trainer, evaluate, seed_everything
from tasks.base import Task

LATENCY_SHAPE = (1, 35)  # batch 1, 35 units: the classic PTB window, the latency every record reports


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


def _setup(cfg: RunConfig, world: World = World()) -> tuple[Task, nn.Module, torch.device]:
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


def run(cfg: RunConfig, results_dir: Path, resume: bool = False, progress_bar: bool | None = None
        ) -> tuple[dict[str, Any], Path]:
    """Train one dense run and write its record; returns (record, path), or (None, None) on ranks other than 0
    of a torchrun, which only train."""
    world = current_world(cfg)
    try:
        task, model, device = _setup(cfg, world)
        # Every rank computes the reference line (some tasks train a twin for it, cached): no rank waits that
        # long for rank 0 at a collective, and one process draws from its RNG exactly as before training.
        reference = task.reference()
        if world.size > 1:
            seed_everything(cfg.seed * 1000 + world.rank)  # the same weights and reference, then dropout of its own
        trainer = Trainer(cfg, task, model, device, checkpoint_dir(results_dir, cfg.run_id),
                          progress_bar=progress_bar, world=world)
        if not world.main:
            trainer.run(resume)
            return None, None  # the group is left together with rank 0, which then evaluates alone
        record = base_record(cfg, task, model, device, reference=reference)
        return _train_and_record(record, task, model, device, trainer, results_dir, resume)
    finally:
        distributed.stop(world)


def _train_and_record(record: dict[str, Any], task: Task, model: nn.Module, device: torch.device,
                      trainer: Trainer, results_dir: Path, resume: bool) -> tuple[dict[str, Any], Path]:
    """Rank 0's part of a run: the record around training, the final evaluation and the output files."""
    record["throughput"]["reference_units_per_s"] = reference_throughput(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the reference loop's memory is not the run's
    path = record_path(results_dir, record)
    try:
        outcome = trainer.run(resume)
        distributed.stop(trainer.world)  # every rank leaves the group at the same point (NCCL expects it)
    except UserError:
        raise
    except Exception as exc:  # keep what we know about a crashed run, then let the CLI report it
        fill_outcome(record, Outcome("failed", None, trainer.progress), trainer, {}, device)
        record.update(error=f"{type(exc).__name__}: {exc}")
        write_record(record, path)
        raise
    metrics = {}
    if outcome.status in ("completed", "budget_exhausted"):
        model.load_state_dict(torch.load(trainer.best_path, map_location=device)["model"])
        metrics = {s: evaluate(task, model, trainer.policy, s)[0] for s in ("valid", "test")}
        record["model"]["architecture"] = architecture(model)  # the context it was evaluated with is known now
        record["artifacts"] = _artifacts(task, model, trainer.policy, path.with_suffix(""), results_dir, record)
    fill_outcome(record, outcome, trainer, metrics, device)
    record["checkpoint"] = _relative(trainer.best_path, results_dir) if trainer.best_path.exists() else None
    written = write_record(record, path)
    if outcome.status in ("completed", "budget_exhausted"):
        trainer.last_path.unlink(missing_ok=True)  # only needed to resume; best.pt stays for variants
    return record, written


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
        "status": "failed", "stopped_by": None, "error": None,
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


def find_parent(dense_cfg: RunConfig, results_dir: Path, parent: Path | None) -> tuple[dict[str, Any], Path]:
    """The dense parent's record: the one given, or the record of the same flags without --variant."""
    if parent is None:
        task_name, model_name = dense_cfg.task, dense_cfg.model
        parent = Path(results_dir) / task_name / model_name / f"{dense_cfg.run_id}.json"
        if not parent.exists():
            raise UserError(f"no dense parent record at {parent}: run the same command without --variant first, "
                            "or pass --parent RECORD.json")
    record = load_record(parent)
    if record["variant"] is not None or record["status"] not in ("completed", "budget_exhausted"):
        raise UserError(f"{parent} is not a finished dense run (status {record['status']}); "
                        "a variant needs a trained dense parent")
    weights = Path(results_dir) / record["checkpoint"] if record["checkpoint"] else None
    if weights is None or not weights.exists():
        raise UserError(f"the parent's weights {weights} are missing: rerun the parent")
    return record, parent


def run_variant(variant: str, finetune_units: int, parent: dict[str, Any], parent_path: Path, results_dir: Path,
                progress_bar: bool | None = None) -> tuple[dict[str, Any], Path]:
    """Compress the parent's best weights, fine-tune if asked, and measure against the parent."""
    task_cls = registry.get("task", parent["config"]["task"])
    parent_cfg = config_from_dict(parent["config"], task_cls.Options)
    # A variant runs in one process, whatever its parent trained on.
    cfg = dataclasses.replace(parent_cfg, variant=variant, parent=parent["run_id"], finetune_units=finetune_units,
                              world_size=1)
    if variant.startswith("quant"):
        cfg = dataclasses.replace(cfg, device="cpu")  # torch.ao dynamic int8 kernels run on CPU only
    task, model, device = _setup(cfg)
    weights = Path(results_dir) / parent["checkpoint"]  # stored relative to the results directory
    model.load_state_dict(torch.load(weights, map_location=device)["model"])
    args = task.sample_input(*LATENCY_SHAPE)
    before = {"bytes": compress.serialized_size(model), "latency": cpu_latency_ms(model, args)}
    model, notes, trainer, outcome = _compress(cfg, task, model, device, parent, results_dir, progress_bar)
    precision = "fp32" if variant.startswith("quant") else cfg.precision
    if precision != cfg.precision:
        notes.append(f"int8 model evaluated without {cfg.precision} autocast; the parent's metrics used it")
    metrics = {s: evaluate(task, model, PrecisionPolicy(precision, device), s)[0] for s in ("valid", "test")}
    record = base_record(cfg, task, model, device, reference=parent["reference"])
    record["model"]["params"] = parent["model"]["params"]  # the parent's count: quantized params are packed
    record["model"]["architecture"] = parent["model"].get("architecture")  # the same counts, for the same reason
    if outcome is not None:
        fill_outcome(record, outcome, trainer, metrics, device)
    else:
        record.update(status="completed", metrics=metrics)
    record["variant"] = _variant_fields(cfg, model, args, parent, parent_path, before, metrics, notes)
    return record, write_record(record, record_path(results_dir, record))


def cpu_latency_ms(model: nn.Module, args: tuple) -> float:
    """Latency of one call on the CPU (the deployment case the variants target), whatever the run's device."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model, args = copy.deepcopy(model).cpu(), tuple(a.cpu() for a in args)
    return compress.latency_ms(model, args)


def _variant_fields(cfg: RunConfig, model: nn.Module, args: tuple, parent: dict[str, Any], parent_path: Path,
                    before: dict[str, Any], metrics: dict[str, dict[str, float]], notes: list[str]) -> dict[str, Any]:
    """The variant block of a record: what it costs and saves against the parent, measured in one process."""
    size, zsize = compress.serialized_size(model)
    delta = {f"{s}/{k}": v - parent["metrics"][s][k] for s in metrics for k, v in metrics[s].items()
             if parent["metrics"].get(s, {}).get(k) is not None}
    return {"name": cfg.variant, "parent_run_id": parent["run_id"], "parent_record": str(parent_path),
            "sparsity": compress.sparsity(model) if cfg.variant.startswith("prune") else 0.0,
            "size_bytes": size, "parent_size_bytes": before["bytes"][0], "compressed_bytes": zsize,
            "parent_compressed_bytes": before["bytes"][1], "latency_ms": cpu_latency_ms(model, args),
            "parent_latency_ms": before["latency"], "finetune_units": cfg.finetune_units, "notes": notes,
            "quality_delta": delta}


def _compress(cfg: RunConfig, task: Task, model: nn.Module, device: torch.device, parent: dict[str, Any],
              results_dir: Path, progress_bar: bool | None) -> tuple[nn.Module, list[str], Any, Any]:
    """Apply the variant; pruning may fine-tune with the mask fixed at the parent's final learning rate."""
    if cfg.variant.startswith("quant"):
        quantized, notes = compress.quantize_dynamic_int8(model)
        return quantized, notes, None, None
    notes = []
    targets = compress.prune_magnitude(model, int(cfg.variant.rsplit("-", 1)[1]) / 100)
    trainer = outcome = None
    if cfg.finetune_units:
        final_lr = next((p["lr"] for p in reversed(parent["learning_curve"]) if "lr" in p), cfg.train.lr)
        tune_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, lr=final_lr, lr_decay=1.0),
            budget=Budget(max_units=cfg.finetune_units, max_seconds=cfg.budget.max_seconds,
                          checkpoint_every_seconds=cfg.budget.checkpoint_every_seconds))
        trainer = Trainer(tune_cfg, task, model, device, checkpoint_dir(results_dir, cfg.run_id),
                          progress_bar=progress_bar)
        outcome = trainer.run()
        if outcome.status not in ("completed", "budget_exhausted"):
            raise UserError(f"the fine-tune ended {outcome.status} ({outcome.stopped_by}); no variant record was "
                            "written: run the variant again")
        model.load_state_dict(torch.load(trainer.best_path, map_location=device)["model"])
        notes.append(f"fine-tuned {cfg.finetune_units:,} units with the mask fixed, on top of the parent's budget, "
                     f"at the parent's final learning rate {final_lr:g}")
    compress.make_permanent(targets)
    return model, notes, trainer, outcome
