"""Text side of the LibriSpeech CTC task: normalisation, the character vocabulary, greedy CTC decoding,
and corpus WER/CER (jiwer).

- `normalize`: what references and hypotheses both go through before scoring, in this order:
  uppercase (`str.upper`; LibriSpeech transcripts are uppercase); every character that is not a letter,
  a digit or an apostrophe (Unicode `\\w` minus "_", plus "'") becomes a space, so "WELL-KNOWN" ->
  "WELL KNOWN"; runs of whitespace collapse to one space; leading and trailing spaces are stripped.
  Apostrophes stay because LibriSpeech words carry them ("DON'T", "JOHN'S").
- `CHARS`: the CTC alphabet, index 0 the blank "<blank>", 1 the word separator written as a plain space
  " " (not wav2vec2's "|", so `decode_ids` is a join and its output is already normalized text), 2 the
  apostrophe, 3..28 "A".."Z". Digits and other letters survive `normalize` but have no symbol: `encode`
  drops them (LibriSpeech transcripts contain neither).
- `ctc_greedy`: best path decoding: argmax per frame within each sequence's length, repeats collapsed,
  then blanks removed (so "A <blank> A" is "AA" and "A A" is "A").
- `wer_cer`: corpus WER and CER in percent, jiwer's `process_words` / `process_characters` over all
  sentences at once: total edits (S + D + I) over total reference words, or characters with the single
  spaces between words counted as characters. This is not the mean of per-sentence rates: a long
  sentence weighs more. WER/CER can exceed 100 (insertions); an empty hypothesis scores 100.
  A reference empty after normalisation is allowed (its hypothesis words count as insertions), but if
  every reference is empty the rates have no denominator and ValueError is raised.
"""
from __future__ import annotations

import re

import jiwer
import torch
from torch import Tensor

BLANK = 0
CHARS = ("<blank>", " ", "'") + tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
_INDEX = {c: i for i, c in enumerate(CHARS) if i != BLANK}
# Not a letter, digit or apostrophe: \w is Unicode letters, digits and "_", so "_" is added back.
_DROPPED = re.compile(r"[^\w']|_")


def normalize(text: str) -> str:
    """Scoring form of a transcript: "Well-known,  don't!" -> "WELL KNOWN DON'T"."""
    return " ".join(_DROPPED.sub(" ", text.upper()).split())


def encode(text: str) -> list[int]:
    """Normalized `text` as CTC label ids (never the blank); characters outside `CHARS` are dropped."""
    return [_INDEX[c] for c in normalize(text) if c in _INDEX]


def decode_ids(ids: list[int]) -> str:
    """Label ids back to text; blanks are skipped (decoded CTC paths have none already)."""
    return "".join(CHARS[i] for i in ids if i != BLANK)


def ctc_greedy(log_probs: Tensor, lengths: Tensor) -> list[list[int]]:
    """Greedy CTC paths of a batch: per sequence, frame argmaxes up to its length, repeats merged,
    blanks removed. log_probs (B, T, C) (any monotone scores do), lengths (B,) frames per sequence."""
    if log_probs.dim() != 3 or lengths.shape != log_probs.shape[:1]:
        raise ValueError(f"want log_probs (B, T, C) and lengths (B,), got {tuple(log_probs.shape)} "
                         f"and {tuple(lengths.shape)}")
    best = log_probs.argmax(dim=-1)  # (B, T)
    frames = torch.arange(best.shape[1], device=best.device)  # (T,)
    inside = frames < lengths.to(best.device)[:, None]  # (B, T)
    changed = torch.ones_like(inside)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]  # a frame starts a new symbol unless it repeats
    keep = inside & changed & (best != BLANK)  # (B, T)
    return [p.tolist() for p in torch.split(best[keep], keep.sum(dim=1).tolist())]


def wer_cer(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus word and character error rates in percent (total edits / total reference units), after
    `normalize` on both sides."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    if not any(refs):
        raise ValueError("no reference words to score against (all references empty after normalize)")
    return {"wer": 100.0 * jiwer.process_words(refs, hyps).wer,
            "cer": 100.0 * jiwer.process_characters(refs, hyps).cer}

