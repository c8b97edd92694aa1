"""Soft attention of decoder states over a memory of encoder outputs or image regions, shared by the
translation and captioning models: additive (Bahdanau: v^T tanh(W q + U m)) or multiplicative (Luong
general: q^T W m), masked to the real memory positions."""
from __future__ import annotations

import torch
from torch import Tensor, nn

ATTENTIONS = ("additive", "multiplicative", "none")


class Attention(nn.Module):
    """Scores of decoder queries (B, T, Q) against encoder memory (B, S, D), masked to the real source."""

    def __init__(self, kind: str, query_size: int, memory_size: int):
        super().__init__()
        self.kind = kind
        if kind == "additive":
            self.key = nn.Linear(memory_size, query_size, bias=False)
            self.query = nn.Linear(query_size, query_size)
            self.v = nn.Linear(query_size, 1, bias=False)
        else:  # multiplicative: q^T W m, W folded into the keys once per sentence
            self.key = nn.Linear(memory_size, query_size, bias=False)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, T, Q), keys (B, S, Q) = self.key(memory), mask (B, S) -> context (B, T, D), weights (B, T, S)."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(self.query(query)[:, :, None] + keys[:, None])).squeeze(-1)  # (B, T, S)
        else:
            scores = query @ keys.transpose(1, 2)  # (B, T, S)
        weights = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
        return weights @ memory, weights
