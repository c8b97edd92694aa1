"""A sweep's spec: the grid keys and settings that a TOML file or `suite sweep`'s flags give, each checked
against one table of what it takes before anything is planned."""
from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite.errors import UserError

GRID = ("task", "model", "source", "budget", "precision", "seed", "variant")
SETTINGS = ("set", "workers", "results", "retry_failed", "executor", "procs_per_run", "gpus_per_run",
            "cpus_per_run", "partition", "account", "time")
DEFAULTS: dict[str, Any] = {"source": ["real"], "budget": ["small"], "precision": ["fp32"], "seed": [1],
                            "variant": ["dense"], "set": [], "workers": 1, "results": "results",
                            "retry_failed": False, "executor": "local", "procs_per_run": None, "gpus_per_run": 0,
                            "cpus_per_run": None, "partition": None, "account": None, "time": None}

@dataclass(frozen=True)
class Shape:
    """What one spec key holds: a `kind` value (`says` words it for the error), or also a list of them
    (`listed`: then a string lists them too, separated by commas, as a flag does), at least `least`."""

    kind: type
    says: str
    listed: bool = False
    least: int | None = None


NAMES = "a name, a comma-separated string of names or a list of names"
SHAPES: dict[str, Shape] = {
    **{key: Shape(str, NAMES, listed=True) for key in ("task", "model", "source", "budget", "precision", "variant")},
    "seed": Shape(int, "an integer, a list of integers or a comma-separated string of integers", listed=True),
    "set": Shape(str, "a string SECTION.KEY=VALUE or a list of such strings", listed=True),
    "workers": Shape(int, "a whole number >= 1", least=1),
    "results": Shape(str, "a directory (a string)"),
    "retry_failed": Shape(bool, "true or false"),
    "executor": Shape(str, "a name (local or slurm)"),
    "procs_per_run": Shape(int, "a whole number >= 1", least=1),
    "gpus_per_run": Shape(int, "a whole number >= 0", least=0),
    "cpus_per_run": Shape(int, "a whole number >= 1", least=1),
    "partition": Shape(str, "a name (a string)"),
    "account": Shape(str, "a name (a string)"),
    "time": Shape(int, "a whole number >= 1", least=1),  # minutes
}
"""Every key a spec may hold (GRID + SETTINGS) and what it takes; a value of None leaves the key unset."""


def load_spec(path: Path) -> dict[str, Any]:
    """A TOML spec: the GRID keys (a list or a comma-separated string each) and the SETTINGS, checked."""
    try:
        spec = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"sweep spec {path} cannot be read: {err.strerror or err}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML: {' '.join(str(err).split())}") from None
    return check_spec(spec, path)


def check_spec(spec: dict[str, Any], where: Path | str | None = None) -> dict[str, Any]:
    """`spec`, once every key is known and every value has its SHAPES entry's type and range. An error names
    the file `where` and the key, or, for a spec built from flags (or by code), the flag."""
    prefix = f"{where}: " if where else ""
    for key, value in spec.items():
        if key not in SHAPES:
            close = difflib.get_close_matches(key, SHAPES, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"keys are {', '.join(SHAPES)}"
            raise UserError(f"{prefix}unknown key {key!r}: {hint}")
        if value is not None and not fits(value, SHAPES[key]):
            name = key if where else f"--{key.replace('_', '-')}"
            raise UserError(f"{prefix}{name} must be {SHAPES[key].says}, got {shown(value)}")
    return spec


def fits(value: Any, shape: Shape) -> bool:
    """Whether `value` has `shape`. Strict, as TOML is typed: a bool is no integer (nor an integer a bool), a
    float no integer, a table nothing; a list holds single values only."""
    if shape.listed and isinstance(value, list):
        return all(fits(item, dataclasses.replace(shape, listed=False)) for item in value)
    if shape.listed and shape.kind is int and isinstance(value, str):  # --seed 1,2
        return all(re.fullmatch(r"\s*[+-]?\d+\s*", piece) for piece in value.split(","))
    if not isinstance(value, shape.kind) or isinstance(value, bool) != (shape.kind is bool):
        return False
    return shape.least is None or value >= shape.least


def shown(value: Any) -> str:
    """A value as an error shows it, on one line: a TOML table or array of tables by what it is."""
    if isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        return "a table" if isinstance(value, dict) else "an array of tables"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


