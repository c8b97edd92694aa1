"""The synthetic translation pair: seeded sampling, verb-final order, case and gender agreement, sizes."""
from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from tasks.synthetic_translation import ADJECTIVES, NOUNS, ParallelSource, translate


def _t(source: str) -> list[str]:
    return translate(source.split())


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    return ParallelSource().sample(2000)


def test_same_seed_and_stream_repeat_and_other_streams_and_seeds_differ() -> None:
    first = ParallelSource(seed=3).sample(50, stream=1)
    assert ParallelSource(seed=3).sample(50, stream=1) == first
    assert ParallelSource(seed=3).sample(50, stream=2)[0] != first[0]
    assert ParallelSource(seed=4).sample(50, stream=1)[0] != first[0]


def test_every_target_is_the_translation_of_its_source(pairs: tuple[list[str], list[str]]) -> None:
    sources, targets = pairs
    assert all(" ".join(_t(s)) == t for s, t in zip(sources, targets))
    assert all(s.endswith(" .") and t.endswith(" .") and s == s.lower() for s, t in zip(sources, targets))


def test_hand_written_sentences_come_out_verb_final() -> None:
    assert _t("the big dog chased the cat with a stick .") == (
        "dor groter vasko mit kom stabor dan mirel jagit .".split()
    )
    # a plural subject with a relative clause: the clause keeps its verb last, both verbs agree in number
    assert _t("the dogs that saw a cat chased the old horse with a stick .") == (
        "di vasko di kan mirel sihun mit kom stabor don alten brenn jagun .".split()
    )
    # a relative clause on the object sits before the main verb, and its own verb agrees with its head
    assert _t("a girl met the boy that liked the books .") == "ka meida des knabo det din bukta mogit treffit .".split()


def test_same_noun_takes_a_different_article_in_each_case() -> None:
    subject, _, with_, dative, _, object_, _, _, _ = _t("the dog saw the dog with the dog .")
    assert with_ == "mit"
    assert len({subject, object_, dative}) == 3
    indefinite = _t("a dog saw a dog with a dog .")
    assert len({indefinite[0], indefinite[3], indefinite[5]}) == 3
    assert {subject, object_, dative}.isdisjoint({indefinite[0], indefinite[3], indefinite[5]})


def test_article_and_adjectives_follow_the_gender_of_the_noun_after_them() -> None:
    one_per_gender = ("dog", "cat", "bird")
    assert len({NOUNS[n][1] for n in one_per_gender}) == 3
    for role in (0, 2):  # subject article, object article
        articles = {_t(f"the {n} saw the {n} .")[role] for n in one_per_gender}
        assert len(articles) == 3
    adjectives = {_t(f"the big {n} saw a cow .")[1] for n in one_per_gender}
    assert len(adjectives) == 3 and all(a.startswith(ADJECTIVES["big"]) for a in adjectives)
    # two adjectives on one noun share its ending; the same adjective differs between subject and object
    _, big, old, _, _, big_object, old_object, _, _, _ = _t("the big old dog saw the big old horse .")
    big_stem, old_stem = ADJECTIVES["big"], ADJECTIVES["old"]
    assert big.removeprefix(big_stem) == old.removeprefix(old_stem)
    assert big_object.removeprefix(big_stem) == old_object.removeprefix(old_stem)
    assert big != big_object


def test_ungrammatical_sentences_are_rejected() -> None:
    for bad in ("dog the chased the cat .", "the dog chased the cat", "a dogs saw the cat .", "the dog saw ."):
        with pytest.raises(ValueError):
            _t(bad)


def test_source_lengths_vary_and_pairs_have_equal_length(pairs: tuple[list[str], list[str]]) -> None:
    sources, targets = pairs
    lengths = [len(s.split()) for s in sources]
    assert min(lengths) <= 6 and max(lengths) >= 14
    assert len(set(lengths)) >= 10
    assert all(len(s.split()) == len(t.split()) for s, t in zip(sources, targets))


def test_vocabularies_are_small(pairs: tuple[list[str], list[str]]) -> None:
    for side in pairs:
        assert 50 < len({w for sentence in side for w in sentence.split()}) < 150


def test_no_monotone_word_by_word_dictionary_reproduces_the_targets(pairs: tuple[list[str], list[str]]) -> None:
    sources, targets = pairs
    seen: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for s, t in zip(sources, targets):
        for a, b in zip(s.split(), t.split()):
            seen[a][b] += 1
    best = {a: counts.most_common(1)[0][0] for a, counts in seen.items()}  # fitted on these very pairs
    reproduced = sum([best[w] for w in s.split()] == t.split() for s, t in zip(sources, targets))
    assert reproduced <= 0.1 * len(sources)


def test_settings_that_contradict_are_rejected() -> None:
    with pytest.raises(ValueError):
        ParallelSource(min_adjectives=3, max_adjectives=1)
    with pytest.raises(ValueError):
        ParallelSource(pp_prob=1.5)
