"""Analytic FLOPs per time step for recurrent cells; torch's flop counter cannot see fused RNN kernels.

Convention (per time step, per sequence, following the nn.RNN/GRU/LSTM equations in the PyTorch docs):
- a multiply-accumulate counts 2 FLOPs, so the matmuls W_ih x and W_hh h cost 2 * G * H * (I + H),
  with G gate blocks: 1 for rnn, 3 for gru, 4 for lstm;
- both bias vectors b_ih and b_hh count as adds: 2 * G * H;
- every pointwise op (sigmoid, tanh, multiply, add, 1 - z) counts 1 FLOP per element. Per hidden unit:
    rnn  h' = tanh(W_ih x + b_ih + W_hh h + b_hh):
         ih+hh add 1, tanh 1                                                        = 2
    gru  r, z = sigmoid(...): ih+hh adds 2, sigmoids 2;
         n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): r* 1, add 1, tanh 1;
         h' = (1 - z) * n + z * h: 1-z 1, *n 1, z*h 1, add 1                        = 11
    lstm i, f, o = sigmoid(...), g = tanh(...): ih+hh adds 4, activations 4;
         c' = f * c + i * g: 3; h' = o * tanh(c'): 2                                = 13
- resrnn adds one residual add per element (H per layer from the second on) and, with layer norm,
  7 FLOPs per input element: mean (sum), subtract, square, sum of squares, scale by 1/std, gamma, beta
  (the few scalar ops per row, divide, eps and rsqrt, are left out);
- dropout is not counted (it is off at inference).
"""
from __future__ import annotations

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
POINTWISE_PER_UNIT = {"rnn": 2, "gru": 11, "lstm": 13}
LAYER_NORM_PER_ELEMENT = 7


def cell_matmul_flops(cell: str, input_size: int, hidden_size: int) -> int:
    """W_ih x and W_hh h for one step of one direction: 2 * G * H * (I + H)."""
    return 2 * GATES[cell] * hidden_size * (input_size + hidden_size)


def cell_bias_flops(cell: str, hidden_size: int) -> int:
    """Adding b_ih and b_hh: 2 * G * H."""
    return 2 * GATES[cell] * hidden_size


def cell_pointwise_flops(cell: str, hidden_size: int) -> int:
    """Gate sums, activations and state updates (per-unit counts in the module docstring)."""
    return POINTWISE_PER_UNIT[cell] * hidden_size


def cell_flops(cell: str, input_size: int, hidden_size: int) -> int:
    """All FLOPs of one cell step in one direction."""
    return (cell_matmul_flops(cell, input_size, hidden_size) + cell_bias_flops(cell, hidden_size)
            + cell_pointwise_flops(cell, hidden_size))


def layer_norm_flops(size: int) -> int:
    """LayerNorm with affine parameters over `size` features: 7 * size."""
    return LAYER_NORM_PER_ELEMENT * size


def stack_flops(cell: str, input_size: int, hidden_size: int, num_layers: int, directions: int) -> int:
    """A stacked (optionally bidirectional) nn.RNN/LSTM/GRU: layers after the first read H * directions."""
    sizes = [input_size] + [hidden_size * directions] * (num_layers - 1)
    return directions * sum(cell_flops(cell, size, hidden_size) for size in sizes)


def resrnn_flops(cell: str, input_size: int, hidden_size: int, num_layers: int, layer_norm: bool) -> int:
    """Residual deep RNN: the cells, a residual add from layer 2 on, and the optional pre-norms."""
    sizes = [input_size] + [hidden_size] * (num_layers - 1)
    total = sum(cell_flops(cell, size, hidden_size) for size in sizes) + hidden_size * (num_layers - 1)
    if layer_norm:
        total += sum(layer_norm_flops(size) for size in sizes)
    return total
