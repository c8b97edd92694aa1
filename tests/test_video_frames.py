"""Decoding and sampling video clips: real clips written here with PyAV in three containers, read back
frame by frame (which frames, in what order, cropped how) and broken files named in the error."""
from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from video_files import frame_ids, write_video

from suite.errors import DataError
from tasks.video_data import read_clip, sample_indices

CONTAINERS = [("clip.avi", "mpeg4"), ("clip.mkv", "ffv1"), ("clip.mp4", "libx264")]
"""AVI and MP4 carry a frame count in their header; Matroska does not, so its frames are counted by packet."""


@pytest.mark.parametrize(("name", "codec"), CONTAINERS)
def test_evaluation_takes_the_middle_of_each_segment(tmp_path: Path, name: str, codec: str) -> None:
    clip = read_clip(write_video(tmp_path / name, 40, codec), frames=8, size=24)
    assert clip.shape == (8, 3, 24, 24) and clip.dtype == torch.uint8
    assert frame_ids(clip) == [5 * k + 2 for k in range(8)]  # segments of 5 frames
    assert frame_ids(read_clip(tmp_path / name, 3, 24)) == sample_indices(40, 3).tolist() == [6, 19, 33]


def test_training_takes_a_random_frame_inside_each_segment(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", 40)
    draws = [frame_ids(read_clip(path, 8, 16, np.random.default_rng(seed))) for seed in range(12)]
    for ids in draws:
        assert all(5 * k <= i < 5 * k + 5 for k, i in enumerate(ids)), ids
    assert len({tuple(ids) for ids in draws}) > 6  # they vary with the generator...
    assert len({ids[0] for ids in draws}) == 5  # ...over every frame of a segment
    assert frame_ids(read_clip(path, 8, 16, np.random.default_rng(3))) == draws[3]  # and repeat with its seed


def test_a_short_clip_repeats_frames_in_order(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.mkv", 5, "ffv1")
    for rng in (None, np.random.default_rng(0)):
        ids = frame_ids(read_clip(path, 12, 16, rng))
        assert len(ids) == 12 and ids == sorted(ids) and set(ids) == set(range(5))


def test_sample_indices_stay_inside_uneven_segments() -> None:
    assert sample_indices(10, 3).tolist() == [1, 4, 8]  # segments [0, 3), [3, 6), [6, 10)
    rng = np.random.default_rng(0)
    for total in range(1, 60):
        for frames in (1, 4, 7, 16):
            bounds = np.arange(frames + 1) * total // frames
            for ids in (sample_indices(total, frames), sample_indices(total, frames, rng)):
                assert np.all(np.diff(ids) >= 0) and ids.min() >= 0 and ids.max() < total
                if total >= frames:
                    assert np.all((bounds[:-1] <= ids) & (ids < bounds[1:]))
    with pytest.raises(ValueError):
        sample_indices(0, 4)


def test_the_shorter_side_is_resized_then_the_centre_cropped(tmp_path: Path) -> None:
    def bands(_: int) -> np.ndarray:  # 128 x 64: red, green, green, blue quarters
        pixels = np.zeros((64, 128, 3), np.uint8)
        pixels[:, :32, 0] = pixels[:, 32:96, 1] = pixels[:, 96:, 2] = 200
        return pixels

    clip = read_clip(write_video(tmp_path / "wide.avi", 4, size=(128, 64), image=bands), 2, 32)
    assert clip.shape == (2, 3, 32, 32)
    # 64 x 32 after resizing, so the crop is exactly the green half; yuv420p blurs colour edges by 2 pixels
    inner = clip[:, :, :, 2:-2].float()
    assert (inner[:, 1] > 185).all() and (inner[:, 0] < 15).all() and (inner[:, 2] < 15).all()


def test_a_file_that_ends_before_its_header_count_is_sampled_over_what_it_holds(tmp_path: Path) -> None:
    data = write_video(tmp_path / "full.avi", 40).read_bytes()
    cut = [m.start() for m in re.finditer(b"00dc", data)][20]  # a chunk boundary in the frame data
    path = tmp_path / "cut.avi"
    path.write_bytes(data[:cut])
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 40
        held = sum(1 for _ in container.decode(video=0))
    assert 10 < held < 40
    assert frame_ids(read_clip(path, 8, 16)) == sample_indices(held, 8).tolist()


def test_corrupt_empty_and_missing_files_are_named(tmp_path: Path) -> None:
    garbage, empty, cut = tmp_path / "garbage.avi", tmp_path / "empty.avi", tmp_path / "cut.avi"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    empty.touch()
    frameless = tmp_path / "frameless.avi"  # a valid AVI header and no frame
    with av.open(str(frameless), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 48
        out.start_encoding()
    data = write_video(tmp_path / "full.avi", 40).read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])  # ends inside a frame
    for path in (garbage, empty, cut, frameless, tmp_path / "gone.avi"):
        with pytest.raises(DataError, match=re.escape(str(path))) as err:
            read_clip(path, 8, 16)
        assert "\n" not in str(err.value)
        assert "replace it" in str(err.value) or "restore it" in str(err.value)
