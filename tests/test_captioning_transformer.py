"""The captioner with the Transformer reference as its backbone (tasks/captioner.py): the backbone's own GPT-2
decoder cross-attends to the image grid, sized to the LSTM captioner's decoder, its key-value-cached decoding
agrees with teacher forcing, its cross-attention weights feed the penalty and the example pictures, the blind
twin ignores the image, and a few optimizer steps lower the loss."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import prepared, tiny_config

import tasks.caption_report
from baselines.transformer import TransformerDecoder
from suite.decoding import beam_search, greedy_search
from tasks.subwords import BOS, EOS

pytestmark = pytest.mark.usefixtures("cache")
WIDE = "backbone.hidden_size=64"  # two attention heads (16 gives one), so the head average is one of several


def built(*overrides: str, model: str = "transformer"):
    """(task, model in eval mode) of the tiny captioning settings."""
    task, net = prepared(tiny_config(model, *overrides, task_name="captioning"))
    return task, net.eval()


def test_the_backbone_is_the_transformers_cross_attention_decoder_and_the_blind_one_has_none() -> None:
    task, model = built()
    assert isinstance(model.backbone, TransformerDecoder) and model.backbone.cross
    assert model.backbone.describe()["kind"] == "gpt2-decoder-cross-attention"
    assert model.attention is None and model.combine is None  # the decoder's cross-attention replaces them
    assert not any(name.startswith(("init_h", "init_c")) for name, _ in model.named_parameters())
    assert task.flops_per_unit(model) == model.backbone.flops_per_step() + 2 * model.out.weight.numel()
    _, blind = built("options.blind=True")
    assert isinstance(blind.backbone, TransformerDecoder) and not blind.backbone.cross
    assert blind.backbone.memory_proj is None and isinstance(blind.image, torch.nn.Identity)


def decoder_side(model: torch.nn.Module) -> int:
    """A captioner's parameters outside its image encoder, word table and output layer."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("image.", "embed.", "out.")))


@pytest.mark.parametrize("blind", [False, True])
@pytest.mark.parametrize("settings", [(), ("backbone.hidden_size=64", "options.emb_size=32"),
                                      ("backbone.hidden_size=256", "options.emb_size=256", "backbone.num_layers=2")])
def test_the_decoder_matches_the_lstm_captioners_within_five_percent(blind: bool, settings: tuple[str, ...]) -> None:
    """Against the LSTM, its initial-state projections, attention and `combine` together: the cross-attention
    does their jobs. (Against the LSTM alone it could not: with 1 layer, cross-attention and the memory
    projection outgrow it before any feed-forward.)"""
    _, model = built(*settings, f"options.blind={blind}")
    _, lstm = built(*settings, f"options.blind={blind}", model="lstm")
    assert abs(model.backbone.backbone_params() / decoder_side(lstm) - 1) < 0.05, model.backbone.describe()
    assert model.backbone.inner > model.backbone.output_size // 2  # a real feed-forward, not one squeezed to 1


@pytest.fixture(scope="module", params=[False, True], ids=["seeing", "blind"])
def trained(request: pytest.FixtureRequest) -> tuple:
    """(task, model in eval mode, held-out loss before, after) of 40 Adam steps through the task's own loss."""
    task, model = prepared(tiny_config("transformer", WIDE, "train.batch_size=16", f"options.blind={request.param}",
                                       task_name="captioning"))
    held = task._batch("valid", np.arange(30))
    with torch.no_grad():
        before = float(task.loss(model.eval(), held, None)[0])
    optimizer = torch.optim.Adam(model.train().parameters(), lr=3e-3)
    for step, batch in zip(range(40), task.train_batches(0)):
        optimizer.zero_grad()
        loss, units, _ = task.loss(model, batch, None)
        loss.backward()
        if step == 0:  # forward used every weight, as DDP requires
            assert units > 0 and all(p.grad is not None for p in model.parameters() if p.requires_grad)
        optimizer.step()
    with torch.no_grad():
        after = float(task.loss(model.eval(), held, None)[0])
    return task, model, before, after


def test_a_few_steps_lower_the_loss(trained: tuple) -> None:
    _, _, before, after = trained
    assert after < 0.8 * before, (before, after)


def test_cached_decoding_gives_the_teacher_forced_tokens_and_log_probs(trained: tuple) -> None:
    """Greedy and beam search step through the key-value cache (beam search reorders it); teacher forcing
    recomputes every prefix at once: the same argmax tokens and the same summed log-probabilities. Every other
    caption is cut one word short of its EOS, so that both finished and unfinished ones are checked."""
    task, model, _, _ = trained
    images = task.inputs["valid"][:6].float()
    with torch.no_grad():
        natural = greedy_search(model.step, model.init_state(images), BOS, EOS, 20)
        assert all(natural.finished) and min(map(len, natural.tokens)) > 0
        limit = torch.tensor([len(t) + (i % 2 == 0) for i, t in enumerate(natural.tokens)])
        greedy = greedy_search(model.step, model.init_state(images), BOS, EOS, limit)
        beam = beam_search(model.step, model.init_state(images), BOS, EOS, limit, beam=3, length_penalty=0.5)
        assert greedy.finished == [i % 2 == 0 for i in range(6)]
        for found in (greedy, beam):
            for i, (tokens, done) in enumerate(zip(found.tokens, found.finished)):
                out = [*tokens, EOS] if done else tokens
                logp = torch.log_softmax(model(images[i:i + 1], torch.tensor([[BOS, *out[:-1]]])), -1)[0]  # (T, V)
                assert found.scores[i] == pytest.approx(float(logp[torch.arange(len(out)), out].sum()), abs=1e-4)
                if found is greedy:
                    assert logp.argmax(-1).tolist() == out


def test_attention_weights_are_distributions_over_the_grid_and_do_not_change_the_logits() -> None:
    task, model = built(WIDE)
    images, tgt_in, _ = next(iter(task.train_batches(0)))
    with torch.no_grad():
        logits, weights = model(images, tgt_in, with_attention=True)  # eager attention, to return the weights
        plain = model(images, tgt_in)  # SDPA
    cells = model.image(images).size(1)
    assert weights.shape == (*tgt_in.shape, cells) and (weights >= 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones(tgt_in.shape), atol=1e-5)
    assert weights.std(-1).mean() > 0  # not uniform: the weights are computed, not a placeholder
    assert torch.allclose(logits, plain, atol=1e-5)
    _, blind = built("options.blind=True")
    assert blind(images, tgt_in, with_attention=True)[1] is None


def test_a_blind_models_captions_ignore_the_image_and_a_seeing_ones_do_not(trained: tuple) -> None:
    task, model, _, _ = trained
    images, other = task.inputs["valid"][:8].float(), task.inputs["test"][:8].float()
    prefix = torch.tensor([[BOS, 4, 6, 12, 14]]).expand(8, -1)
    with torch.no_grad():
        a = greedy_search(model.step, model.init_state(images), BOS, EOS, 12)
        b = greedy_search(model.step, model.init_state(other), BOS, EOS, 12)
        change = float((model(images, prefix) - model(other, prefix)).abs().max())
    if model.blind:
        assert a == b and change == 0.0
    else:  # this young, a seeing model reads the image only faintly (its logits move by about 1e-5)
        assert change > 1e-6


def test_the_example_pictures_show_the_cross_attention_of_each_word(trained: tuple, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A seeing model's picture has one attention map per word; a blind model's, its caption alone."""
    task, model, _, _ = trained
    seen = []
    plot = tasks.caption_report.plot_example
    monkeypatch.setattr(tasks.caption_report, "plot_example", lambda pic, words, maps, path: seen.append(
        (words, maps)) or plot(pic, words, maps, path))
    with torch.no_grad():  # as the run writes its artifacts
        files = tasks.caption_report.save_examples(task, model, tmp_path)
    assert files["example_test_0"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ((words, maps),) = seen
    if model.blind:
        assert maps is None
        return
    assert maps.shape == (len(words), model.image(task.inputs["test"][:1].float()).size(1))
    assert maps.sum(-1) == pytest.approx([1.0] * len(words), abs=1e-5)
