"""The Transformer reference against the LSTM, task by task: quality and training throughput side by side.

Each task's synthetic source at one budget (default `small`), one seed, through `experiment.run` (so each
model gets its task's preset, the Transformer its own preset on top, and the size match to the LSTM).
`--seconds S` caps every run's training time below the budget's (the small budget's 30 minutes a run make
6 hours for all twelve on two cores); the table says what was used.

`--jobs 2` trains a task's two models at the same time, each in its own process with the CPU's threads
shared out between them (one each on two cores), so that both see the same machine and the wall-clock
budget covers both at once. Each finished run is kept as `<out dir>/<task>-<model>.json` and a rerun with
the same budget and cap skips it: the twelve runs can be spread over several sittings.

The reference lines that are twins of the run's model (translation's no-attention, captioning's blind
decoder, video's order-free average) would train for the full budget too; here they train for the fixed
units in REFERENCE_UNITS instead, which the table names. Throughput is training units per second.

    python benchmarks/transformer_vs_lstm.py --seconds 60                    # about 25 min on 2 cores
    python benchmarks/transformer_vs_lstm.py --tasks ptb,imdb --jobs 2       # the full small budget, 1 h
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from common import ROOT, cpu_busy, environment, parse, parser, print_table, write_json

from suite import experiment
from suite.config import build_config
from suite.registry import TASKS

MODELS = ("lstm", "transformer")
REFERENCE_UNITS = {"translation": 400_000, "captioning": 150_000, "video": 30_000}
"""Training units of the twin reference lines: the smoke presets' for translation and captioning; for
video about what the order-free twin trains in the smoke budget's 20 s."""


def run(task: str, model: str, budget: str, seconds: float | None, threads: int | None) -> dict[str, Any]:
    """One run's row: its test metric, the reference line's, throughput and the parameter counts."""
    if threads:
        torch.set_num_threads(threads)
    task_cls = TASKS[task]
    overrides = [f"budget.max_seconds={seconds}"] if seconds else []
    if task in REFERENCE_UNITS:
        overrides.append(f"options.reference_units={REFERENCE_UNITS[task]}")
    cfg = build_config(task, model, budget=budget, overrides=overrides, options_cls=task_cls.Options,
                       presets=task_cls.presets, source="synthetic", device="cpu")
    busy = cpu_busy()
    with tempfile.TemporaryDirectory() as tmp:
        record, _ = experiment.run(cfg, Path(tmp), progress_bar=False)
    primary = record["task"]["primary_metric"]
    parts = (record["model"].get("architecture") or {}).values()
    return {"task": task, "model": model, "status": record["status"], "metric": primary,
            "higher_is_better": record["task"]["metrics"][primary],
            "test": record["metrics"].get("test", {}).get(primary), "reference": record["reference"]["test"][primary],
            "reference_name": record["reference"]["name"], "reference_units": REFERENCE_UNITS.get(task),
            "units": record["budget_used"]["units"], "seconds": record["budget_used"]["seconds"],
            "units_per_s": record["throughput"]["train_units_per_s"], "unit": record["task"]["unit"],
            "params": record["model"]["params"],
            "matched": [(p["backbone_params"], p["lstm_params"]) for p in parts], "run_id": record["run_id"],
            "torch_threads": torch.get_num_threads(), "cpu_busy_at_start": busy, "config": record["config"]}


def main() -> int:
    p = parser("transformer_vs_lstm", __doc__)
    p.add_argument("--budget", default="small")
    p.add_argument("--seconds", type=float, default=None,
                   help="cap each run's training seconds (default: the budget's)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    p.add_argument("--jobs", type=int, default=1, choices=(1, 2),
                   help="train a task's two models at once, the CPU threads split between them")
    p.add_argument("--runs", type=Path, default=None,
                   help="folder of finished runs to resume from (default: benchmarks/out/transformer_vs_lstm/"
                        "<budget>[-<seconds>s], whatever --out says, so that a run with another --out resumes too)")
    args = parse(p)
    runs_dir = args.runs or (ROOT / "benchmarks" / "out" / "transformer_vs_lstm"
                             / (args.budget + (f"-{args.seconds:g}s" if args.seconds else "")))
    runs_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    env = {**environment(torch.device("cpu")), "data": "each task's synthetic source", "jobs": args.jobs,
           "threads_per_run": threads or torch.get_num_threads()}
    tasks = args.tasks.split(",")
    for task in tasks:
        if task not in TASKS:
            p.error(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    # Spawned, not forked: each worker starts its own OpenMP pool with the thread count it is given.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        for task in tasks:
            todo = [m for m in MODELS if not (runs_dir / f"{task}-{m}.json").is_file()]
            futures = {m: pool.submit(run, task, m, args.budget, args.seconds, threads) for m in todo}
            for model, future in futures.items():
                row = future.result()
                (runs_dir / f"{task}-{model}.json").write_text(json.dumps(row, indent=2) + "\n")
                print(f"{task} {model}: {row['metric']} {row['test']} at {row['units_per_s']:.0f} "
                      f"{row['unit']}/s", file=sys.stderr)
    rows = {(r["task"], r["model"]): r for r in (json.loads(f.read_text()) for f in sorted(runs_dir.glob("*.json")))}
    table = []
    for task in tasks:
        lstm, transformer = rows[task, "lstm"], rows[task, "transformer"]
        ratio = transformer["units_per_s"] / lstm["units_per_s"] if lstm["units_per_s"] else None
        reference = lstm["reference_name"] + (f" ({lstm['reference_units']:,})" if lstm["reference_units"] else "")
        # A twin reference is each model's own (translation's no-attention Transformer is not the LSTM's).
        table.append([task, lstm["metric"], lstm["test"], lstm["reference"], transformer["test"],
                      transformer["reference"], reference, lstm["units_per_s"], transformer["units_per_s"], ratio,
                      lstm["unit"]])
    print_table(f"transformer vs lstm, budget {args.budget}" + (f" capped at {args.seconds:g} s a run"
                                                               if args.seconds else "") + ", synthetic sources, "
                f"{args.jobs} run(s) at a time, {env['threads_per_run']} thread(s) each",
                ["task", "metric", "lstm", "its reference", "transformer", "its reference", "reference (units)",
                 "lstm/s", "transformer/s", "throughput ratio", "unit"], table)
    write_json(args.out, {"environment": env, "budget": args.budget, "seconds_cap": args.seconds,
                          "runs_dir": str(runs_dir.relative_to(ROOT) if runs_dir.is_relative_to(ROOT) else runs_dir),
                          "runs": [rows[t, m] for t in tasks for m in MODELS]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
