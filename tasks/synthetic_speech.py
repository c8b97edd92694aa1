"""An offline stand-in for LibriSpeech: short English sentences spoken by espeak-ng, for CTC recognition.

Sentences come from a closed vocabulary of 69 common words (85 with plurals) and one small grammar (a subject, a past
tense verb, then an object or a place), uppercase like LibriSpeech transcripts:

    TWO GREEN FROGS SWAM IN THE RIVER
    THE OLD HORSE SAW A BROWN PIG

Each sentence is spoken by espeak-ng with a drawn voice, rate and pitch, resampled to `sample_rate`
with speed perturbation folded into the same resampling (as Kaldi's speed perturbation: tempo and
pitch change together), and mixed with white noise at a drawn SNR. Text and audio settings draw from
separate streams, so changing `voices` or `speed` never changes which sentences are drawn.

espeak-ng runs about 100 sentences/s, so a generated set is cached as int16 under
`data_dir()/synthetic_speech/`, keyed by every setting, the stream, `n` and the espeak-ng version.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
import tempfile
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from suite.errors import DataError
from suite.fetch import data_dir, write_cache

NUMBERS = ("TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "TEN")
COLOURS = ("RED", "GREEN", "BLUE", "YELLOW", "BLACK", "WHITE", "BROWN", "GREY")
ADJECTIVES = ("BIG", "SMALL", "OLD", "YOUNG", "HAPPY", "QUIET")
ANIMALS = ("DOG", "CAT", "BIRD", "HORSE", "COW", "GOAT", "DUCK", "FROG", "PIG", "RAT", "BEAR", "LION",
           "TIGER", "SNAKE", "RABBIT", "MONKEY")
"""Nouns whose plural adds "S", so a number before the noun is the only agreement the grammar needs."""
TRANSITIVE = ("SAW", "CHASED", "FOUND", "HELPED", "FOLLOWED", "WATCHED", "CALLED", "PUSHED", "HEARD",
              "LIKED")
INTRANSITIVE = ("RAN", "WALKED", "JUMPED", "SLEPT", "SWAM", "SANG", "DANCED", "WAITED")
PLACES = ("PARK", "RIVER", "GARDEN", "FOREST", "HOUSE", "BARN")
PREPOSITIONS = ("IN", "NEAR", "BY")
ARTICLES = ("THE", "A")
VOCABULARY = frozenset((*NUMBERS, *COLOURS, *ADJECTIVES, *ANIMALS, *(a + "S" for a in ANIMALS),
                        *TRANSITIVE, *INTRANSITIVE, *PLACES, *PREPOSITIONS, *ARTICLES, "HOME"))
"""Every word a transcript can hold (plurals included)."""
MIN_WORDS, MAX_WORDS = 3, 9
"""Shortest and longest sentence the grammar makes: "THE DOG RAN" .. "THE BIG RED DOG CHASED THE OLD BLUE CAT"."""

ESPEAK_RATE = 22050
"""espeak-ng's output rate."""
SPEED_STEP_HZ = 50
"""Speed is quantised so the effective input rate is a multiple of this: resampling kernels stay small."""
RATE_WPM = (140, 190)
PITCH = (30, 70)
HEADROOM = 0.7
"""Fixed gain on espeak-ng's output, whose peaks reach full scale, so resampling and noise rarely clip."""
FORMAT = 1
"""Bumped whenever the generator changes, so stale caches are never read."""

MISSING = "espeak-ng is not installed: apt-get install espeak-ng (Debian/Ubuntu), or use a real source"
_lock = threading.Lock()
espeak_runs = 0
"""How many times this process has run espeak-ng; tests read it to see that the cache was used."""


@dataclass(frozen=True)
class SpeechSource:
    """Seeded generator of (audio, transcript) pairs spoken by espeak-ng, cached on disk per setting."""

    seed: int = 0
    sample_rate: int = 16000
    """Output rate in Hz; a multiple of 50 so resampling from 22,050 Hz stays cheap."""
    voices: tuple[str, ...] = ("en-us", "en-gb", "en+f3", "en-us+m3", "en-gb-scotland", "en-029")
    """espeak-ng voices, one drawn per utterance (mb-* voices need mbrola, which Debian lacks)."""
    min_words: int = 3
    """Fewest words per sentence (the grammar's shortest is 3)."""
    max_words: int = 8
    """Most words per sentence (the grammar's longest is 9); lengths are drawn uniformly."""
    noise_snr_db: tuple[float, float] = (15.0, 30.0)
    """Range of the signal-to-white-noise ratio in dB, drawn uniformly per utterance."""
    speed: tuple[float, float] = (0.9, 1.1)
    """Range of the speed factor (>1 is faster and higher), drawn per utterance after the wpm rate."""

    def __post_init__(self) -> None:
        if not MIN_WORDS <= self.min_words <= self.max_words <= MAX_WORDS:
            raise ValueError(f"need {MIN_WORDS} <= min_words <= max_words <= {MAX_WORDS}")
        if self.sample_rate <= 0 or self.sample_rate % SPEED_STEP_HZ:
            raise ValueError(f"sample_rate must be a positive multiple of {SPEED_STEP_HZ}, got {self.sample_rate}")
        if not self.voices or any(v.startswith("mb-") for v in self.voices):
            raise ValueError(f"voices must be non-empty espeak-ng voices without mbrola, got {self.voices}")
        if not 0.5 <= self.speed[0] <= self.speed[1] <= 2.0:
            raise ValueError(f"speed must be an ordered range inside [0.5, 2], got {self.speed}")
        if not self.noise_snr_db[0] <= self.noise_snr_db[1]:
            raise ValueError(f"noise_snr_db must be an ordered range, got {self.noise_snr_db}")

    def sample(self, n: int, stream: int = 0) -> tuple[list[np.ndarray], list[str]]:
        """`n` float32 waveforms in [-1, 1] at `sample_rate` and their transcripts, from stream `stream`
        (train and test use different streams of one seed); read from the cache when it holds them."""
        path = self._cache_path(n, stream)
        if not path.exists():
            audio, texts = self._generate(n, stream)
            _save(path, audio, texts)
        with np.load(path, allow_pickle=False) as z:
            pcm, offsets, texts = z["audio"], z["offsets"], [str(t) for t in z["texts"]]
        waves = [pcm[a:b].astype(np.float32) / 32768.0 for a, b in zip(offsets[:-1], offsets[1:])]
        return waves, texts

    def sentences(self, n: int, stream: int = 0) -> list[str]:
        """The transcripts alone, without running espeak-ng."""
        rng = random.Random(f"{self.seed}/{stream}/text")  # str seeds hash deterministically across runs
        return [" ".join(_sentence(rng, rng.randint(self.min_words, self.max_words))) for _ in range(n)]

    def cache_key(self, n: int, stream: int) -> str:
        """Identifies `sample(n, stream)`'s output exactly: the settings, the format and espeak-ng's version."""
        key = json.dumps([FORMAT, asdict(self), stream, n, espeak_version()], sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:20]

    def _cache_path(self, n: int, stream: int) -> Path:
        return data_dir() / "synthetic_speech" / f"{self.cache_key(n, stream)}.npz"

    def _generate(self, n: int, stream: int) -> tuple[list[np.ndarray], list[str]]:
        texts = self.sentences(n, stream)
        rng = random.Random(f"{self.seed}/{stream}/audio")
        settings = [(rng.choice(self.voices), rng.randint(*RATE_WPM), rng.randint(*PITCH),
                     rng.uniform(*self.speed), rng.uniform(*self.noise_snr_db), rng.getrandbits(63))
                    for _ in texts]

        def one(i: int) -> np.ndarray:
            voice, rate, pitch, *perturbation = settings[i]
            return self._perturb(speak(texts[i], voice, rate, pitch, Path(tmp) / f"{i}.wav"), *perturbation)

        # Two workers: espeak-ng is single-threaded and resampling releases the GIL.
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(one, range(n))), texts

    def _perturb(self, pcm: np.ndarray, speed: float, snr_db: float, noise_seed: int) -> np.ndarray:
        """Speed-perturb, resample and add noise to one 22,050 Hz utterance; int16 at `sample_rate`."""
        # Reading 22,050 Hz audio as if it ran at 22,050 * speed Hz and resampling that to the output
        # rate shortens it by `speed`; rounding that rate to 50 Hz keeps the polyphase kernel small.
        source_rate = round(ESPEAK_RATE * speed / SPEED_STEP_HZ) * SPEED_STEP_HZ
        x = torch.from_numpy(pcm.astype(np.float32) * (HEADROOM / 32768.0))
        y = AF.resample(x, source_rate, self.sample_rate).numpy()
        rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
        noise = np.random.default_rng(noise_seed).standard_normal(len(y)) * rms / 10 ** (snr_db / 20)
        return np.round(np.clip(y + noise, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def _sentence(rng: random.Random, length: int) -> list[str]:
    """A grammatical sentence of exactly `length` words, drawn by rejection (every length 3-9 is common)."""
    while True:
        words = [*_subject(rng), *_predicate(rng)]
        if len(words) == length:
            return words


def _subject(rng: random.Random) -> list[str]:
    """THE/A or a number, up to two adjectives (size before colour), then an animal."""
    adjectives = [w for w, p in ((rng.choice(ADJECTIVES), 0.3), (rng.choice(COLOURS), 0.5)) if rng.random() < p]
    if rng.random() < 0.3:
        return [rng.choice(NUMBERS), *adjectives, rng.choice(ANIMALS) + "S"]
    return [rng.choice(ARTICLES), *adjectives, rng.choice(ANIMALS)]


def _predicate(rng: random.Random) -> list[str]:
    """A transitive verb and an object, or an intransitive verb alone, HOME, or a place phrase."""
    if rng.random() < 0.5:
        return [rng.choice(TRANSITIVE), *_subject(rng)]
    place = rng.choice(([], ["HOME"], [rng.choice(PREPOSITIONS), "THE", rng.choice(PLACES)]))
    return [rng.choice(INTRANSITIVE), *place]


def espeak_version() -> str:
    """The installed espeak-ng version, e.g. "1.51"; raises DataError when espeak-ng is missing."""
    if shutil.which("espeak-ng") is None:
        raise DataError(MISSING)
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    return match.group(1) if match else out.strip()


def speak(text: str, voice: str, rate_wpm: int, pitch: int, wav: Path) -> np.ndarray:
    """int16 samples at 22,050 Hz of `text` spoken by espeak-ng; written with -w because --stdout
    writes a bogus length into the WAV header."""
    global espeak_runs
    with _lock:
        espeak_runs += 1
    cmd = ["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-p", str(pitch), "-w", str(wav), text.lower()]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataError(MISSING) from None
    if done.returncode != 0 or not wav.exists():
        raise DataError(f"espeak-ng failed with voice {voice!r}: {done.stderr.strip().splitlines()[-1:]}")
    with wave.open(str(wav), "rb") as f:
        if (f.getnchannels(), f.getsampwidth(), f.getframerate()) != (1, 2, ESPEAK_RATE):
            raise DataError(f"espeak-ng wrote unexpected WAV parameters {f.getparams()}")
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").copy()


def _save(path: Path, audio: list[np.ndarray], texts: list[str]) -> None:
    """Write the set atomically and fsynced (temp file, rename, folder), so an interrupted run leaves no half file."""
    offsets = np.cumsum([0, *(len(a) for a in audio)]).astype(np.int64)
    pcm = np.concatenate(audio) if audio else np.zeros(0, np.int16)
    write_cache(path, lambda out: np.savez(out, audio=pcm, offsets=offsets, texts=np.array(texts, dtype=str)))
