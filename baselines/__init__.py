"""The backbones; importing the package registers rnn, lstm, gru, brnn, resrnn and the transformer reference."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from baselines import recurrent, resrnn, transformer  # noqa: F401  (explicit imports register the models)
from baselines.recurrent import detach_state
from suite.config import BackboneConfig

__all__ = ["backbone_factory", "detach_state"]


def backbone_factory(model_cls: type[nn.Module], cfg: BackboneConfig, causal: bool) -> Callable[[int], nn.Module]:
    """input size -> backbone. A backbone that runs either way (the Transformer: decoder or encoder) is told
    whether the task is causal; the others are what their class says."""
    if getattr(model_cls, "either_way", False):
        return lambda n: model_cls(n, cfg, causal=causal)
    return lambda n: model_cls(n, cfg)
