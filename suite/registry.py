"""Plain-dict registries for tasks and recurrent backbones (timm style).

`@register_task("ptb")` / `@register_model("gru")` fill the dicts; third-party packages add
entries through the `seqsuite.tasks` / `seqsuite.models` entry-point groups.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from suite.errors import UserError

TASKS: dict[str, Any] = {}
MODELS: dict[str, Any] = {}
_KINDS = {"task": TASKS, "model": MODELS}


def _register(kind: str, name: str) -> Callable[[Any], Any]:
    table = _KINDS[kind]

    def add(obj: Any) -> Any:
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered by {table[name].__module__}")
        obj.name = name
        table[name] = obj
        return obj

    return add


def register_task(name: str) -> Callable[[Any], Any]:
    return _register("task", name)


def register_model(name: str) -> Callable[[Any], Any]:
    return _register("model", name)


def load_plugins() -> None:
    """Import the built-in tasks and models, then any installed through entry points."""
    import baselines  # noqa: F401  (registers the backbones)
    import tasks  # noqa: F401  (registers the tasks)

    for group in ("seqsuite.models", "seqsuite.tasks"):
        for ep in entry_points(group=group):
            ep.load()


def get(kind: str, name: str) -> Any:
    """Look a name up, failing with the closest registered names."""
    table = _KINDS[kind]
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, table, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(sorted(table))}"
    raise UserError(f"unknown {kind} {name!r}: {hint}")


def list_names(kind: str, pattern: str = "*") -> list[str]:
    return sorted(n for n in _KINDS[kind] if fnmatch.fnmatch(n, pattern))
