"""Output units of the CTC speech model: characters, or a BPE vocabulary of the training transcripts.

Both give the model's output size, turn a transcript into label ids and label ids back into normalized
text, and describe themselves to flashlight's beam search (`tokens`: one name per output id, `blank`,
`boundary`: the word-separator token, and `spell(word)`: a word as a lexicon line's tokens).
"""
from __future__ import annotations

from tokenizers import Tokenizer

from tasks.speech_text import BLANK, CHARS, decode_ids, encode, normalize
from tasks.subwords import PAD, cached_bpe

UNITS = ("chars", "bpe")


class Characters:
    """CTC over `speech_text.CHARS`: blank, space, apostrophe, A-Z. Flashlight calls the blank "-" and the
    space "|", its word boundary."""

    name = "chars"
    blank, boundary = "-", "|"

    def __init__(self) -> None:
        self.tokens = [self.blank, self.boundary, *CHARS[2:]]

    @property
    def size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def decode(self, ids: list[int]) -> str:
        return decode_ids(ids)

    def spell(self, word: str) -> list[str]:
        """"DON'T" -> D O N ' T |: a lexicon spelling ends at the word boundary."""
        return [*word, self.boundary]


class WordPieces:
    """CTC over a BPE vocabulary (`tokenizers`, Metaspace) trained on normalized training transcripts, so a
    frequent word is one symbol. Id 0 (`<pad>`) serves as the CTC blank; every letter of CHARS is in the
    vocabulary, so no transcript needs `<unk>`. Flashlight's word boundary is the Metaspace mark "▁" that
    starts each word's first piece."""

    name = "bpe"
    boundary = "▁"

    def __init__(self, tokenizer: Tokenizer) -> None:
        vocab = tokenizer.get_vocab()
        self.tokenizer = tokenizer
        self.tokens = sorted(vocab, key=vocab.__getitem__)  # name of each output id
        self.blank = self.tokens[BLANK]
        if PAD != BLANK or self.boundary not in vocab:
            raise ValueError("a CTC BPE vocabulary needs <pad> at id 0 and the Metaspace mark as a token")

    @classmethod
    def train(cls, transcripts: list[str], vocab_size: int, data_checksum: str) -> WordPieces:
        """The BPE model of `transcripts` (cached by data checksum and size), over normalized CHARS text."""
        lines = [decode_ids(encode(t)) for t in transcripts]
        alphabet = (*CHARS[2:], cls.boundary)
        key = f"speech-bpe v1 {vocab_size} {''.join(alphabet)} {data_checksum}"
        return cls(cached_bpe(lines, vocab_size, key, alphabet))

    @property
    def size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        words = decode_ids(encode(text))  # the CHARS form: what the tokenizer was trained on
        return self.tokenizer.encode(words).ids if words else []

    def decode(self, ids: list[int]) -> str:
        return normalize(self.tokenizer.decode(ids))  # special tokens (blank included) are skipped

    def spell(self, word: str) -> list[str]:
        """"CATS" -> ▁CAT S: the word's pieces as the tokenizer splits it alone."""
        return self.tokenizer.encode(word).tokens
