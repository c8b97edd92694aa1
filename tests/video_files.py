"""Real video files written with PyAV for the video tests: each frame a flat grey whose level codes its
index, so that the frames read back can be told apart."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch

STEP = 6
"""Grey levels between consecutive frames (40 frames fit in 16..250): mpeg4 and the RGB-YUV round trip move a
flat frame by up to 2 levels."""


def write_video(path: Path, count: int, codec: str = "mpeg4", size: tuple[int, int] = (64, 48),
                image: Callable[[int], np.ndarray] | None = None) -> Path:
    """A 25 fps clip of `count` frames; frame i is flat grey 16 + STEP * i unless `image(i)` says otherwise."""
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2_000_000  # mpeg4's default 200 kb/s drifts flat frames by up to 3 levels
        for i in range(count):
            pixels = image(i) if image else np.full((height, width, 3), 16 + STEP * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode())
    return path


def frame_ids(clip: torch.Tensor) -> list[int]:
    """The index each returned frame codes, checked to be a clean read of one frame's grey level."""
    levels = (clip.float().mean(dim=(1, 2, 3)) - 16) / STEP
    assert (levels - levels.round()).abs().max() < 0.4, levels
    return levels.round().int().tolist()

