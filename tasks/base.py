"""The task interface: the runner calls only these methods and never asks which task it runs."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from suite.config import RunConfig
from suite.distributed import World

BackboneFactory = Callable[[int], nn.Module]  # input feature size -> backbone (see baselines/)


class Task:
    """One benchmark task: its data sources, its head around a backbone, its loss and its metrics."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    causal: ClassVar[bool] = True
    """True rules out non-causal (bidirectional) backbones."""
    shards: ClassVar[bool] = False
    """True when `train_batches` gives each torchrun rank only its share (`shard`); other tasks run in one process."""
    unit: ClassVar[str] = "samples"
    """What the budget and throughput count (tokens, samples, frames)."""
    metrics: ClassVar[dict[str, bool]] = {}
    """Metric name -> higher is better."""
    primary_metric: ClassVar[str]
    reference_name: ClassVar[str]
    """The simple reference line every model should beat (e.g. unigram)."""
    Options: ClassVar[type]
    """Frozen dataclass of the task's own settings (`--set options.key=value`)."""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    """Per-budget config overrides, e.g. {"paper": {"backbone.hidden_size": 650}}."""

    world: World = World()
    """This process's place in a torchrun (set by the caller before `prepare`); one process by default."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        self.cfg, self.device = cfg, device

    def shard(self, index: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of one global training batch of sample indices (all of it in one
        process). A batch smaller than the world wraps around, so that every rank has a sample to step on."""
        size = self.world.size
        if size == 1:
            return index
        return np.array_split(np.resize(index, max(len(index), size)), size)[self.world.rank]

    def prepare(self) -> None:
        """Load or generate the data of `cfg.source`; raise DataError with the fix when it is missing."""
        raise NotImplementedError

    def data_info(self) -> dict[str, Any]:
        """Source, file checksums and split sizes, for the record."""
        raise NotImplementedError

    def build(self, make_backbone: BackboneFactory) -> nn.Module:
        raise NotImplementedError

    def units_per_epoch(self) -> int:
        """Training units in one pass over the whole training split (all ranks together)."""
        raise NotImplementedError

    def train_batches(self, epoch: int) -> Iterable[Any]:
        """The batches of one epoch, deterministic in (seed, epoch) so that a resumed run can skip ahead; under
        torchrun each rank's part of them (`shard`), the same number of batches on every rank."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[torch.Tensor, int, Any]:
        """(mean loss, units in the batch, carry for the next batch of the epoch, e.g. a detached state)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        raise NotImplementedError

    def eval_units(self, split: str) -> int:
        raise NotImplementedError

    def reference(self) -> dict[str, Any]:
        """The reference line's metrics per split (and the optimum where the source knows it)."""
        raise NotImplementedError

    def flops_per_unit(self, model: nn.Module) -> int:
        raise NotImplementedError

    def sample_input(self, batch_size: int, length: int) -> tuple:
        """Arguments for one inference call `model(*args)`, used to measure latency."""
        raise NotImplementedError

    def write_artifacts(self, model: nn.Module, out_dir: Path) -> dict[str, Path]:
        """Files beside the record made from the final (best) model after its last evaluation, e.g. the
        hypotheses a metric was computed on or attention plots: name -> path under `out_dir`. None by default."""
        return {}
