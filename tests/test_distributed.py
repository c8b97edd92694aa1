"""`suite run` under torchrun: real 2-process gloo runs on the CPU against a 1-process run, an interrupted
2-process run resumed to the same numbers, every task's training step through DDP, and the shards.

Tolerance of the 1-vs-2-process comparison: the two runs see the same global batches (PTB: each rank
takes half of the batch rows; equal token counts, so the average of the two ranks' mean losses is the global
mean loss) and start from the same weights, so they differ only in the order floating-point sums are
taken (gloo's all-reduce, the per-rank loss means). Measured here: 1e-7 relative in perplexity after 200
steps. A relative 1e-4 leaves room for that rounding to grow over longer runs and still fails on any
sharding or averaging error, which moves the perplexity by percents (a rank training on the other's rows,
or gradients summed instead of averaged, doubles the step).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from tiny import TINY, prepared, task_param, tiny_config

from suite import experiment
from suite.cli import main
from suite.distributed import World
from suite.errors import UserError
from suite.registry import TASKS

pytestmark = pytest.mark.usefixtures("cache")
TOLERANCE = 1e-4
RUN = ["run", "--task", "ptb", "--model", "gru", "--source", "synthetic", "--budget", "smoke", "--no-progress",
       *[a for s in [*TINY, "budget.max_units=8000", "budget.max_seconds=None"] for a in ("--set", s)]]


def torchrun(nproc: int, argv: list[str], **kw) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "suite.cli", *argv]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def one_record(results: Path) -> dict:
    (path,) = results.glob("ptb/*/*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_two_gloo_processes_reach_the_one_process_numbers(tmp_path: Path) -> None:
    single = subprocess.run([sys.executable, "-m", "suite.cli", *RUN, "--results", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    two = torchrun(2, [*RUN, "--results", str(tmp_path / "two")])
    out, _ = two.communicate(timeout=300)
    assert two.returncode == 0, out
    assert out.count("record: ") == 1  # rank 0 reports; rank 1 only trains
    a, b = one_record(tmp_path / "one"), one_record(tmp_path / "two")
    assert (a["config"]["world_size"], b["config"]["world_size"]) == (1, 2)
    for split in ("valid", "test"):
        assert b["metrics"][split]["ppl"] == pytest.approx(a["metrics"][split]["ppl"], rel=TOLERANCE)
    assert b["budget_used"]["units"] == a["budget_used"]["units"] == 8000  # the budget counts both ranks' tokens
    assert b["budget_used"]["steps"] == a["budget_used"]["steps"]
    throughput = b["throughput"]
    assert throughput["per_device_units_per_s"] == pytest.approx(throughput["train_units_per_s"] / 2)
    # last.pt removed; rank 0 alone held the run's lock, for both ranks
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoints/*/*")) == ["best.pt", "run.lock", "run.owner"]


@pytest.mark.slow
def test_an_interrupted_two_process_run_resumes_to_the_uninterrupted_numbers(tmp_path: Path) -> None:
    argv = [*RUN, "--model", "lstm", "--set", "budget.max_units=30000", "--set", "budget.checkpoint_every_seconds=0.3"]
    straight = torchrun(2, [*argv, "--results", str(tmp_path / "straight")])
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    results = tmp_path / "cut"
    first = torchrun(2, [*argv, "--results", str(results)])
    deadline = time.monotonic() + 120
    while not list(results.glob("checkpoints/*/last.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)  # torchrun passes it to both ranks, which checkpoint together
    first.communicate(timeout=120)
    cut = one_record(results)
    assert cut["status"] == "interrupted" and cut["stopped_by"] == "SIGTERM"
    assert len(torch.load(next(results.glob("checkpoints/*/last.pt")), weights_only=False)["ranks"]) == 2
    again = torchrun(2, [*argv, "--results", str(results), "--resume"])
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    resumed, reference = one_record(results), one_record(tmp_path / "straight")
    assert resumed["status"] == "completed"
    assert resumed["metrics"] == reference["metrics"]  # each rank's carried state and RNG came back


@pytest.fixture(scope="module")
def gloo_group(tmp_path_factory: pytest.TempPathFactory):
    """A one-process gloo group, so that DDP itself wraps the models in this process."""
    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("task_name", [task_param(t) for t in TASKS])
def test_every_task_trains_through_ddp(task_name: str, gloo_group: None) -> None:
    """DDP only sees calls of forward, and fails the next step when a parameter got no gradient."""
    task, model = prepared(tiny_config("lstm", task_name=task_name))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    carry = None
    for step, batch in zip(range(3), task.train_batches(0)):
        loss, units, carry = task.loss(ddp, batch, carry)
        loss.backward()
        assert units > 0 and torch.isfinite(loss), step
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        model.zero_grad()


def on_rank(cfg, rank: int, size: int):
    task = TASKS[cfg.task](cfg, torch.device("cpu"))
    task.world = World(rank, size)
    return task


def test_shards_partition_each_batch_and_wrap_a_batch_smaller_than_the_world() -> None:
    cfg = tiny_config("gru")
    index = np.arange(10, 20)
    parts = [on_rank(cfg, r, 3).shard(index) for r in range(3)]
    assert [list(p) for p in parts] == [list(range(10, 14)), list(range(14, 17)), list(range(17, 20))]
    tiny = [on_rank(cfg, r, 3).shard(np.array([7])) for r in range(3)]
    assert [list(p) for p in tiny] == [[7], [7], [7]]


def test_ptb_ranks_take_contiguous_batch_rows_and_count_the_whole_epoch() -> None:
    cfg = tiny_config("gru", world_size=2)
    whole = TASKS["ptb"](tiny_config("gru"), torch.device("cpu"))
    whole.prepare()
    ranks = [on_rank(cfg, r, 2) for r in range(2)]
    for task in ranks:
        task.prepare()
        assert task.units_per_epoch() == whole.units_per_epoch()
    assert torch.equal(torch.cat([t.train_data for t in ranks]), whole.train_data)


def test_a_global_batch_that_does_not_divide_over_the_processes_is_refused() -> None:
    with pytest.raises(UserError, match=r"train.batch_size \(4\) is the global batch and must divide evenly over "
                                        r"the 3 processes"):
        tiny_config("gru", world_size=3)


def test_a_config_run_by_the_wrong_number_of_processes_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="names world_size 1 but 2 process"):
        experiment.run(tiny_config("gru"), tmp_path)


def test_a_variant_under_torchrun_is_refused_with_the_way_to_run_it(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main([*RUN, "--variant", "quant-dynamic-int8"]) == 2
    assert "run it without torchrun, with --parent RECORD.json" in capsys.readouterr().err


def test_the_world_comes_from_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from suite import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.current() == World(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="RANK=3 does not fit WORLD_SIZE=2"):
        distributed.current()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.current() == World(1, 2, 1) and not distributed.current().main


def test_a_twin_reference_is_the_one_process_line_on_every_rank(cache: Path) -> None:
    """Each rank trains the twin in full in one process, so its cache entry is the one-process run's."""
    cfg = tiny_config("gru", task_name="translation", world_size=2)
    task = TASKS["translation"](cfg, torch.device("cpu"))
    task.world = World(1, 2)
    task.prepare()
    on_rank_1 = task.reference()
    (entry,) = (cache / "references").glob("*.json")
    alone = TASKS["translation"](tiny_config("gru", task_name="translation"), torch.device("cpu"))
    alone.prepare()
    assert alone.reference() == on_rank_1 and list((cache / "references").glob("*.json")) == [entry]


def test_a_task_that_does_not_shard_is_refused_under_torchrun(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setattr(TASKS["ptb"], "shards", False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="task ptb does not split its batches over processes: run it without"):
        experiment.run(tiny_config("gru", world_size=2), tmp_path)


def test_more_ranks_than_gpus_is_refused_before_joining_the_group() -> None:
    from suite import distributed

    with pytest.raises(UserError, match="local rank 3 has no GPU"):
        distributed.start(World(3, 4, 3), torch.device("cuda"))


def test_one_process_runs_keep_their_ids_and_rows() -> None:
    import dataclasses
    import hashlib

    cfg = tiny_config("gru")
    without = {k: v for k, v in cfg.to_dict().items() if k != "world_size"}  # the config before either field
    without["train"] = {k: v for k, v in without["train"].items() if k != "lr_warmup_steps"}
    assert cfg.digest() == hashlib.sha256(json.dumps(without, sort_keys=True).encode()).hexdigest()
    assert dataclasses.replace(cfg, world_size=2).run_id != cfg.run_id
    assert tiny_config("gru", "train.lr_warmup_steps=10").run_id != cfg.run_id
    assert "lr_warmup_steps" in cfg.to_dict()["train"]  # the record still states it
