"""A disk cache of computed arrays (encoder features, log-mel frames), shared by every task that caches one.

An array lives at `data_dir()/features/<key>.npy`, where the key is the sha256 of a JSON description of
everything its values depend on (`parts`); a `<key>.json` beside it says what the opaque key stands for.
It is filled in a temp file, fsynced and moved into place under a lock, so a killed run never leaves a partial
array behind (the next computation of it removes the temp file), and loaded memory-mapped (copy-on-write), so
a set larger than memory is paged in as it is read.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from suite import durable, interrupts
from suite.fetch import data_dir, file_lock


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
    with contextlib.suppress(Exception):  # without the lock while it exists: the lock only orders writers
        return _load(path, shape, np.dtype(dtype))
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):  # runs started side by side compute it once; the other one waits, then loads it
        cached = _try_load(path, shape, np.dtype(dtype), what)
        if cached is not None:
            return cached
        for written in (path, path.with_suffix(".json")):  # this lock guards both files
            durable.remove_temporaries(written)  # a killed computation's, as large as the array
        _compute(path, shape, dtype, fill, what)
        durable.atomic_write_text(path.with_suffix(".json"), json.dumps(parts, indent=1))
    return _load(path, shape, np.dtype(dtype))


def _try_load(path: Path, shape: tuple[int, ...], dtype: np.dtype, what: str) -> Tensor | None:
    """The cached array, or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return _load(path, shape, dtype)
    except Exception as err:  # np.load raises ValueError, OSError, EOFError or BadZipFile by the damage
        print(f"cached {what} {path} are unreadable ({err}): recomputing", file=sys.stderr)
        return None


def _compute(path: Path, shape: tuple[int, ...], dtype: np.dtype | type, fill: Callable[[np.ndarray], None],
             what: str) -> None:
    """`fill` a memmap in `.NAME.PID.tmp` beside `path`, fsync it and install it. Not `durable.atomic_write`,
    which defers stop signals for the whole write (here minutes of computing) and hands over a file object
    where a memmap needs a path; the temporary name is the one `durable.remove_temporaries` clears."""
    print(f"computing {what} -> {path}", file=sys.stderr)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)  # mode 0o666 less the umask
        fill(out)
        out.flush()  # msync: the pages reach the file
        del out
        with open(tmp, "rb") as done:
            os.fsync(done.fileno())  # ... and the disk, before the rename makes them count
        with interrupts.deferred():  # a stop signal must not fall between the rename and the folder's fsync
            durable.install(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> Tensor:
    """Memory-map a cache file (copy-on-write: writes stay in memory), checking shape and dtype."""
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    if not isinstance(array, np.memmap):  # e.g. a zip file, which np.load opens as an .npz archive
        raise ValueError("not a .npy file")
    if array.shape != tuple(shape) or array.dtype != dtype:
        raise ValueError(f"holds {array.dtype} {array.shape}, expected {dtype} {tuple(shape)}")
    return torch.from_numpy(array)

