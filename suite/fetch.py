"""Download, checksum and cache the real data files of every task; no task opens a URL itself.

A file lives at `data_dir()/<cache>/<relpath>`, the same relative path it has under its origin (the
dataset's official layout), so a mirror or a hand-filled cache is just a copy of that layout.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from suite.errors import DataError

TIMEOUT_S = 30.0
"""Seconds to wait for a connection, or for the next bytes, before a download counts as failed."""
CHUNK_BYTES = 1 << 20
"""Read size for hashing and downloading: large files never sit in memory whole."""
MIRROR_ENV = "SUITE_DATA_MIRROR"
"""Base URL (http://, https:// or file://) that replaces every task's origin, e.g. for offline machines."""
SCHEMES = ("http", "https", "file")
ALGORITHMS = {32: "md5", 64: "sha256"}
"""Checksum algorithm by hex length."""


@dataclass(frozen=True)
class RemoteFile:
    """One data file: where it sits in the dataset's official layout and the checksum it must have."""

    relpath: str
    """Path relative to the origin base URL, in the official layout; also its path in the cache."""
    checksum: str
    """Hex md5 (32 digits) or sha256 (64 digits) of the exact file, whichever the dataset publishes;
    a copy with any other checksum is never returned."""

    def __post_init__(self) -> None:
        parts = PurePosixPath(self.relpath).parts
        if not parts or self.relpath.startswith("/") or ".." in parts:
            raise ValueError(f"relpath must be a relative path inside the layout, got {self.relpath!r}")
        if len(self.checksum) not in ALGORITHMS or not re.fullmatch("[0-9a-f]+", self.checksum):
            raise ValueError(f"checksum must be a lowercase hex md5 or sha256, got {self.checksum!r}")

    @property
    def algorithm(self) -> str:
        return ALGORITHMS[len(self.checksum)]


def data_dir() -> Path:
    """Root of the data cache: $SUITE_DATA_DIR, else $XDG_CACHE_HOME/seqsuite, else ~/.cache/seqsuite."""
    if os.environ.get("SUITE_DATA_DIR"):
        return Path(os.environ["SUITE_DATA_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "seqsuite"


def md5sum(path: Path) -> str:
    """Hex md5 of a file, streamed in chunks so multi-gigabyte archives never sit in memory."""
    return file_digest(path, "md5")


def new_digest(algorithm: str) -> hashlib._Hash:
    return hashlib.new(algorithm, usedforsecurity=False)  # an integrity check, so FIPS-mode Pythons allow md5


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, streamed in chunks."""
    digest = new_digest(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock named after `path` across processes: runs started side by side (`suite sweep
    --workers N`) download and extract a dataset once, one after the other. The lock files live apart, in
    `data_dir()/.locks`, and stay there (removing one would race with a process about to lock it)."""
    name = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:24]
    lock = data_dir() / ".locks" / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, even if the process dies
        yield


def fetch(origin: str, remote: RemoteFile, cache: str) -> Path:
    """Path of a verified copy of `remote` in `data_dir()/cache`, downloaded only when missing or bad.

    `origin` is the dataset's official base URL; $SUITE_DATA_MIRROR, when set, replaces it.
    """
    target = data_dir() / cache / remote.relpath
    with file_lock(target):
        return _fetch(origin, remote, target)


def _fetch(origin: str, remote: RemoteFile, target: Path) -> Path:
    if target.is_file():
        actual = file_digest(target, remote.algorithm)
        if actual == remote.checksum:
            return target
        # A bad copy is never returned nor left behind, even if the download below fails.
        print(f"{target} has {remote.algorithm} {actual}, expected {remote.checksum}: replacing it", file=sys.stderr)
        target.unlink(missing_ok=True)
    url = _url(origin, remote.relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # one retry covers a transfer damaged in flight; a bad source fails again anyway
        actual = _download(url, target, remote)
        if actual == remote.checksum:
            return target
    raise DataError(
        f"{remote.relpath} downloaded from {url} fails its checksum twice: "
        f"expected {remote.algorithm} {remote.checksum}, got {actual}"
    )


def _url(origin: str, relpath: str) -> str:
    """URL of `relpath` under $SUITE_DATA_MIRROR if set, else under `origin`."""
    mirror = os.environ.get(MIRROR_ENV)
    base = mirror or origin
    if urllib.parse.urlsplit(base).scheme not in SCHEMES:
        what = MIRROR_ENV if mirror else "the origin"
        raise DataError(f"{what} must be an http://, https:// or file:///absolute/path URL, got {base!r}")
    return base.rstrip("/") + "/" + urllib.parse.quote(relpath)


def _download(url: str, target: Path, remote: RemoteFile) -> str:
    """Stream `url` into a temp file beside `target`, install it only if its checksum matches; return it."""
    print(f"downloading {url} -> {target}", file=sys.stderr)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, remote.algorithm)
        if actual == remote.checksum:
            os.replace(tmp, target)  # atomic: a killed run never leaves a partial file at `target`
        return actual
    # OSError covers URLError, HTTPError, timeouts and resets; HTTPException a bad port or a broken reply.
    except (OSError, http.client.HTTPException) as err:
        raise DataError(_cannot_download(url, target, remote, err)) from err
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str, out: BinaryIO, algorithm: str) -> str:
    """Copy the body at `url` into `out` and return its digest, hashing as the bytes arrive."""
    digest = new_digest(algorithm)
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        while chunk := response.read(CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _cannot_download(url: str, target: Path, remote: RemoteFile, err: Exception) -> str:
    """One line saying what failed and every way to supply the file without this download."""
    if isinstance(err, urllib.error.HTTPError):
        err.close()  # it holds the open response
        reason = f"HTTP {err.code} {err.reason}"
    elif isinstance(err, urllib.error.URLError):
        reason = str(err.reason)
    else:
        reason = str(err) or type(err).__name__
    reason = " ".join(reason.split())  # the CLI prints errors as one line
    return (
        f"cannot download {url} ({reason}): put {target.name} ({remote.algorithm} {remote.checksum}) "
        f"in {target.parent}, "
        f"set {MIRROR_ENV} to a file:// or http(s):// URL holding the official layout, "
        f"or use --source synthetic"
    )

