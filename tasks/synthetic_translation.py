"""A synthetic language pair for machine translation whose word order and agreement need attention.

The source is an English-like SVO language; the target an invented verb-final language with
German-like morphology:

- order: subject, then the "with" phrase, then the object, then the verb. The verb moves over the
  object and the "with" phrase to the end, and a relative clause ends in its own verb, so verbs stack.
- case: articles and adjective endings mark nominative (subject), accusative (object) and dative
  (after "with"), and the article marks each noun's fixed gender, so translating "the" needs both the
  noun after it and that noun's role.
- agreement: a verb agrees in number with its subject, which the English past tense does not show,
  so the last target word depends on the first noun.

    source: the dogs that saw a cat chased the old horse with a stick .
    target: di vasko di kan mirel sihun mit kom stabor don alten brenn jagun .

Every source word maps to exactly one target word, so a pair has equal length; only the order and the
forms differ. `translate` is the rule and `ParallelSource` draws source sentences and applies it; the
tables are fixed in code, so a seed changes which sentences are drawn, never the language.
"""
from __future__ import annotations

import random
from collections.abc import Container
from dataclasses import dataclass

NOUNS: dict[str, tuple[str, str]] = {
    "dog": ("vasko", "m"), "horse": ("brenn", "m"), "farmer": ("tolmar", "m"), "teacher": ("lehrik", "m"),
    "king": ("korval", "m"), "friend": ("frein", "m"), "stick": ("stabor", "m"), "stone": ("steiv", "m"),
    "cat": ("mirel", "f"), "cow": ("kuva", "f"), "goat": ("zikka", "f"), "girl": ("meida", "f"),
    "queen": ("runa", "f"), "doctor": ("arzta", "f"), "rope": ("sella", "f"), "boat": ("barka", "f"),
    "bird": ("fogli", "n"), "sailor": ("seglo", "n"), "baker": ("bakko", "n"), "boy": ("knabo", "n"),
    "ball": ("pallo", "n"), "book": ("bukta", "n"), "apple": ("apfo", "n"), "car": ("wagim", "n"),
}
"""Source noun -> (target word, gender). The plural adds "s" in the source and nothing in the target,
where only the article, adjectives and verb show number (as in German "der Lehrer", "die Lehrer")."""

VERBS: dict[str, str] = {
    "chased": "jag", "saw": "sih", "followed": "folg", "found": "fund", "helped": "half", "painted": "mal",
    "carried": "trag", "pushed": "stoss", "watched": "wach", "called": "ruf", "met": "treff",
    "heard": "hor", "liked": "mog", "fed": "futt", "washed": "wasch", "kept": "halt",
}
"""Source verb (past tense, one form for every subject) -> target stem."""

ADJECTIVES: dict[str, str] = {
    "big": "grot", "small": "klin", "old": "alt", "young": "jung", "red": "rot", "green": "grun",
    "quick": "snel", "slow": "lang", "happy": "froh", "sad": "trub", "brave": "kun", "quiet": "stil",
}
"""Source adjective -> target stem."""

# (gender, or "pl" for any plural; case) -> ending. Articles get a distinct ending in every cell, so
# the article alone names gender and case; adjectives follow German's strong endings, fewer forms.
_ARTICLE_ENDINGS = {
    ("m", "nom"): "or", ("m", "acc"): "on", ("m", "dat"): "om",
    ("f", "nom"): "a", ("f", "acc"): "an", ("f", "dat"): "ar",
    ("n", "nom"): "et", ("n", "acc"): "es", ("n", "dat"): "em",
    ("pl", "nom"): "i", ("pl", "acc"): "in", ("pl", "dat"): "im",
}
_ADJECTIVE_ENDINGS = {
    ("m", "nom"): "er", ("m", "acc"): "en", ("m", "dat"): "em",
    ("f", "nom"): "e", ("f", "acc"): "e", ("f", "dat"): "er",
    ("n", "nom"): "es", ("n", "acc"): "es", ("n", "dat"): "em",
    ("pl", "nom"): "e", ("pl", "acc"): "e", ("pl", "dat"): "en",
}
_ARTICLE_STEMS = {True: "d", False: "k"}  # definite ("the"), indefinite ("a")
_VERB_ENDINGS = {False: "it", True: "un"}  # singular, plural subject
_WITH = "mit"


@dataclass(frozen=True)
class _Phrase:
    """A parsed source noun phrase: article, adjectives, noun and an optional subject relative clause."""

    definite: bool
    adjectives: tuple[str, ...]
    noun: str
    plural: bool
    relative: tuple[str, _Phrase] | None
    """(verb, object) of a "that" clause whose subject is this phrase."""


def translate(tokens: list[str]) -> list[str]:
    """The target sentence of a source sentence: a pure function of the tokens, raising ValueError on
    a sentence outside the grammar. A trailing "with" phrase belongs to the main verb."""
    reader = _Reader(tokens)
    subject = reader.phrase(relative=True)
    verb = reader.word(VERBS)
    obj = reader.phrase(relative=True)
    instrument = reader.phrase(relative=False) if reader.take("with") else None
    if not reader.take(".") or reader.at != len(tokens):
        raise ValueError(f"expected a final '.' at token {reader.at} of {tokens}")
    middle = [_WITH, *_target_phrase(instrument, "dat")] if instrument else []
    return [*_target_phrase(subject, "nom"), *middle, *_target_phrase(obj, "acc"), _verb(verb, subject.plural), "."]


def _target_phrase(phrase: _Phrase, case: str) -> list[str]:
    """Article, adjectives and noun inflected for `case`, then any relative clause with its verb last."""
    stem, gender = NOUNS[phrase.noun]
    cell = ("pl" if phrase.plural else gender, case)
    adjectives = [ADJECTIVES[a] + _ADJECTIVE_ENDINGS[cell] for a in phrase.adjectives]
    words = [_ARTICLE_STEMS[phrase.definite] + _ARTICLE_ENDINGS[cell], *adjectives, stem]
    if phrase.relative:
        verb, obj = phrase.relative
        pronoun = _ARTICLE_STEMS[True] + _ARTICLE_ENDINGS[(cell[0], "nom")]  # as in German: "der Hund, der ..."
        words += [pronoun, *_target_phrase(obj, "acc"), _verb(verb, phrase.plural)]
    return words


def _verb(verb: str, plural_subject: bool) -> str:
    return VERBS[verb] + _VERB_ENDINGS[plural_subject]


class _Reader:
    """Recursive-descent reader of source tokens; raises ValueError at the first one that does not fit."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0

    def take(self, word: str) -> bool:
        """Consume `word` if it comes next."""
        found = self.at < len(self.tokens) and self.tokens[self.at] == word
        self.at += found
        return found

    def word(self, allowed: Container[str]) -> str:
        """Consume the next token, which must be one of `allowed`."""
        if self.at >= len(self.tokens) or self.tokens[self.at] not in allowed:
            raise ValueError(f"unexpected token {self.at} of {self.tokens}")
        self.at += 1
        return self.tokens[self.at - 1]

    def phrase(self, relative: bool) -> _Phrase:
        """An article, adjectives, a noun and, where `relative`, an optional "that VERB phrase" clause."""
        definite = self.word(("the", "a")) == "the"
        adjectives = []
        while self.at < len(self.tokens) and self.tokens[self.at] in ADJECTIVES:
            adjectives.append(self.word(ADJECTIVES))
        word = self.word(_NOUN_FORMS)
        noun, plural = _NOUN_FORMS[word]
        if plural and not definite:
            raise ValueError(f"'a' before the plural {word!r} in {self.tokens}")
        clause = (self.word(VERBS), self.phrase(relative=False)) if relative and self.take("that") else None
        return _Phrase(definite, tuple(adjectives), noun, plural, clause)


_NOUN_FORMS = {**{n: (n, False) for n in NOUNS}, **{n + "s": (n, True) for n in NOUNS}}


@dataclass(frozen=True)
class ParallelSource:
    """Seeded generator of (source, target) sentence pairs; every target is `translate` of its source."""

    seed: int = 0
    min_adjectives: int = 0
    """Fewest adjectives before each noun."""
    max_adjectives: int = 2
    """Most adjectives before each noun; more put an article further from the noun that decides its form."""
    pp_prob: float = 0.5
    """Chance of a closing "with" phrase, which the target moves between subject and object."""
    relative_prob: float = 0.3
    """Chance of a "that" clause, on the subject or the object with equal odds."""
    plural_prob: float = 0.25
    """Chance that a noun is plural (always with "the"); a plural subject changes the final verb's form."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_adjectives <= self.max_adjectives <= len(ADJECTIVES):
            raise ValueError(f"need 0 <= min_adjectives <= max_adjectives <= {len(ADJECTIVES)}")
        for name in ("pp_prob", "relative_prob", "plural_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    def sample(self, n: int, stream: int = 0) -> tuple[list[str], list[str]]:
        """`n` (sources, targets) from stream `stream` (train and test use different streams of one seed)."""
        rng = random.Random(f"{self.seed}/{stream}")  # str seeds hash deterministically across runs
        sources = [self._sentence(rng) for _ in range(n)]
        return sources, [" ".join(translate(s.split())) for s in sources]

    def _sentence(self, rng: random.Random) -> str:
        where = rng.choice(("subject", "object")) if rng.random() < self.relative_prob else None
        words = [*self._phrase(rng, where == "subject"), rng.choice(_VERB_LIST), *self._phrase(rng, where == "object")]
        if rng.random() < self.pp_prob:
            words += ["with", *self._phrase(rng, relative=False)]
        return " ".join([*words, "."])

    def _phrase(self, rng: random.Random, relative: bool) -> list[str]:
        plural = rng.random() < self.plural_prob
        article = "the" if plural or rng.random() < 0.5 else "a"
        adjectives = rng.sample(_ADJECTIVE_LIST, rng.randint(self.min_adjectives, self.max_adjectives))
        noun = rng.choice(_NOUN_LIST)
        words = [article, *adjectives, noun + "s" if plural else noun]
        if relative:
            words += ["that", rng.choice(_VERB_LIST), *self._phrase(rng, relative=False)]
        return words


# Fixed orders for rng.choice: dict order is insertion order, so draws do not depend on hashing.
_NOUN_LIST = tuple(NOUNS)
_VERB_LIST = tuple(VERBS)
_ADJECTIVE_LIST = tuple(ADJECTIVES)
