"""Clips of coloured shapes that move, grow, change colour, rotate or blink, tagged by what only frame ORDER tells.

A clip is `frames` RGB frames of `size` x `size` pixels: a dark grey background of random brightness, one to
`max_objects` shapes (right triangle, ell, tee: none looks the same after any turn short of a full one) and
Gaussian pixel noise drawn anew for every frame. Every object changes in at least one of six ways, each of
which is one attribute going from a start value to an end value linearly over the clip; the direction of the
change is the tag:

    attribute     rises            falls
    x             moves-right      moves-left
    y             moves-down       moves-up        (image rows grow downwards)
    half size     grows            shrinks
    angle         rotates-cw       rotates-ccw     (clockwise as seen on screen)
    visibility    appears          disappears      (absent, then present from a drawn frame on; or the reverse)
    red channel   turns-red        turns-blue      (a colour change is always blue -> red or red -> blue)

A clip's labels are the union of its objects' tags, so every clip has at least one and two objects may give
both tags of a pair. For example (seed 0, stream 0, `max_objects=1`), clip 3 is a blue triangle that slides
right across the middle while it doubles in size and turns a quarter clockwise: moves-right, grows, rotates-cw.

Why the mean of the frames cannot tell a tag from its reverse: an attribute's value at frame t is
`start * a[t] + end * b[t]` with weights that mirror each other (a[t] == b[frames-1-t]), and every change is
drawn as an unordered (low, high) pair put in a random order. Swapping start and end therefore paints exactly the clip
played backwards (pixel for pixel before the noise, which is as likely either way), with every tag replaced by
its REVERSE, and that swapped clip is exactly as likely as the original. Playing a clip backwards leaves the
mean of its frames unchanged, so for any mean image the clips behind it come in reversal pairs of equal
probability: a classifier on the mean sees "moves sideways" but must give moves-left and moves-right the same
score. Features that keep order (the mean of the first half next to the mean of the second half, or a recurrent
model over the frames) separate them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

ATTRIBUTES: dict[str, tuple[str, str]] = {
    "x": ("moves-right", "moves-left"),
    "y": ("moves-down", "moves-up"),
    "half": ("grows", "shrinks"),
    "angle": ("rotates-cw", "rotates-ccw"),
    "visibility": ("appears", "disappears"),
    "red": ("turns-red", "turns-blue"),
}
"""Each attribute that can change -> (its tag when it rises over the clip, its tag when it falls)."""
TAGS: tuple[str, ...] = tuple(tag for pair in ATTRIBUTES.values() for tag in pair)
"""Label columns, in this fixed order."""
REVERSE: dict[str, str] = {**{r: f for r, f in ATTRIBUTES.values()}, **{f: r for r, f in ATTRIBUTES.values()}}
"""Each tag -> the tag of the same clip played backwards (rises and falls swap; no tag is its own reverse)."""

Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""A shape's test: which points (u, w) in its own coordinates (any shape, the shape inside [-1, 1]^2) it covers."""
SHAPES: dict[str, Inside] = {
    # right-angled, the right angle at the bottom left (w >= u already keeps u <= 1 and w >= -1)
    "triangle": lambda u, w: (u >= -1) & (w <= 1) & (w >= u),
    # a bar down the left side and one along the bottom, each a third of the extent thick
    "ell": lambda u, w: (np.maximum(np.abs(u), np.abs(w)) <= 1) & ((u <= -1 / 3) | (w >= 1 / 3)),
    # a bar along the top and a stem down the middle
    "tee": lambda u, w: (np.maximum(np.abs(u), np.abs(w)) <= 1) & ((w <= -1 / 3) | (np.abs(u) <= 1 / 3)),
}
"""Shape name -> its test. None looks the same after any turn short of a full one, so a rotation's direction shows."""
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "blue": (40, 70, 240), "green": (40, 200, 60), "yellow": (230, 220, 50),
    "white": (235, 235, 235),
}
"""Colour name -> RGB; an object that does not change colour has any of them, one that does goes red <-> blue."""
CHANGE_PROB = 0.35
"""Chance that each attribute of an object changes; an object that drew no change gets one at random."""
_CENTRE = (0.2, 0.8)  # centres stay in this span of the frame (fractions of `size`)
_STEP = (0.3, 0.6)  # a move covers this fraction of `size`
_HALF = {"static": (0.11, 0.16), "low": (0.08, 0.11), "high": (0.16, 0.20)}  # half extents, fractions of `size`
_TURN = (np.pi / 3, 2 * np.pi / 3)  # a rotation turns by this many radians
_SWITCH = (0.25, 0.75)  # visibility threshold: an appearing object shows once this fraction of the clip is past
_BACKGROUND = 48  # the background's grey level is drawn from 0..this
_CHUNK = 64  # clips per step of the noise pass


@dataclass(frozen=True)
class VideoSource:
    """Seeded generator of (clip, multi-label tags) pairs whose tags come in time-reversal pairs."""

    seed: int = 0
    frames: int = 12
    """Frames per clip; at least 4, so that appearing and disappearing objects show for a while either way."""
    size: int = 32
    """Height and width in pixels; shapes and moves scale with it (a shape is 5 to 13 pixels across at 32)."""
    max_objects: int = 2
    """Most objects per clip; the count is uniform over 1..max_objects and later objects are drawn on top."""
    noise: float = 6.0
    """Standard deviation of the Gaussian noise on every pixel, channel and frame, in 0..255 units."""

    def __post_init__(self) -> None:
        if self.frames < 4:
            raise ValueError(f"frames must be at least 4, got {self.frames}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16, got {self.size}")
        if not 1 <= self.max_objects <= 4:
            raise ValueError(f"max_objects must lie in 1..4, got {self.max_objects}")
        if not 0.0 <= self.noise <= 64.0:
            raise ValueError(f"noise must lie in 0..64, got {self.noise}")

    def sample(self, n: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` clips (n, frames, 3, size, size) uint8 and their tags (n, len(TAGS)) bool, from stream `stream`.

        The same (seed, stream, n) gives the same arrays in any process; use one stream per split.
        """
        rng = np.random.default_rng([self.seed, stream])
        count = rng.integers(1, self.max_objects + 1, size=n)  # (n,)
        exists = np.arange(self.max_objects) < count[:, None]  # (n, K)
        ends, shape, switch = _draw_objects(rng, n * self.max_objects, self.size)  # ends: (n*K, 2, A)
        ends = ends.reshape(n, self.max_objects, 2, _ATTRS)  # (n, K, 2, A): start and end of each attribute
        rises = np.sign(ends[:, :, 1, : _RED + 1] - ends[:, :, 0, : _RED + 1])  # (n, K, 6): +1 rises, -1 falls
        tags = np.stack([rises == 1, rises == -1], axis=-1)  # (n, K, 6, 2), columns in TAGS order
        labels = (tags.reshape(*exists.shape, len(TAGS)) & exists[:, :, None]).any(axis=1)  # (n, len(TAGS))
        clips = self._render(ends, shape.reshape(exists.shape), switch.reshape(exists.shape), exists, rng)
        return clips, labels

    def _render(self, ends: np.ndarray, shape: np.ndarray, switch: np.ndarray, exists: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
        """Paint objects (ends: (n, K, 2, A)) over each clip's background, bottom slot first, then add noise."""
        n, frames, size = len(ends), self.frames, self.size
        t = np.arange(frames)
        a, b = ((frames - 1 - t) / (frames - 1))[:, None], (t / (frames - 1))[:, None]  # (T, 1): a[t] == b[-1-t]
        # (n, K, T, A) every attribute at every frame; two products and one sum (no fused multiply-add), so
        # swapping start and end gives bit for bit the same values in reverse frame order
        values = ends[:, :, 0, None] * a + ends[:, :, 1, None] * b
        clips = np.empty((n, frames, 3, size, size), dtype=np.uint8)
        clips[:] = rng.integers(0, _BACKGROUND + 1, size=n, dtype=np.uint8)[:, None, None, None, None]
        for k in range(ends.shape[1]):
            shown = exists[:, k, None] & (values[:, k, :, _VIS] >= switch[:, k, None])  # (n, T)
            _paint(clips, values[:, k], shape[:, k], shown)
        _add_noise(clips, self.noise, rng)
        return clips


def _draw_objects(rng: np.random.Generator, m: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attribute ends (m, 2, A) (A = x, y, half, angle, visibility, red, green, blue), shapes (m,), switches (m,).

    A changing attribute draws an unordered (low, high) pair and a fair coin for its order, which is what makes a
    clip and its reverse equally likely; an unchanging one has start == end.
    """
    change = rng.random((m, len(ATTRIBUTES))) < CHANGE_PROB  # (m, 6)
    idle = np.flatnonzero(~change.any(axis=1))
    change[idle, rng.integers(0, len(ATTRIBUTES), size=idle.size)] = True
    flip = rng.random((m, len(ATTRIBUTES))) < 0.5  # (m, 6): the pair runs high -> low
    low, high, still = _ranges(rng, m, size)  # (m, A) each; below, green and blue change along with red
    change, flip = (np.concatenate([f, f[:, -1:], f[:, -1:]], axis=1) for f in (change, flip))
    start = np.where(change, np.where(flip, high, low), still)  # (m, A)
    end = np.where(change, np.where(flip, low, high), still)
    shape = rng.integers(0, len(SHAPES), size=m)
    return np.stack([start, end], axis=1), shape, rng.uniform(*_SWITCH, size=m)


def _ranges(rng: np.random.Generator, m: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each attribute's low and high end should it change, and its value should it not: (m, A) each."""
    def uniform(span: tuple[float, float], scale: float = size) -> np.ndarray:
        return rng.uniform(span[0] * scale, span[1] * scale, size=m)

    low, high, still = np.zeros((3, m, _ATTRS))
    for a in (_X, _Y):  # a move of drawn length that stays inside the centre span
        step = uniform(_STEP)
        low[:, a] = rng.uniform(_CENTRE[0] * size, _CENTRE[1] * size - step)
        high[:, a], still[:, a] = low[:, a] + step, uniform(_CENTRE)
    low[:, _HALF_], high[:, _HALF_], still[:, _HALF_] = (uniform(_HALF[k]) for k in ("low", "high", "static"))
    low[:, _ANGLE] = still[:, _ANGLE] = uniform((0.0, 2 * np.pi), 1.0)
    high[:, _ANGLE] = low[:, _ANGLE] + uniform(_TURN, 1.0)
    high[:, _VIS] = still[:, _VIS] = 1.0  # 0 hidden, 1 shown: an object is drawn while this is >= its switch
    low[:, _RED:], high[:, _RED:] = PALETTE["blue"], PALETTE["red"]
    still[:, _RED:] = np.array(list(PALETTE.values()))[rng.integers(0, len(PALETTE), size=m)]
    return low, high, still


def _reach(size: int) -> int:
    """Pixels from a shape's centre to its farthest point, rounded up: the half width of a drawing window."""
    return int(np.ceil(_HALF["high"][1] * size * np.sqrt(2)))


def _paint(canvas: np.ndarray, values: np.ndarray, shape: np.ndarray, shown: np.ndarray) -> None:
    """Paint one object per clip (values: (n, T, A), shape: (n,)) into `canvas` (n, T, 3, H, W) where `shown`."""
    _, frames, _, rows, cols = canvas.shape
    flat = canvas.reshape(-1)  # a view: canvas is contiguous
    for k, inside in enumerate(SHAPES.values()):  # one shape at a time: its test runs on whole arrays
        clip, frame = np.nonzero(shown & (shape == k)[:, None])  # (V,) each: the visible (clip, frame) pairs
        v = values[clip, frame].astype(np.float32)  # (V, A)
        hit, y, x = _cover(v, inside, rows)  # (P,) each: painted pixels
        pixel = ((clip[hit] * frames + frame[hit]) * 3 * rows + y) * cols + x  # (P,) flat index, red channel
        for c in range(3):
            flat[pixel + c * rows * cols] = np.rint(v[hit, _RED + c]).astype(np.uint8)


def _cover(v: np.ndarray, inside: Inside, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels that shapes at v (V, A) cover in a size x size frame: (entry, row, column), (P,) each.

    Only a (W, W) window around each centre is tested, not the whole frame: about half the pixels at size 32.
    """
    reach = _reach(size)
    offsets = np.arange(-reach, reach + 1)  # (W,) window rows and columns around the centre's pixel
    top, left = np.floor(v[:, _Y]).astype(np.int64), np.floor(v[:, _X]).astype(np.int64)  # (V,) centre pixels
    dy = (top[:, None] + offsets + 0.5 - v[:, _Y, None]).astype(np.float32)[:, :, None]  # (V, W, 1) pixel
    dx = (left[:, None] + offsets + 0.5 - v[:, _X, None]).astype(np.float32)[:, None, :]  # (V, 1, W) - centre
    cos = (np.cos(v[:, _ANGLE]) / v[:, _HALF_])[:, None, None]  # (V, 1, 1), scaled to a unit half extent
    sin = (np.sin(v[:, _ANGLE]) / v[:, _HALF_])[:, None, None]
    u = cos * dx + sin * dy  # (V, W, W) the pixel offset turned back by the angle (clockwise on screen) and
    w = cos * dy - sin * dx  # scaled: shape coordinates, u to the right and w down, the shape inside [-1, 1]^2
    hit, row, col = np.nonzero(inside(u, w))
    y, x = top[hit] + offsets[row], left[hit] + offsets[col]
    keep = (y >= 0) & (y < size) & (x >= 0) & (x < size)  # a shape near the edge may reach out of the frame
    return hit[keep], y[keep], x[keep]


def _add_noise(clips: np.ndarray, std: float, rng: np.random.Generator) -> None:
    """Add Gaussian noise of standard deviation `std` to `clips` (n, T, 3, H, W) uint8 in place, then round and clip.

    The noise is read from a table of 256 normal quantiles with random bytes as indices (several times faster
    than drawing normals, and Gaussian to the eye), a few clips at a time so the int16 buffer stays in cache.
    """
    if std == 0:
        return
    z = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)])
    table = np.rint(z / z.std() * std).astype(np.int16)  # (256,)
    for i in range(0, len(clips), _CHUNK):
        out = clips[i : i + _CHUNK].astype(np.int16)  # (chunk, T, 3, H, W)
        out += table[rng.integers(0, 256, size=out.shape, dtype=np.uint8)]
        clips[i : i + _CHUNK] = np.clip(out, 0, 255, out=out)


_X, _Y, _HALF_, _ANGLE, _VIS, _RED = range(6)  # columns of the attribute arrays; green and blue follow red
_ATTRS = 8
