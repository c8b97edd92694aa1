"""LibriSpeech speech recognition with recurrent CTC models (any baseline; brnn is the classic choice,
unidirectional models the streaming one).

Sources:
- real: the official LibriSpeech subsets (openslr.org/12, sha256-checked, extracted safely), or an existing
  copy (`options.copy_dir`); FLAC read with soundfile (tasks/librispeech_data.py).
- synthetic: espeak-ng sentences over a closed vocabulary, several voices, speed and noise perturbation
  (tasks/synthetic_speech.py); `apt-get install espeak-ng` provides the program.

Features: 80-channel log-mel, per-utterance normalised, computed once per split into the shared array cache
(float16; `options.feature_cache`), SpecAugment in training, `options.stack` frames stacked into one step.
Output units (`options.units`, tasks/speech_units.py): characters (CTC blank, space, apostrophe, A-Z) or a
BPE vocabulary of the training transcripts. Metrics: WER (primary) and CER in percent, after
`speech_text.normalize`, with greedy CTC decoding or flashlight's beam search (`options.beam`), optionally
over the words of a KenLM ARPA language model the user gives (`options.lm`, tasks/ctc_beam.py).
The unit is a 10 ms frame of audio before stacking, so units/s divided by 100 is audio seconds per second.
Reference line: the lower WER of always answering the most frequent training transcript or nothing.

Published anchors (no language model): ESPnet 8-layer BLSTMP on 960 h, WER 7.7 / 21.9 on test-clean /
test-other; an RNN transducer on 100 h, about 11 on test-clean; MLPerf's RNN-T target, 5.8 on dev-clean
with 960 h.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from torch import nn

from suite.array_cache import cached_array, file_fingerprint
from suite.config import Checked, bounded, seed_field
from suite.errors import DataError, UserError
from suite.fetch import file_digest
from suite.registry import register_task
from tasks.base import BackboneFactory, Task
from tasks.ctc_beam import CTCBeamSearch, arpa_words
from tasks.ctc_model import CTCModel, ctc_loss
from tasks.librispeech_data import (
    SUBSETS,
    LogMel,
    SpecAugment,
    duration_buckets,
    load_audio,
    read_subset,
    stack_frames,
    subset_dir,
)
from tasks.speech_text import ctc_greedy, wer_cer
from tasks.speech_units import UNITS, Characters, WordPieces
from tasks.synthetic_speech import SpeechSource

# paper: 4 BiLSTM layers of 320 units per direction over 3-frame stacks, CTC over characters, on
# train-clean-100, Adam 1e-3, dropout 0.2, 30 epochs, greedy decoding: run it with --model brnn.
_PAPER = {"backbone.hidden_size": 320, "backbone.num_layers": 4, "backbone.dropout": 0.2,
          "options.batch_seconds": 300.0, "train.eval_batch_size": 32, "train.optimizer": "adam", "train.lr": 1e-3,
          "train.clip": 5.0, "budget.max_epochs": 30}


MIN_BPE_VOCAB = 32


@dataclass(frozen=True)
class LibriSpeechOptions(Checked):
    train_subset: str = "train-clean-100"
    valid_subset: str = "dev-clean"
    test_subset: str = "test-clean"
    copy_dir: str = ""
    """An existing LibriSpeech copy to read instead of downloading (holding LibriSpeech/<subset>/...)."""
    stack: int = bounded(3, low=1)
    """Log-mel frames stacked into one recurrent step (x3: 30 ms per step)."""
    spec_augment: bool = True
    """SpecAugment's frequency and time masks on training features."""
    batch_seconds: float = bounded(120.0, low=0, low_open=True)
    """Padded audio seconds per training batch (utterances of similar length are batched together)."""
    dropout: float = bounded(0.0, low=0, high=1, high_open=True)
    units: str = "chars"
    """CTC output units: "chars" (blank, space, apostrophe, A-Z) or "bpe" (a BPE vocabulary of the training
    transcripts, `bpe_vocab` symbols)."""
    bpe_vocab: int = bounded(256, low=MIN_BPE_VOCAB, why="specials, letters, apostrophe and the word mark")
    feature_cache: bool = True
    """Keep each split's log-mel frames in the data cache (float16, keyed by the audio files and the feature
    settings); off recomputes them from the audio every epoch."""
    beam: int = bounded(1, low=1)
    """CTC decoding: 1 is greedy, more is flashlight's beam search of that width."""
    lm: str = ""
    """A KenLM language model (ARPA text) for the beam search; its unigrams are the words it may emit."""
    lm_weight: float = bounded(2.0, low=0)
    """Weight of the LM's log10 probability in a hypothesis score (torchaudio's default)."""
    word_score: float = bounded(0.0)
    """Score added per emitted word with an LM (negative favours fewer, longer words)."""
    synthetic_utterances: int = bounded(2_000, low=1)
    synthetic_eval_utterances: int = bounded(200, low=1)
    synthetic_seed: int = seed_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (self.train_subset, self.valid_subset, self.test_subset):
            if name not in SUBSETS:
                raise UserError(f"unknown LibriSpeech subset {name!r}: choose from {', '.join(SUBSETS)}")
        if self.lm and self.beam == 1:
            raise UserError("options.lm needs beam search: set options.beam to 2 or more (e.g. 32)")
        if self.units not in UNITS:
            raise UserError(f"unknown options.units {self.units!r}: choose from {', '.join(UNITS)}")


@register_task("librispeech")
class LibriSpeech(Task):
    version = 2  # 2: cached float16 features, output units and LM options
    shards = True
    causal = False  # recognition reads the whole utterance; unidirectional models are the streaming option
    unit = "frames"
    metrics = {"wer": False, "cer": False}
    primary_metric = "wer"
    reference_name = "most-frequent-transcript"
    Options = LibriSpeechOptions
    presets = {
        # A 1x96 model over 4-frame stacks that learns the synthetic sentences' words inside 20 s on 2 cores;
        # SpecAugment off, since in 20 s it slows learning more than it regularises (WER 37 against 84).
        "smoke": {"backbone.hidden_size": 96, "backbone.num_layers": 1, "options.batch_seconds": 40.0,
                  "options.stack": 4, "options.spec_augment": False, "train.eval_batch_size": 50,
                  "train.optimizer": "adam", "train.lr": 5e-3, "train.clip": 5.0, "budget.eval_every_units": 200_000},
        "small": {"backbone.hidden_size": 256, "backbone.num_layers": 3, "backbone.dropout": 0.1,
                  "options.batch_seconds": 200.0, "train.optimizer": "adam", "train.lr": 1e-3, "train.clip": 5.0},
        "standard": {**_PAPER, "backbone.num_layers": 3},
        "paper": _PAPER,
    }

    def prepare(self) -> None:
        opts: LibriSpeechOptions = self.cfg.options
        self._lm = self._language_model(opts.lm)  # before any download: a typo should not cost one
        self.logmel, self.augment = LogMel(), SpecAugment()
        if self.cfg.source == "synthetic":
            self._prepare_synthetic(opts)
        else:
            names = {"train": opts.train_subset, "valid": opts.valid_subset, "test": opts.test_subset}
            copy = opts.copy_dir or None
            utts = {s: read_subset(subset_dir(n, copy)) for s, n in names.items()}
            self.audio = {s: [u.path for u in us] for s, us in utts.items()}  # read when batched
            self.texts = {s: [u.transcript for u in us] for s, us in utts.items()}
            self._audio_keys = {s: file_fingerprint(paths) for s, paths in self.audio.items()}
            self._info = {"subsets": names, "files": {n: SUBSETS[n].checksum for n in names.values()},
                          "copy_dir": opts.copy_dir or None}
        self.samples = {s: np.array([self._samples(s, i) for i in range(len(a))]) for s, a in self.audio.items()}
        self.frames = {s: 1 + n // 160 for s, n in self.samples.items()}  # log-mel frames, 10 ms hop
        self.units = WordPieces.train(self.texts["train"], opts.bpe_vocab, self._digest(["train"])) \
            if opts.units == "bpe" else Characters()
        self.targets = {s: [torch.tensor(self.units.encode(t)) for t in ts] for s, ts in self.texts.items()}
        self._cached: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
        if opts.feature_cache:  # here rather than on first use, so training time never includes it
            for split in self.audio:
                self._split_features(split)
        self._eval_features: dict[str, list[torch.Tensor]] = {}
        lm_path = self._lm[0] if self._lm else None
        self._beam = CTCBeamSearch(self.units, opts.beam, lm_path, opts.lm_weight, opts.word_score) \
            if opts.beam > 1 else None

    def _prepare_synthetic(self, opts: LibriSpeechOptions) -> None:
        source = SpeechSource(seed=opts.synthetic_seed)
        sizes = {"train": opts.synthetic_utterances, "valid": opts.synthetic_eval_utterances,
                 "test": opts.synthetic_eval_utterances}
        self.audio, self.texts, self._audio_keys = {}, {}, {}
        for stream, (split, n) in enumerate(sizes.items()):
            waves, self.texts[split] = source.sample(n, stream)
            self.audio[split] = [torch.from_numpy(w) for w in waves]
            self._audio_keys[split] = source.cache_key(n, stream)
        self._info = {"generator": {"name": "SpeechSource", **{k: v for k, v in vars(source).items()}}}

    @staticmethod
    def _language_model(name: str) -> tuple[Path, str] | None:
        """(path, sha256) of the user's ARPA file, so a record names the exact LM its WER was decoded with."""
        if not name:
            return None
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"options.lm: {path} does not exist: give the path of an ARPA language model "
                            "or leave options.lm empty")
        arpa_words(path)  # a file that is no ARPA model fails now, not after the download and the features
        return path, file_digest(path, "sha256")

    def _samples(self, split: str, i: int) -> int:
        item = self.audio[split][i]
        if isinstance(item, torch.Tensor):
            return item.numel()
        return soundfile.info(str(item)).frames

    def _wave(self, split: str, i: int) -> torch.Tensor:
        item = self.audio[split][i]
        return item if isinstance(item, torch.Tensor) else load_audio(item)

    def _features(self, split: str, i: int, augment: bool) -> torch.Tensor:
        """Stacked features (T / stack, 80 * stack) of utterance i; SpecAugment when `augment`."""
        if self.cfg.options.feature_cache:
            frames, offsets = self._split_features(split)
            x = frames[offsets[i]:offsets[i + 1]].float()  # (T, 80)
        else:
            x = self.logmel(self._wave(split, i))
        return stack_frames(self.augment(x) if augment else x, self.cfg.options.stack)

    def _split_features(self, split: str) -> tuple[torch.Tensor, np.ndarray]:
        """A split's log-mel frames, all utterances end to end (float16, memory-mapped), and each one's
        start row: computed once per audio set and feature setting, then read from the array cache."""
        if split not in self._cached:
            offsets = np.concatenate([[0], np.cumsum(self.frames[split])])
            parts = {"kind": "librispeech log-mel", "format": 1, "audio": self._audio_keys[split],
                     **self.logmel.record, "dtype": "float16"}

            def fill(out: np.ndarray) -> None:
                for i in range(len(offsets) - 1):
                    out[offsets[i]:offsets[i + 1]] = self.logmel(self._wave(split, i)).numpy()

            frames = cached_array(parts, (int(offsets[-1]), self.logmel.record["n_mels"]), np.float16, fill,
                                  f"log-mel frames of {len(offsets) - 1} {split} utterances")
            self._cached[split] = frames, offsets
        return self._cached[split]

    def _digest(self, splits: list[str]) -> str:
        return hashlib.sha256("\n".join(t for s in splits for t in self.texts[s]).encode()).hexdigest()

    def data_info(self) -> dict[str, Any]:
        lm = self._lm and {"file": str(self._lm[0]), "sha256": self._lm[1]}
        return {"source": self.cfg.source, **self._info, "utterances": {s: len(t) for s, t in self.texts.items()},
                "audio_seconds": {s: float(n.sum()) / 16_000 for s, n in self.samples.items()},
                "transcripts_sha256": self._digest(["train", "valid", "test"]),
                "units": self.units.name, "symbols": self.units.size, "features": self.logmel.record,
                "language_model": lm}

    def build(self, make_backbone: BackboneFactory) -> nn.Module:
        return CTCModel(80 * self.cfg.options.stack, self.units.size, self.cfg.options.dropout, make_backbone)

    def units_per_epoch(self) -> int:
        return int(self.frames["train"].sum())

    def _collate(self, feats: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple:
        lengths = torch.tensor([len(f) for f in feats])
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)  # (B, T, F)
        return (x.to(self.device), lengths, torch.cat(targets).to(self.device),
                torch.tensor([len(t) for t in targets]))

    def train_batches(self, epoch: int) -> Iterator[tuple]:
        rng = np.random.default_rng([self.cfg.seed, epoch])  # deterministic in (seed, epoch) for resume
        for index in duration_buckets(self.frames["train"] / 100, self.cfg.options.batch_seconds, rng):
            index = self.shard(index)
            feats = [self._features("train", int(i), self.cfg.options.spec_augment) for i in index]
            batch = self._collate(feats, [self.targets["train"][int(i)] for i in index])
            yield (*batch, int(self.frames["train"][index].sum()))

    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[torch.Tensor, int, Any]:
        x, lengths, targets, target_lengths, frames = batch
        return ctc_loss(model(x, lengths), lengths, targets, target_lengths), frames, None

    @torch.no_grad()
    def transcribe(self, model: nn.Module, split: str) -> list[str]:
        if split not in self._eval_features:  # evaluation features never change: computed once
            self._eval_features[split] = [self._features(split, i, False) for i in range(len(self.texts[split]))]
        feats, size = self._eval_features[split], self.cfg.train.eval_batch_size
        order = np.argsort([len(f) for f in feats], kind="stable")  # similar lengths together
        hyps: list[str] = [""] * len(feats)
        for start in range(0, len(order), size):
            index = order[start:start + size]
            x, lengths, _, _ = self._collate([feats[i] for i in index], [self.targets[split][i] for i in index])
            log_probs = model(x, lengths)
            if self.cfg.options.beam > 1:
                texts = self._beam(log_probs, lengths)
            else:
                texts = [self.units.decode(ids) for ids in ctc_greedy(log_probs.cpu(), lengths)]
            for i, text in zip(index, texts):
                hyps[i] = text
        return hyps

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        return wer_cer(self.transcribe(model, split), self.texts[split])

    def eval_units(self, split: str) -> int:
        return int(self.frames[split].sum())

    def reference(self) -> dict[str, Any]:
        """Always the most frequent training transcript, or always nothing: whichever has the lower WER."""
        common = Counter(self.texts["train"]).most_common(1)[0][0]
        out: dict[str, Any] = {"name": self.reference_name}
        for split in ("valid", "test"):
            refs = self.texts[split]
            out[split] = min(wer_cer([common] * len(refs), refs), wer_cer([""] * len(refs), refs),
                             key=lambda m: m["wer"])
        return out

    def flops_per_unit(self, model: nn.Module) -> int:
        per_step = model.backbone.flops_per_step() + 2 * model.head.in_features * model.head.out_features
        return per_step // self.cfg.options.stack

    def sample_input(self, batch_size: int, length: int) -> tuple:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, length, 80 * self.cfg.options.stack, generator=gen)
        return x.to(self.device), torch.full((batch_size,), length)
