import itertools
import math

import pytest
import torch
from tiny import prepared, tiny_config

from suite.errors import UserError
from suite.runner import Trainer


class FakeClock:
    """Advances a fixed step on every reading, so time limits are tested without waiting."""

    def __init__(self, step: float):
        self.ticks = itertools.count()
        self.step = step

    def __call__(self) -> float:
        return next(self.ticks) * self.step


def train(tmp_path, *overrides, clock=None, **top):
    cfg = tiny_config(top.pop("model", "lstm"), *overrides, **top)
    task, model = prepared(cfg)
    kw = {"clock": clock} if clock else {}
    trainer = Trainer(cfg, task, model, torch.device("cpu"), tmp_path / "ckpt", progress_bar=False, **kw)
    return trainer, trainer.run()


def test_unit_limit_stops_at_the_first_step_past_it(tmp_path):
    trainer, out = train(tmp_path, "budget.max_units=1000", "budget.max_seconds=None")
    per_step = 4 * 10  # batch 4 x bptt 10
    assert out.status == "completed" and out.stopped_by == "max_units"
    assert out.progress.units == math.ceil(1000 / per_step) * per_step and out.progress.steps == 25
    # The end of training is checkpointed, so that a run stopped in its final evaluation resumes from there.
    end = torch.load(trainer.last_path, weights_only=False)["progress"]
    assert trainer.best_path.exists() and end["units"] == out.progress.units and end["steps"] == 25
    assert end["last_eval_units"] < out.progress.last_eval_units == out.progress.units  # taken before that eval


def test_time_limit_with_a_fake_clock(tmp_path):
    # Each step reads the clock at fetch and after the update: 1 s a step on this clock.
    trainer, out = train(tmp_path, "budget.max_seconds=30", "budget.max_units=10_000_000", clock=FakeClock(1.0))
    assert out.status == "budget_exhausted" and out.stopped_by == "max_seconds"
    assert out.progress.seconds == 30 and out.progress.steps == 30
    assert out.progress.units == 30 * 40


def test_epoch_limit_decays_lr_per_epoch_and_evaluates_each_epoch(tmp_path):
    trainer, out = train(tmp_path, "budget.max_epochs=3", "budget.max_seconds=None", "budget.eval_every_units=None",
                         "train.optimizer=sgd", "train.lr=1.0", "train.lr_decay=0.5", "train.lr_decay_after_epochs=1")
    per_epoch = trainer.task.units_per_epoch()
    assert out.stopped_by == "max_epochs" and out.progress.units == 3 * per_epoch
    curve = out.progress.curve
    assert [p["units"] for p in curve] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    # lr for epoch e is lr * decay ** max(0, e + 1 - after): 1.0, 0.5, 0.25; logged after the epoch's step.
    assert [p["lr"] for p in curve] == [0.5, 0.25, 0.25]


def test_nan_loss_ends_as_diverged(tmp_path):
    _, out = train(tmp_path, "train.optimizer=sgd", "train.lr=3e38", "budget.max_units=5000", "budget.max_seconds=None")
    assert out.status == "diverged" and out.stopped_by == "non-finite loss"
    assert out.progress.steps < 5


def test_best_checkpoint_is_the_best_validation_point(tmp_path):
    trainer, out = train(tmp_path, "budget.max_units=4000", "budget.max_seconds=None", "budget.eval_every_units=800")
    best = min(out.progress.curve, key=lambda p: p["valid"]["ppl"])
    assert torch.load(trainer.best_path)["units"] == best["units"] == out.progress.best_units
    assert len(out.progress.curve) == 5


def test_precision_policies_on_cpu(tmp_path):
    with pytest.raises(UserError, match="fp16 autocast of LSTM layers is not supported on CPU"):
        train(tmp_path, precision="fp16")
    with pytest.raises(UserError, match="tf32 is a CUDA matmul mode"):
        train(tmp_path, precision="tf32")
    # fp16 with GradScaler runs on CPU for GRU: the GPU code path exercised here.
    trainer, out = train(tmp_path, "budget.max_units=400", "budget.max_seconds=None", model="gru", precision="fp16")
    assert out.status == "completed" and trainer.policy.scaler is not None
    assert trainer.policy.scaler.get_scale() > 0
    _, out = train(tmp_path, "budget.max_units=400", "budget.max_seconds=None", precision="bf16")
    assert out.status == "completed" and math.isfinite(out.progress.curve[-1]["valid"]["ppl"])


def test_lr_warmup_rises_linearly_then_holds_the_scheduled_rate(tmp_path):
    cfg = tiny_config("lstm", "budget.max_units=400", "budget.max_seconds=None", "train.optimizer=sgd",
                      "train.lr=2.0", "train.lr_warmup_steps=4")
    task, model = prepared(cfg)
    trainer = Trainer(cfg, task, model, torch.device("cpu"), tmp_path / "ckpt", progress_bar=False)
    rates = []
    trainer.optimizer.register_step_pre_hook(lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
    out = trainer.run()
    assert out.progress.steps == 10 == len(rates)  # 400 tokens at 4 x 10 a step
    assert rates == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
