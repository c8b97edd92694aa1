"""The espeak-ng speech source: real espeak-ng runs, transcripts, plausible audio, determinism, the cache."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from suite.errors import DataError
from tasks import synthetic_speech
from tasks.synthetic_speech import VOCABULARY, SpeechSource

N = 20


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One isolated data cache for the whole file, so the sets generated once are shared by its tests."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUITE_DATA_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def utterances(cache: Path) -> tuple[list[np.ndarray], list[str]]:
    return SpeechSource(seed=1).sample(N)


def test_transcripts_are_uppercase_sentences_from_the_vocabulary(utterances) -> None:
    _, texts = utterances
    assert len(texts) == N
    for text in texts:
        words = text.split()
        assert text == text.upper() and 3 <= len(words) <= 8 and set(words) <= VOCABULARY, text
    lengths = {len(s.split()) for s in SpeechSource().sentences(500)}
    assert lengths == set(range(3, 9))


def test_audio_is_float32_speech_of_plausible_length(utterances) -> None:
    audio, texts = utterances
    assert len(audio) == N
    for x, text in zip(audio, texts):
        assert x.dtype == np.float32 and x.ndim == 1
        assert 0.2 <= len(x) / 16000 / len(text.split()) <= 0.8, (len(x), text)
        assert np.abs(x).max() <= 1.0 and np.sqrt(np.mean(x**2)) > 0.02


def test_same_stream_repeats_from_the_cache_and_other_streams_differ(cache: Path, utterances) -> None:
    runs = synthetic_speech.espeak_runs
    again = SpeechSource(seed=1).sample(N)
    assert synthetic_speech.espeak_runs == runs  # served from the cache, espeak-ng not run
    assert len(list((cache / "synthetic_speech").glob("*.npz"))) >= 1
    assert again[1] == utterances[1] and all(np.array_equal(a, b) for a, b in zip(again[0], utterances[0]))
    other = SpeechSource(seed=1).sample(N, stream=1)
    assert other[1] != utterances[1] and synthetic_speech.espeak_runs == runs + N


def test_espeak_ng_is_deterministic_so_a_fresh_generation_matches(cache: Path, utterances) -> None:
    for f in (cache / "synthetic_speech").glob("*.npz"):
        f.unlink()
    runs = synthetic_speech.espeak_runs
    audio, texts = SpeechSource(seed=1).sample(N)
    assert synthetic_speech.espeak_runs == runs + N
    assert texts == utterances[1] and all(np.array_equal(a, b) for a, b in zip(audio, utterances[0]))


def test_voices_change_the_audio_but_never_the_sentences(cache: Path) -> None:
    us, us_texts = SpeechSource(voices=("en-us",)).sample(3)
    gb, gb_texts = SpeechSource(voices=("en-gb-scotland",)).sample(3)
    assert us_texts == gb_texts == SpeechSource().sentences(3)
    assert all(len(a) != len(b) or not np.array_equal(a, b) for a, b in zip(us, gb))


def test_missing_espeak_ng_is_a_data_error_with_the_install_hint(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        SpeechSource(seed=7).sample(2)


@pytest.mark.parametrize("bad", [
    {"min_words": 2}, {"min_words": 6, "max_words": 5}, {"max_words": 10}, {"voices": ()},
    {"voices": ("mb-en1",)}, {"speed": (1.1, 0.9)}, {"noise_snr_db": (30.0, 15.0)}, {"sample_rate": 16001},
])
def test_contradictory_settings_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        SpeechSource(**bad)
