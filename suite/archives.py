"""Safe, once-only, durable extraction of downloaded dataset archives (tar and zip).

Tar members go through the standard library's `data` extraction filter (PEP 706): no absolute paths,
no member or link that escapes the target, no device files or FIFOs, no set-uid bits. Zip members
are checked for the same escapes and refused when they are symbolic links. An extraction is unpacked into a
staging folder beside the target, flushed to disk, marked finished and renamed into place, so a killed or
power-cut one is redone rather than half-used; the next extraction of the target removes its staging folder.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from suite import durable, interrupts
from suite.errors import DataError
from suite.fetch import file_lock

MARKER = ".extracted"


def extract(archive: Path, target: Path) -> Path:
    """Unpack `archive` into `target` unless a finished extraction is already there; returns `target`."""
    if (target / MARKER).exists():
        return target
    with file_lock(target):  # another process may be extracting it now
        if not (target / MARKER).exists():
            remove_stale_staging(target)
            staging = staging_folder(target)
            try:
                _unpack(archive, staging)
                finish(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def staging_folder(target: Path) -> Path:
    """A new empty `.NAME.PID.staging` folder beside `target`, for a writer holding `file_lock(target)`. Its
    mode is 0o777 less the umask, as for any new folder: mkdtemp's 0o700 would hide the extraction from the
    other users of a shared SUITE_DATA_DIR."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.staging")
    staging.mkdir()
    return staging


def remove_stale_staging(target: Path) -> list[Path]:
    """Delete the staging folders of killed extractions into `target` (`.NAME.PID.staging`, and earlier versions'
    mkdtemp `.NAME.XXXXXXXX`) and return them. Only under `file_lock(target)`, which every extraction into
    `target` holds: a staging folder found then is a dead process's. The exact pattern spares the staging
    folders of a target whose name merely starts with this one's (`videos.v2`)."""
    own = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]+(\.staging)?")
    stale = [p for p in target.parent.glob(f".{glob.escape(target.name)}.*")
             if own.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def finish(staging: Path, target: Path) -> Path:
    """Make the unpacked `staging` durable, mark it finished and rename it to `target`, replacing any unmarked
    folder there (one that a killed run was deleting)."""
    # Every extracted file's data and folder entries reach the disk before the marker can: one sync() where an
    # fsync per file would take minutes on IMDB's 100,000 files.
    os.sync()
    durable.atomic_write(staging / MARKER, lambda out: None)  # fsyncs the marker, then `staging` itself
    shutil.rmtree(target, ignore_errors=True)
    with interrupts.deferred():  # a stop signal must not fall between the rename and the folder's fsync
        return durable.install(staging, target)


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
