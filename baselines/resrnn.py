"""Residual deep RNN: single-layer fused RNNs stacked with skip connections and optional pre-norm.

Layer 1 maps F -> H; every later layer computes x = x + dropout(layer(norm(x))), so dropout sits on
each residual branch (as many dropout sites as a stacked nn.LSTM has). Variable lengths are packed once
and every layer runs on the PackedSequence; residual add, layer norm and dropout are pointwise, so
they act on `packed.data`. The state has a stacked nn.RNN/GRU/LSTM's format: (L, B, H), or (h, c).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from baselines.flops import resrnn_flops
from baselines.recurrent import DEFAULT_CELL, State, check_options, make_rnn, pack, unpack
from suite.config import BackboneConfig
from suite.registry import register_model

Seq = Tensor | PackedSequence


def _data(seq: Seq) -> Tensor:
    """The values of a padded batch or a packed one ((N, F) for packed)."""
    return seq.data if isinstance(seq, PackedSequence) else seq


def _with_data(seq: Seq, data: Tensor) -> Seq:
    """`seq` with its values replaced, keeping the packing layout."""
    return seq._replace(data=data) if isinstance(seq, PackedSequence) else data


def _split_state(state: State, num_layers: int) -> list:
    """Stacked (L, B, H) state (or (h, c)) -> one (1, B, H) state per layer."""
    if state is None:
        return [None] * num_layers
    if isinstance(state, Tensor):
        return list(state.split(1))
    return list(zip(*(part.split(1) for part in state)))


def _join_state(states: list) -> State:
    """Per-layer states -> the stacked format of a multi-layer nn.RNN/GRU/LSTM."""
    if isinstance(states[0], Tensor):
        return torch.cat(states)
    return tuple(torch.cat(parts) for parts in zip(*states))


@register_model("resrnn")
class ResRNN(nn.Module):
    """Residual deep RNN (cell from backbone.cell, default lstm; LSTM layers use the forget-bias-1 init)."""

    causal = True

    def __init__(self, input_size: int, cfg: BackboneConfig):
        super().__init__()
        check_options(self.name, cfg, takes_cell=True, takes_layer_norm=True)
        self.cell = cfg.cell or DEFAULT_CELL
        self.input_size, self.hidden_size, self.layer_norm = input_size, cfg.hidden_size, cfg.layer_norm
        self.output_size = cfg.hidden_size
        sizes = [input_size] + [cfg.hidden_size] * (cfg.num_layers - 1)
        self.layers = nn.ModuleList(make_rnn(self.cell, size, cfg.hidden_size) for size in sizes)
        self.norms = nn.ModuleList(nn.LayerNorm(size) if cfg.layer_norm else nn.Identity() for size in sizes)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, lengths: Tensor | None = None, state: State = None) -> tuple[Tensor, State]:
        """x (B, T, F) -> outputs (B, T, H), final state at each sequence's true last step."""
        seq = x if lengths is None else pack(x, lengths)
        finals = []
        for i, (norm, rnn, layer_state) in enumerate(zip(self.norms, self.layers,
                                                         _split_state(state, len(self.layers)))):
            out, layer_state = rnn(_with_data(seq, norm(_data(seq))), layer_state)
            # Layer 1 changes the width (F -> H), so the skip starts at layer 2.
            hidden = _data(out) if i == 0 else _data(seq) + self.drop(_data(out))  # (B, T, H) or (N, H)
            seq = _with_data(out, hidden)
            finals.append(layer_state)
        outputs = seq if lengths is None else unpack(seq, x.size(1))
        return outputs, _join_state(finals)

    def flops_per_step(self) -> int:
        """Analytic FLOPs per time step per sequence (see baselines.flops)."""
        return resrnn_flops(self.cell, self.input_size, self.hidden_size, len(self.layers), self.layer_norm)
