"""One writer per run id: the process that holds a run's lock is the only one that writes its checkpoints
and record, for the run's whole life.

The lock is `filelock`'s (an flock on `<checkpoint folder>/run.lock`, released by the kernel when its holder
dies, so a killed run never leaves it held). Who holds it is written beside it, in `run.owner`, because
filelock truncates the lock file itself on every attempt to take it.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from suite.durable import atomic_write_text
from suite.errors import UserError


@contextlib.contextmanager
def one_writer(folder: Path, run_id: str) -> Iterator[None]:
    """Hold run `run_id`'s lock in `folder` for the block, or fail at once naming the process that holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / "run.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"run {run_id} is already running ({_owner(folder)}): wait for it to end, or stop that "
                        "process and continue the run with --resume") from None
    try:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        atomic_write_text(folder / "run.owner", f"pid {os.getpid()} on {socket.gethostname()} since {now}\n")
        yield
    finally:
        lock.release()


def _owner(folder: Path) -> str:
    try:
        return (folder / "run.owner").read_text().strip()
    except OSError:
        return "by a process that has not said which yet"
