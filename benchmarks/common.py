"""Shared pieces of the benchmark scripts: configs, training through the real Trainer, interleaved
repeats, a small table printer and the JSON writer.

Benchmarks report ratios against a reference run in the same process, never timing asserts: two
runs measured minutes apart on a shared machine differ by more than the effects we look for.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from baselines import backbone_factory
from suite.config import RunConfig, build_config
from suite.environment import device_name
from suite.registry import MODELS, TASKS, load_plugins
from suite.runner import Outcome, Trainer, seed_everything
from tasks.base import Task
from tasks.ptb import PTB

ROOT = Path(__file__).resolve().parents[1]
DATA_NOTE = ("data: the synthetic PTB source (source='synthetic', a 10k-word class Markov language); "
             "ptb.train.txt is not used, so figures are speed figures and perplexities are not PTB's")
# Zaremba's small LSTM shape (2x200) at the pytorch/examples batch and window (20 x 35).
LSTM_2X200 = ["backbone.hidden_size=200", "backbone.num_layers=2", "options.emb_size=200",
              "train.batch_size=20", "options.bptt=35"]
SIZES = {"smoke": [], "2x200": LSTM_2X200}

load_plugins()


def ptb_config(model: str = "lstm", budget: str = "smoke", overrides: list[str] = (), *, units: int | None = None,
               precision: str = "fp32", device: str = "cpu") -> RunConfig:
    """A synthetic-PTB RunConfig; with `units`, the budget is exactly that many units, no time limit,
    no checkpoints and no evaluation before the end, so that only training steps are measured."""
    fixed = []
    if units is not None:
        fixed = [f"budget.max_units={units}", "budget.max_seconds=None", "budget.max_epochs=None",
                 "budget.eval_every_units=None", "budget.checkpoint_every_seconds=1e9"]
    return build_config("ptb", model, budget=budget, overrides=[*fixed, *overrides], options_cls=PTB.Options,
                        presets=PTB.presets, source="synthetic", device=device, precision=precision)


def prepare_task(cfg: RunConfig) -> Task:
    """The task of `cfg` with its data prepared (downloaded or generated); reusable by every run whose data
    settings are the same."""
    task = TASKS[cfg.task](cfg, torch.device(cfg.device))
    task.prepare()
    return task


def build_model(cfg: RunConfig, task: Task) -> nn.Module:
    """The model of `cfg` for `task`, seeded so that every call gives the same initial weights."""
    seed_everything(cfg.seed)
    return task.build(backbone_factory(MODELS[cfg.model], cfg.backbone, task.causal)).to(torch.device(cfg.device))


def train(cfg: RunConfig, task: Task, model: nn.Module) -> Outcome:
    """Train through the suite's Trainer, with its checkpoints in a throw-away folder."""
    with tempfile.TemporaryDirectory(prefix="seqsuite-bench-") as tmp:
        return Trainer(cfg, task, model, torch.device(cfg.device), Path(tmp), progress_bar=False).run()


def units_per_s(outcome: Outcome) -> float:
    """The Trainer's throughput: units per second over the steps after budget.warmup_steps."""
    p = outcome.progress
    return p.measured_units / p.measured_seconds


def train_speed(cfg: RunConfig, task: Task) -> float:
    """Units/s of one training run of a freshly built model of `cfg` on `task`."""
    return units_per_s(train(cfg, task, build_model(cfg, task)))


def data_fraction(task: Task, model: nn.Module, batches: Iterator[Any], steps: int,
                  warmup: int = 5) -> dict[str, float]:
    """Seconds building batches over seconds of whole steps (batch + forward + backward + Adam update), and
    ms per step, over `steps` steps of `batches` with the first `warmup` left out, as in the Trainer."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = total = 0.0
    for i in range(steps):
        start = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        loss = task.loss(model, batch, None)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            data, total = data + fetched - start, total + time.perf_counter() - start
    return {"data_fraction": data / total, "ms_per_step": 1000 * total / (steps - warmup)}


def interleaved(runs: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, list[Any]]:
    """Call every run `repeats` times, reversing the order on every other repeat, so that slow drift
    (thermal, other processes) and any first-run or second-run advantage fall on both sides alike."""
    values: dict[Any, list[Any]] = {name: [] for name in runs}
    for r in range(repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            values[name].append(runs[name]())
    return values


def median(values: list[float]) -> float:
    return statistics.median(values)


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on, including how busy the CPU was: other processes skew CPU timings."""
    busy = cpu_busy()
    if busy is not None and busy > 0.25 and torch.get_num_threads() >= (os.cpu_count() or 1):
        # Measured here: with every core taken by torch and another process running, each OpenMP region
        # waits for a descheduled sibling thread and a 1 ms call can take 300 ms.
        print(f"warning: other processes keep {busy:.0%} of the CPU busy and torch uses every core: runs can be "
              "many times slower and uneven; --threads 1 gives steadier figures", file=sys.stderr)
    return {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu_busy_at_start": busy,
            "loadavg_at_start": os.getloadavg(), "data": DATA_NOTE}


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """A plain fixed-width table; floats get fewer decimals as they grow."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
        return "-" if v is None else str(v)

    cells = [header] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has (--out, --threads)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / f"{name}.json",
                   help="where to write the figures as JSON")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core); on a machine that other "
                        "processes keep busy, 1 thread gives far steadier figures than oversubscribed cores")
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the arguments and apply --threads before any tensor work."""
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def cpu_busy(seconds: float = 0.5) -> float | None:
    """Fraction of all cores that other processes kept busy over `seconds` (from /proc/stat), or None."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def write_json(path: Path, figures: dict[str, Any]) -> None:
    figures = {**figures, "loadavg_at_end": os.getloadavg()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nwrote {path}", file=sys.stderr)
