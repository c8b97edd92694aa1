"""Speech text utilities against independent references: a pure-Python CTC collapse, and a Levenshtein
distance written here, worked through fixed sentences by hand."""
from __future__ import annotations

import pytest
import torch

from tasks.speech_text import BLANK, CHARS, ctc_greedy, decode_ids, encode, normalize, wer_cer


def levenshtein(ref: list, hyp: list) -> int:
    """Minimum substitutions + deletions + insertions turning `ref` into `hyp` (textbook DP)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def collapse(path: list[int]) -> list[int]:
    """CTC best-path rule, one frame at a time: merge repeats, then drop blanks."""
    out, last = [], None
    for s in path:
        if s != last and s != BLANK:
            out.append(s)
        last = s
    return out


def test_normalize_examples():
    assert normalize("  Well-known,\tdon't   stop!\n") == "WELL KNOWN DON'T STOP"
    assert normalize("John's 2 cats.") == "JOHN'S 2 CATS"
    assert normalize("snake_case (x)") == "SNAKE CASE X"
    assert normalize("?!  ...") == ""


def test_vocabulary_layout():
    assert CHARS[BLANK] == "<blank>" and CHARS[1] == " " and CHARS[2] == "'"
    assert CHARS[3:] == tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") and len(CHARS) == 29


def test_encode_decode_round_trip_on_normalized_text():
    for text in ["he said, \"don't go\" -- twice", "CHAPTER ONE", "a"]:
        ids = encode(text)
        assert BLANK not in ids
        assert decode_ids(ids) == normalize(text)
    assert encode("a1 b") == encode("A B") == [3, 1, 4]  # the digit is dropped, the space kept
    assert decode_ids([BLANK, 3, BLANK, 4]) == "AB"


def test_ctc_greedy_matches_pure_python_collapse_and_ignores_padding():
    torch.manual_seed(0)
    B, T, C = 5, 16, 4  # few classes, so repeats and blanks are frequent
    log_probs = torch.randn(B, T, C).log_softmax(-1)
    lengths = torch.tensor([16, 9, 3, 1, 0])
    got = ctc_greedy(log_probs, lengths)
    best = log_probs.argmax(-1).tolist()
    assert got == [collapse(best[b][:lengths[b]]) for b in range(B)]
    padded = log_probs.clone()
    for b in range(B):
        padded[b, lengths[b]:] = torch.randn(T - lengths[b], C)  # frames past the length are noise
    assert ctc_greedy(padded, lengths) == got


def test_ctc_greedy_worked_path():
    path = [3, 3, BLANK, 3, 1, 1, 4, BLANK, BLANK, 4, 4]  # "A A" with a blank between, space, "B B"
    log_probs = torch.nn.functional.one_hot(torch.tensor([path]), len(CHARS)).float().log()
    ids = ctc_greedy(log_probs, torch.tensor([len(path)]))
    assert ids == [[3, 3, 1, 4, 4]] and decode_ids(ids[0]) == "AA BB"


def test_wer_cer_equal_hand_levenshtein():
    ref, hyp = "THE CAT SAT ON THE MAT", "THE CAT SAT ON MAT"
    got = wer_cer([hyp], [ref])
    assert levenshtein(ref.split(), hyp.split()) == 1
    assert got["wer"] == pytest.approx(100 * 1 / 6) and round(got["wer"], 2) == 16.67
    assert got["cer"] == pytest.approx(100 * levenshtein(list(ref), list(hyp)) / len(ref))  # 4 / 22
    assert got["cer"] == pytest.approx(100 * 4 / 22)


def test_wer_is_corpus_level_not_mean_of_sentences():
    refs = ["THE CAT SAT ON THE MAT", "HELLO WORLD"]
    hyps = ["the cat sat on mat", "Hello."]  # normalized before scoring
    per_sentence = [100 * levenshtein(r.split(), normalize(h).split()) / len(r.split())
                    for r, h in zip(refs, hyps)]  # 16.67 and 50.0
    got = wer_cer(hyps, refs)["wer"]
    assert got == pytest.approx(100 * (1 + 1) / (6 + 2))  # 25.0: total edits / total words
    assert sum(per_sentence) / 2 == pytest.approx(100 / 3)  # 33.33: the mean of sentence rates
    chars = sum(len(r) for r in refs)
    edits = sum(levenshtein(list(r), list(normalize(h))) for r, h in zip(refs, hyps))
    assert wer_cer(hyps, refs)["cer"] == pytest.approx(100 * edits / chars)


def test_empty_hypothesis_and_insertions():
    assert wer_cer([""], ["THE CAT SAT"]) == {"wer": 100.0, "cer": 100.0}
    assert wer_cer(["A B C D"], ["A B"])["wer"] == pytest.approx(100.0)  # two insertions over two words
    assert wer_cer(["A", "B C"], ["A", "..."])["wer"] == pytest.approx(200.0)  # empty ref: 2 insertions / 1


def test_wer_cer_rejects_unscoreable_input():
    with pytest.raises(ValueError, match="all references empty"):
        wer_cer(["A"], ["?!"])
    with pytest.raises(ValueError, match="hypotheses but"):
        wer_cer(["A"], ["A", "B"])
