"""Plain stacked RNN, LSTM, GRU and bidirectional RNN on the fused kernels (nn.RNN/LSTM/GRU).

Every backbone takes `(input_size, cfg)` and runs
`forward(x (B, T, F), lengths (B,) | None, state) -> (outputs (B, T, H * dirs), state)`; the state is
nn.RNN/GRU's `h` or nn.LSTM's `(h, c)`, each (num_layers * dirs, B, H).

Init: weights and biases keep PyTorch's default uniform(-1/sqrt(H), 1/sqrt(H)); every LSTM layer and
direction gets a forget-gate bias of 1 in total (gate order i, f, g, o: bias_ih[H:2H] = 1,
bias_hh[H:2H] = 0), so early training does not forget through the cell state.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from baselines.flops import stack_flops
from suite.config import BackboneConfig
from suite.errors import UserError
from suite.registry import register_model

State = Tensor | tuple[Tensor, ...] | None
CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
DEFAULT_CELL = "lstm"


def check_options(name: str, cfg: BackboneConfig, *, takes_cell: bool, takes_layer_norm: bool) -> None:
    """Reject backbone settings the chosen model would silently ignore."""
    if cfg.cell is not None and not takes_cell:
        raise UserError(f"backbone.cell applies only to brnn and resrnn; unset it for {name} "
                        f"(its cell is fixed) or choose --model brnn or resrnn")
    if cfg.layer_norm and not takes_layer_norm:
        raise UserError(f"backbone.layer_norm applies only to resrnn; set it to False for {name} "
                        f"or choose --model resrnn")


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
             bidirectional: bool = False) -> nn.RNNBase:
    """A batch-first fused nn.RNN (tanh) / nn.LSTM / nn.GRU with the documented init."""
    module = CELLS[cell](input_size, hidden_size, num_layers, batch_first=True, dropout=dropout,
                         bidirectional=bidirectional)
    if cell == "lstm":
        init_forget_bias(module)
    return module


def init_forget_bias(lstm: nn.LSTM) -> None:
    """Forget-gate bias 1 in every layer and direction (gate order i, f, g, o)."""
    hidden = lstm.hidden_size
    with torch.no_grad():
        for name, param in lstm.named_parameters():
            if name.startswith("bias_ih"):
                param[hidden:2 * hidden].fill_(1.0)
            elif name.startswith("bias_hh"):
                param[hidden:2 * hidden].zero_()


def pack(x: Tensor, lengths: Tensor) -> PackedSequence:
    """Pack a padded (B, T, F) batch; any order of lengths is accepted."""
    return pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)


def unpack(packed: PackedSequence, total_length: int) -> Tensor:
    """Back to (B, T, ...) with zeros at padded positions and the input's original T."""
    return pad_packed_sequence(packed, batch_first=True, total_length=total_length)[0]


def detach_state(state: State) -> State:
    """Cut the autograd graph at a carried state (truncated BPTT's repackage_hidden)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return tuple(detach_state(s) for s in state)


class FusedRNN(nn.Module):
    """A stack of `num_layers` fused layers with dropout between them; subclasses pick cell and direction."""

    name: str  # set by @register_model
    cell = DEFAULT_CELL
    takes_cell = False
    bidirectional = False
    causal = True

    def __init__(self, input_size: int, cfg: BackboneConfig):
        super().__init__()
        check_options(self.name, cfg, takes_cell=self.takes_cell, takes_layer_norm=False)
        self.cell = cfg.cell or self.cell
        self.input_size, self.hidden_size, self.num_layers = input_size, cfg.hidden_size, cfg.num_layers
        self.directions = 2 if self.bidirectional else 1
        self.output_size = cfg.hidden_size * self.directions
        self.rnn = make_rnn(self.cell, input_size, cfg.hidden_size, cfg.num_layers, cfg.dropout,
                            self.bidirectional)

    def forward(self, x: Tensor, lengths: Tensor | None = None, state: State = None) -> tuple[Tensor, State]:
        """x (B, T, F) -> outputs (B, T, H * dirs), final state at each sequence's true last step."""
        if lengths is None:
            return self.rnn(x, state)
        packed, state = self.rnn(pack(x, lengths), state)
        return unpack(packed, x.size(1)), state  # (B, T, H * dirs), zeros past each length

    def flops_per_step(self) -> int:
        """Analytic FLOPs per time step per sequence, all layers and directions (see baselines.flops)."""
        return stack_flops(self.cell, self.input_size, self.hidden_size, self.num_layers, self.directions)


@register_model("rnn")
class RNN(FusedRNN):
    """Elman RNN with tanh."""

    cell = "rnn"


@register_model("lstm")
class LSTM(FusedRNN):
    """Stacked LSTM."""

    cell = "lstm"


@register_model("gru")
class GRU(FusedRNN):
    """Stacked GRU."""

    cell = "gru"


@register_model("brnn")
class BRNN(FusedRNN):
    """Bidirectional stacked RNN (cell from backbone.cell, default lstm); it sees the future, so not causal."""

    takes_cell = True
    bidirectional = True
    causal = False
