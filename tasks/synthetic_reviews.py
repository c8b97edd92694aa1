"""Generated movie reviews whose label a bag of words cannot read off, for the IMDB task's synthetic source.

Each review is a few neutral distractor sentences around one verdict, in one of three kinds, equally likely:

- plain: "the film was good ."                      -> the adjective's polarity
- negated: "the film was not good ."                 -> the opposite polarity
- contrast: "the film was bad . <distractors> but in the end it was good ."  -> the clause after "but"
  (the two clauses have opposite polarity, and either may be negated)

The label is the polarity of the last verdict clause, flipped by a "not" before its adjective. Every
adjective occurs equally often under both labels (a positive one is as likely in a negative review, negated
or as the overruled first clause of a contrast), so a linear model over word counts is at chance; a
recurrent model has to keep the verdict, its negation and the contrast across the distractor sentences,
which makes the dependency long-range.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

POSITIVE = ("good", "great", "superb", "moving", "brilliant", "charming", "funny", "gripping")
NEGATIVE = ("bad", "awful", "dull", "boring", "clumsy", "tedious", "weak", "dreadful")
SUBJECTS = ("the film", "the movie", "this picture", "the story", "the plot", "the acting", "the script")
OPENERS = ("i think", "honestly", "overall", "to me", "frankly", "in short")
DISTRACTORS = (
    "the director also made a {n} about {t} .",
    "it runs for about {k} minutes and was shot in {p} .",
    "i saw it with my {r} on a {d} evening .",
    "the cast includes a {n} and a {n} from {p} .",
    "there is a long scene about {t} in the middle .",
    "the music was written by a {n} from {p} .",
    "it was released on a {d} in {p} .",
)
FILL = {
    "n": ("painter", "teacher", "singer", "sailor", "doctor", "farmer", "writer", "pilot"),
    "t": ("trains", "the sea", "a wedding", "the war", "a small town", "music", "a family", "money"),
    "k": ("ninety", "a hundred", "two hundred", "eighty", "seventy"),
    "p": ("paris", "texas", "rome", "tokyo", "canada", "spain", "ohio", "berlin"),
    "r": ("sister", "brother", "friends", "parents", "cousin", "neighbour"),
    "d": ("monday", "friday", "rainy", "quiet", "sunday", "cold"),
}


@dataclass(frozen=True)
class ReviewSource:
    """Seeded generator of (text, label) reviews; label 1 is positive."""

    seed: int = 0
    min_distractors: int = 2
    max_distractors: int = 5
    """Neutral sentences per review, spread before, between and after the verdict clauses."""

    def sample(self, n: int, stream: int = 0) -> tuple[list[str], list[int]]:
        """`n` reviews from stream `stream` (train and test use different streams of one seed)."""
        rng = random.Random(f"{self.seed}/{stream}")  # str seeds hash deterministically across runs
        texts, labels = [], []
        for _ in range(n):
            text, label = self._review(rng)
            texts.append(text)
            labels.append(label)
        return texts, labels

    def _review(self, rng: random.Random) -> tuple[str, int]:
        label = rng.randrange(2)
        kind = rng.randrange(3)
        sentences = [_distractor(rng) for _ in range(rng.randint(self.min_distractors, self.max_distractors))]
        if kind == 2:  # contrast: an opposite first clause, distractors, then the deciding clause
            first = _clause(rng, 1 - label, rng.random() < 0.5)
            last = "but in the end " + _clause(rng, label, rng.random() < 0.5)
            cut = rng.randint(0, len(sentences) - 2)  # at least one distractor between the two clauses
            gap = rng.randint(cut + 1, len(sentences) - 1)
            sentences = [*sentences[:cut], first, *sentences[cut:gap], last, *sentences[gap:]]
        else:
            sentences.insert(rng.randint(0, len(sentences)), _clause(rng, label, negated=kind == 1))
        return " ".join(sentences), label


def _clause(rng: random.Random, label: int, negated: bool) -> str:
    """A verdict sentence meaning `label`: a negated clause uses an adjective of the opposite polarity."""
    words = POSITIVE if label != negated else NEGATIVE
    opener = rng.choice(OPENERS) + " " if rng.random() < 0.5 else ""
    return f"{opener}{rng.choice(SUBJECTS)} was {'not ' if negated else ''}{rng.choice(words)} ."


def _distractor(rng: random.Random) -> str:
    template = rng.choice(DISTRACTORS)
    return template.format_map(_Filler(rng))


class _Filler(dict):
    """format_map filler: every `{x}` draws a fresh word, so one template yields varied sentences."""

    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng

    def __getitem__(self, key: str) -> str:
        return self.rng.choice(FILL[key])
