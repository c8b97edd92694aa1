"""Sweep overhead and parallel speed-up: K smoke runs of PTB (synthetic, fixed unit count) three ways.

(a) by hand: the K `suite run` commands one after another, the sum of their wall times;
(b) `suite sweep --workers 1` over the same grid: its wall time over (a) is the sweep's overhead (planning,
    state checks, the summary and the leaderboard rebuilt at the end);
(c) `suite sweep --workers 2`: its speed-up over (b), each worker given half the CPU threads;
(d) where a Slurm cluster answers (`bash .ci/slurm-cluster.sh start`): `suite sweep --executor slurm --workers 2`,
    its wall time and the time from starting the sweep to its first record on disk.
Each side writes into its own fresh results folder, so nothing is skipped.

    python benchmarks/sweep.py           # about 3 min on 2 cores
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
import torch

MODELS = ("rnn", "lstm", "gru", "resrnn")
SETS = ["backbone.hidden_size=64", "budget.max_units=30000", "budget.max_seconds=None"]


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "suite.cli", *argv], check=True, capture_output=True)
    return time.perf_counter() - start


def grid(results: Path, models: tuple[str, ...]) -> list[str]:
    return ["--task", "ptb", "--source", "synthetic", "--budget", "smoke", "--results", str(results),
            *[a for s in SETS for a in ("--set", s)], "--model", ",".join(models)]


def by_hand(results: Path) -> float:
    return sum(wall(["run", *grid(results, (m,)), "--no-progress"]) for m in MODELS)


def slurm(results: Path) -> dict[str, float] | None:
    """(d): wall time of the Slurm sweep, and seconds from its start and from its first submission to its first
    record on disk; None without a cluster."""
    if shutil.which("sinfo") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode:
        return None
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "suite.cli", "sweep", *grid(results, MODELS), "--workers", "2",
                             "--executor", "slurm"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    submitted: list[float] = []

    def watch() -> None:  # the sweep prints "submitted <run> as Slurm job <id>" right after sbatch
        for line in proc.stdout:
            if line.startswith("submitted ") and not submitted:
                submitted.append(time.perf_counter())

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    first = None
    while proc.poll() is None:
        if first is None and list(results.glob("ptb/*/*.json")):
            first = time.perf_counter()
        time.sleep(0.02)
    reader.join()
    if proc.returncode or first is None or not submitted:
        raise SystemExit(f"the Slurm sweep failed (exit {proc.returncode}): see {results}/sweeps/logs")
    return {"wall_s": time.perf_counter() - start, "first_record_s": first - start,
            "submission_to_first_record_s": first - submitted[0]}


def main() -> None:
    p = common.parser("sweep", __doc__)
    args = common.parse(p)
    figures: dict[str, Any] = {"environment": common.environment(torch.device("cpu")), "runs": len(MODELS),
                               "settings": SETS}
    with tempfile.TemporaryDirectory(prefix="seqsuite-sweep-") as tmp:
        root = Path(tmp)
        figures["by_hand_s"] = hand = by_hand(root / "hand")
        figures["sweep_1_worker_s"] = one = wall(["sweep", *grid(root / "one", MODELS), "--workers", "1"])
        figures["sweep_2_workers_s"] = two = wall(["sweep", *grid(root / "two", MODELS), "--workers", "2"])
        figures["slurm"] = cluster = slurm(root / "slurm")
    figures["overhead"], figures["speedup_2_workers"] = one / hand, one / two
    rows = [["by hand, one after another", hand, 1.0], ["sweep --workers 1", one, one / hand],
            ["sweep --workers 2", two, two / hand]]
    if cluster:
        rows.append(["sweep --executor slurm --workers 2", cluster["wall_s"], cluster["wall_s"] / hand])
    common.print_table(f"{len(MODELS)} PTB smoke runs ({', '.join(SETS)})", ["how", "wall s", "ratio"], rows)
    print(f"sweep overhead {one / hand - 1:+.1%}; --workers 2 speed-up {one / two:.2f}x")
    print(f"slurm: first record {cluster['first_record_s']:.1f} s after the sweep started, "
          f"{cluster['submission_to_first_record_s']:.1f} s after the first submission; one run by hand takes "
          f"{hand / len(MODELS):.1f} s" if cluster else
          "slurm: skipped (no cluster answers sinfo; bash .ci/slurm-cluster.sh start)")
    common.write_json(args.out, figures)


if __name__ == "__main__":
    main()
