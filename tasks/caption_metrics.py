"""Caption metrics: corpus BLEU-1..4 (sacrebleu) and CIDEr-D (pycocoevalcap), all references per image.

Both metrics see the same tokens, the COCO-caption convention (`tokenize`): lowercased, punctuation
dropped, clitics split off ("man's" -> "man 's"), as the COCO evaluation's Stanford PTBTokenizer +
punctuation filter produce (checked against its jar on awkward captions; it differs on abbreviations
such as "u.s." and on brackets). Published captioning numbers use these tokens, and they keep case and a
trailing period, which COCO references use inconsistently ("A dog runs." / "a dog runs"), from counting.

- `bleu1`..`bleu4`: sacrebleu `BLEU(max_ngram_order=n, tokenize="none", lowercase=True)` (a whitespace
  split of the tokens above; otherwise sacrebleu's defaults: exp smoothing, closest reference length),
  0-100 scale. On these tokens it equals the COCO script's BLEU (pycocoevalcap `Bleu`, x100) to about
  1e-9, except when some n-gram order has no match at all, where the two smooth differently.
  sacrebleu takes references as streams, refs[k][i] = k-th reference of image i, and silently truncates
  ragged streams to the shortest one, so the per-image lists are transposed and padded with None.
- `cider`: CIDEr-D (Vedantam et al. 2015; clipped tf-idf n-grams n=1..4, Gaussian length penalty
  sigma=6, x10, mean over references) from pycocoevalcap's `Cider`, on the scale it returns, where
  published COCO models score about 0.9-1.2 (at most 10: a copy of an image's only reference, of four
  or more words, scores 10). Its document frequencies come from the references of the scored set
  itself, so a set is scored at once and its score depends on the whole set; a single image scores 0.
  METEOR and SPICE are left out: they need Java and downloads.

An empty hypothesis scores 0 CIDEr-D and matches no n-gram (its references still count towards BLEU's
brevity penalty); images without references, or a reference empty after tokenization, raise ValueError.
"""
from __future__ import annotations

import re
from importlib.metadata import version

import sacrebleu
from pycocoevalcap.cider.cider import Cider

BLEU_ORDERS = (1, 2, 3, 4)
# "n't" and the apostrophe clitics the PTB tokenizer splits off ("do n't", "man 's").
_CLITIC = re.compile(r"(?<=[^\W_])(n't|'s|'re|'ve|'ll|'m|'d)\b")
# A clitic, a number with inner "." "," ":" ("3.5", "1,000", "10:30"), a word with inner "-" "'" "/"
# ("black-and-white", "o'clock", "n't", "frisbee/disc"), or any other single symbol.
_TOKEN = re.compile(r"'(?:s|re|ve|ll|m|d)\b|\d+(?:[.,:]\d+)+|[^\W_]+(?:[-'/][^\W_]+)*|\S")
# The COCO script's PUNCTUATIONS, plus the raw characters its Java tokenizer turns into them. Brackets
# are dropped too (the COCO script keeps them as "-lrb-"/"-lsb-" tokens, a side effect of lowercasing).
_DROPPED = frozenset(".?!,:;-'`\"()[]{}")
TOKENIZATION = ("lowercase; punctuation . ? ! , : ; - ' ` \" ( ) [ ] { } dropped; clitics split off "
                "(COCO PTBTokenizer + punctuation filter, regex approximation)")


def tokenize(text: str) -> str:
    """A caption as space-separated COCO-style tokens: "A man's hat." -> "a man 's hat"."""
    text = _CLITIC.sub(r" \1", text.lower())
    return " ".join(t for t in _TOKEN.findall(text) if t not in _DROPPED)


def caption_metrics(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """BLEU-1..4 (0-100) and CIDEr-D (pycocoevalcap scale) of one hypothesis per image against all of
    that image's references; the whole set is scored at once (CIDEr-D's idf depends on it)."""
    hyps = [tokenize(h) for h in hypotheses]
    refs = [[tokenize(r) for r in rs] for rs in references]
    _check(hyps, refs)
    streams = _streams(refs)
    scores = {f"bleu{n}": _bleu(n).corpus_score(hyps, streams).score for n in BLEU_ORDERS}
    gts = dict(enumerate(refs))
    res = {i: [h] for i, h in enumerate(hyps)}  # Cider wants one-element lists under the same keys
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    return scores


def signatures(references: list[list[str]]) -> dict[str, str]:
    """How `caption_metrics` scores against these references, for a results record.

    sacrebleu knows its signature (which includes the reference count, "var" when it differs per image)
    only after scoring, so a stand-in corpus with the same reference counts is scored first. The
    signature does not name the n-gram order: bleuN is BLEU with max_ngram_order=N."""
    bleu = _bleu(4)
    bleu.corpus_score(["a"] * len(references), _streams([["a"] * len(rs) for rs in references]))
    return {"bleu": str(bleu.get_signature()),
            "bleu_orders": "bleuN = sacrebleu BLEU(max_ngram_order=N), N=1..4",
            "cider": f"CIDEr-D, pycocoevalcap {version('pycocoevalcap')} Cider(n=4, sigma=6.0), "
                     "document frequency over the scored set's references",
            "tokenization": TOKENIZATION}


def _bleu(order: int) -> sacrebleu.BLEU:
    """Corpus BLEU up to `order`-grams over already tokenized text (lowercased already: `lowercase=True`
    changes no score, it makes the signature say case:lc)."""
    return sacrebleu.BLEU(max_ngram_order=order, tokenize="none", lowercase=True)


def _streams(refs: list[list[str]]) -> list[list[str | None]]:
    """Per-image reference lists -> sacrebleu's streams, streams[k][i] = k-th reference of image i or None."""
    depth = max(len(rs) for rs in refs)
    return [[rs[k] if k < len(rs) else None for rs in refs] for k in range(depth)]


def _check(hyps: list[str], refs: list[list[str]]) -> None:
    """Reject inputs that would otherwise be scored wrongly or fail deep inside a scorer."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but references for {len(refs)} images")
    if not refs:
        raise ValueError("no images to score")
    for i, rs in enumerate(refs):
        if not rs or not all(rs):
            raise ValueError(f"image {i} has no references or an empty one (after tokenization): {rs!r}")
