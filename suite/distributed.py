"""One run on several processes under `torchrun`: which process this is, and the few collectives the runner
needs. With one process every function here is the identity, so the runner has a single code path.

torchrun describes the world in the environment (RANK, WORLD_SIZE, LOCAL_RANK); the process group uses
NCCL on GPUs and gloo on CPUs. Gradients are averaged by DistributedDataParallel; everything else the
runner must agree on (units trained, rank 0's clock, a signal, a non-finite loss, when to checkpoint)
travels in one small all-gather per step, so that every rank takes every decision at the same step.
"""
from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_map_only

from suite.errors import UserError

TIMEOUT = dt.timedelta(minutes=30)
"""How long a rank waits for the others at a collective before the run fails (rank 0 alone computes
the reference throughput before the first step)."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank `rank` of `size` processes, `local_rank` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, records and W&B; the others only train."""
        return self.rank == 0


def current() -> World:
    """The world torchrun set up for this process, or a world of one."""
    try:
        world = World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                      int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers: start multi-process runs with "
                        "torchrun, or unset them") from None
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise UserError(f"RANK={world.rank} does not fit WORLD_SIZE={world.size}: start the run with torchrun")
    return world


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device: cuda:LOCAL_RANK on GPUs."""
    if world.size == 1:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {world.local_rank} has no GPU ({torch.cuda.device_count()} visible): start "
                            "at most one process per GPU, or run on the CPU with --device cpu")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        _made_here.set()
    return device


_made_here = threading.Event()
"""Set while the process group is one `start` made: `stop` leaves only that one, never a caller's own."""


def stop(world: World) -> None:
    if world.size > 1 and dist.is_initialized() and _made_here.is_set():
        dist.destroy_process_group()
        _made_here.clear()


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP (which averages gradients) when there are several ranks."""
    if world.size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def gather_rows(values: list[float], world: World, device: torch.device) -> torch.Tensor:
    """Every rank's `values` as rows of a (world, k) float64 CPU tensor, in rank order."""
    if world.size == 1:
        return torch.tensor([values], dtype=torch.float64)
    row = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    rows = [torch.empty_like(row) for _ in range(world.size)]
    dist.all_gather(rows, row)
    return torch.stack(rows).cpu()


def gather_objects(obj: Any, world: World) -> list[Any] | None:
    """Every rank's picklable `obj` on rank 0 (in rank order); None on the other ranks."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size if world.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Every tensor inside nested tuples, lists and dicts moved to `device` (the CPU before gathering, so that
    another rank can unpickle it)."""
    return tree_map_only(torch.Tensor, lambda t: t.to(device), obj)
