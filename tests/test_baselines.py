"""Contract and behaviour tests for the recurrent backbones: every registered recurrent model is covered (the
Transformer reference carries no recurrent state; tests/test_transformer.py holds it to its own contract)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import baselines
from baselines import flops
from suite.config import BackboneConfig
from suite.errors import UserError
from suite.registry import MODELS

B, T, FEAT, H = 3, 6, 5, 4
LENGTHS = torch.tensor([4, 6, 2])  # unsorted on purpose: packing must not need sorted lengths
NAMES = sorted(n for n in MODELS if not getattr(MODELS[n], "reference_model", False))
# Each model with its defaults, plus the cells and options that change the code path.
CASES = [(n, {}) for n in NAMES] + [
    ("brnn", {"cell": "gru"}), ("brnn", {"cell": "rnn"}),
    ("resrnn", {"cell": "gru", "layer_norm": True}), ("resrnn", {"cell": "rnn"}),
]
CASE_IDS = [n + "".join(f"-{k}={v}" for k, v in kw.items()) for n, kw in CASES]
CAUSAL = [(case, i) for case, i in zip(CASES, CASE_IDS) if MODELS[case[0]].causal]


def build(name: str, num_layers: int = 2, seed: int = 0, **kw) -> nn.Module:
    """A small model in eval mode (dropout off) unless a test switches it."""
    torch.manual_seed(seed)
    return MODELS[name](FEAT, BackboneConfig(hidden_size=H, num_layers=num_layers, **kw)).eval()


def tensors(state) -> tuple[Tensor, ...]:
    """h, or the parts of (h, c)."""
    return (state,) if isinstance(state, Tensor) else tuple(state)


def padded_input(seed: int = 1) -> Tensor:
    """Random (B, T, F) with garbage (not zeros) past each length, so ignoring padding is tested."""
    torch.manual_seed(seed)
    return torch.randn(B, T, FEAT)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, with_lengths: bool) -> None:
    model = build(name, dropout=0.25).train()
    dirs = model.output_size // H
    out, state = model(padded_input(), LENGTHS if with_lengths else None)
    assert out.shape == (B, T, H * dirs)
    assert torch.isfinite(out).all()
    parts = tensors(state)
    assert len(parts) == (2 if model.cell == "lstm" else 1)  # nn.LSTM's (h, c), else h
    assert all(p.shape == (2 * dirs, B, H) for p in parts)
    (out.square().sum() + sum(p.square().sum() for p in parts)).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname
        assert torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_packing_matches_each_sequence_alone(name: str, kw: dict) -> None:
    model = build(name, **kw)
    x = padded_input()
    with torch.no_grad():
        out, state = model(x, LENGTHS)
        for b, length in enumerate(LENGTHS.tolist()):
            assert (out[b, length:] == 0).all()
            alone, alone_state = model(x[b:b + 1, :length])
            torch.testing.assert_close(out[b, :length], alone[0], atol=1e-6, rtol=0)
            for part, alone_part in zip(tensors(state), tensors(alone_state)):
                torch.testing.assert_close(part[:, b], alone_part[:, 0], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("name", "kw"), [c for c, _ in CAUSAL], ids=[i for _, i in CAUSAL])
def test_state_carry_equals_one_pass(name: str, kw: dict) -> None:
    model, x, t = build(name, **kw), padded_input(), 2
    with torch.no_grad():
        full, full_state = model(x)
        first, carried = model(x[:, :t])
        second, last_state = model(x[:, t:], state=baselines.detach_state(carried))
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-6, rtol=0)
    for part, full_part in zip(tensors(last_state), tensors(full_state)):
        torch.testing.assert_close(part, full_part, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_causality(name: str) -> None:
    model, x, t = build(name), padded_input(), 3
    changed = x.clone()
    changed[:, t:] = torch.randn(B, T - t, FEAT)
    with torch.no_grad():
        same = torch.equal(model(x)[0][:, :t], model(changed)[0][:, :t])
    assert same == MODELS[name].causal


@pytest.mark.parametrize("name", ["lstm", "brnn", "resrnn"])
def test_lstm_forget_bias_is_one(name: str) -> None:
    model = build(name, num_layers=3)
    lstms = [m for m in model.modules() if isinstance(m, nn.LSTM)]
    biases = [(n, p) for m in lstms for n, p in m.named_parameters() if n.startswith("bias")]
    assert len(biases) == 2 * 3 * model.output_size // H  # ih and hh per layer and direction
    for pname, bias in biases:
        forget = bias[H:2 * H]
        assert torch.equal(forget, torch.full_like(forget, float(pname.startswith("bias_ih")))), pname
        assert bias[:H].abs().max() <= 1 / H ** 0.5  # the other gates keep the default uniform init


def test_resrnn_skip_connection() -> None:
    """Output = layer1(x) + layer2(layer1(x)), computed by hand with resrnn's own layers (packing is
    covered by the packing test, which holds resrnn's packed path to this unpadded one)."""
    model, x = build("resrnn", cell="gru"), padded_input()
    with torch.no_grad():
        out, _ = model(x)
        first, _ = model.layers[0](x)
        second, _ = model.layers[1](first)
    torch.testing.assert_close(out, first + second, atol=1e-6, rtol=0)
    assert not torch.allclose(out, second, atol=1e-3)


def test_resrnn_layer_norm_is_used() -> None:
    model, x = build("resrnn", layer_norm=True), padded_input()
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert [n.normalized_shape for n in norms] == [(FEAT,), (H,)]
    with torch.no_grad():
        for norm in norms:  # non-trivial affine parameters, so skipping a norm would show
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        out, _ = model(x)
        first, _ = model.layers[0](norms[0](x))
        second, _ = model.layers[1](norms[1](first))
        torch.testing.assert_close(out, first + second, atol=1e-6, rtol=0)
        without, _ = model.layers[1](first)
        assert not torch.allclose(out, first + without, atol=1e-3)


FLOP_CASES = [("rnn", {}), ("gru", {}), ("lstm", {}), ("brnn", {}), ("brnn", {"cell": "gru"}),
              ("resrnn", {"cell": "rnn"})]


def _counted_matmul_flops(model: nn.Module) -> int:
    """FlopCounterMode on one explicit step (F.linear) with every layer's and direction's own weights."""
    params = dict(model.named_parameters())
    with FlopCounterMode(display=False) as counter:
        for pname, w_ih in params.items():
            if ".weight_ih" in pname:
                w_hh, b_ih = params[pname.replace("_ih", "_hh")], params[pname.replace("weight", "bias")]
                b_hh = params[pname.replace("weight_ih", "bias_hh")]
                x, h = torch.randn(1, w_ih.shape[1]), torch.randn(1, w_hh.shape[1])
                F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return counter.get_total_flops()


@pytest.mark.parametrize(("name", "kw"), FLOP_CASES, ids=[f"{n}-{kw}" for n, kw in FLOP_CASES])
def test_flops_matmul_part_matches_flop_counter(name: str, kw: dict) -> None:
    model = build(name, num_layers=1, **kw)
    dirs = model.output_size // H
    matmul = dirs * flops.cell_matmul_flops(model.cell, FEAT, H)
    assert _counted_matmul_flops(model) == matmul
    rest = dirs * (flops.cell_bias_flops(model.cell, H) + flops.cell_pointwise_flops(model.cell, H))
    assert model.flops_per_step() == matmul + rest
    if name == "brnn":  # both directions counted
        assert model.flops_per_step() == 2 * build(model.cell, num_layers=1).flops_per_step()


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm", "brnn"])
def test_flops_two_layers_sum(name: str) -> None:
    model = build(name)
    dirs, cell = model.output_size // H, model.cell
    expected = dirs * (flops.cell_flops(cell, FEAT, H) + flops.cell_flops(cell, H * dirs, H))
    assert model.flops_per_step() == expected
    assert _counted_matmul_flops(model) == dirs * (flops.cell_matmul_flops(cell, FEAT, H)
                                                   + flops.cell_matmul_flops(cell, H * dirs, H))


def test_flops_resrnn_adds_residual_and_layer_norm() -> None:
    cells = flops.cell_flops("lstm", FEAT, H) + flops.cell_flops("lstm", H, H)
    assert build("resrnn").flops_per_step() == cells + H
    assert build("resrnn", layer_norm=True).flops_per_step() == cells + H + 7 * (FEAT + H)


def test_cell_flops_by_hand() -> None:
    # lstm, I=3, H=2: matmul 2*4*2*(3+2)=80, biases 2*4*2=16, pointwise 13*2=26
    assert flops.cell_flops("lstm", 3, 2) == 122
    assert flops.cell_flops("gru", 3, 2) == 2 * 3 * 2 * 5 + 2 * 3 * 2 + 11 * 2
    assert flops.cell_flops("rnn", 3, 2) == 2 * 2 * 5 + 2 * 2 + 2 * 2


@pytest.mark.parametrize(("name", "kw", "field"), [
    ("gru", {"cell": "lstm"}, "backbone.cell"),
    ("lstm", {"layer_norm": True}, "backbone.layer_norm"),
    ("brnn", {"layer_norm": True}, "backbone.layer_norm"),
])
def test_contradictions_are_user_errors(name: str, kw: dict, field: str) -> None:
    with pytest.raises(UserError, match=field):
        build(name, **kw)


def test_brnn_is_the_only_non_causal_model_and_doubles_width() -> None:
    assert [n for n in NAMES if not MODELS[n].causal] == ["brnn"]
    assert build("brnn").output_size == 2 * H


def test_detach_state() -> None:
    h = torch.zeros(1, requires_grad=True) * 2
    assert baselines.detach_state(None) is None
    assert not baselines.detach_state(h).requires_grad
    assert not any(p.requires_grad for p in baselines.detach_state((h, h)))
