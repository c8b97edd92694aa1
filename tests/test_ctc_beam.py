"""CTC output units and beam search against independent computations: a hand-made ARPA model whose sentence
log10-probabilities the test adds up itself, and emissions whose best alignment's score is known exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from suite.errors import DataError
from tasks.ctc_beam import CTCBeamSearch, arpa_words, lexicon_lines
from tasks.speech_text import CHARS, ctc_greedy, encode
from tasks.speech_units import Characters, WordPieces
from tasks.subwords import PAD

pytestmark = pytest.mark.usefixtures("cache")

# log10 probabilities and backoffs of a bigram model over A, CAT, CAP (CAP is rare).
UNIGRAMS = {"<s>": (-1.0, -0.3), "</s>": (-1.0, 0.0), "A": (-0.5, -0.3), "CAT": (-0.3, -0.3), "CAP": (-2.0, -0.3),
            "well-known": (-3.0, 0.0)}
BIGRAMS = {("<s>", "A"): -0.1, ("A", "CAT"): -0.1, ("CAT", "</s>"): -0.1}


def write_arpa(path: Path) -> Path:
    lines = ["", "\\data\\", f"ngram 1={len(UNIGRAMS)}", f"ngram 2={len(BIGRAMS)}", "", "\\1-grams:"]
    lines += [f"{p}\t{w}\t{b}" if w != "</s>" else f"{p}\t{w}" for w, (p, b) in UNIGRAMS.items()]
    lines += ["", "\\2-grams:"] + [f"{p}\t{a} {b}" for (a, b), p in BIGRAMS.items()] + ["", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return path


def log10_sentence(words: list[str]) -> float:
    """Bigram backoff by hand: P(w | v) is the bigram if listed, else backoff(v) + P(w)."""
    total, prev = 0.0, "<s>"
    for w in [*words, "</s>"]:
        total += BIGRAMS[(prev, w)] if (prev, w) in BIGRAMS else UNIGRAMS[prev][1] + UNIGRAMS[w][0]
        prev = w
    return total


def emissions(symbols: list[int], size: int, doubt: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Log-probs (1, T, size) that put nearly all mass on one symbol per frame; `doubt` = (frame, a, b) splits
    that frame between a (more likely) and b."""
    x = torch.full((len(symbols), size), -12.0)
    x[torch.arange(len(symbols)), torch.tensor(symbols)] = 0.0
    if doubt is not None:
        t, a, b = doubt
        x[t, a], x[t, b] = -0.6, -0.8
    return x.log_softmax(-1)[None].contiguous()


def test_characters_spell_words_and_decode_paths() -> None:
    units = Characters()
    assert units.size == len(CHARS) and units.tokens[:3] == ["-", "|", "'"]
    assert units.spell("DON'T") == ["D", "O", "N", "'", "T", "|"]
    assert units.decode(units.encode("a cat")) == "A CAT"


def test_word_pieces_round_trip_with_the_blank_at_zero(tmp_path: Path) -> None:
    units = WordPieces.train(["THE CAT SAT", "THE MAT", "A CAT"] * 10, 48, "d1")
    assert units.tokens[PAD] == units.blank == "<pad>" and "▁" in units.tokens
    assert set(CHARS[2:]) <= set(units.tokens)  # every letter, even ones training never saw (Z, Q, ...)
    for text in ["THE CAT SAT", "ZEBRA QUIZ", "don't"]:
        ids = units.encode(text)
        assert 0 not in ids and 1 not in ids  # neither blank nor <unk>
        assert units.decode(ids) == text.upper()
    assert len(units.encode("THE CAT SAT")) < len(encode("THE CAT SAT"))  # frequent words are fewer symbols
    assert "".join(units.spell("CATS")).replace("▁", "") == "CATS" and units.spell("CATS")[0].startswith("▁")


def test_arpa_vocabulary_and_lexicon(tmp_path: Path) -> None:
    words = arpa_words(write_arpa(tmp_path / "lm.arpa"))
    assert words == ["A", "CAT", "CAP", "well-known"]
    assert lexicon_lines(words, Characters()) == ["A A |", "CAT C A T |", "CAP C A P |"]  # well-known: two words


@pytest.mark.parametrize("content, message", [
    ("garbage\n", r"does not start with \\data\\"),
    ("\\data\\\nngram 1=0\n\n\\1-grams:\n\\end\\\n", "has no unigrams"),
])
def test_a_file_that_is_not_an_arpa_model_is_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.arpa").write_text(content)
    with pytest.raises(DataError, match=message):
        CTCBeamSearch(Characters(), 4, tmp_path / "bad.arpa")


def test_kenlm_parse_errors_become_one_line(tmp_path: Path) -> None:
    text = write_arpa(tmp_path / "lm.arpa").read_text().replace("ngram 2=3", "ngram 2=7")  # counts disagree
    (tmp_path / "bad.arpa").write_text(text)
    with pytest.raises(DataError, match=r"KenLM cannot load .*bad\.arpa .*give a valid ARPA file") as err:
        CTCBeamSearch(Characters(), 4, tmp_path / "bad.arpa")
    assert "\n" not in str(err.value) and "lm::" not in str(err.value)  # KenLM's reason, not its C++ location


def test_the_language_model_outweighs_a_doubtful_frame_by_its_exact_score(tmp_path: Path) -> None:
    units, lm = Characters(), write_arpa(tmp_path / "lm.arpa")
    # Lexicon spellings end at the boundary ("CAT C A T |"), so the speech ends with one; the acoustics
    # prefer P over T at frame 4, by 0.2 nats.
    path = [*encode("A CAP"), 1]  # 1: the space, flashlight's "|"
    x = emissions(path, units.size, doubt=(4, encode("P")[0], encode("T")[0]))
    lengths = torch.tensor([len(path)])
    assert CTCBeamSearch(units, 8)(x, lengths) == ["A CAP"]  # no LM: the acoustics decide
    weight, word_score = 2.0, -0.5
    search = CTCBeamSearch(units, 8, lm, lm_weight=weight, word_score=word_score)
    assert search(x, lengths) == ["A CAT"]
    best = search.decoder(x, lengths.int())[0][0]
    alignment = torch.tensor([*encode("A CAT"), 1])  # the one alignment that is not exp(-12)-unlikely
    acoustic = x[0, torch.arange(len(path)), alignment].sum().item()
    expected = acoustic + weight * log10_sentence(["A", "CAT"]) + word_score * 2
    assert best.score == pytest.approx(expected, abs=1e-4)
    assert CTCBeamSearch(units, 8, lm, lm_weight=0.0)(x, lengths) == ["A CAP"]  # the weight is what flips it


def test_word_pieces_beam_search_with_and_without_a_language_model(tmp_path: Path) -> None:
    units = WordPieces.train(["A CAT", "A CAP", "A MAT"] * 10, 40, "d2")
    cap, cat = units.encode("A CAP"), units.encode("A CAT")
    assert len(cap) == len(cat) == 2 and cap[0] == cat[0]  # ▁A, then one piece for the word
    path = [cap[0], 0, cap[1], 0]
    x = emissions(path, units.size, doubt=(2, cap[1], cat[1]))
    lengths = torch.tensor([len(path)])
    assert CTCBeamSearch(units, 8)(x, lengths) == ["A CAP"] == [units.decode(ctc_greedy(x, lengths)[0])]
    assert CTCBeamSearch(units, 8, write_arpa(tmp_path / "lm.arpa"))(x, lengths) == ["A CAT"]
