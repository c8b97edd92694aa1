"""CTC beam search: torchaudio's flashlight-text decoder, lexicon-free, or over the words of a user's KenLM
ARPA language model.

Without a language model the search is lexicon-free: any token sequence, its words split at the units'
boundary token. With one (`lm`, an ARPA file), the lexicon is the LM's unigram vocabulary, each word spelled
by the output units (`Characters` or `WordPieces`), so only LM words can be emitted, and a hypothesis scores
    acoustic log-prob of its best alignment + lm_weight * log10 P_LM(words, </s>) + word_score * words
(flashlight adds KenLM's log10 scores as they are). The KenLM reader ships inside flashlight-text's wheel.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from torch import Tensor

from suite.errors import DataError
from tasks.speech_text import CHARS, normalize
from tasks.speech_units import Characters, WordPieces

_SPELLABLE = set(CHARS[2:])
_MARKERS = {"<s>", "</s>", "<unk>"}


def arpa_words(path: Path) -> list[str]:
    """The words of an ARPA file's unigram section, in file order (sentence markers excluded)."""
    fix = "give an uncompressed ARPA language model (KenLM's lmplz writes one), or leave options.lm empty"
    try:
        with open(path, encoding="utf-8") as f:
            if next((line.strip() for line in f if line.strip()), "") != "\\data\\":
                raise DataError(f"{path} is not an ARPA language model (it does not start with \\data\\): {fix}")
            for line in f:
                if line.strip() == "\\1-grams:":
                    break
            words = []
            for line in f:
                if line.startswith("\\"):
                    break
                fields = line.split("\t")
                if len(fields) >= 2 and fields[1].strip() not in _MARKERS:
                    words.append(fields[1].strip())
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the language model {path} ({err.__class__.__name__}: {err}): {fix}") from None
    if not words:
        raise DataError(f"{path} has no unigrams: {fix}")
    return words


def lexicon_lines(words: list[str], units: Characters | WordPieces) -> list[str]:
    """`WORD t1 t2 ...` lines for the words the units can spell; a word that normalizes to something
    else than one word of CHARS letters (e.g. "WELL-KNOWN", digits) is left out."""
    lines = []
    for word in words:
        text = normalize(word)
        if text and " " not in text and set(text) <= _SPELLABLE:
            lines.append(" ".join([word, *units.spell(text)]))
    return lines


class CTCBeamSearch:
    """`(log_probs (B, T, C) float, lengths (B,)) -> normalized transcripts`, beam of width `beam`."""

    def __init__(self, units: Characters | WordPieces, beam: int, lm: Path | None = None, lm_weight: float = 2.0,
                 word_score: float = 0.0):
        from torchaudio.models.decoder import ctc_decoder  # needs flashlight-text

        self.units, self.uses_lexicon = units, lm is not None
        options = {"tokens": units.tokens, "beam_size": beam, "blank_token": units.blank,
                   "sil_token": units.boundary, "unk_word": "<unk>", "lm_weight": lm_weight, "word_score": word_score}
        if lm is None:
            self.decoder = ctc_decoder(lexicon=None, lm=None, **options)
            return
        lines = lexicon_lines(arpa_words(lm), units)
        if not lines:
            raise DataError(f"no word of {lm} can be spelled with the {units.name} units (A-Z and '): "
                            "give a language model over LibriSpeech-style words")
        with tempfile.TemporaryDirectory() as tmp:
            lexicon = Path(tmp) / "lexicon.txt"
            lexicon.write_text("\n".join(lines) + "\n", encoding="utf-8")
            try:
                self.decoder = ctc_decoder(lexicon=str(lexicon), lm=str(lm), **options)
            except RuntimeError as err:  # KenLM's own parse errors, e.g. a malformed n-gram line
                # KenLM's message is "<source location> ... threw FormatLoadException. <reason>"
                reason = re.split(r"threw \w+\.", " ".join(str(err).split()))[-1].strip()[:300]
                raise DataError(f"KenLM cannot load {lm} ({reason}): give a valid ARPA file") from None

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        found = self.decoder(log_probs.detach().float().cpu().contiguous(), lengths.cpu().int())
        return [self._text(hyps[0]) if hyps else "" for hyps in found]

    def _text(self, hyp) -> str:  # noqa: ANN001 (torchaudio's CTCHypothesis)
        if self.uses_lexicon:
            return normalize(" ".join(hyp.words))
        tokens = self.decoder.idxs_to_tokens(hyp.tokens)
        return normalize("".join(tokens).replace(self.units.boundary, " "))
