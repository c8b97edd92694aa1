"""The Transformer reference backbone on its own (baselines/transformer.py): size matched
to the LSTM of every task's smoke and standard settings, causality of the decoder and not of the encoder,
the carried context, and the Linear layers the pruning and int8 variants reach."""
from __future__ import annotations

import pytest
import torch
from tiny import task_param
from torch import nn

from baselines.transformer import Transformer, feed_forward_width, heads_for, lstm_params
from suite import compress
from suite.config import BackboneConfig, build_config
from suite.registry import MODELS, TASKS

pytestmark = pytest.mark.usefixtures("cache")


def backbone_inputs(task_name: str, budget: str) -> tuple[list[int], BackboneConfig, bool]:
    """The input sizes the task gives its backbones at a budget (read off its LSTM build), its settings, causal."""
    from tiny import TASK_TINY, prepared

    task_cls = TASKS[task_name]
    cfg = build_config(task_name, "lstm", budget=budget, options_cls=task_cls.Options, presets=task_cls.presets,
                       source="synthetic", device="cpu",
                       overrides=[o for o in TASK_TINY[task_name] if o.startswith("options.synthetic")])
    task, _ = prepared(cfg)
    sizes: list[int] = []
    task.build(lambda n: sizes.append(n) or MODELS["lstm"](n, cfg.backbone))
    return sizes, cfg.backbone, task_cls.causal


@pytest.mark.parametrize("task_name", [task_param(t) for t in TASKS])
@pytest.mark.parametrize("budget", ["smoke", "standard"])
def test_the_size_matches_the_lstm_within_five_percent(task_name: str, budget: str) -> None:
    sizes, cfg, causal = backbone_inputs(task_name, budget)
    for n in sizes:
        model = Transformer(n, cfg, causal=causal)
        lstm = sum(p.numel() for p in nn.LSTM(n, cfg.hidden_size, cfg.num_layers).parameters())
        assert lstm_params(n, cfg) == lstm
        assert abs(model.backbone_params() / lstm - 1) < 0.05, (n, model.describe())
        assert model.describe()["lstm_params"] == lstm


def test_the_shape_follows_the_lstm_settings() -> None:
    cfg = BackboneConfig(hidden_size=650, num_layers=2)
    model = Transformer(650, cfg)
    assert (model.output_size, len(model.net.h), heads_for(650)) == (650, 2, 13)
    assert model.inner == feed_forward_width(650, cfg) and 1000 < model.inner < 1300  # about 2 x width (8d^2/layer)
    assert (heads_for(64), heads_for(16), heads_for(200)) == (2, 1, 5)


def inputs(batch: int = 2, steps: int = 12, size: int = 8) -> torch.Tensor:
    return torch.randn(batch, steps, size, generator=torch.Generator().manual_seed(0))


def test_the_decoder_never_looks_ahead_and_the_encoder_does() -> None:
    cfg = BackboneConfig(hidden_size=16, num_layers=2)
    x, t = inputs(), 7
    changed = x.clone()
    changed[:, t:] += 1.0
    for causal in (True, False):
        torch.manual_seed(0)
        model = Transformer(8, cfg, causal=causal).eval()  # a model built from a config starts in train mode
        with torch.no_grad():
            before, after = model(x)[0], model(changed)[0]
        same_past = torch.allclose(before[:, :t], after[:, :t], atol=1e-6)
        assert same_past == causal
        assert not torch.allclose(before[:, t:], after[:, t:])


def test_the_encoder_ignores_padding_and_zeroes_it() -> None:
    torch.manual_seed(0)
    model = Transformer(8, BackboneConfig(hidden_size=16, num_layers=1), causal=False).eval()
    x, lengths = inputs(), torch.tensor([12, 5])
    padded = x.clone()
    padded[1, 5:] = 9.0  # whatever sits past a length does not count
    with torch.no_grad():
        out, state = model(x, lengths)
        again, _ = model(padded, lengths)
        alone, _ = model(x[1:, :5])
    assert state is None and torch.equal(out[1, 5:], torch.zeros_like(out[1, 5:]))
    assert torch.allclose(out, again, atol=1e-6) and torch.allclose(out[1, :5], alone[0], atol=1e-5)


def test_the_carried_state_is_the_previous_window_as_context() -> None:
    torch.manual_seed(0)
    model = Transformer(8, BackboneConfig(hidden_size=16, num_layers=2)).eval()
    x = inputs(steps=10)
    with torch.no_grad():
        whole, _ = model(x)
        first, state = model(x[:, :4])
        second, _ = model(x[:, 4:], None, state)
    assert torch.allclose(first, whole[:, :4], atol=1e-5)
    assert torch.allclose(second, model(x[:, 4:], None, x[:, :4])[0], atol=1e-6)
    # A window with its predecessor as context is scored as the same tokens inside the longer sequence.
    assert torch.allclose(second, whole[:, 4:][:, :6], atol=1e-5) and model.describe()["context_steps"] == 4


def test_pruning_and_int8_reach_its_linear_layers() -> None:
    from transformers.pytorch_utils import Conv1D

    model = nn.Sequential(Transformer(8, BackboneConfig(hidden_size=32, num_layers=2)), nn.Linear(32, 4))
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    targets = compress.prune_magnitude(model, 0.5)
    assert sum(getattr(m, name).numel() for m, name in targets) == linear  # GPT-2's attention and MLP included
    assert compress.sparsity(model) == pytest.approx(0.5, abs=0.01)
    compress.make_permanent(targets)
    quantized, _ = compress.quantize_dynamic_int8(model)
    kinds = {type(m).__name__ for m in quantized.modules()}
    assert "Linear" in kinds and any("quantized" in type(m).__module__ for m in quantized.modules())


def test_a_sequence_past_the_positions_is_refused() -> None:
    from baselines.transformer import MAX_POSITIONS
    from suite.errors import UserError

    model = Transformer(2, BackboneConfig(hidden_size=16, num_layers=1))
    with pytest.raises(UserError, match=f"longer than the Transformer's {MAX_POSITIONS} positions"):
        model(torch.zeros(1, MAX_POSITIONS + 1, 2))


def test_incremental_decoding_with_the_cache_equals_a_full_recompute() -> None:
    from baselines.transformer import TransformerDecoder
    from suite.decoding import _select

    torch.manual_seed(0)
    decoder = TransformerDecoder(8, 12, BackboneConfig(hidden_size=16, num_layers=2)).eval()
    gen = torch.Generator().manual_seed(1)
    x, memory = torch.randn(3, 6, 8, generator=gen), torch.randn(3, 5, 12, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        full = decoder(x, memory, mask)  # (B, T, D)
        state, steps = decoder.init_state(3, memory, mask), []
        for t in range(x.size(1)):
            out, state = decoder.step(x[:, t], state)
            steps.append(out)
        assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
        hidden = memory.clone()
        hidden[1, 3:] = 9.0  # masked memory positions are never attended to
        assert torch.allclose(decoder(x, hidden, mask), full, atol=1e-6)
        # Beam search reorders rows of the state: the cache follows its rows.
        order = torch.tensor([2, 0, 0])
        moved = _select(state, order)
        nxt = torch.randn(3, 8, generator=gen)
        again, _ = decoder.step(nxt, moved)
        redo = decoder(torch.cat([x[order], nxt[:, None]], 1), memory[order], mask[order])[:, -1]
    assert torch.allclose(again, redo, atol=1e-5)


def test_the_decoder_without_memory_decodes_incrementally_too() -> None:
    from baselines.transformer import TransformerDecoder

    torch.manual_seed(0)
    decoder = TransformerDecoder(8, None, BackboneConfig(hidden_size=16, num_layers=2)).eval()
    assert decoder.memory_proj is None and not decoder.net.config.add_cross_attention
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, state, steps = decoder(x), decoder.init_state(2), []
        for t in range(x.size(1)):
            out, state = decoder.step(x[:, t], state)
            steps.append(out)
    assert state["rows"].shape == (2, 0) and torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


def translation_model(attention: str = "additive"):
    from tiny import prepared, tiny_config

    return prepared(tiny_config("transformer", f"options.attention='{attention}'", task_name="translation"))


def test_translation_decodes_with_the_cache_as_teacher_forcing_scores() -> None:
    """Greedy search through `step` and its cache picks, at every position, the arg-max of the teacher-forced
    logits of the prefix it decoded: an independent full recompute of the same tokens."""
    from suite.decoding import greedy_search
    from tasks.seq2seq import TransformerSeq2Seq
    from tasks.subwords import BOS, EOS

    task, model = translation_model()
    model.eval()
    assert isinstance(model, TransformerSeq2Seq) and model.decoder.cross
    _, (src, lengths, _, _) = next(task.eval_batches("valid"))
    with torch.no_grad():
        found = greedy_search(model.step, model.init_state(src, lengths), BOS, EOS, 8)
        for row, tokens in enumerate(found.tokens[:4]):
            prefix = torch.tensor([[BOS, *tokens]])
            log_probs = model(src[row:row + 1, :lengths[row]], lengths[row:row + 1], prefix)[0].log_softmax(-1)
            expected = [*tokens, EOS] if found.finished[row] else tokens
            assert log_probs[:len(expected)].argmax(-1).tolist() == expected
            score = log_probs[torch.arange(len(expected)), expected].sum()
            assert float(score) == pytest.approx(found.scores[row], abs=1e-4)


def test_translation_attention_is_the_decoders_cross_attention_and_none_leaves_one_vector() -> None:
    task, model = translation_model()
    model.eval()
    _, (src, lengths, tgt_in, _) = next(task.eval_batches("valid"))
    with torch.no_grad():
        logits, weights = model.teacher_forced(src, lengths, tgt_in)
        assert torch.allclose(logits, model(src, lengths, tgt_in), atol=1e-5)  # eager attention, same numbers
    assert weights.shape == (*tgt_in.shape, src.size(1))
    assert torch.allclose(weights.sum(-1), torch.ones(tgt_in.shape), atol=1e-5)
    valid = torch.arange(src.size(1))[None, :] < lengths[:, None]
    assert float(weights.masked_select(~valid[:, None, :].expand_as(weights)).abs().sum()) == 0.0
    _, blind = translation_model("none")
    memory, mask = blind.encode(src, lengths)
    assert memory.shape == (src.size(0), 1, blind.backbone.output_size) and mask.all()
    assert blind.teacher_forced(src, lengths, tgt_in)[1] is None


def test_translation_sizes_match_the_lstm_seq2seq_parts() -> None:
    _, model = translation_model()
    encoder, decoder = model.backbone.describe(), model.decoder.describe()
    assert encoder["kind"] == "modernbert-encoder" and decoder["kind"] == "gpt2-decoder-cross-attention"
    for part in (encoder, decoder):
        assert abs(part["backbone_params"] / part["lstm_params"] - 1) < 0.05, part


@pytest.mark.parametrize("task_name, precision", [("ptb", "bf16"), ("imdb", "fp16"), ("translation", "bf16")])
def test_it_trains_under_the_mixed_precision_policies(task_name: str, precision: str, tmp_path) -> None:
    """The same autocast path as the recurrent models, on the decoder, the encoder and the encoder-decoder."""
    import math

    from tiny import tiny_config

    from suite import experiment

    cfg = tiny_config("transformer", "budget.max_units=300", "budget.max_seconds=None", task_name=task_name,
                      precision=precision)
    record, _ = experiment.run(cfg, tmp_path, progress_bar=False)
    assert record["status"] == "completed" and record["config"]["precision"] == precision
    assert all(math.isfinite(v) for v in record["metrics"]["test"].values())


def test_the_record_carries_both_counts_the_context_and_the_reference_mark(tmp_path) -> None:
    from tiny import tiny_config

    from suite import experiment, variant_run
    from suite.results import load_record

    cfg = tiny_config("transformer", "budget.max_units=400", "budget.max_seconds=None")
    record, path = experiment.run(cfg, tmp_path, progress_bar=False)
    model = load_record(path)["model"]  # read back: the schema check accepts the new fields
    backbone = model["architecture"]["backbone"]
    assert model["reference_model"] is True and backbone["kind"] == "gpt2-decoder"
    assert backbone["lstm_params"] == lstm_params(16, cfg.backbone)
    assert abs(backbone["backbone_params"] / backbone["lstm_params"] - 1) < 0.05
    assert backbone["context_steps"] == cfg.options.bptt  # evaluated with the previous window as context
    assert model["params"] > backbone["backbone_params"]  # the embeddings and the output layer come on top
    # An int8 variant of it keeps the parent's counts (its Linear weights are packed, not parameters).
    variant, _ = variant_run.run_variant("quant-dynamic-int8", 0, record, path, tmp_path, progress_bar=False)
    assert variant["model"]["architecture"] == model["architecture"] and variant["model"]["reference_model"]
    assert variant["variant"]["size_bytes"] < variant["variant"]["parent_size_bytes"]
