"""Which steps of a right-padded batch are real: the one mask that pooling, attention over a source and the
Transformer's padding mask all build from `lengths`."""
from __future__ import annotations

import torch
from torch import Tensor


def valid_steps(lengths: Tensor | None, steps: int, batch: int | None = None,
                device: torch.device | None = None) -> Tensor:
    """(B, T) True at steps t < length, on `device` (default: the lengths'); all True when `lengths` is None
    (then `batch` is needed)."""
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    lengths = lengths.to(device) if device is not None else lengths
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]
