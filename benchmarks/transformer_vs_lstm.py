"""The Transformer reference against the LSTM, task by task: quality and training throughput side by side.

Each task's synthetic source at one budget (default `small`), one seed, the two models one after the other
in this process through `experiment.run` (so each gets its task's preset, the Transformer its own preset on
top, and the size match to the LSTM). `--seconds S` caps every run's training time below the budget's (the
small budget's 30 minutes a run make 6 hours for all twelve on two cores); the table says what was used.
The reference line (a twin for some tasks) is trained once per task and cached, so the second model of a
task does not pay for it again. Throughput is training units per second of each run.

    python benchmarks/transformer_vs_lstm.py --seconds 60        # about 25 min on 2 cores
    python benchmarks/transformer_vs_lstm.py --tasks ptb,imdb     # the full small budget, two tasks
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import environment, parse, parser, print_table, write_json

from suite import experiment
from suite.config import build_config
from suite.registry import TASKS

MODELS = ("lstm", "transformer")


def run(task: str, model: str, budget: str, seconds: float | None, results: Path) -> dict[str, Any]:
    task_cls = TASKS[task]
    overrides = [f"budget.max_seconds={seconds}"] if seconds else []
    cfg = build_config(task, model, budget=budget, overrides=overrides, options_cls=task_cls.Options,
                       presets=task_cls.presets, source="synthetic", device="cpu")
    record, _ = experiment.run(cfg, results, progress_bar=False)
    primary = record["task"]["primary_metric"]
    parts = (record["model"].get("architecture") or {}).values()
    return {"task": task, "model": model, "status": record["status"], "metric": primary,
            "higher_is_better": record["task"]["metrics"][primary],
            "test": record["metrics"].get("test", {}).get(primary), "reference": record["reference"]["test"][primary],
            "reference_name": record["reference"]["name"], "units": record["budget_used"]["units"],
            "seconds": record["budget_used"]["seconds"], "units_per_s": record["throughput"]["train_units_per_s"],
            "unit": record["task"]["unit"], "params": record["model"]["params"],
            "matched": [(p["backbone_params"], p["lstm_params"]) for p in parts], "run_id": record["run_id"]}


def main() -> int:
    p = parser("transformer_vs_lstm", __doc__)
    p.add_argument("--budget", default="small")
    p.add_argument("--seconds", type=float, default=None,
                   help="cap each run's training seconds (default: the budget's)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    args = parse(p)
    env = {**environment(torch.device("cpu")), "data": "each task's synthetic source"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for model in MODELS:
                rows.append(run(task, model, args.budget, args.seconds, Path(tmp)))
                print(f"{task} {model}: {rows[-1]['metric']} {rows[-1]['test']}", file=sys.stderr)
    table = []
    for lstm, transformer in zip(rows[::2], rows[1::2]):
        ratio = transformer["units_per_s"] / lstm["units_per_s"] if lstm["units_per_s"] else None
        table.append([lstm["task"], lstm["metric"], lstm["test"], transformer["test"], lstm["reference"],
                      lstm["units_per_s"], transformer["units_per_s"], ratio, lstm["unit"]])
    print_table(f"transformer vs lstm, budget {args.budget}" + (f" capped at {args.seconds:g} s a run"
                                                               if args.seconds else "") + ", synthetic sources",
                ["task", "metric", "lstm", "transformer", "reference", "lstm/s", "transformer/s",
                 "throughput ratio", "unit"], table)
    write_json(args.out, {"environment": env, "budget": args.budget, "seconds_cap": args.seconds, "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
