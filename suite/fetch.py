"""Download, checksum and cache the real data files of every task; no task opens a URL itself.

A file lives at `data_dir()/<cache>/<relpath>`, the same relative path it has under its origin (the
dataset's official layout), so a mirror or a hand-filled cache is just a copy of that layout. A download
streams into `.NAME.PID.part` beside it and counts only once whole (as long as declared), checked, fsynced
and renamed into place (`suite.durable`); the next fetch of the file removes what a killed one left.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from suite import durable, interrupts
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
        durable.remove_temporaries(target)  # under the lock, a `.part` here is a killed download's
        return _fetch(origin, remote, target)


def write_cache(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """`durable.atomic_write` of a cache file, under the lock named after it, after removing the temporaries
    that killed writers of it left. Every cache writer goes through here or holds the same lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        durable.remove_temporaries(path)
        return durable.atomic_write(path, write)


class _BadTransfer(Exception):
    """A transfer that ended without an error but did not deliver the file: worth one more try."""

    def final(self, url: str, target: Path, remote: RemoteFile) -> str:
        """The one-line error once the retry failed too."""
        raise NotImplementedError


class _Short(_BadTransfer):
    """The body ended before its declared length: the connection closed early."""

    def __init__(self, url: str, got: int, declared: int | None):
        of = f"{got} of {declared} bytes" if declared is not None else f"{got} bytes of a chunked body cut mid-way"
        super().__init__(f"download of {url} ended short: got {of}")

    def final(self, url: str, target: Path, remote: RemoteFile) -> str:
        return f"{self} (retried once): {_how_to_supply(target, remote)}"


class _Mismatch(_BadTransfer):
    """The whole body arrived and has another checksum."""

    def __init__(self, url: str, remote: RemoteFile, actual: str):
        self.actual = actual
        super().__init__(f"{remote.relpath} downloaded from {url} has {remote.algorithm} {actual}, "
                         f"expected {remote.checksum}")

    def final(self, url: str, target: Path, remote: RemoteFile) -> str:
        return (f"{remote.relpath} downloaded from {url} fails its checksum twice: "
                f"expected {remote.algorithm} {remote.checksum}, got {self.actual}")


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
    try:
        return _download(url, target, remote)
    except _BadTransfer as bad:  # one retry covers a transfer damaged in flight; a bad source fails again anyway
        print(f"{bad}: downloading it once more", file=sys.stderr)
    try:
        return _download(url, target, remote)
    except _BadTransfer as bad:
        raise DataError(bad.final(url, target, remote)) from None


def _url(origin: str, relpath: str) -> str:
    """URL of `relpath` under $SUITE_DATA_MIRROR if set, else under `origin`."""
    mirror = os.environ.get(MIRROR_ENV)
    base = mirror or origin
    if urllib.parse.urlsplit(base).scheme not in SCHEMES:
        what = MIRROR_ENV if mirror else "the origin"
        raise DataError(f"{what} must be an http://, https:// or file:///absolute/path URL, got {base!r}")
    return base.rstrip("/") + "/" + urllib.parse.quote(relpath)


def _download(url: str, target: Path, remote: RemoteFile) -> Path:
    """Stream `url` into `.NAME.PID.part` beside `target`; install it, fsynced, only when it is whole and its
    checksum matches, else raise `_BadTransfer` (a short body or another checksum) or `DataError`."""
    print(f"downloading {url} -> {target}", file=sys.stderr)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")  # one writer at a time: `fetch` holds the lock
    try:
        # Mode 0o666 less the umask, as for any new file (mkstemp's 0o600 locks the other users of a shared
        # SUITE_DATA_DIR out); O_EXCL never writes through a file or link someone else put there.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, remote.algorithm)
            if actual != remote.checksum:
                raise _Mismatch(url, remote, actual)
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the rename makes them count
        with interrupts.deferred():  # a stop signal must not fall between the rename and the folder's fsync
            return durable.install(tmp, target)
    # OSError covers URLError, HTTPError, timeouts and resets; HTTPException a bad port or a broken reply.
    except (OSError, http.client.HTTPException) as err:
        raise DataError(_cannot_download(url, target, remote, err)) from err
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str, out: BinaryIO, algorithm: str) -> str:
    """Copy the body at `url` into `out` and return its digest, hashing as the bytes arrive; raise `_Short` when
    the body ends before its declared length."""
    digest = new_digest(algorithm)
    got = 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        declared = _declared_length(response.headers)
        try:
            # On an early end http.client's read(n) just returns b"" (it raises nothing, for compatibility), so
            # `got` is checked against the declared length below.
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                got += len(chunk)
        except http.client.IncompleteRead as err:  # a chunked body cut inside or between its chunks
            raise _Short(url, got + _partial_bytes(err), declared) from None
    if declared is not None and got < declared:
        raise _Short(url, got, declared)
    return digest.hexdigest()


def _declared_length(headers: Message) -> int | None:
    """The body's length as the reply declares it (http:// and file:// alike), or None: a chunked body's
    Content-Length, if any, is ignored, as http.client does."""
    length = headers.get("Content-Length", "").strip()
    if headers.get("Transfer-Encoding", "").strip().lower() == "chunked" or not length.isdigit():
        return None
    return int(length)


def _partial_bytes(err: http.client.IncompleteRead) -> int:
    """Body bytes that the read which failed had received: http.client keeps the failed chunk's own part in
    the IncompleteRead it raised first, now the cause."""
    cause = err.__cause__
    return len(err.partial) + (len(cause.partial) if isinstance(cause, http.client.IncompleteRead) else 0)


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
    return f"cannot download {url} ({reason}): {_how_to_supply(target, remote)}"


def _how_to_supply(target: Path, remote: RemoteFile) -> str:
    """Every way to supply the file without this download."""
    return (
        f"put {target.name} ({remote.algorithm} {remote.checksum}) in {target.parent}, "
        f"set {MIRROR_ENV} to a file:// or http(s):// URL holding the official layout, "
        f"or use --source synthetic"
    )
