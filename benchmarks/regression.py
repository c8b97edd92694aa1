"""CI regression run: the smoke configuration of every registered task x applicable model on the
synthetic sources, written as records for `suite compare` against `results/baselines/smoke`.

The smoke time limit is replaced by a fixed unit count so that quality does not depend on how fast
the CI machine is; throughput is compared through the reference-normalized figure.

    python benchmarks/regression.py --results /tmp/bench  # then: suite compare results/baselines/smoke /tmp/bench
    python benchmarks/regression.py --results results/baselines/smoke  # refresh the committed baseline
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from suite.experiment import applicable_models
from suite.registry import TASKS, load_plugins

UNITS = 60_000  # about 6 s per model on 2 CPU cores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--units", type=int, default=UNITS)
    args = parser.parse_args()
    load_plugins()
    failed = 0
    for task, task_cls in TASKS.items():
        for model in applicable_models(task_cls):
            cmd = [sys.executable, "-m", "suite.cli", "run", "--task", task, "--model", model, "--source",
                   "synthetic", "--budget", "smoke", "--device", "cpu", "--no-progress", "--results",
                   str(args.results), "--set", "budget.max_seconds=None", "--set", f"budget.max_units={args.units}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            print(f"{task}/{model}: {proc.stdout.strip().splitlines()[0] if proc.stdout else proc.stderr.strip()}")
            failed += proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
