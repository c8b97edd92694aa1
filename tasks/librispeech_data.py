"""LibriSpeech data (Panayotov et al. 2015, openslr.org/12): utterances, log-mel features, duration batches.

Layout (official): `LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`, one
`<utt-id> <TRANSCRIPT>` line per utterance, beside `<utt-id>.flac` (16 kHz mono PCM_16). FLAC is read with
`soundfile`: `torchaudio.load` needs torchcodec and a system FFmpeg.

Features follow the usual recurrent-ASR recipe: 80 log-mel channels, 25 ms window / 10 ms hop, each
channel normalised per utterance, optional frame stacking (e.g. 3x, to 30 ms steps) and SpecAugment
(Park et al. 2019, LibriSpeech "LD" policy: two frequency masks F=27, two time masks T=100).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor, nn
from torchaudio.transforms import FrequencyMasking, MelSpectrogram, TimeMasking

from suite.archives import extract
from suite.errors import DataError
from suite.fetch import RemoteFile, data_dir, fetch

ORIGIN = "https://www.openslr.org/resources/12"
CACHE = "librispeech"
SAMPLE_RATE = 16_000
# sha256 of each archive, as torchaudio 2.11 verifies them (torchaudio/datasets/librispeech.py, _CHECKSUMS).
SUBSETS: dict[str, RemoteFile] = {
    name: RemoteFile(f"{name}.tar.gz", sha256) for name, sha256 in {
        "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
        "train-clean-360": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
        "train-other-500": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
        "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
        "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
        "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
        "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    }.items()
}
JITTER = 0.1
"""Relative noise on durations before sorting, so batch neighbours change from epoch to epoch."""


@dataclass(frozen=True)
class Utterance:
    """One LibriSpeech utterance: its id (`speaker-chapter-utt`), FLAC path, transcript and length."""

    id: str
    path: Path
    transcript: str
    """Upper-case words as in the official transcript, e.g. "HE HOPED THERE WOULD BE STEW"."""
    duration: float
    """Seconds, from the FLAC header (no decoding)."""


def subset_dir(name: str, copy: Path | None = None) -> Path:
    """Folder of subset `name` in the official layout: inside the user's `copy` when given (the folder
    itself, or one holding `<name>` or `LibriSpeech/<name>`), else downloaded and extracted into the cache."""
    if name not in SUBSETS:
        raise DataError(f"unknown LibriSpeech subset {name!r}: choose one of {', '.join(SUBSETS)}")
    if copy is None:
        archive = fetch(ORIGIN, SUBSETS[name], CACHE)
        return extract(archive, data_dir() / CACHE / name) / "LibriSpeech" / name
    copy = Path(copy).expanduser()
    for folder in (copy / "LibriSpeech" / name, copy / name, copy):
        if folder.is_dir() and next(folder.glob("*/*/*.trans.txt"), None) is not None:
            return folder
    raise DataError(
        f"{copy} holds no LibriSpeech {name} transcripts (expected {copy}/LibriSpeech/{name}/<speaker>/<chapter>/"
        f"*.trans.txt): point at a copy in the official layout or use --source synthetic"
    )


def read_subset(root: Path) -> list[Utterance]:
    """Every utterance listed in the transcripts under `root` (a subset folder), sorted by id."""
    transcripts = sorted(root.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise DataError(f"{root} holds no <speaker>/<chapter>/*.trans.txt transcripts: {_fix(root)}")
    utterances = []
    for listing in transcripts:
        for line in listing.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            path = listing.parent / f"{utt_id}.flac"
            if not path.is_file():
                raise DataError(f"{path} is missing (listed in {listing.name}): {_fix(root)}")
            utterances.append(Utterance(utt_id, path, text.strip(), _duration(path, root)))
    return sorted(utterances, key=lambda u: u.id)


def _duration(path: Path, root: Path) -> float:
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, OSError) as err:
        raise DataError(f"cannot read {path} ({' '.join(str(err).split())}): {_fix(root)}") from None
    return info.frames / info.samplerate


def _fix(root: Path) -> str:
    """How to repair a bad subset folder: re-extract a cached one; a user's copy is theirs to repair."""
    cached = data_dir() / CACHE
    if root.resolve().is_relative_to(cached.resolve()):
        return f"delete {cached / root.name} and run again, or use --source synthetic"
    return f"repair the copy at {root} or use --source synthetic"


def load_audio(path: Path) -> Tensor:
    """Samples of a 16 kHz FLAC as a float32 tensor in [-1, 1]; shape (samples,)."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    except (sf.SoundFileError, OSError) as err:
        reason = " ".join(str(err).split())
        raise DataError(f"cannot read {path} ({reason}): replace it or use --source synthetic") from None
    if rate != SAMPLE_RATE:
        raise DataError(f"{path} is sampled at {rate} Hz, expected {SAMPLE_RATE}: resample it to 16 kHz")
    return torch.from_numpy(samples.mean(axis=1))  # LibriSpeech is mono; the mean only guards odd copies


class LogMel(nn.Module):
    """Waveform (samples,) -> per-utterance normalised 80-channel log-mel frames (1 + samples // 160, 80)."""

    def __init__(self, n_mels: int = 80, floor: float = 1e-6) -> None:
        super().__init__()
        self.mel = MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160, n_mels=n_mels)
        self.floor = floor  # log(0) on digital silence would give -inf
        self.record = {"n_mels": n_mels, "n_fft": 400, "hop": 160, "floor": floor, "normalise": "per-utterance"}
        """What the features depend on: part of the feature cache key."""

    def forward(self, wave: Tensor) -> Tensor:
        x = self.mel(wave).clamp_min(self.floor).log()  # (F, T)
        mean = x.mean(dim=1, keepdim=True)
        std = x.std(dim=1, keepdim=True, correction=0)  # correction=0: defined for a single frame too
        return ((x - mean) / (std + 1e-5)).T  # (T, F)


class SpecAugment(nn.Module):
    """Frequency and time masks on normalised features (T, F), drawn from torch's RNG: training only.
    The masks fill with 0, which after per-utterance normalisation is the channel mean."""

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2, time_width: int = 100) -> None:
        super().__init__()
        self.masks = nn.ModuleList([FrequencyMasking(freq_width) for _ in range(freq_masks)]
                                   + [TimeMasking(time_width) for _ in range(time_masks)])

    def forward(self, features: Tensor) -> Tensor:
        x = features.T  # (F, T), the layout torchaudio's masks expect
        for mask in self.masks:
            x = mask(x)
        return x.T


def stack_frames(x: Tensor, factor: int) -> Tensor:
    """Concatenate each `factor` consecutive frames into one: (T, F) -> (T // factor, F * factor);
    a trailing partial group is dropped. Shortens the sequence the recurrent encoder runs over."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    steps = x.shape[0] // factor
    return x[: steps * factor].reshape(steps, x.shape[1] * factor)


def duration_buckets(durations: np.ndarray, batch_seconds: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of similar-length utterances, in shuffled order, each index exactly once.

    A batch's padded size (count x longest) stays within `batch_seconds`, so its total audio does too;
    an utterance longer than the cap sits alone in its batch.
    """
    durations = np.asarray(durations, dtype=float)
    if durations.ndim != 1 or batch_seconds <= 0:
        raise ValueError(f"need 1-D durations and batch_seconds > 0, got shape {durations.shape}, {batch_seconds}")
    order = np.argsort(durations * rng.uniform(1 - JITTER, 1 + JITTER, len(durations)), kind="stable")
    batches, start, longest = [], 0, 0.0
    for i, idx in enumerate(order):
        longest = max(longest, durations[idx])
        if i > start and longest * (i - start + 1) > batch_seconds:
            batches.append(order[start:i])
            start, longest = i, durations[idx]
    if start < len(order):
        batches.append(order[start:])
    return [batches[k] for k in rng.permutation(len(batches))]
