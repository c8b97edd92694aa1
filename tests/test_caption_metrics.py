"""Caption metrics against sacrebleu itself, the COCO script's BLEU, a CIDEr-D written here from the paper,
and a CIDEr-D worked by hand; plus the properties CIDEr-D is built to have."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import sacrebleu
from pycocoevalcap.bleu.bleu import Bleu

from tasks.caption_metrics import caption_metrics, signatures, tokenize

# Already in caption tokens (lowercase, no punctuation), so sacrebleu with tokenize="none" sees what
# caption_metrics sees. Images with 1, 3 and 5 references.
HYPS = ["a dog runs on the grass", "two cats sleep on a red sofa", "a man rides a bike down the street"]
REFS = [["a dog runs on the grass"],
        ["two cats sleep on the sofa", "cats sleeping on a red sofa", "two cats on a couch"],
        ["a man rides a bike down a street", "a person riding a bicycle", "a cyclist on the road",
         "a man on a bike", "someone cycles down the street"]]
# The same references as sacrebleu's streams, written out: STREAMS[k][i] = k-th reference of image i.
STREAMS = [[REFS[0][0], REFS[1][0], REFS[2][0]],
           [None, REFS[1][1], REFS[2][1]],
           [None, REFS[1][2], REFS[2][2]],
           [None, None, REFS[2][3]],
           [None, None, REFS[2][4]]]


def test_bleu_equals_sacrebleu_on_transposed_padded_streams():
    got = caption_metrics(HYPS, REFS)
    assert got["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, STREAMS, tokenize="none").score, abs=1e-9)
    for n in (1, 2, 3, 4):
        want = sacrebleu.BLEU(max_ngram_order=n, tokenize="none").corpus_score(HYPS, STREAMS).score
        assert got[f"bleu{n}"] == pytest.approx(want, abs=1e-9)


def test_naive_ragged_call_scores_only_what_the_shortest_stream_covers():
    # Per-image lists passed as if they were streams: zip() truncates to the shortest "stream" (1 entry),
    # so only the first image is scored, against its own reference: a perfect 100, silently.
    naive = sacrebleu.corpus_bleu(HYPS, REFS, tokenize="none")
    assert naive.sys_len == len(HYPS[0].split()) and naive.score == pytest.approx(100.0)
    assert caption_metrics(HYPS, REFS)["bleu4"] < 90.0


def test_bleu_by_hand():
    copied = caption_metrics([rs[-1] for rs in REFS], REFS)  # each hypothesis is one of its references
    assert all(copied[f"bleu{n}"] == pytest.approx(100.0) for n in (1, 2, 3, 4))
    disjoint = caption_metrics(["zebra giraffe", "purple elephant", "quantum spoon"], REFS)
    assert all(disjoint[f"bleu{n}"] == 0.0 for n in (1, 2, 3, 4))


def test_bleu_equals_the_coco_script_on_the_same_tokens():
    coco, _ = Bleu(4).compute_score(dict(enumerate(REFS)), {i: [h] for i, h in enumerate(HYPS)}, verbose=0)
    got = caption_metrics(HYPS, REFS)
    assert [got[f"bleu{n}"] for n in (1, 2, 3, 4)] == pytest.approx([100 * b for b in coco], abs=1e-6)


def test_tokenization_is_the_coco_convention_for_both_metrics():
    assert tokenize("A man's dog doesn't (really) run, does it?") == "a man 's dog does n't really run does it"
    assert tokenize("A black-and-white photo at 10:30.") == "a black-and-white photo at 10:30"
    raw = caption_metrics(["A dog runs on the grass.", "Two cats sleep on a red sofa!", HYPS[2].upper()],
                          [[r.capitalize() + "." for r in rs] for rs in REFS])
    assert raw == pytest.approx(caption_metrics(HYPS, REFS), abs=1e-12)


def _cider_d(hyps: list[str], refs: list[list[str]], n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D written from Vedantam et al. (2015) and its reference code, for these tests: tf-idf
    n-gram vectors with raw counts as tf, idf = log(#images / #images whose references hold the n-gram)
    (at least one image, for n-grams no reference holds); per order the cosine with the hypothesis side
    clipped, min(h, r) * r, times exp(-(len_h - len_r)^2 / (2 sigma^2)); the mean over orders and over
    references, x10; the mean over images. Lengths are word counts (the reference code counts bigrams,
    one fewer, which gives the same difference for non-empty captions)."""
    def grams(text: str) -> Counter:
        words = text.split()
        return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))

    ref_grams = [[grams(r) for r in rs] for rs in refs]
    df = Counter(g for rs in ref_grams for g in set().union(*rs))

    def vectors(counts: Counter) -> list[dict]:  # one tf-idf vector per order
        out: list[dict] = [{} for _ in range(n)]
        for g, tf in counts.items():
            out[len(g) - 1][g] = tf * (math.log(len(refs)) - math.log(max(1, df[g])))
        return out

    def cosine(h: dict, r: dict) -> float:
        norm = math.sqrt(sum(v * v for v in h.values())) * math.sqrt(sum(v * v for v in r.values()))
        return sum(min(v, r.get(g, 0.0)) * r.get(g, 0.0) for g, v in h.items()) / norm if norm else 0.0

    per_image = []
    for hyp, texts, rgs in zip(hyps, refs, ref_grams):
        hv = vectors(grams(hyp))
        total = 0.0
        for text, rg in zip(texts, rgs):
            penalty = math.exp(-((len(hyp.split()) - len(text.split())) ** 2) / (2 * sigma**2))
            total += penalty * sum(cosine(h, r) for h, r in zip(hv, vectors(rg))) / n
        per_image.append(10 * total / len(texts))
    return sum(per_image) / len(per_image)


def test_cider_d_by_hand():
    # Two images, one reference each. "a" is in both (idf 0); every other n-gram has idf log 2.
    refs = [["a cat sat down"], ["a dog ran off"]]
    # Image 0 is copied: cosine 1 for every order -> 10. Image 1, "a dog": unigram and bigram cosines
    # 1/sqrt(3) (one of three weighted n-grams), none for orders 3 and 4, length 2 vs 4.
    image1 = 10 * (2 / math.sqrt(3)) / 4 * math.exp(-(2**2) / (2 * 6.0**2))
    got = caption_metrics(["a cat sat down", "a dog"], refs)["cider"]
    assert got == pytest.approx((10 + image1) / 2, abs=1e-6)
    assert got == pytest.approx(_cider_d(["a cat sat down", "a dog"], refs), abs=1e-9)


CORPUS_REFS = [
    ["a man riding a wave on top of a surfboard", "a surfer rides a big wave", "a person surfing on a wave"],
    ["two dogs play in a pile of snow"],
    ["a plate of food with broccoli and rice", "broccoli and rice on a white plate", "a plate with food on it",
     "a meal of rice and broccoli", "a white plate holds broccoli beside rice"],
    ["a red bus on a city street", "a double decker bus drives down the street"],
    ["a cat sitting on a laptop keyboard", "a cat lying on a laptop", "a kitten on a computer keyboard",
     "a cat on the keys of a laptop"],
]
CORPUS_HYPS = ["a man riding a wave on a surfboard", "a dog a dog a dog in the snow", "a plate of food",
               "", "a cat sitting on a laptop keyboard on a desk in a room with a cat"]


def test_cider_d_equals_an_independent_implementation():
    want = _cider_d(CORPUS_HYPS, CORPUS_REFS)
    assert caption_metrics(CORPUS_HYPS, CORPUS_REFS)["cider"] == pytest.approx(want, abs=1e-9)
    for keep in ([0, 2, 4], [1, 3]):  # the document frequencies and set size change with the subset
        hyps, refs = [CORPUS_HYPS[i] for i in keep], [CORPUS_REFS[i] for i in keep]
        assert caption_metrics(hyps, refs)["cider"] == pytest.approx(_cider_d(hyps, refs), abs=1e-9)


def _cider_with(first: str) -> float:
    return caption_metrics([first, *CORPUS_HYPS[1:]], CORPUS_REFS)["cider"]


def test_cider_d_rewards_a_better_hypothesis():
    assert _cider_with("a man riding a wave on top of a surfboard") > _cider_with("a man riding a wave")


def test_cider_d_weighs_a_word_every_reference_has_less():
    # "a" is in every reference of every image (idf 0); "surfboard" only in image 0's. The hypotheses
    # have the same length and one correct word each, so only the weight of that word differs.
    assert all("a" in r.split() for rs in CORPUS_REFS for r in rs)
    assert _cider_with("a") < _cider_with("surfboard")
    assert _cider_with("a") == pytest.approx(_cider_with(""), abs=1e-12)  # "a" alone is worth nothing


def test_cider_d_length_penalty_lowers_a_too_long_hypothesis():
    exact = CORPUS_REFS[1][0]
    long = exact + " on a cold day in the park"  # every reference n-gram still there
    got = caption_metrics([CORPUS_HYPS[0], long, *CORPUS_HYPS[2:]], CORPUS_REFS)["cider"]
    hyps_long = [CORPUS_HYPS[0], long, *CORPUS_HYPS[2:]]
    assert got == pytest.approx(_cider_d(hyps_long, CORPUS_REFS), abs=1e-9)
    assert got < _cider_d(hyps_long, CORPUS_REFS, sigma=math.inf)  # the penalty, not only the cosine
    assert got < caption_metrics([CORPUS_HYPS[0], exact, *CORPUS_HYPS[2:]], CORPUS_REFS)["cider"]


def test_cider_d_depends_on_the_scored_set():
    # A single image: every n-gram is in all (one) images, so every idf is 0 and so is the score.
    assert caption_metrics(["two dogs play in the snow"], [["two dogs play in the snow"]])["cider"] == 0.0
    pair = caption_metrics(CORPUS_HYPS[:2], CORPUS_REFS[:2])["cider"]
    # A third image with an empty hypothesis adds 0 to the sum; were the first two images' scores
    # independent of the set, the mean would be 2/3 of the pair's. The idf (set size, document
    # frequencies) changes them.
    triple = caption_metrics([*CORPUS_HYPS[:2], ""], CORPUS_REFS[:3])["cider"]
    assert triple != pytest.approx(2 * pair / 3, rel=1e-3)
    assert triple == pytest.approx(_cider_d([*CORPUS_HYPS[:2], ""], CORPUS_REFS[:3]), abs=1e-9)


def test_empty_hypotheses_score_zero_without_crashing():
    nothing = caption_metrics(["", "  ", "..."], REFS)
    assert nothing == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0, "cider": 0.0}
    some = caption_metrics(["", *HYPS[1:]], REFS)
    assert some["cider"] == pytest.approx(_cider_d(["", *HYPS[1:]], REFS), abs=1e-9)
    assert 0.0 < some["bleu4"] < caption_metrics(HYPS, REFS)["bleu4"]


@pytest.mark.parametrize("hyps, refs", [(HYPS[:2], REFS), ([], []), (HYPS, [REFS[0], [], REFS[2]]),
                                        (HYPS, [REFS[0], ["a cat", "?!"], REFS[2]])])
def test_bad_references_are_refused(hyps, refs):
    with pytest.raises(ValueError):
        caption_metrics(hyps, refs)


def test_signatures_say_how_the_scores_were_made():
    ragged, five = signatures(REFS), signatures([["a b c"] * 5] * 3)
    assert ragged["bleu"] == "nrefs:var|case:lc|eff:no|tok:none|smooth:exp|version:2.6.0"
    assert five["bleu"].startswith("nrefs:5|")
    assert "pycocoevalcap 1.2" in ragged["cider"] and "sigma=6.0" in ragged["cider"]
    assert "lowercase" in ragged["tokenization"]
