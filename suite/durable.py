"""Files that are either whole or absent: after a kill, and after a power loss.

Every file a run produces that something else trusts (records, checkpoints, caches, downloads) is written
to a temporary name beside its target, flushed and fsynced, renamed over the target, and then the folder
is fsynced so that the rename itself survives a crash. A process killed mid-write leaves only its
temporary file; the next holder of the lock that guards the target removes it (`remove_temporaries`).
"""
from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from suite import interrupts

TEMPORARY_SUFFIXES = (".tmp", ".part")
"""Endings of in-flight files: `.NAME.PID.tmp` from `atomic_write`, `.NAME.XXXX.part` from downloads."""


def fsync_dir(folder: Path) -> None:
    """Make a rename or creation inside `folder` durable (POSIX keeps directory entries in the directory)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(tmp: Path, target: Path) -> Path:
    """Rename a complete, fsynced temporary file over `target`, then fsync the folder."""
    os.replace(tmp, target)
    fsync_dir(target.parent)
    return target


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """`write(file)` into `.NAME.PID.tmp` beside `path`, fsync it and rename it over `path`; stop signals wait
    until it is done. Readers see the old file or the new one, whole, and never a half-written one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with interrupts.deferred():
        try:
            with open(tmp, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            return install(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # gone after the rename; removed after a failed write


def atomic_write_text(path: Path, text: str) -> Path:
    """`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def remove_temporaries(path: Path) -> list[Path]:
    """Delete the in-flight files of earlier writes to `path` (`.NAME.*.tmp`, `.NAME.*.part`) and return them.
    Only the one writer of `path` may call it, holding the lock that makes it so: any such file is then the
    leftover of a process that died mid-write, never a live write of another process."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    # One name part between the target's name and the suffix (a PID, or mkstemp's letters), so that the
    # leftovers of `data.txt` never include `.data.txt.gz.4242.part`, another file's live download.
    own = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]+({'|'.join(map(re.escape, TEMPORARY_SUFFIXES))})")
    stale = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*") if own.fullmatch(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
