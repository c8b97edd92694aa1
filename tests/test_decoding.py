"""Greedy and beam search against a real tiny GRU decoder, scored again by teacher forcing."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from suite.decoding import Hypotheses, beam_search, decode, greedy_search

EOS = 0


class TinyDecoder(nn.Module):
    """Embedding + GRUCell + Linear over `vocab` output tokens (EOS = 0), BOS = `vocab` (input only),
    conditioned on a per-sentence memory vector that every step reads again."""

    def __init__(self, vocab: int = 12, hidden: int = 32, memory: int = 8, scale: float = 3.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab, self.bos = vocab, vocab
        self.embed = nn.Embedding(vocab + 1, hidden)
        self.init_h = nn.Linear(memory, hidden)
        self.cell = nn.GRUCell(hidden + memory, hidden)
        self.out = nn.Linear(hidden + memory, vocab)
        with torch.no_grad():  # lively recurrence and peaky outputs: EOS within max_len for some sentences only
            self.cell.weight_ih.mul_(3.0)
            self.cell.weight_hh.mul_(3.0)
            self.out.weight.mul_(scale)
            self.out.bias.normal_(0.0, 0.3)
        self.memory = memory

    @torch.no_grad()
    def init_state(self, batch: int, seed: int = 1) -> dict[str, Tensor]:
        memory = torch.randn(batch, self.memory, generator=torch.Generator().manual_seed(seed))  # (B, D)
        return {"h": torch.tanh(self.init_h(memory)), "memory": memory}

    @torch.no_grad()
    def step(self, tokens: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.cell(torch.cat([self.embed(tokens), state["memory"]], dim=-1), state["h"])  # (N, H)
        logits = self.out(torch.cat([h, state["memory"]], dim=-1))  # (N, V)
        return logits.log_softmax(dim=-1), {"h": h, "memory": state["memory"]}


def row(state: dict[str, Tensor], i: int) -> dict[str, Tensor]:
    return {key: value[i : i + 1] for key, value in state.items()}


def teacher_forced(step, state, bos: int, tokens: list[int], finished: bool) -> float:
    """Log-probability of `tokens` (plus EOS when finished) for a batch-1 state, summed in float32."""
    targets = tokens + [EOS] if finished else tokens
    total, previous = torch.zeros(()), bos
    for target in targets:
        log_probs, state = step(torch.tensor([previous]), state)
        total += log_probs[0, target].float()
        previous = target
    return float(total)


def lp(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


@pytest.fixture(scope="module")
def model() -> TinyDecoder:
    return TinyDecoder()


@pytest.fixture(scope="module")
def batch(model: TinyDecoder) -> tuple[dict[str, Tensor], Tensor]:
    max_len = torch.tensor([6, 2, 8, 3, 7, 1, 5, 8, 4, 6, 0, 8, 2, 7, 5, 6])  # (B,)
    return model.init_state(max_len.numel()), max_len


def check_scores(model: TinyDecoder, state: dict[str, Tensor], hyps: Hypotheses) -> None:
    for i, (tokens, score, finished) in enumerate(zip(hyps.tokens, hyps.scores, hyps.finished)):
        expected = teacher_forced(model.step, row(state, i), model.bos, tokens, finished)
        assert score == pytest.approx(expected, abs=1e-4), i


def test_beam_of_one_equals_greedy(model, batch):
    state, max_len = batch
    greedy = greedy_search(model.step, state, model.bos, EOS, max_len)
    assert any(greedy.finished) and not all(greedy.finished)  # both endings occur in this batch
    for alpha in (0.0, 1.0):
        assert beam_search(model.step, state, model.bos, EOS, max_len, beam=1, length_penalty=alpha) == greedy
    assert decode(model.step, state, model.bos, EOS, max_len) == greedy


@pytest.mark.parametrize("beam, alpha", [(1, 0.0), (4, 0.0), (4, 1.0)])
def test_scores_match_teacher_forcing(model, batch, beam, alpha):
    state, max_len = batch
    hyps = decode(model.step, state, model.bos, EOS, max_len, beam=beam, length_penalty=alpha)
    assert any(hyps.finished) and not all(hyps.finished)
    check_scores(model, state, hyps)


def test_max_len_is_respected_per_sentence(model, batch):
    state, max_len = batch
    for beam in (1, 4):
        hyps = decode(model.step, state, model.bos, EOS, max_len, beam=beam)
        for tokens, finished, limit in zip(hyps.tokens, hyps.finished, max_len.tolist()):
            assert EOS not in tokens
            # EOS counts against max_len; a hypothesis that fills max_len without it stops unfinished.
            assert len(tokens) <= limit - 1 if finished else len(tokens) == limit
        assert hyps.tokens[10] == [] and hyps.scores[10] == 0.0 and not hyps.finished[10]  # max_len 0
        assert len(hyps.tokens[5]) <= 1 and len(hyps.tokens[1]) <= 2


def test_beam_scores_at_least_greedy_on_most_sentences(model, batch):
    state, max_len = batch
    greedy = greedy_search(model.step, state, model.bos, EOS, max_len)
    wide = beam_search(model.step, state, model.bos, EOS, max_len, beam=4)
    better = [b >= g - 1e-6 for b, g in zip(wide.scores, greedy.scores)]
    assert sum(better) > len(better) / 2
    assert sum(wide.scores) > sum(greedy.scores)


def test_beam_finds_what_greedy_misses():
    """Bigram model over EOS, a, b (BOS = 3): greedy takes `a` (0.6) then EOS (0.5) for 0.30, while
    `b` (0.4) then EOS (0.9) has 0.36."""
    table = torch.tensor([[0.10, 0.45, 0.45],   # after EOS (never used)
                          [0.50, 0.30, 0.20],   # after a
                          [0.90, 0.05, 0.05],   # after b
                          [0.001, 0.599, 0.40]]).log()  # after BOS

    def step(tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return table[tokens], state

    state = torch.zeros(1, 1)  # stateless, but the batch size comes from the state
    greedy = greedy_search(step, state, 3, EOS, 5)
    wide = beam_search(step, state, 3, EOS, 5, beam=2)
    assert greedy.tokens == [[1]] and greedy.scores[0] == pytest.approx(math.log(0.599 * 0.5), abs=1e-6)
    assert wide.tokens == [[2]] and wide.scores[0] == pytest.approx(math.log(0.40 * 0.9), abs=1e-6)
    assert wide.finished == greedy.finished == [True]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_returns_the_true_argmax(alpha):
    """With V = 4 and max_len 3 there are 1 + 3 + 9 finished and 27 unfinished hypotheses: a beam of 40
    holds them all, so it must return the best of all by score / lp(len)."""
    model = TinyDecoder(vocab=4, scale=1.5, seed=3)
    state = model.init_state(5, seed=4)
    for i in range(5):
        candidates = [(list(seq), True) for n in range(3) for seq in itertools.product(range(1, 4), repeat=n)]
        candidates += [(list(seq), False) for seq in itertools.product(range(1, 4), repeat=3)]
        assert len(candidates) == 40

        def norm(tokens: list[int], finished: bool, i: int = i) -> float:
            score = teacher_forced(model.step, row(state, i), model.bos, tokens, finished)
            return score / lp(len(tokens) + finished, alpha)

        expected = max(candidates, key=lambda c: norm(*c))
        hyps = beam_search(model.step, row(state, i), model.bos, EOS, 3, beam=40, length_penalty=alpha)
        assert (hyps.tokens[0], hyps.finished[0]) == expected
    found = beam_search(model.step, state, model.bos, EOS, 3, beam=40, length_penalty=alpha)
    check_scores(model, state, found)


@pytest.mark.parametrize("beam", [1, 4])
def test_sentences_decode_the_same_alone_and_in_a_batch(model, batch, beam):
    state, max_len = batch
    together = decode(model.step, state, model.bos, EOS, max_len, beam=beam, length_penalty=0.6)
    for i in range(max_len.numel()):
        alone = decode(model.step, row(state, i), model.bos, EOS, int(max_len[i]), beam=beam, length_penalty=0.6)
        assert alone.tokens[0] == together.tokens[i] and alone.finished[0] == together.finished[i]
        assert alone.scores[0] == pytest.approx(together.scores[i], abs=1e-5)


def test_bf16_log_probs_are_accumulated_in_float32(model, batch):
    state, max_len = batch

    def step(tokens: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        log_probs, state = model.step(tokens, state)
        return log_probs.bfloat16(), state

    hyps = beam_search(step, state, model.bos, EOS, max_len, beam=3)
    for i, (tokens, score, finished) in enumerate(zip(hyps.tokens, hyps.scores, hyps.finished)):
        assert score == pytest.approx(teacher_forced(step, row(state, i), model.bos, tokens, finished), abs=1e-4)


def test_max_len_of_the_wrong_shape_is_refused(model):
    with pytest.raises(ValueError, match="max_len"):
        greedy_search(model.step, model.init_state(3), model.bos, EOS, torch.tensor([1, 2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_result(model, batch):
    state, max_len = batch
    cpu = decode(model.step, state, model.bos, EOS, max_len, beam=4)
    gpu_model = TinyDecoder().cuda()
    gpu_state = {key: value.cuda() for key, value in state.items()}
    gpu = decode(gpu_model.step, gpu_state, gpu_model.bos, EOS, max_len.cuda(), beam=4)
    assert gpu.tokens == cpu.tokens and gpu.finished == cpu.finished
    assert gpu.scores == pytest.approx(cpu.scores, abs=1e-4)
