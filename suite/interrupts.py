"""Stop signals over a run's whole life: a kill, Ctrl-C, or Slurm's warning before a time limit.

While a `guard()` is open, SIGTERM, SIGINT and SIGUSR2 never kill the process outright. Outside a
`deferred()` block a signal raises `Interrupted` at once, so a long evaluation or data preparation stops
where it is; inside one (a file write, a training step) it is only noted, and raised when the outermost
block ends, so that what the block writes is whole. The training loop polls `pending()` between steps
to checkpoint first. Handlers are process-wide, so this state is too; it is only ever touched from the
main thread, the one thread that signal handlers run on.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
"""Checkpoint, then stop: a kill, Ctrl-C, and Slurm's warning before a job's time limit (submitit's SIGUSR2)."""


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. A KeyboardInterrupt, not an Exception: `except Exception` (which records a
    failed run) must never swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {self.name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_pending: int | None = None
_deferring = 0
_guards = 0
_previous: dict[int, Any] = {}


def _handle(signum: int, frame: Any) -> None:
    global _pending
    _pending = signum
    if not _deferring:
        _pending = None  # the exception carries it from here
        raise Interrupted(signum)


def pending() -> int | None:
    """The stop signal received and not yet raised, if any."""
    return _pending


def clear() -> None:
    """Forget a noted signal: its receiver acted on it (the trainer checkpoints, then raises itself)."""
    global _pending
    _pending = None


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Catch the stop signals for the block (nested guards share one installation); the previous handlers
    come back when the outermost guard ends. Off the main thread it does nothing: handlers cannot be set
    there, and whoever owns the main thread owns shutdown."""
    global _guards, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _guards:
        _pending = None
        _previous.update({s: signal.signal(s, _handle) for s in STOP_SIGNALS})
    _guards += 1
    try:
        yield
    finally:
        _guards -= 1
        if not _guards:
            for s, handler in _previous.items():
                signal.signal(s, handler)
            _previous.clear()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a signal must not cut: the signal waits for its end (the outermost one's, when nested)."""
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only ever interrupt the main thread
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    # Reached only when the block ended normally: an exception already on its way is not replaced.
    if not _deferring and _pending is not None and _guards:
        signum = _pending
        clear()
        raise Interrupted(signum)
