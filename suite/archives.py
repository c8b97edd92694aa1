"""Safe, once-only extraction of downloaded dataset archives (tar and zip).

Tar members go through the standard library's `data` extraction filter (PEP 706): no absolute paths,
no member or link that escapes the target, no device files or FIFOs, no set-uid bits. Zip members
are checked for the same escapes and refused when they are symbolic links. A finished extraction is
marked, so a killed one is redone rather than half-used.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from suite.errors import DataError
from suite.fetch import file_lock

MARKER = ".extracted"


def extract(archive: Path, target: Path) -> Path:
    """Unpack `archive` into `target` unless a finished extraction is already there; returns `target`."""
    if (target / MARKER).exists():
        return target
    with file_lock(target):  # another process may be extracting it now
        if not (target / MARKER).exists():
            _extract(archive, target)
    return target


def _extract(archive: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        _unpack(archive, staging)
        (staging / MARKER).touch()
        shutil.rmtree(target, ignore_errors=True)  # a half extraction left by a killed run
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(archive: Path, into: Path) -> None:
    fix = f"delete {archive} and run again to download it afresh"
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(into, filter="data")
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_zip_member(info, into)
                zf.extractall(into)
        else:
            raise DataError(f"{archive} is neither a tar nor a zip archive: {fix}")
    except tarfile.FilterError as exc:
        raise DataError(f"refusing to extract {archive}: {exc}; the archive is not a dataset's own: {fix}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"cannot extract {archive} ({exc}): {fix}") from None


def _check_zip_member(info: zipfile.ZipInfo, into: Path) -> None:
    if stat.S_ISLNK(info.external_attr >> 16):
        raise tarfile.FilterError(f"{info.filename!r} is a symbolic link")
    dest = (into / info.filename).resolve()
    if info.filename.startswith("/") or not dest.is_relative_to(into.resolve()):
        raise tarfile.FilterError(f"{info.filename!r} would be extracted outside the target directory")
