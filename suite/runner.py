"""The one training loop: budget, precision policy, clipping, LR schedule, evaluation cadence,
best-checkpoint selection, atomic checkpoints with exact resume, and stop signals (suite/interrupts.py).

It knows nothing about any task beyond the `tasks.base.Task` interface.
"""
from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from suite import distributed, durable, interrupts
from suite.config import RunConfig
from suite.distributed import World
from suite.errors import UserError
from suite.precision import PrecisionPolicy
from tasks.base import Task


@dataclass
class Progress:
    """Everything about training so far that a checkpoint must carry."""

    epoch: int = 0
    step_in_epoch: int = 0
    steps: int = 0
    units: int = 0
    seconds: float = 0.0
    """Training seconds used (evaluation and checkpointing excluded)."""
    measured_units: int = 0
    measured_seconds: float = 0.0
    """Units and seconds after warm-up, for the throughput figure."""
    eval_units: int = 0
    eval_seconds: float = 0.0
    last_eval_units: int = -1
    loss_sum: float = 0.0
    loss_count: int = 0
    best: float | None = None
    best_units: int | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Outcome:
    status: str
    """completed | budget_exhausted | diverged (a stop signal raises interrupts.Interrupted instead)"""
    stopped_by: str | None
    progress: Progress


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through suite/durable.py: neither a kill nor a power loss leaves half a checkpoint."""
    durable.atomic_write(path, lambda out: torch.save(obj, out))


def evaluate(task: Task, model: nn.Module, policy: PrecisionPolicy, split: str) -> tuple[dict[str, float], float]:
    """The task's metrics on one split under the precision policy, and the seconds it took."""
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    with policy.autocast():
        metrics = task.evaluate(model, split)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return metrics, seconds


class Trainer:
    """Trains `model` on `task` under `cfg.budget`; checkpoints live in `ckpt_dir`.

    Under torchrun every rank runs a Trainer over its shard of the data; units are summed over the ranks,
    time is rank 0's, and only rank 0 writes files. The progress is therefore the same on every rank.
    """

    def __init__(self, cfg: RunConfig, task: Task, model: nn.Module, device: torch.device, ckpt_dir: Path,
                 clock: Callable[[], float] = time.perf_counter, progress_bar: bool | None = None,
                 world: World = World()):
        self.cfg, self.task, self.model, self.device, self.clock = cfg, task, model, device, clock
        self.ckpt_dir, self.world = ckpt_dir, world
        self.train_model = distributed.wrap(model, world, device)  # the step calls this; eval the bare model
        self.policy = PrecisionPolicy(cfg.precision, device)
        self.policy.check(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = _optimizer(cfg, self.params)
        decay, after = cfg.train.lr_decay, cfg.train.lr_decay_after_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: decay ** max(0, e + 1 - after))
        self.progress = Progress()
        self.carry: Any = None
        self.unit_limit, self.unit_reason = self._unit_limit()
        self.show_bar = world.main and (sys.stderr.isatty() if progress_bar is None else progress_bar)
        self._last_checkpoint = 0.0
        self.stage = "training"
        """training, then evaluation (the last validation, after the end of training is checkpointed)."""

    @property
    def best_path(self) -> Path:
        return self.ckpt_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / "last.pt"

    def _unit_limit(self) -> tuple[float, str | None]:
        b, per_epoch = self.cfg.budget, self.task.units_per_epoch()
        limits = [(math.inf, None)]
        if b.max_units is not None:
            limits.append((b.max_units, "max_units"))
        if b.max_epochs is not None:
            limits.append((math.ceil(b.max_epochs * per_epoch), "max_epochs"))
        return min(limits, key=lambda x: x[0])

    def run(self, resume: bool = False) -> Outcome:
        """Train until a budget limit or a non-finite loss; a finished training is checkpointed and validated
        once more. A stop signal during training checkpoints after the step in flight, one during that last
        validation stops it at once; either raises interrupts.Interrupted, and `resume` continues from the
        checkpoint (after a finished training, with the last validation alone)."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self._start(resume)
        with interrupts.guard():
            with interrupts.deferred():  # a signal is acted on between steps, by _loop
                outcome = self._loop()
                if outcome.status in ("completed", "budget_exhausted"):
                    self._save_checkpoint()  # last.pt stays until the caller has written the record
            self.stage = "evaluation"
            if outcome.status in ("completed", "budget_exhausted"):
                self._maybe_evaluate()
        return outcome

    def _start(self, resume: bool) -> None:
        """Load the checkpoint when resuming; say so when one is found and not resumed, or asked for and absent."""
        exists = self.last_path.exists()
        found = distributed.gather_rows([resume and exists], self.world, self.device)[:, 0]
        if found.min() != found.max():
            raise UserError(f"only some ranks see the checkpoint {self.last_path}: put --results on a file system "
                            "that every node shares")
        if found[0]:
            self._load_checkpoint()
        elif resume:
            print(f"no checkpoint at {self.last_path}: starting from scratch", file=sys.stderr)
        elif exists and self.world.main:
            print(f"note: {self.last_path} holds an unfinished run of this config; starting over without --resume "
                  "(it is replaced at this run's first checkpoint)", file=sys.stderr)

    def _loop(self) -> Outcome:
        p, bar = self.progress, _Bar(self) if self.show_bar else None
        self._last_checkpoint = self.clock()
        try:
            while True:
                reason = self._stop_reason()
                if reason:
                    status = "budget_exhausted" if reason == "max_seconds" else "completed"
                    return Outcome(status, reason, p)
                batches = islice(iter(self.task.train_batches(p.epoch)), p.step_in_epoch, None)
                for batch in _timed(batches, self.clock):
                    loss, signum, checkpoint_due = self._step(batch)
                    if not math.isfinite(loss):
                        return Outcome("diverged", "non-finite loss", p)
                    if bar:
                        bar.update(loss)
                    if signum:
                        self._save_checkpoint()
                        interrupts.clear()  # every rank raises it here, also those that did not receive it
                        raise interrupts.Interrupted(signum)
                    if checkpoint_due:
                        self._save_checkpoint()
                    every = self.cfg.budget.eval_every_units
                    if every and p.units - max(p.last_eval_units, 0) >= every:
                        self._maybe_evaluate()
                    if self._stop_reason():
                        break
                else:
                    self._end_epoch()
        finally:
            if bar:
                bar.close()

    def _warm_up_lr(self, steps_done: int) -> None:
        """Linear learning-rate warm-up over the first train.lr_warmup_steps steps, on top of the epoch schedule
        (step k runs at (k + 1) / warm-up of the scheduled rate; the last warm-up step restores it)."""
        warmup = self.cfg.train.lr_warmup_steps
        if steps_done < warmup:
            for group, scheduled in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = scheduled * (steps_done + 1) / warmup

    def _step(self, timed_batch: tuple[Any, float]) -> tuple[float, int, bool]:
        """One optimizer step; (mean loss over all ranks, signal received by any rank or 0, checkpoint due)."""
        batch, fetch_start = timed_batch
        p = self.progress
        with self.policy.autocast():
            loss, units, self.carry = self.task.loss(self.train_model, batch, self.carry)
        value = loss.item()
        # Every rank steps even on a non-finite loss (DDP's gradient all-reduce needs them all); the run then
        # stops as diverged at once and its last weights are never evaluated.
        self._warm_up_lr(p.steps)
        self.policy.step(loss, self.optimizer, self.params, self.cfg.train.clip)
        seconds = self.clock() - fetch_start
        due = self.clock() - self._last_checkpoint >= self.cfg.budget.checkpoint_every_seconds
        rows = distributed.gather_rows([units, value * units, seconds, interrupts.pending() or 0, due], self.world,
                                       self.device)  # (world, 5): every rank takes the same decisions
        units, loss_sum = int(rows[:, 0].sum()), float(rows[:, 1].sum())
        seconds, due = float(rows[0, 2]), bool(rows[0, 4])  # rank 0's clock
        p.steps += 1
        p.step_in_epoch += 1
        p.units += units
        p.seconds += seconds
        p.loss_sum += loss_sum
        p.loss_count += units
        if p.steps > self.cfg.budget.warmup_steps:
            p.measured_units += units
            p.measured_seconds += seconds
        return loss_sum / units, int(rows[:, 3].max()), due

    def _end_epoch(self) -> None:
        p = self.progress
        p.epoch += 1
        p.step_in_epoch = 0
        self.carry = None
        self.scheduler.step()
        self._maybe_evaluate()

    def _stop_reason(self) -> str | None:
        p, b = self.progress, self.cfg.budget
        if p.units >= self.unit_limit:
            return self.unit_reason
        if b.max_seconds is not None and p.seconds >= b.max_seconds:
            return "max_seconds"
        return None

    def _maybe_evaluate(self) -> None:
        """Validation eval (once per unit count), curve point, and best-checkpoint selection."""
        p = self.progress
        if p.last_eval_units == p.units:
            return
        metrics, seconds = evaluate(self.task, self.model, self.policy, "valid")
        p.eval_units += self.task.eval_units("valid")
        p.eval_seconds += seconds
        p.last_eval_units = p.units
        train_loss = p.loss_sum / p.loss_count if p.loss_count else None
        p.loss_sum, p.loss_count = 0.0, 0
        p.curve.append({"units": p.units, "epoch": p.units / self.task.units_per_epoch(), "seconds": p.seconds,
                        "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss, "valid": metrics})
        value = metrics[self.task.primary_metric]
        higher = self.task.metrics[self.task.primary_metric]
        if p.best is None or math.isnan(p.best) or (value > p.best if higher else value < p.best):
            p.best, p.best_units = value, p.units
            if self.world.main:
                atomic_save({"model": self.model.state_dict(), "units": p.units, "config": self.cfg.to_dict()},
                            self.best_path)

    def _save_checkpoint(self) -> None:
        """Rank 0 writes the weights and progress (the same on every rank) and each rank's carry and RNG."""
        ranks = distributed.gather_objects({"carry": distributed.to_device(self.carry, "cpu"), "rng": rng_state()},
                                           self.world)
        self._last_checkpoint = self.clock()
        if not self.world.main:
            return
        atomic_save({
            "config_digest": self.cfg.digest(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.policy.state_dict(),
            "progress": dataclasses.asdict(self.progress),
            "ranks": ranks,
        }, self.last_path)

    def _load_checkpoint(self) -> None:
        try:
            ckpt = torch.load(self.last_path, map_location=self.device, weights_only=False)
        except Exception as exc:
            raise UserError(f"checkpoint {self.last_path} cannot be read ({exc}); delete it and run "
                            "without --resume") from None
        if ckpt.get("config_digest") != self.cfg.digest() or len(ckpt.get("ranks", [None])) != self.world.size:
            raise UserError(f"checkpoint {self.last_path} belongs to a different config; run without --resume")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.policy.load_state_dict(ckpt["scaler"])
        self.progress = Progress(**ckpt["progress"])
        ranks = ckpt["ranks"] if "ranks" in ckpt else [{"carry": ckpt["carry"], "rng": ckpt["rng"]}]  # older format
        mine = ranks[self.world.rank]
        self.carry = distributed.to_device(mine["carry"], self.device)
        set_rng_state(mine["rng"])


def _optimizer(cfg: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)


def _timed(batches: Any, clock: Callable[[], float]) -> Any:
    """Yield (batch, time before fetching it) so that data loading counts as training time."""
    it = iter(batches)
    while True:
        start = clock()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch, start


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Bar:
    """tqdm bar over the unit limit (or seconds when only time limits the run)."""

    def __init__(self, trainer: Trainer):
        from tqdm import tqdm

        self.trainer = trainer
        self.by_units = math.isfinite(trainer.unit_limit)
        total = trainer.unit_limit if self.by_units else trainer.cfg.budget.max_seconds
        unit = trainer.task.unit if self.by_units else "s"
        self.bar = tqdm(total=total, unit=unit, unit_scale=True, dynamic_ncols=True, leave=False)

    def update(self, loss: float) -> None:
        p, budget = self.trainer.progress, self.trainer.cfg.budget
        left = f"{budget.max_seconds - p.seconds:.0f}s" if budget.max_seconds else "-"
        rate = p.measured_units / p.measured_seconds if p.measured_seconds else 0.0
        self.bar.set_postfix(loss=f"{loss:.3f}", rate=f"{rate:,.0f} {self.trainer.task.unit}/s", time_left=left,
                             refresh=False)
        done = p.units if self.by_units else min(p.seconds, self.bar.total)
        self.bar.update(done - self.bar.n)  # tqdm redraws at most every `mininterval`, not every step

    def close(self) -> None:
        self.bar.close()
