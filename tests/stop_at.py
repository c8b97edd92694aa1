"""Run the `suite` CLI in this process with a real stop signal at a stage that a test names.

    python tests/stop_at.py STAGE [SIGNAL] -- suite arguments...

The process sends the signal (default SIGTERM) to itself at the first moment of STAGE, through the OS, as
a scheduler would; what happens next is the suite's real handling. A timed kill from outside could not hit
a stage reliably. `forbid-training` instead makes any training step fail, to check that a resumed run only
evaluates; `crash-setup` and `crash-training` raise an ordinary error there.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from itertools import count
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from suite import compress, experiment, runner  # noqa: E402
from suite.cli import main  # noqa: E402
from suite.registry import TASKS, load_plugins  # noqa: E402


def before(owner: Any, name: str, action: Callable[[], None], when: Callable[..., bool] = lambda *a, **k: True
           ) -> None:
    """Run `action` once, the first time `owner.name` is called with arguments for which `when` holds."""
    original, fired = getattr(owner, name), []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired and when(*args, **kwargs):
            fired.append(True)
            action()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def nth_call(n: int, also: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., bool]:
    calls = count(1)
    return lambda *a, **k: also(*a, **k) and next(calls) == n


def fail(message: str) -> Callable[[], None]:
    def action() -> None:
        raise RuntimeError(message)
    return action


def install(stage: str, task: type, signum: int) -> None:
    stop = lambda: os.kill(os.getpid(), signum)  # noqa: E731
    twin = lambda self, *a, **k: getattr(self.cfg.options, "attention", None) == "none"  # noqa: E731
    hooks = {
        "setup": (task, "prepare", stop, None),
        "reference": (task, "reference", stop, None),
        "twin-training": (task, "loss", stop, nth_call(3, twin)),
        "training": (task, "loss", stop, nth_call(8)),
        "final-validation": (runner.Trainer, "_maybe_evaluate", stop, lambda self: self.stage == "evaluation"),
        "test-evaluation": (task, "evaluate", stop, lambda self, model, split: split == "test"),
        "outputs": (task, "write_artifacts", stop, None),
        "record": (experiment, "write_record", stop, None),
        "variant": (compress, "latency_ms", stop, None),
        "forbid-training": (task, "loss", fail("a resumed evaluation trained"), None),
        "crash-setup": (task, "prepare", fail("boom in setup"), None),
        "crash-training": (task, "loss", fail("boom in training"), nth_call(3)),
    }
    owner, name, action, when = hooks[stage]
    before(owner, name, action, *([when] if when else []))


if __name__ == "__main__":
    split = sys.argv.index("--")
    stage, *rest = sys.argv[1:split]
    argv = sys.argv[split + 1:]
    load_plugins()
    install(stage, TASKS[argv[argv.index("--task") + 1]], signal.Signals[rest[0]] if rest else signal.SIGTERM)
    sys.exit(main(argv))
