"""Rendered scenes of coloured shapes with captions that only the image can tell, for captioning's synthetic source.

A scene is one to `max_objects` shapes (square, circle, triangle, cross) in five well-separated colours and
two sizes, each alone in a cell of a 3x3 grid (jittered inside it, never touching another) over a grey
background of random brightness, with pixel noise. Each image gets `references` captions: different
phrasings of the same scene graph, every one naming every object, so colour, shape, count, size, relation
and position words all vary with the image and a blind decoder can only learn their marginal distribution.

    scene (seed 0, stream 0, item 39): a small red square in the top-right cell, a large yellow triangle
    right below it and a large blue cross in the top-left cell
    refs:   a large blue cross and a large yellow triangle below a small red square
            there is a yellow triangle and a blue cross and a red square
            there is a large blue cross and a yellow triangle below a red square
            a large yellow triangle and a large blue cross left of a red square
            a picture of a large yellow triangle right of a large blue cross and a red square

Captions are lowercase words joined by single spaces, with no final punctuation. A relation ("left of",
"right of", "above", "below") is stated only between two objects whose (colour, shape) is unique in the
scene and whose grid cells differ more along one axis than the other (a pure diagonal gets none), so it holds
for the object centres too. A position ("at the top left", "in the middle") is stated only for a lone object.

`SceneSource.scenes` draws scene graphs, `render` paints them and `captions` phrases them, each from its own
string-seeded stream, so `sample` = render + captions of `scenes` and all three repeat across processes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

GRID = 3
"""Cells per side: coarse enough that left/right/above/below and top/middle/bottom are never in doubt."""
SHAPES = ("square", "circle", "triangle", "cross")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses"}
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.05, 0.05), "green": (0.05, 0.85, 0.05), "blue": (0.10, 0.20, 1.00),
    "yellow": (0.95, 0.95, 0.05), "white": (1.00, 1.00, 1.00),
}
"""Colour word -> RGB; every pair differs by >= 0.9 in some channel and every colour stands off the
background (grey <= 0.3), so a pixel's colour is unambiguous at the default noise."""
SIZES = {"small": 0.28, "large": 0.44}
"""Size word -> half extent as a fraction of a cell. Small >= 0.25 keeps the in-cell jitter under a quarter
cell, so a relation that holds between cells also holds between the jittered centres."""
COUNTS = {1: "a", 2: "two", 3: "three"}
"""Number of same-kind objects -> the word before them; more than three of a kind are never drawn."""
RELATIONS = ("left of", "right of", "above", "below")
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "middle", "right")
_OPENERS = ((0.5, ""), (0.3, "there is"), (0.2, "a picture of"))  # (probability, words); "is" -> "are"
_SIZE_PROB = 0.5  # chance that a noun phrase names the size
_RELATION_PROB = 0.6  # chance that a caption states a relation when the scene has one
_LOCATION_PROB = 0.4  # chance that a lone object's caption names its position

VOCAB: tuple[str, ...] = tuple(sorted({
    *COUNTS.values(), *SIZES, *PALETTE, *SHAPES, *PLURALS.values(), *" ".join(RELATIONS).split(),
    *_ROWS, *_COLS, "and", "there", "is", "are", "picture", "at", "on", "in", "the",
}))
"""Every word a caption can use."""


@dataclass(frozen=True, slots=True)
class SceneObject:
    """One shape of a scene: what it is, which cell holds it and where it is painted, in pixels."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    y: float
    """Centre, in pixel coordinates: pixel (i, j) spans [i, i+1) x [j, j+1), so its centre is (i+.5, j+.5)."""
    x: float
    half: float
    """Half extent in pixels: the shape fits in the square of side 2*half around (y, x)."""

    @property
    def kind(self) -> tuple[str, str]:
        return self.colour, self.shape


Scene = tuple[SceneObject, ...]


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """How `a` lies relative to `b`, when their cells leave no doubt: along the axis they differ most on."""
    rows, cols = a.row - b.row, a.col - b.col
    if abs(cols) > abs(rows):
        return "left of" if cols < 0 else "right of"
    if abs(rows) > abs(cols):
        return "above" if rows < 0 else "below"
    return None


def location(obj: SceneObject) -> str:
    """Where the object's cell lies: "at the top left", "on the right", "in the middle"."""
    row, col = _ROWS[obj.row], _COLS[obj.col]
    if row == col == "middle":
        return "in the middle"
    if row == "middle":
        return f"on the {col}"
    return f"at the {row}" if col == "middle" else f"at the {row} {col}"


def describe(scene: Scene, rng: random.Random) -> str:
    """One caption of `scene`, naming every object: a random opener, optional sizes, maybe one relation."""
    groups: dict[tuple[str, str], list[SceneObject]] = {}
    for obj in scene:
        groups.setdefault(obj.kind, []).append(obj)
    single = [g[0] for g in groups.values() if len(g) == 1]
    pairs = [(a, b) for a in single for b in single if a is not b and relation(a, b)]
    units, counts = [], []  # each unit's words, and how many objects it starts with (for "is"/"are")
    if pairs and rng.random() < _RELATION_PROB:
        a, b = rng.choice(pairs)
        units.append(f"{_phrase([a], rng)} {relation(a, b)} {_phrase([b], rng)}")
        counts.append(1)
        groups = {k: g for k, g in groups.items() if k not in (a.kind, b.kind)}
    units += [_phrase(g, rng) for g in groups.values()]
    counts += [len(g) for g in groups.values()]
    order = rng.sample(range(len(units)), len(units))
    words = " and ".join(units[i] for i in order)
    if len(scene) == 1 and rng.random() < _LOCATION_PROB:
        words += " " + location(scene[0])
    opener = rng.choices([o for _, o in _OPENERS], [p for p, _ in _OPENERS])[0]
    if opener == "there is" and counts[order[0]] > 1:
        opener = "there are"
    return f"{opener} {words}" if opener else words


def _phrase(group: list[SceneObject], rng: random.Random) -> str:
    """A noun phrase for objects of one kind: "a small red circle", "two green triangles"."""
    colour, shape = group[0].kind
    sizes = {obj.size for obj in group}
    size = f"{group[0].size} " if len(sizes) == 1 and rng.random() < _SIZE_PROB else ""
    noun = shape if len(group) == 1 else PLURALS[shape]
    return f"{COUNTS[len(group)]} {size}{colour} {noun}"


def references(scene: Scene, k: int, rng: random.Random) -> list[str]:
    """`k` captions of `scene`, distinct where the scene allows that many phrasings."""
    refs: list[str] = []
    for attempt in range(3 * k):  # a repeat is kept only after 2k tries, so a lone "two red circles" ends fast
        caption = describe(scene, rng)
        if caption not in refs or attempt >= 2 * k:
            refs.append(caption)
        if len(refs) == k:
            break
    return refs


@dataclass(frozen=True)
class SceneSource:
    """Seeded generator of (image, reference captions) pairs of rendered shape scenes."""

    seed: int = 0
    image_size: int = 32
    """Height and width in pixels; shapes scale with it (a small one is about 6 pixels across at 32)."""
    max_objects: int = 3
    """Most shapes per scene; the count is uniform over 1..max_objects, each shape in its own grid cell."""
    references: int = 5
    """Captions per image, different phrasings of the same scene graph."""
    noise: float = 0.1
    """Standard deviation of the uniform noise added to every pixel and channel before clipping to [0, 1];
    bounded by sqrt(3) * noise (0.17 by default), well under half the gap between two palette colours."""
    repeat_prob: float = 0.3
    """Chance that a shape after the first copies the colour and shape of an earlier one, which makes
    counted phrases ("two green triangles") common enough to learn."""

    def __post_init__(self) -> None:
        if self.image_size < 8 * GRID:
            raise ValueError(f"image_size must be at least {8 * GRID}, got {self.image_size}")
        if not 1 <= self.max_objects <= max(COUNTS):
            raise ValueError(f"max_objects must lie in 1..{max(COUNTS)}, got {self.max_objects}")
        if self.references < 1 or self.noise < 0 or not 0.0 <= self.repeat_prob <= 1.0:
            raise ValueError("need references >= 1, noise >= 0 and repeat_prob in [0, 1]")

    def sample(self, n: int, stream: int = 0) -> tuple[np.ndarray, list[list[str]]]:
        """`n` images (n, 3, H, W) float32 in [0, 1] and their reference captions, from stream `stream`."""
        scenes = self.scenes(n, stream)
        return self.render(scenes, stream), self.captions(scenes, stream)

    def scenes(self, n: int, stream: int = 0) -> list[Scene]:
        """The scene graphs behind `sample(n, stream)`."""
        rng = random.Random(f"{self.seed}/{stream}")  # str seeds hash deterministically across runs
        return [self._scene(rng) for _ in range(n)]

    def captions(self, scenes: list[Scene], stream: int = 0) -> list[list[str]]:
        """`references` captions per scene, drawn from the caption stream of `stream`."""
        rng = random.Random(f"{self.seed}/{stream}/captions")
        return [references(scene, self.references, rng) for scene in scenes]

    def render(self, scenes: list[Scene], stream: int = 0) -> np.ndarray:
        """Paint `scenes` as (n, 3, H, W) float32 in [0, 1]: a colour label per pixel, then noise."""
        size = self.image_size
        labels = np.zeros((len(scenes), size, size), dtype=np.uint8)  # (N, H, W), 0 = background
        coords = np.arange(size, dtype=np.float32) + 0.5
        for slot in range(self.max_objects):  # one vectorised pass per object slot
            index = np.array([i for i, s in enumerate(scenes) if len(s) > slot], dtype=np.int64)
            if index.size == 0:
                break
            objs = [scenes[i][slot] for i in index]
            label = np.array([_COLOURS.index(o.colour) + 1 for o in objs], dtype=np.uint8)[:, None, None]
            labels[index] = np.where(_masks(objs, coords), label, labels[index])
        rng = np.random.default_rng(random.Random(f"{self.seed}/{stream}/pixels").getrandbits(64))
        grey = rng.uniform(0.0, 0.3, size=(len(scenes), 1, 1)).astype(np.float32)  # background brightness
        images = np.empty((len(scenes), 3, size, size), dtype=np.float32)
        for c in range(3):
            images[:, c] = _TABLE[:, c][labels]
            np.copyto(images[:, c], grey, where=labels == 0)
        if self.noise:  # uniform with standard deviation `noise`: bounded, and 4x faster than Gaussian
            spread = self.noise * 3**0.5
            noise = rng.random(images.shape, dtype=np.float32)
            noise *= 2 * spread
            noise -= spread
            images += noise
        return np.clip(images, 0.0, 1.0, out=images)

    def _scene(self, rng: random.Random) -> Scene:
        cell = self.image_size / GRID
        objs: list[SceneObject] = []
        for where in rng.sample(range(GRID * GRID), rng.randint(1, self.max_objects)):
            if objs and rng.random() < self.repeat_prob:
                colour, shape = rng.choice(objs).kind
            else:
                colour, shape = rng.choice(_COLOURS), rng.choice(SHAPES)
            size = rng.choice(_SIZE_WORDS)
            half = SIZES[size] * cell
            room = max(0.0, cell / 2 - half - 0.5)  # keep half a pixel clear of the cell's edge
            row, col = divmod(where, GRID)
            y, x = ((v + 0.5) * cell + rng.uniform(-room, room) for v in (row, col))
            objs.append(SceneObject(shape, colour, size, row, col, y, x, half))
        return tuple(objs)


def _masks(objs: list[SceneObject], coords: np.ndarray) -> np.ndarray:
    """(B, H, W) pixel masks of one object per image; pixel centres at `coords` along each axis."""
    ry = coords[None, :, None] - np.array([o.y for o in objs], np.float32)[:, None, None]  # (B, H, 1), down is +
    dy = np.abs(ry)
    dx = np.abs(coords[None, None, :] - np.array([o.x for o in objs], np.float32)[:, None, None])  # (B, 1, W)
    h = np.array([o.half for o in objs], np.float32)[:, None, None]  # (B, 1, 1)
    shapes = np.array([SHAPES.index(o.shape) for o in objs])
    mask = np.zeros((len(objs), coords.size, coords.size), dtype=bool)
    for k, shape in enumerate(SHAPES):
        sel = shapes == k
        if not sel.any():
            continue
        y, s, x, r = dy[sel], ry[sel], dx[sel], h[sel]
        if shape == "square":
            mask[sel] = (y <= r) & (x <= r)
        elif shape == "circle":
            mask[sel] = y * y + x * x <= r * r
        elif shape == "triangle":  # apex up: half width grows from 0 at the top to `half` at the base
            mask[sel] = (y <= r) & (2 * x <= s + r)
        else:  # cross: two bars a third of the extent thick
            mask[sel] = ((y <= r) & (x <= r / 3)) | ((y <= r / 3) & (x <= r))
    return mask


# Fixed orders for rng.choice: dict order is insertion order, so draws do not depend on hashing.
_COLOURS = tuple(PALETTE)
_TABLE = np.array([(0.0, 0.0, 0.0), *PALETTE.values()], dtype=np.float32)  # label -> RGB; label 0 is painted grey
_SIZE_WORDS = tuple(SIZES)
