"""Result records: one JSON file per run, schema-versioned, written atomically, validated on load.

Records are the single source of truth; leaderboards and gates are derived from them.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from suite.durable import atomic_write_text
from suite.errors import UserError

SCHEMA_VERSION = 3
SCHEMA_PATH = Path(__file__).with_name("schemas") / f"result-v{SCHEMA_VERSION}.json"


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate(record: dict[str, Any]) -> None:
    """Raise ValueError naming the first schema violation (path and message)."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(record))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"{where}: {error.message}")


def record_path(results_dir: Path, record: dict[str, Any]) -> Path:
    return Path(results_dir) / record["task"]["name"] / record["model"]["name"] / f"{record['run_id']}.json"


FINISHED = ("completed", "budget_exhausted")
"""A finished run's record holds its final metrics; it is replaced only on request (`suite run --rerun`)."""


def write_record(record: dict[str, Any], path: Path) -> Path:
    """Validate, then write strict JSON durably (suite/durable.py): a reader never sees half a record. Numbers
    that are NaN or infinite are stored as null, and `non_finite` names where they were."""
    record = {**finite(record), "non_finite": sorted({*record.get("non_finite", []), *non_finite_paths(record)})}
    validate(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(record, indent=2, allow_nan=False) + "\n")


def non_finite_paths(value: Any, where: str = "") -> list[str]:
    """JSON pointers (RFC 6901) of the NaN and infinite floats in `value`."""
    if isinstance(value, float) and not math.isfinite(value):
        return [where]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [p for k, v in items for p in non_finite_paths(v, f"{where}/{str(k).replace('~', '~0').replace('/', '~1')}")]


def load_record(path: Path) -> dict[str, Any]:
    """Read and validate one record; a corrupt file fails with one sentence naming it."""
    path = Path(path)
    try:
        record = parse_json(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no result record at {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory: pass one result record (a .json file)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"result record {path} is not valid JSON ({exc}); rerun the run that wrote it") from None
    found = record.get("schema_version") if isinstance(record, dict) else None
    if isinstance(found, int) and found < SCHEMA_VERSION and found in MIGRATIONS:
        record = migrate(record)
    elif found != SCHEMA_VERSION:
        newer = isinstance(found, int) and found > SCHEMA_VERSION
        fix = "upgrade seqsuite to read it" if newer else "it is not a seqsuite record, or rerun the run"
        raise UserError(f"result record {path} has schema version {found!r}, this seqsuite reads "
                        f"1..{SCHEMA_VERSION}: {fix}")
    try:
        validate(record)
    except ValueError as exc:
        raise UserError(f"result record {path} is invalid at {exc}") from None
    if record["task"]["primary_metric"] not in record["task"]["metrics"]:
        raise UserError(f"result record {path} is invalid at task/primary_metric: it is not one of task/metrics")
    return record


def _v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    """v2 added the serialized model size and the reference-loop throughput; v1 never measured them."""
    record["model"] = {**record["model"], "size_bytes": None}
    record["throughput"] = {**record["throughput"], "reference_units_per_s": None, "normalized": None}
    return record


def _v2_to_v3(record: dict[str, Any]) -> dict[str, Any]:
    """v3 added where an unfinished run stopped and which numbers were not finite; v2 recorded neither."""
    return {**record, "stage": None, "non_finite": []}


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3}  # version -> function that lifts a record to version + 1


def migrate(record: dict[str, Any]) -> dict[str, Any]:
    """Lift an older record, one version at a time, to the current schema (in memory; the file stays)."""
    record = dict(record)
    while record["schema_version"] < SCHEMA_VERSION:
        record = MIGRATIONS[record["schema_version"]](record)
        record["schema_version"] += 1
    return record


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: store them as null (a diverged run's last loss, for example)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def parse_json(text: str) -> Any:
    """`json.loads` that reads the non-standard NaN, Infinity and -Infinity tokens (which Python's own json writes
    by default) as null: no non-finite number read from a file enters the suite."""
    return json.loads(text, parse_constant=lambda _token: None)
