"""One variant run: load a dense parent's best weights, compress them (suite/compress.py), optionally
fine-tune, and measure quality, size and latency against the parent, with the dense run's lock, signal
handling and record rules (suite/experiment.py).
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from suite import compress, interrupts, registry
from suite.config import Budget, RunConfig, config_from_dict
from suite.errors import UserError
from suite.experiment import (
    RunState,
    base_record,
    checkpoint_dir,
    fill_outcome,
    finished_record,
    record_file,
    save_record,
    setup,
    sole_writer,
    write_stopped,
)
from suite.precision import PrecisionPolicy
from suite.results import FINISHED, load_record
from suite.runner import Trainer, evaluate

LATENCY_SHAPE = (1, 35)  # batch 1, 35 units: the classic PTB window, the latency every record reports


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


def variant_config(parent: RunConfig, parent_run_id: str, variant: str, finetune_units: int = 0) -> RunConfig:
    """The config of a variant of the dense run `parent`: one process, whatever the parent trained on, and the
    CPU for int8, whose torch.ao dynamic kernels run there only."""
    cfg = dataclasses.replace(parent, variant=variant, parent=parent_run_id, finetune_units=finetune_units,
                              world_size=1)
    return dataclasses.replace(cfg, device="cpu") if variant.startswith("quant") else cfg


def parent_config(parent: dict[str, Any]) -> RunConfig:
    """The config of a dense parent record."""
    return config_from_dict(parent["config"], registry.get("task", parent["config"]["task"]).Options)


def run_variant(variant: str, finetune_units: int, parent: dict[str, Any], parent_path: Path, results_dir: Path,
                progress_bar: bool | None = None, resume: bool = False, rerun: bool = False
                ) -> tuple[dict[str, Any], Path]:
    """Compress the parent's best weights, fine-tune if asked, and measure against the parent. Like `run`: a
    finished record is returned as it is unless `rerun`, and a stop signal writes an `interrupted` record
    (`resume` continues a fine-tune from its checkpoint; the measurements are taken again)."""
    cfg = variant_config(parent_config(parent), parent["run_id"], variant, finetune_units)
    path = record_file(results_dir, cfg)
    with sole_writer(cfg, results_dir):
        done = finished_record(path)
        if done is not None and not rerun:
            return done, path
        if resume and not finetune_units:
            print("note: this variant does not train, so there is nothing to resume: it is measured again",
                  file=sys.stderr)
        state = RunState()
        try:
            return _variant(cfg, state, parent, parent_path, results_dir, progress_bar, resume), path
        except interrupts.Interrupted as stop:
            if state.stage == "done":
                return state.record, path
            if state.model is None:
                raise
            state.stage = state.trainer.stage if state.stage == "training" else state.stage
            state.record = _variant_record(cfg, state, parent)
            state.record["variant"] = _variant_fields(cfg, parent, parent_path, {}, [])
            return write_stopped(state, path, results_dir, "interrupted", stop.name), path


def _variant(cfg: RunConfig, state: RunState, parent: dict[str, Any], parent_path: Path, results_dir: Path,
             progress_bar: bool | None, resume: bool) -> dict[str, Any]:
    state.task, state.model, state.device = setup(cfg)
    task, device = state.task, state.device
    state.stage = "variant"
    weights = Path(results_dir) / parent["checkpoint"]  # stored relative to the results directory
    state.model.load_state_dict(torch.load(weights, map_location=device)["model"])
    args = task.sample_input(*LATENCY_SHAPE)
    before = {"bytes": compress.serialized_size(state.model), "latency": cpu_latency_ms(state.model, args)}
    model, notes, outcome = _compress(cfg, state, parent, results_dir, progress_bar, resume)
    state.model = model  # the int8 model is a new module
    state.stage = "evaluation"
    precision = "fp32" if cfg.variant.startswith("quant") else cfg.precision
    if precision != cfg.precision:
        notes.append(f"int8 model evaluated without {cfg.precision} autocast; the parent's metrics used it")
    metrics = {s: evaluate(task, model, PrecisionPolicy(precision, device), s)[0] for s in ("valid", "test")}
    state.stage = "variant"
    record = _variant_record(cfg, state, parent)
    if outcome is not None:
        fill_outcome(record, outcome, state.trainer, metrics, device)
    else:
        record.update(status="completed", metrics=metrics)
    measured = {**before, "size": compress.serialized_size(model), "latency_after": cpu_latency_ms(model, args),
                "sparsity": compress.sparsity(model) if cfg.variant.startswith("prune") else 0.0}
    record["variant"] = _variant_fields(cfg, parent, parent_path, measured, notes, metrics)
    state.stage, state.record = "record", record
    with interrupts.deferred():
        save_record(record, record_file(results_dir, cfg))
        if state.trainer is not None:
            state.trainer.last_path.unlink(missing_ok=True)
        state.stage = "done"
    return record


def _variant_record(cfg: RunConfig, state: RunState, parent: dict[str, Any]) -> dict[str, Any]:
    """The record fields a variant shares with its parent: the reference line, and the parameter count and
    architecture (quantized parameters are packed, so they are counted as the parent's)."""
    record = base_record(cfg, state.task, state.model, state.device, reference=parent["reference"])
    record["model"].update(params=parent["model"]["params"], architecture=parent["model"].get("architecture"))
    return record


def cpu_latency_ms(model: nn.Module, args: tuple) -> float:
    """Latency of one call on the CPU (the deployment case the variants target), whatever the run's device."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model, args = copy.deepcopy(model).cpu(), tuple(a.cpu() for a in args)
    return compress.latency_ms(model, args)


def _variant_fields(cfg: RunConfig, parent: dict[str, Any], parent_path: Path, measured: dict[str, Any],
                    notes: list[str], metrics: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The variant block of a record: what it costs and saves against the parent, measured in one process
    (measurements not taken yet, in an interrupted variant's record, are null)."""
    size, zsize = measured.get("size", (None, None))
    before = measured.get("bytes", (None, None))
    delta = {f"{s}/{k}": v - parent["metrics"][s][k] for s in (metrics or {}) for k, v in metrics[s].items()
             if parent["metrics"].get(s, {}).get(k) is not None}
    return {"name": cfg.variant, "parent_run_id": parent["run_id"], "parent_record": str(parent_path),
            "sparsity": measured.get("sparsity"), "size_bytes": size, "parent_size_bytes": before[0],
            "compressed_bytes": zsize, "parent_compressed_bytes": before[1],
            "latency_ms": measured.get("latency_after"), "parent_latency_ms": measured.get("latency"),
            "finetune_units": cfg.finetune_units, "notes": notes, "quality_delta": delta}


def _compress(cfg: RunConfig, state: RunState, parent: dict[str, Any], results_dir: Path, progress_bar: bool | None,
              resume: bool) -> tuple[nn.Module, list[str], Any]:
    """Apply the variant; pruning may fine-tune with the mask fixed at the parent's final learning rate."""
    if cfg.variant.startswith("quant"):
        quantized, notes = compress.quantize_dynamic_int8(state.model)
        return quantized, notes, None
    model, notes, outcome = state.model, [], None
    targets = compress.prune_magnitude(model, int(cfg.variant.rsplit("-", 1)[1]) / 100)
    if cfg.finetune_units:
        state.stage = "training"
        final_lr = next((p["lr"] for p in reversed(parent["learning_curve"]) if "lr" in p), cfg.train.lr)
        tune_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, lr=final_lr, lr_decay=1.0),
            budget=Budget(max_units=cfg.finetune_units, max_seconds=cfg.budget.max_seconds,
                          checkpoint_every_seconds=cfg.budget.checkpoint_every_seconds))
        state.trainer = Trainer(tune_cfg, state.task, model, state.device, checkpoint_dir(results_dir, cfg.run_id),
                                progress_bar=progress_bar)
        outcome = state.trainer.run(resume)
        if outcome.status not in FINISHED:
            raise UserError(f"the fine-tune ended {outcome.status} ({outcome.stopped_by}); no variant record was "
                            "written: run the variant again")
        model.load_state_dict(torch.load(state.trainer.best_path, map_location=state.device)["model"])
        notes.append(f"fine-tuned {cfg.finetune_units:,} units with the mask fixed, on top of the parent's budget, "
                     f"at the parent's final learning rate {final_lr:g}")
    compress.make_permanent(targets)
    return model, notes, outcome
