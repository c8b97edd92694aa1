"""BPE subword models (`tokenizers`) trained on a training split and cached by settings and data checksum.

The Metaspace pre-tokenizer and decoder make `decode(encode(text))` give the text back exactly (a
Whitespace pre-tokenizer would lose the spaces), so metrics see detokenized output.
"""
from __future__ import annotations

import hashlib
import json
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from suite.fetch import data_dir, write_cache

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
PAD, UNK, BOS, EOS = range(4)  # ids of SPECIALS: the trainer adds them first, in this order


def train_bpe(lines: list[str], vocab_size: int, alphabet: tuple[str, ...] = ()) -> Tokenizer:
    """BPE of `lines`; every character of `alphabet` is a token even if `lines` never use it."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=list(alphabet))
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def cached_bpe(lines: list[str], vocab_size: int, key: str, alphabet: tuple[str, ...] = ()) -> Tokenizer:
    """The BPE model of `lines` from the cache, trained and stored on first use (`key` must identify
    the lines and every setting, `alphabet` included)."""
    path = data_dir() / "bpe" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own exception types for a damaged file
            print(f"cached BPE model {path} is unreadable ({exc}): training it again", file=sys.stderr)
    tok = train_bpe(lines, vocab_size, alphabet)
    # Atomic and fsynced, so parallel runs never read half a file; `save`'s own format, through a string.
    write_cache(path, lambda out: out.write(tok.to_str(pretty=True).encode("utf-8")))
    return tok


def train_or_load_bpe(src: list[str], tgt: list[str], vocab_size: int, joint: bool,
                      data_checksum: str) -> tuple[Tokenizer, Tokenizer]:
    """(source tokenizer, target tokenizer): one joint model for both sides, or one per side."""
    def key(side: str) -> str:
        return json.dumps({"v": 1, "side": side, "vocab_size": vocab_size, "data": data_checksum})
    if joint:
        tok = cached_bpe(src + tgt, vocab_size, key("joint"))
        return tok, tok
    return cached_bpe(src, vocab_size, key("src")), cached_bpe(tgt, vocab_size, key("tgt"))
