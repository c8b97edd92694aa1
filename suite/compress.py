"""Pruning and quantization variants of a trained dense parent, and how they are measured.

Variants live in the core: a task never branches on them. Pruning is global unstructured magnitude
pruning (torch.nn.utils.prune) over every recurrent and linear weight matrix; quantization is torch.ao
dynamic int8 for LSTM, GRU and Linear modules on CPU.
"""
from __future__ import annotations

import io
import statistics
import time
import warnings
import zlib

import torch
from torch import nn
from torch.nn.utils import prune

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)
QUANTIZABLE = {nn.LSTM, nn.GRU, nn.Linear}


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every recurrent and linear weight matrix; embeddings are left dense."""
    targets = []
    for module in model.modules():
        if isinstance(module, RECURRENT):
            targets += [(module, n) for n, _ in module.named_parameters(recurse=False) if n.startswith("weight")]
        elif isinstance(module, nn.Linear):
            targets.append((module, "weight"))
    return targets


def prune_magnitude(model: nn.Module, amount: float) -> list[tuple[nn.Module, str]]:
    """Zero the `amount` fraction of smallest-magnitude weights across all targets (masks stay attached)."""
    targets = prunable(model)
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    return targets


def make_permanent(targets: list[tuple[nn.Module, str]]) -> None:
    """Fold the masks into the weights and drop the reparametrisation."""
    for module, name in targets:
        prune.remove(module, name)
    for module in {id(m): m for m, _ in targets}.values():
        if isinstance(module, RECURRENT):
            module.flatten_parameters()


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros over the prunable weights."""
    weights = [getattr(m, n) for m, n in prunable(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


def quantize_dynamic_int8(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """int8 dynamic quantization on CPU; returns the model and notes on what stayed in fp32."""
    notes = []
    if any(type(m) is nn.RNN for m in model.modules()):
        notes.append("torch.ao dynamic quantization has no int8 kernel for Elman (nn.RNN) layers: they stay fp32 "
                     "and only the Linear layers are int8")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
        quantized = torch.ao.quantization.quantize_dynamic(model.cpu(), QUANTIZABLE, dtype=torch.qint8)
    return quantized, notes


def serialized_size(model: nn.Module) -> tuple[int, int]:
    """(bytes of the saved state dict, bytes after zlib), the latter showing what pruning saves."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    raw = buffer.getvalue()
    return len(raw), len(zlib.compress(raw, 6))


@torch.no_grad()
def latency_ms(model: nn.Module, args: tuple, repeats: int = 30, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of one inference call `model(*args)` in eval mode."""
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(*args)
        times.append(time.perf_counter() - start)
    model.train(was_training)
    return 1000 * statistics.median(times)
