"""CI regression run: the smoke configuration of every registered task x applicable model on the
synthetic sources, written as records for `suite compare` against `results/baselines/smoke`.

The smoke time limit is replaced by a fixed unit count so that quality does not depend on how fast
the CI machine is; throughput is compared through the reference-normalized figure.

    python benchmarks/regression.py --results /tmp/bench  # then: suite compare results/baselines/smoke /tmp/bench
    python benchmarks/regression.py --results results/baselines/smoke  # refresh the committed baseline
    python benchmarks/regression.py --results results/baselines/smoke --models transformer  # add one model's rows
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from suite.experiment import applicable_models
from suite.registry import MODELS, TASKS, load_plugins

# Units per run by task (each task counts its own unit): about 5-20 s per model on 2 CPU cores, past the
# point where every baseline has learnt its synthetic source (see the smoke tests of each task).
UNITS = {"ptb": 60_000, "imdb": 24_000, "translation": 250_000, "captioning": 200_000, "librispeech": 1_000_000,
         "video": 28_000}


def unit_counts(pairs: list[str]) -> dict[str, int]:
    """UNITS with `task=N` overrides from the command line."""
    counts = dict(UNITS)
    for pair in pairs:
        task, _, n = pair.partition("=")
        if task not in TASKS or not n.isdigit():
            raise SystemExit(f"--units takes TASK=N with TASK one of {', '.join(TASKS)}, got {pair!r}")
        counts[task] = int(n)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--units", action="append", default=[], metavar="TASK=N",
                        help=f"training units of one task's runs (default {UNITS})")
    parser.add_argument("--tasks", nargs="*", default=None, help="only these tasks (default: every registered one)")
    parser.add_argument("--models", nargs="*", default=None,
                        help="only these models (default: every one that applies to each task)")
    args = parser.parse_args()
    load_plugins()
    units = unit_counts(args.units)
    for model in args.models or ():
        if model not in MODELS:
            raise SystemExit(f"--models: unknown model {model!r}; choose from {', '.join(MODELS)}")
    failed = 0
    for task, task_cls in TASKS.items():
        if args.tasks is not None and task not in args.tasks:
            continue
        if task not in units:
            raise SystemExit(f"no unit count for task {task}: add it to UNITS in {__file__} or pass --units {task}=N")
        for model in applicable_models(task_cls):
            if args.models is not None and model not in args.models:
                continue
            cmd = [sys.executable, "-m", "suite.cli", "run", "--task", task, "--model", model, "--source",
                   "synthetic", "--budget", "smoke", "--device", "cpu", "--no-progress", "--results",
                   str(args.results), "--set", "budget.max_seconds=None", "--set", f"budget.max_units={units[task]}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            print(f"{task}/{model}: {proc.stdout.strip().splitlines()[0] if proc.stdout else proc.stderr.strip()}")
            failed += proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
