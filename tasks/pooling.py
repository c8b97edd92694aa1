"""Pooling of padded recurrent outputs into one vector per sequence, shared by the classification and
encoder-decoder tasks."""
from __future__ import annotations

import torch


def pool(out: torch.Tensor, lengths: torch.Tensor, how: str, directions: int) -> torch.Tensor:
    """(B, T, D) outputs -> (B, D) features, from the valid positions t < length only."""
    lengths = lengths.to(out.device)
    valid = torch.arange(out.size(1), device=out.device)[None, :] < lengths[:, None]  # (B, T)
    if how == "mean":
        return (out * valid[..., None]).sum(1) / lengths[:, None].to(out.dtype)
    if how == "max":
        return out.masked_fill(~valid[..., None], float("-inf")).amax(1)
    # last: the forward direction ends at the true last step, the backward one at step 0
    rows = torch.arange(out.size(0), device=out.device)
    fwd = out[rows, lengths - 1]  # (B, D)
    if directions == 1:
        return fwd
    half = out.size(2) // 2
    return torch.cat([fwd[:, :half], out[:, 0, half:]], dim=1)
