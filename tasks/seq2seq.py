"""Encoder-decoder with attention for the translation task (and any later sequence-to-sequence task).

encoder: any backbone (BRNN included) over source embeddings, packed so padding is never computed.
decoder: a unidirectional fused RNN of the encoder's cell type, started from a projection of the
encoder's final states; Luong-style attention after the decoder RNN (attention weights from the
current decoder state, attentional state tanh(W [h; context]) -> vocabulary), with the score
additive (Bahdanau: v^T tanh(W q + U m)) or multiplicative (Luong general: q^T W m), or `none` for the
no-attention reference, where the final encoder state is the only path from source to target.

Attention sits after the RNN, not fed back into its input, so teacher forcing runs the decoder as one
fused kernel over the whole target and attends for all steps in one batched product; decoding calls
`step` once per token through suite/decoding.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.recurrent import make_rnn
from suite.config import BackboneConfig
from tasks.attention import Attention
from tasks.base import BackboneFactory
from tasks.pooling import pool
from tasks.subwords import PAD


class Seq2Seq(nn.Module):
    """Source tokens -> target log-probabilities; `backbone` is the encoder (variants and FLOPs find it there)."""

    def __init__(self, src_vocab: int, tgt_vocab: int, emb_size: int, attention: str, dropout: float,
                 backbone_cfg: BackboneConfig, make_backbone: BackboneFactory):
        super().__init__()
        hidden, layers = backbone_cfg.hidden_size, backbone_cfg.num_layers
        self.src_embed = nn.Embedding(src_vocab, emb_size, padding_idx=PAD)
        self.backbone = make_backbone(emb_size)
        memory = self.backbone.output_size
        self.directions, self.layers, self.hidden = getattr(self.backbone, "directions", 1), layers, hidden
        self.bridge = nn.Linear(memory, hidden * layers)  # final encoder state -> initial decoder state
        self.tgt_embed = nn.Embedding(tgt_vocab, emb_size, padding_idx=PAD)
        self.decoder = make_rnn(self.backbone.cell, emb_size, hidden, layers, backbone_cfg.dropout)
        self.attention = None if attention == "none" else Attention(attention, hidden, memory)
        self.combine = nn.Linear(hidden + (memory if self.attention else 0), hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, tgt_vocab)

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: logits (B, T, V) of each next target token given the previous ones."""
        return self.teacher_forced(src, src_len, tgt_in)[0]

    def teacher_forced(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """(logits (B, T, V), attention weights (B, T, S) or None)."""
        state = self.init_state(src, src_len)
        out, _ = self.decoder(self.drop(self.tgt_embed(tgt_in)), self._rnn_state(state))  # (B, T, H)
        return self._project(out, state)

    def init_state(self, src: Tensor, src_len: Tensor) -> dict[str, Tensor]:
        """Encode once; every entry is batch-first so that beam search can expand and reorder it."""
        memory, _ = self.backbone(self.drop(self.src_embed(src)), src_len)  # (B, S, D), zeros past each length
        mask = torch.arange(src.size(1), device=src.device)[None, :] < src_len.to(src.device)[:, None]  # (B, S)
        last = pool(memory, src_len, "last", self.directions)  # (B, D) both directions' final states
        h = torch.tanh(self.bridge(last)).view(-1, self.layers, self.hidden)  # (B, L, H)
        state = {"h": h, "memory": memory, "mask": mask}
        if self.backbone.cell == "lstm":
            state["c"] = torch.zeros_like(h)
        if self.attention is not None:
            state["keys"] = self.attention.key(memory)  # (B, S, H)
        return state

    def step(self, tokens: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One decoding step: previous tokens (N,) -> next-token log-probs (N, V) (suite/decoding.py's Step)."""
        out, rnn_state = self.decoder(self.tgt_embed(tokens)[:, None], self._rnn_state(state))  # (N, 1, H)
        logits, _ = self._project(out, state)
        if isinstance(rnn_state, tuple):
            state = {**state, "h": rnn_state[0].transpose(0, 1), "c": rnn_state[1].transpose(0, 1)}
        else:
            state = {**state, "h": rnn_state.transpose(0, 1)}
        return F.log_softmax(logits[:, 0].float(), dim=-1), state

    def _rnn_state(self, state: dict[str, Tensor]) -> Tensor | tuple[Tensor, Tensor]:
        """Batch-first (B, L, H) -> the fused RNN's (L, B, H) (and (h, c) for an LSTM)."""
        h = state["h"].transpose(0, 1).contiguous()
        return (h, state["c"].transpose(0, 1).contiguous()) if "c" in state else h

    def _project(self, out: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Decoder outputs (B, T, H) -> logits (B, T, V) through the attentional state."""
        weights = None
        if self.attention is not None:
            context, weights = self.attention(out, state["keys"], state["memory"], state["mask"])  # (B, T, D)
            out = torch.cat([out, context], dim=-1)
        return self.out(self.drop(torch.tanh(self.combine(out)))), weights
