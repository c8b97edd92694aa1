"""Captioning data: the real sources (COCO 2017 from its public location; Flickr8k / Flickr30k placed by
the user in the Karpathy-split JSON format) and a word vocabulary.

Every source yields, per split, image references (file paths, or indices into an in-memory array for the
synthetic scenes) and, per image, all of its reference captions as raw strings.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from suite.archives import extract
from suite.errors import DataError
from suite.fetch import RemoteFile, data_dir, fetch, file_digest
from tasks.caption_metrics import tokenize

SPLITS = ("train", "valid", "test")
COCO_ORIGIN = "http://images.cocodataset.org"
COCO_FILES = {  # md5 of the official 2017 archives
    "annotations": RemoteFile("annotations/annotations_trainval2017.zip", "f4bbac642086de4f52a3fdda2de5fa2c"),
    "train2017": RemoteFile("zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val2017": RemoteFile("zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
}
KARPATHY_SPLIT = {"train": "train", "restval": "train", "val": "valid", "test": "test"}
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


@dataclass
class Captions:
    """One split: image locations (paths, or row indices of an in-memory array) and their references."""

    images: list
    references: list[list[str]]


def words(caption: str) -> list[str]:
    """The caption's tokens exactly as the metrics see them (tasks/caption_metrics.py), so that every
    reference word ("t-shirt", "3.5") can be in the vocabulary and generated."""
    return tokenize(caption).split()


def drop_uncaptioned(splits: dict[str, Captions]) -> tuple[dict[str, Captions], dict[str, int]]:
    """Images with no reference that has a word left are dropped (nothing can score them); counts dropped."""
    out, dropped = {}, {}
    for name, caps in splits.items():
        keep = [i for i, refs in enumerate(caps.references) if any(words(r) for r in refs)]
        out[name] = Captions([caps.images[i] for i in keep], [[r for r in caps.references[i] if words(r)]
                                                              for i in keep])
        dropped[name] = len(caps.images) - len(keep)
        if not keep:
            raise DataError(f"split {name} has no captioned image: check the caption files, or replace them "
                            f"with the official ones")
    return out, dropped


def build_vocab(train: Captions, min_count: int) -> dict[str, int]:
    """The specials, then every training word seen at least `min_count` times (by frequency, then word)."""
    counts = Counter(w for refs in train.references for r in refs for w in words(r))
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return {w: i for i, w in enumerate([*SPECIALS, *kept])}


def karpathy(json_path: Path, image_dir: Path, fix: str) -> dict[str, Captions]:
    """Splits of a Karpathy-format JSON (images with `filename`, `split`, `sentences[].raw`)."""
    if not json_path.is_file():
        raise DataError(f"{json_path} is missing: {fix}")
    try:
        images = json.loads(json_path.read_text(encoding="utf-8"))["images"]
        out = {s: Captions([], []) for s in SPLITS}
        for im in images:
            split = out[KARPATHY_SPLIT[im["split"]]]
            split.images.append(image_dir / im.get("filepath", "") / im["filename"])
            split.references.append([s["raw"].strip() for s in im["sentences"]])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{json_path} is not a Karpathy-split caption JSON ({type(exc).__name__}: {exc}): "
                        f"{fix}") from None
    empty = [s for s, c in out.items() if not c.images]
    if empty:
        raise DataError(f"{json_path} has no images in split(s) {', '.join(empty)}: {fix}")
    return out


def flickr(name: str) -> dict[str, Captions]:
    """Flickr8k / Flickr30k: licence-gated, so the user places the files; the error says which and where."""
    root = data_dir() / name
    fix = (f"{name} needs a licence form and cannot be downloaded: put dataset_{name}.json (Karpathy split, "
           f"from caption_datasets.zip) and the images in {root / 'images'}/, or use --source synthetic")
    splits = karpathy(root / f"dataset_{name}.json", root / "images", fix)
    first = splits["train"].images[0]
    if not first.is_file():
        raise DataError(f"{first} is missing: {fix}")
    return splits


def coco(valid_seed: int) -> dict[str, Captions]:
    """COCO 2017 captions from the official archives; the Karpathy split when dataset_coco.json is in the
    cache folder (its cocoids name the 2017 files), else train2017 for training and val2017 halved into
    valid and test by a permutation fixed by `valid_seed`."""
    root = data_dir() / "coco"
    folders = {}
    for name, remote in COCO_FILES.items():
        archive = fetch(COCO_ORIGIN, remote, "coco")
        folders[name] = extract(archive, archive.parent / name)
    captions: dict[int, list[str]] = {}
    files: dict[int, Path] = {}
    for part in ("train2017", "val2017"):
        ann = folders["annotations"] / "annotations" / f"captions_{part}.json"
        if not ann.is_file():
            raise DataError(f"{ann} is not in {COCO_FILES['annotations'].relpath}: delete {folders['annotations']} "
                            f"to extract it again, or replace the archive with the official file")
        try:
            data = json.loads(ann.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"{ann} is not valid JSON ({exc}): delete {folders['annotations']} and the archive "
                            "beside it, then run again") from None
        for im in data["images"]:
            files[im["id"]] = folders[part] / part / im["file_name"]
        for a in data["annotations"]:
            captions.setdefault(a["image_id"], []).append(a["caption"].strip())
    split_file = root / "dataset_coco.json"
    if split_file.is_file():
        return _coco_karpathy(split_file, files, captions)
    return _coco_default(files, captions, valid_seed)


def _coco_karpathy(split_file: Path, files: dict[int, Path], captions: dict[int, list[str]]) -> dict[str, Captions]:
    """Karpathy's COCO split; its cocoids name the 2017 files (its 2014 file names are not used)."""
    fix = "delete it to use the default split, or replace it with Karpathy's dataset_coco.json"
    out = {s: Captions([], []) for s in SPLITS}
    try:
        for im in json.loads(split_file.read_text(encoding="utf-8"))["images"]:
            if im["cocoid"] in files:
                split = out[KARPATHY_SPLIT[im["split"]]]
                split.images.append(files[im["cocoid"]])
                split.references.append(captions.get(im["cocoid"], []))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{split_file} is not Karpathy's COCO split ({type(exc).__name__}: {exc}): {fix}") from None
    empty = [s for s, c in out.items() if not c.images]
    if empty:
        raise DataError(f"{split_file} names no COCO 2017 image in split(s) {', '.join(empty)}: {fix}")
    return out


def _coco_default(files: dict[int, Path], captions: dict[int, list[str]], seed: int) -> dict[str, Captions]:
    train = sorted(i for i, f in files.items() if f.parent.name == "train2017")
    val = np.array(sorted(i for i, f in files.items() if f.parent.name == "val2017"))
    perm = val[np.random.default_rng(seed).permutation(len(val))]
    half = len(perm) // 2
    parts = {"train": train, "valid": sorted(perm[:half].tolist()), "test": sorted(perm[half:].tolist())}
    return {s: Captions([files[i] for i in ids], [captions.get(i, []) for i in ids]) for s, ids in parts.items()}


def load_image(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) float in [0, 1]: RGB, resized (aspect not kept, as in Show, Attend and Tell)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path} ({exc}): replace it with the dataset's file") from None
    return torch.from_numpy(pixels / 255.0).permute(2, 0, 1)


def file_checksums(dataset: str) -> dict[str, str]:
    """The checksums a record carries: COCO's archive md5s, or the sha256 of the Flickr caption JSON (and of
    a Karpathy split file in use)."""
    root = data_dir() / dataset
    sums = {r.relpath: r.checksum for r in COCO_FILES.values()} if dataset == "coco" else {}
    for name in ("dataset_coco.json", f"dataset_{dataset}.json"):
        if (root / name).is_file():
            sums[name] = file_digest(root / name, "sha256")
    return sums


class LazyImages:
    """A split's images read from their files when indexed, for end-to-end fine-tuning, where features
    cannot be cached: `images[rows]` (a tensor of rows or a slice) -> (b, 3, size, size)."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.shape = paths, (len(paths), 3, size, size)

    def __getitem__(self, rows: torch.Tensor | slice) -> torch.Tensor:
        picked = self.paths[rows] if isinstance(rows, slice) else [self.paths[int(i)] for i in rows]
        return torch.stack([load_image(p, self.shape[-1]) for p in picked])

    def size(self, dim: int) -> int:
        return self.shape[dim]
