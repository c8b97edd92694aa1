"""LibriSpeech data: real FLACs in the official layout, features, duration batches, checksum table."""
from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from suite.errors import DataError
from suite.fetch import RemoteFile
from tasks import librispeech_data as ls
from tasks.librispeech_data import (
    LogMel,
    SpecAugment,
    duration_buckets,
    load_audio,
    read_subset,
    stack_frames,
    subset_dir,
)

RATE = 16_000
# (speaker, chapter) -> {utterance number: (seconds, transcript)}
CORPUS = {
    ("103", "1240"): {0: (0.5, "CHAPTER ONE MISSUS RACHEL"), 1: (1.25, "HE HOPED THERE WOULD BE STEW")},
    ("19", "198"): {3: (0.8, "NORTHANGER ABBEY")},
}


@pytest.fixture(autouse=True)
def _cache(cache: Path) -> Path:
    return cache


def write_subset(root: Path) -> Path:
    """A tiny subset folder `root` in the official layout: sine (odd) and noise (even) FLACs."""
    rng = np.random.default_rng(0)
    for (speaker, chapter), utts in CORPUS.items():
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for n, (seconds, text) in utts.items():
            utt_id = f"{speaker}-{chapter}-{n:04d}"
            t = np.arange(int(seconds * RATE)) / RATE
            wave = 0.5 * np.sin(2 * np.pi * 440 * t) if n % 2 else 0.1 * rng.standard_normal(len(t))
            sf.write(folder / f"{utt_id}.flac", wave.astype(np.float32), RATE)
            lines.append(f"{utt_id} {text}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_read_subset_finds_every_utterance(tmp_path: Path) -> None:
    utts = read_subset(write_subset(tmp_path / "dev-clean"))
    expected = {f"{s}-{c}-{n:04d}": v for (s, c), u in CORPUS.items() for n, v in u.items()}
    assert [u.id for u in utts] == sorted(expected)
    for u in utts:
        seconds, text = expected[u.id]
        assert u.transcript == text
        assert u.duration == pytest.approx(seconds, abs=1e-3)
        assert u.path.is_file() and u.path.name == f"{u.id}.flac"
    wave = load_audio(utts[0].path)
    assert wave.dtype == torch.float32 and wave.shape == (int(utts[0].duration * RATE),)


def test_missing_flac_is_named(tmp_path: Path) -> None:
    root = write_subset(tmp_path / "dev-clean")
    gone = root / "19" / "198" / "19-198-0003.flac"
    gone.unlink()
    with pytest.raises(DataError, match=re.escape(str(gone))) as err:
        read_subset(root)
    assert "\n" not in str(err.value) and "--source synthetic" in str(err.value)


def test_garbage_flac_is_named(tmp_path: Path) -> None:
    root = write_subset(tmp_path / "dev-clean")
    bad = root / "103" / "1240" / "103-1240-0001.flac"
    bad.write_bytes(b"not a flac file" * 20)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        read_subset(root)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load_audio(bad)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dev-clean").mkdir()
    with pytest.raises(DataError, match="dev-clean"):
        read_subset(tmp_path / "dev-clean")
    with pytest.raises(DataError, match="official layout"):
        subset_dir("dev-clean", tmp_path)


def test_existing_copy_is_found_at_any_level(tmp_path: Path) -> None:
    root = write_subset(tmp_path / "LibriSpeech" / "dev-clean")
    for given in (tmp_path, tmp_path / "LibriSpeech", root):
        assert subset_dir("dev-clean", given) == root


def test_download_extracts_the_official_layout(tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    write_subset(tmp_path / "src" / "LibriSpeech" / "dev-clean")
    site = tmp_path / "site"
    site.mkdir()
    with tarfile.open(site / "dev-clean.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "LibriSpeech", arcname="LibriSpeech")
    sha = hashlib.sha256((site / "dev-clean.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(ls.SUBSETS, "dev-clean", RemoteFile("dev-clean.tar.gz", sha))
    monkeypatch.setattr(ls, "ORIGIN", serve(site).url)
    root = subset_dir("dev-clean")
    assert len(read_subset(root)) == 3
    (root / "19" / "198" / "19-198-0003.flac").unlink()
    with pytest.raises(DataError, match=r"delete .*librispeech/dev-clean and run again"):
        read_subset(root)


def test_log_mel_shape_and_normalisation() -> None:
    torch.manual_seed(0)
    samples = 16_037
    wave = 0.1 * torch.randn(samples) + 0.3 * torch.sin(torch.arange(samples) * 2 * torch.pi * 300 / RATE)
    feats = LogMel()(wave)
    assert feats.shape == (1 + samples // 160, 80)
    assert feats.mean(0).abs().max() < 1e-4
    assert (feats.std(0, correction=0) - 1).abs().max() < 1e-3
    assert torch.isfinite(LogMel()(torch.zeros(1600))).all()  # digital silence


def test_stack_frames() -> None:
    x = torch.arange(10 * 4.0).reshape(10, 4)
    y = stack_frames(x, 3)
    assert y.shape == (3, 12)
    assert torch.equal(y[1], x[3:6].reshape(-1))
    assert torch.equal(stack_frames(x, 1), x)


def test_spec_augment_masks_whole_bands_and_is_seeded() -> None:
    wave = torch.randn(3 * RATE, generator=torch.Generator().manual_seed(1))
    plain, augment = LogMel()(wave), SpecAugment()
    torch.manual_seed(7)
    first = augment(plain)
    torch.manual_seed(7)
    again = augment(plain)
    assert torch.equal(first, again)
    assert first.shape == plain.shape
    masked = first != plain
    assert (first[masked] == 0).all()  # masked cells hold the channel mean
    # whole bands of channels and runs of frames: a masked cell's row or column is masked throughout
    rows, cols = masked.all(dim=1), masked.all(dim=0)
    assert rows.any() and cols.any()
    assert torch.equal(masked, rows[:, None] | cols[None, :])


def padding_waste(batches: list[np.ndarray], durations: np.ndarray) -> float:
    padded = sum(len(b) * durations[b].max() for b in batches)
    return padded / durations.sum() - 1


def test_duration_buckets() -> None:
    rng = np.random.default_rng(0)
    durations = np.append(rng.uniform(1.0, 20.0, 500), 100.0)  # one utterance longer than the cap
    cap = 60.0
    batches = duration_buckets(durations, cap, np.random.default_rng(1))
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(durations)))
    for b in batches:
        assert durations[b].sum() <= cap or len(b) == 1
    assert [len(b) for b in batches if 500 in b] == [1]
    shuffled = np.random.default_rng(2).permutation(len(durations))
    random_batches = np.array_split(shuffled, len(batches))
    bucketed, random = padding_waste(batches, durations), padding_waste(random_batches, durations)
    assert bucketed < 0.25 * random, (bucketed, random)
    again = duration_buckets(durations, cap, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert duration_buckets(np.array([]), cap, rng) == []


def test_checksum_table() -> None:
    assert set(ls.SUBSETS) == {"train-clean-100", "train-clean-360", "train-other-500",
                               "dev-clean", "dev-other", "test-clean", "test-other"}
    for name, remote in ls.SUBSETS.items():
        assert remote.relpath == f"{name}.tar.gz"
        assert re.fullmatch(r"[0-9a-f]{32}|[0-9a-f]{64}", remote.checksum)
    assert len({r.checksum for r in ls.SUBSETS.values()}) == 7
