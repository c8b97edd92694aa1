"""Pooling of padded recurrent outputs into one vector per sequence, shared by the classification and
encoder-decoder tasks."""
from __future__ import annotations

import torch
from torch import nn

from baselines.padding import valid_steps


def pool(out: torch.Tensor, lengths: torch.Tensor, how: str, directions: int) -> torch.Tensor:
    """(B, T, D) outputs -> (B, D) features, from the valid positions t < length only."""
    lengths = lengths.to(out.device)
    valid = valid_steps(lengths, out.size(1))  # (B, T)
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


class AttentionPool(nn.Module):
    """Learned attention pooling: a score per step (v . tanh(W h)), softmax over the valid steps, and the
    weighted sum of the outputs; (B, T, D) outputs and (B,) lengths -> (B, D) features."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.project = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = valid_steps(lengths, out.size(1), device=out.device)  # (B, T)
        scores = self.score(torch.tanh(self.project(out))).squeeze(-1)  # (B, T)
        weights = scores.masked_fill(~valid, float("-inf")).softmax(dim=1)  # (B, T), zero past each length
        return (weights.unsqueeze(-1) * out).sum(dim=1)  # (B, D)
