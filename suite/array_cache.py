"""A disk cache of computed arrays (encoder features, log-mel frames), shared by every task that caches one.

An array lives at `data_dir()/features/<key>.npy`, where the key is the sha256 of a JSON description of
everything its values depend on (`parts`); a `<key>.json` beside it says what the opaque key stands for.
It is filled in a temp file and moved into place, so a killed run never leaves a partial array behind, and
loaded memory-mapped (copy-on-write), so a set larger than memory is paged in as it is read.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from suite.fetch import data_dir


def array_key(parts: dict) -> str:
    """sha256 of `parts` as JSON in the caller's key order (the order image-feature keys always had, so their
    existing cache files stay valid): any part changing names a different array."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def file_fingerprint(paths: list[Path]) -> str:
    """sha256 over each file's resolved path, size and modification time, in order: names a set of large
    files (audio, video) in a cache key without reading them, which would take longer than the features."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def array_path(key: str) -> Path:
    return data_dir() / "features" / f"{key}.npy"


def cached_array(parts: dict, shape: tuple[int, ...], dtype: np.dtype | type, fill: Callable[[np.ndarray], None],
                 what: str) -> Tensor:
    """The array described by `parts`, computed once by `fill(out)` (which writes every element of the
    writable memmap `out`) and memory-mapped from then on. A cache file that cannot be read back, or holds
    another shape or dtype, is computed again. `what` names the array in progress messages."""
    path = array_path(array_key(parts))
    if path.is_file():
        try:
            return _load(path, shape, np.dtype(dtype))
        except Exception as err:  # np.load raises ValueError, OSError, EOFError or BadZipFile by the damage
            print(f"cached {what} {path} are unreadable ({err}): recomputing", file=sys.stderr)
    print(f"computing {what} -> {path}", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(name, mode="w+", dtype=dtype, shape=shape)
        fill(out)
        out.flush()
        del out
        os.replace(name, path)  # atomic: a killed run never leaves a partial file at `path`
    finally:
        Path(name).unlink(missing_ok=True)
    _write_json(path.with_suffix(".json"), parts)
    return _load(path, shape, np.dtype(dtype))


def _load(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> Tensor:
    """Memory-map a cache file (copy-on-write: writes stay in memory), checking shape and dtype."""
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    if not isinstance(array, np.memmap):  # e.g. a zip file, which np.load opens as an .npz archive
        raise ValueError("not a .npy file")
    if array.shape != tuple(shape) or array.dtype != dtype:
        raise ValueError(f"holds {array.dtype} {array.shape}, expected {dtype} {tuple(shape)}")
    return torch.from_numpy(array)


def _write_json(path: Path, value: dict) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(name, path)
