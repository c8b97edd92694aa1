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

The Transformer reference (`TransformerSeq2Seq`) brings its own decoder: its encoder is the run's backbone
(a ModernBERT encoder on this non-causal task), and `cross_decoder` gives a GPT-2 decoder cross-attending to the
encoder outputs; with `none` it cross-attends to one memory vector, the mean encoder output, which is then
the only path from source to target, as the final state is for the RNN. `build_seq2seq` picks the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.flops import stack_flops
from baselines.padding import valid_steps
from baselines.recurrent import LSTM, make_rnn
from baselines.transformer import params_outside
from suite.config import BackboneConfig
from tasks.attention import Attention
from tasks.base import BackboneFactory
from tasks.pooling import pool
from tasks.subwords import PAD


def build_seq2seq(src_vocab: int, tgt_vocab: int, emb_size: int, attention: str, dropout: float,
                  backbone_cfg: BackboneConfig, make_backbone: BackboneFactory) -> nn.Module:
    """The recurrent encoder-decoder, or the Transformer's where the backbone brings a decoder. The source
    table is made before the encoder, as it always was, so that seeded runs keep their initial weights."""
    src_embed = nn.Embedding(src_vocab, emb_size, padding_idx=PAD)
    encoder = make_backbone(emb_size)
    model = TransformerSeq2Seq if hasattr(encoder, "cross_decoder") else Seq2Seq
    return model(src_embed, encoder, tgt_vocab, emb_size, attention, dropout, backbone_cfg)


def rnn_decoder_params(emb_size: int, attention: str, backbone_cfg: BackboneConfig) -> int:
    """Parameters of the LSTM encoder-decoder outside its embeddings, encoder and output layer (its decoder RNN,
    bridge, attention and attentional layer): what the Transformer's decoder is sized to. Built on the meta
    device, so it costs no memory and no initialisation."""
    return params_outside(lambda: Seq2Seq(nn.Embedding(1, emb_size), LSTM(emb_size, backbone_cfg), 1, emb_size,
                                          attention, 0.0, backbone_cfg), ("src_embed", "tgt_embed", "backbone", "out"))


class Seq2Seq(nn.Module):
    """Source tokens -> target log-probabilities; `backbone` is the encoder (variants and FLOPs find it there)."""

    def __init__(self, src_embed: nn.Embedding, encoder: nn.Module, tgt_vocab: int, emb_size: int, attention: str,
                 dropout: float, backbone_cfg: BackboneConfig):
        super().__init__()
        hidden, layers = backbone_cfg.hidden_size, backbone_cfg.num_layers
        self.src_embed, self.backbone = src_embed, encoder
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
        mask = valid_steps(src_len, src.size(1), device=src.device)  # (B, S)
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

    def decoder_flops(self, source_steps: float) -> int:
        """Per target token: the decoder step, attention over `source_steps` encoder outputs and the output layers."""
        dec = self.decoder
        decoder = stack_flops(self.backbone.cell, dec.input_size, dec.hidden_size, dec.num_layers, 1)
        attention = 0 if self.attention is None else 4 * int(source_steps) * self.backbone.output_size
        return decoder + attention + sum(2 * m.in_features * m.out_features for m in (self.combine, self.out))


class TransformerSeq2Seq(nn.Module):
    """Source tokens -> target log-probabilities through a Transformer encoder and a cross-attending decoder;
    the same interface as Seq2Seq (forward, teacher_forced, init_state, step)."""

    def __init__(self, src_embed: nn.Embedding, encoder: nn.Module, tgt_vocab: int, emb_size: int, attention: str,
                 dropout: float, backbone_cfg: BackboneConfig):
        super().__init__()
        self.src_embed, self.backbone = src_embed, encoder
        self.attention = None if attention == "none" else attention  # the decoder's own multi-head attention
        self.tgt_embed = nn.Embedding(tgt_vocab, emb_size, padding_idx=PAD)
        self.decoder = encoder.cross_decoder(emb_size, encoder.output_size,
                                             rnn_decoder_params(emb_size, attention, backbone_cfg))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(self.decoder.output_size, tgt_vocab)

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: logits (B, T, V) of each next target token given the previous ones."""
        memory, mask = self.encode(src, src_len)
        return self.out(self.drop(self.decoder(self.drop(self.tgt_embed(tgt_in)), memory, mask)))

    def teacher_forced(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """(logits (B, T, V), the last layer's cross-attention over the source (B, T, S), or None without)."""
        if self.attention is None:
            return self(src, src_len, tgt_in), None
        memory, mask = self.encode(src, src_len)
        hidden, weights = self.decoder(self.tgt_embed(tgt_in), memory, mask, attentions=True)
        return self.out(hidden), weights

    def encode(self, src: Tensor, src_len: Tensor) -> tuple[Tensor, Tensor]:
        """The memory the decoder reads, (B, S, D) encoder outputs, or (B, 1, D) their mean for `none`, and its mask."""
        memory, _ = self.backbone(self.drop(self.src_embed(src)), src_len)  # (B, S, D), zeros past each length
        mask = valid_steps(src_len, src.size(1), device=src.device)  # (B, S)
        if self.attention is None:
            return pool(memory, src_len, "mean", 1)[:, None], mask[:, :1]
        return memory, mask

    def init_state(self, src: Tensor, src_len: Tensor) -> dict[str, Tensor]:
        return self.decoder.init_state(src.size(0), *self.encode(src, src_len))

    def step(self, tokens: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One decoding step: previous tokens (N,) -> next-token log-probs (N, V) (suite/decoding.py's Step)."""
        hidden, state = self.decoder.step(self.tgt_embed(tokens), state)  # (N, D)
        return F.log_softmax(self.out(hidden).float(), dim=-1), state

    def decoder_flops(self, source_steps: float) -> int:
        """Per target token: the decoder layers (their nominal attention included) and the output layer."""
        return self.decoder.flops_per_step() + 2 * self.out.in_features * self.out.out_features
