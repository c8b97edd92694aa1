"""Grid features of an ImageNet CNN, and a disk cache of them shared by every task that encodes images.

`GridEncoder` cuts a torchvision ResNet before its global pooling, so an image becomes a grid of
N = h*w feature vectors (resnet50 at 224x224: 7x7 cells of 2048 channels). `cached_features` runs a
frozen encoder over a whole image set once and keeps the result in suite/array_cache.py's cache:
float16 by default (resnet50 at 224x224: 49 x 2048 x 2 B = 196 KiB per image), memory-mapped on load.
A captioning task passes still images; a video task passes frames.
"""
from __future__ import annotations

import difflib
import hashlib
import math
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

from suite.array_cache import array_key, array_path, cached_array
from suite.errors import DataError, UserError
from suite.fetch import file_digest

ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101")
"""torchvision models an encoder can wrap; all share the stage names and the stride below."""
STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
"""The ResNet children kept: everything before `avgpool` and `fc`. `layer4` is the last residual stage."""
STRIDE = 32
"""Pixels per grid cell: a HxW image gives a ceil(H/32) x ceil(W/32) grid."""
RANDOM_INIT_SEED = 0
FORMAT_VERSION = 1
"""Part of every cache key: bump it when the meaning of a cache file changes (cut point, normalisation)."""
DTYPES = {torch.float16: np.float16, torch.float32: np.float32}
"""Storage dtypes of the cache. float16 halves the disk and keeps ~3 significant digits, enough for
post-ReLU grid features; values beyond its 65504 maximum (a random-init resnet101 reaches ~3e5) are
refused, not stored as inf: use float32 there."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageSource = Callable[[slice], Tensor] | Iterable[Tensor]
"""Images as `source(slice(start, stop)) -> (b, 3, H, W)`, or an iterable of such batches in order."""


@dataclass(frozen=True)
class Weights:
    """The weights an encoder starts from, and what a results record says about them."""

    state_dict: dict[str, Tensor] | None
    """The whole torchvision model's state dict (with `fc`), or None for a random init."""
    tag: str
    """"IMAGENET1K_V2", "unverified:<file name>" (a file whose sha256 differs from the published one),
    or "random-init-seed-0"."""
    sha256_prefix: str | None
    """First 16 hex digits of the file's sha256; None for a random init (the encoder hashes its tensors)."""
    description: str
    """One human line: what was loaded from where, or which path held no ImageNet weights."""


def load_weights(name: str, *, allow_download: bool = False) -> Weights:
    """ImageNet weights of `name` from torch hub's cache (`torch.hub.get_dir()/checkpoints`), the
    DEFAULT version first; downloaded only with `allow_download`; otherwise, or when the download fails, a
    random init (said on stderr and in the description)."""
    enum = _weights_enum(name)
    choices = [enum.DEFAULT] + [w for w in reversed(list(enum)) if w != enum.DEFAULT]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in choices:
        path = folder / _file_name(weights.url)
        if path.is_file():
            return _read_weights(path, weights)
    failed = ""
    if allow_download:
        try:
            _download(enum.DEFAULT.url, folder)
            return _read_weights(folder / _file_name(enum.DEFAULT.url), enum.DEFAULT)
        except DataError as err:  # offline: fall back to a random init, and say why
            failed = f"; {err}"
    others = "".join(f" or {_file_name(w.url)}" for w in choices[1:])
    description = f"random init (no ImageNet weights in {folder / _file_name(enum.DEFAULT.url)}{others}{failed})"
    print(f"{name}: {description}", file=sys.stderr)
    return Weights(None, f"random-init-seed-{RANDOM_INIT_SEED}", None, description)


def _download(url: str, folder: Path) -> None:
    print(f"downloading {url} -> {folder}", file=sys.stderr)
    try:
        torch.hub.load_state_dict_from_url(url, model_dir=str(folder), progress=False, check_hash=True)
    except OSError as err:  # URLError and timeouts; a bad hash is a RuntimeError and says so itself
        raise DataError(f"cannot download {url} ({err}): put {_file_name(url)} in {folder}") from err


def _weights_enum(name: str) -> type[torchvision.models.WeightsEnum]:
    if name not in ENCODERS:
        close = difflib.get_close_matches(name, ENCODERS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(ENCODERS)}"
        raise UserError(f"unknown encoder {name!r}: {hint}")
    return torchvision.models.get_model_weights(name)


def _file_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _read_weights(path: Path, weights: torchvision.models.WeightsEnum) -> Weights:
    """Load a state dict file; a sha256 that differs from the one in its published name is loaded but
    not recorded as the official weights."""
    digest = file_digest(path, "sha256")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and tensor errors alike mean a damaged file
        raise DataError(f"{path} is not a readable state dict ({err}): delete it or replace it") from err
    published = re.search(r"-([0-9a-f]+)\.pth$", path.name)
    if published and digest.startswith(published.group(1)):
        return Weights(state, weights.name, digest[:16], f"{weights.name} from {path} (sha256 {digest[:16]})")
    note = f"{path} loaded, but its sha256 {digest[:16]} is not the published {weights.name}"
    print(f"warning: {note}", file=sys.stderr)
    return Weights(state, f"unverified:{path.name}", digest[:16], note)


class GridEncoder(nn.Module):
    """A ResNet without its pooling and classifier: images (B, 3, H, W) in [0, 1] -> grid (B, N, D), or with
    `pooled` its global average: (B, 1, D), one vector per image (video frames; 49x less to cache).

    Every parameter is frozen unless `trainable_last_block`, which leaves `layer4` trainable. Frozen
    stages stay in eval mode even under `.train()`: their BatchNorm statistics belong to the weights.
    """

    def __init__(self, name: str = "resnet50", *, trainable_last_block: bool = False,
                 allow_download: bool = False, pooled: bool = False) -> None:
        super().__init__()
        weights = load_weights(name, allow_download=allow_download)
        with torch.random.fork_rng(devices=[]):  # a fixed init that leaves the caller's RNG untouched
            torch.manual_seed(RANDOM_INIT_SEED)
            model = torchvision.models.get_model(name, weights=None)
        if weights.state_dict is not None:
            model.load_state_dict(weights.state_dict)
        self.body = nn.Sequential(OrderedDict((stage, getattr(model, stage)) for stage in STAGES))
        self.name, self.dim, self.trainable_last_block = name, model.fc.in_features, trainable_last_block
        self.pooled = pooled
        sha = weights.sha256_prefix or _tensor_digest(self.body.state_dict())[:16]
        # What a results record says about this encoder; also the encoder's part of a cache key.
        self.record = {"encoder": name, "weights": weights.tag, "weights_sha256_prefix": sha,
                       **({"pooled": True} if pooled else {})}  # grid records keep their old cache keys
        self.weights_description = weights.description
        for stage_name, stage in self.body.named_children():
            stage.requires_grad_(trainable_last_block and stage_name == "layer4")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        x = (images - self.mean) / self.std  # (B, 3, H, W), ImageNet-normalised
        grid = self.body(x)  # (B, D, h, w)
        if self.pooled:
            return grid.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, D)
        return grid.flatten(2).transpose(1, 2)  # (B, h*w, D), cells in row-major order

    def train(self, mode: bool = True) -> GridEncoder:
        super().train(mode)
        for stage_name, stage in self.body.named_children():
            stage.train(mode and self.trainable_last_block and stage_name == "layer4")
        return self

    def grid_cells(self, height: int, width: int) -> int:
        """N, the number of grid cells of a height x width image (1 when pooled)."""
        if self.pooled:
            return 1
        return math.ceil(height / STRIDE) * math.ceil(width / STRIDE)


def _tensor_digest(state: dict[str, Tensor]) -> str:
    """sha256 over names and bytes of a state dict: identifies a random init exactly."""
    digest = hashlib.sha256()
    for key, tensor in state.items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())  # every state-dict dtype of a ResNet has a numpy twin
    return digest.hexdigest()


def feature_key(data_checksum: str, encoder: GridEncoder, image_size: int | tuple[int, int],
                dtype: torch.dtype = torch.float16) -> str:
    """Cache key: sha256 of everything the stored features depend on; any part changing recomputes."""
    return array_key(_key_parts(data_checksum, encoder, image_size, dtype))


def _key_parts(data_checksum: str, encoder: GridEncoder, image_size: int | tuple[int, int],
               dtype: torch.dtype) -> dict:
    height, width = _size(image_size)
    return {"format": FORMAT_VERSION, "data": data_checksum, **encoder.record,
            "image_size": [height, width], "dtype": str(dtype).removeprefix("torch.")}


def feature_path(key: str) -> Path:
    return array_path(key)


def cached_features(images: ImageSource, count: int, encoder: GridEncoder, data_checksum: str,
                    image_size: int | tuple[int, int], batch_size: int = 32,
                    dtype: torch.dtype = torch.float16) -> Tensor:
    """Grid features (count, N, D) of an image set in `dtype`, computed once per key and memory-mapped.

    `data_checksum` must identify the exact images (files, order, preprocessing). The encoder runs in
    eval mode under no_grad on its own device (move it first), in batches of `batch_size` when
    `images` is a callable. A cache file that cannot be read back is recomputed.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype}")
    if any(p.requires_grad for p in encoder.parameters()):
        raise ValueError("features of an encoder with trainable parameters go stale as it trains: not cached")
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    shape = (count, encoder.grid_cells(*_size(image_size)), encoder.dim)

    def fill(out: np.ndarray) -> None:
        _compute(_batches(images, count, batch_size), encoder, out, dtype, _size(image_size))

    return cached_array(_key_parts(data_checksum, encoder, image_size, dtype), shape, DTYPES[dtype], fill,
                        f"{encoder.name} features of {count} images")


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def _batches(images: ImageSource, count: int, batch_size: int) -> Iterator[Tensor]:
    if callable(images):
        for start in range(0, count, batch_size):
            yield images(slice(start, min(start + batch_size, count)))
    else:
        yield from images


def _compute(batches: Iterator[Tensor], encoder: GridEncoder, out: np.ndarray, dtype: torch.dtype,
             size: tuple[int, int]) -> None:
    """Fill `out` batch by batch (the set never sits in memory whole)."""
    device, was_training, done = next(encoder.parameters()).device, encoder.training, 0
    try:
        encoder.eval()
        with torch.no_grad():
            for batch in batches:
                if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, *size) or done + len(batch) > len(out):
                    raise ValueError(f"images {done}.. have shape {tuple(batch.shape)}, expected (b, 3, {size[0]}, "
                                     f"{size[1]}) and {len(out)} images in all")
                stored = encoder(batch.to(device)).to(dtype)  # (b, N, D)
                if not torch.isfinite(stored).all():  # e.g. a random-init resnet101 exceeds float16's 65504
                    raise ValueError(f"{encoder.name} features of images {done}.. are not finite in {dtype}: "
                                     "store them as torch.float32")
                out[done:done + len(batch)] = stored.cpu().numpy()
                done += len(batch)
        if done != len(out):
            raise ValueError(f"the image source gave {done} images, expected {len(out)}")
    finally:
        encoder.train(was_training)
