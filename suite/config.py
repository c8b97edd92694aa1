"""The one frozen run configuration, the budget presets, and the `--set key=value` override rule.

Precedence, lowest first: dataclass defaults < budget preset < the task's preset for that budget
< the model's preset for that budget (`presets` on the model class: its "*" entry for every task, then its
entry for the task) < the user's `--set` overrides. The resolved config goes into every record
(`dataclasses.asdict`).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from suite.errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
SOURCES = ("real", "synthetic")
PRUNE_LEVELS = (30, 50, 70, 90)
VARIANTS = ("dense", *(f"prune-magnitude-{p}" for p in PRUNE_LEVELS), "quant-dynamic-int8")


SEED_LIMIT = 2**32
"""Seeds end in `np.random.seed` (runner.seed_everything) and numpy generators, which take [0, 2**32)."""
RANGE = "range"
"""The metadata key under which `bounded` stores a field's `Range`."""


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric config field; a None bound leaves that side open-ended. (A None value is
    allowed by an `X | None` annotation, not here.)"""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""
    """Said after the range in the error, where the bound is not obvious."""

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """`in [0, 1)`, `>= 1`, `> 0`, `<= 5`, or "" for any value."""
        low, high = (_number(b) for b in (self.low, self.high))
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"{'<' if self.high_open else '<='} {high}" if self.high is not None else ""


def bounded(default: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False, why: str = "") -> Any:
    """A dataclass field with its default and its allowed range, which `Checked` enforces on construction."""
    return field(default=default, metadata={RANGE: Range(low, high, low_open, high_open, why)})


def seed_field(default: int = 0) -> Any:
    """A seed: an integer in [0, 2**32)."""
    return bounded(default, low=0, high=SEED_LIMIT, high_open=True)


class Checked:
    """Base of every config dataclass: construction checks each field against its declared range, so a bad
    value fails before anything runs, as one line naming `section.field` and the range. A subclass with
    cross-field checks calls `super().__post_init__()` first."""

    section: ClassVar[str] = "options"
    """How the user names the dataclass in `--set section.key=value` ("" for RunConfig's own fields)."""

    def __post_init__(self) -> None:
        check_ranges(self)


def check_ranges(config: Any) -> None:
    """Raise UserError for the first field outside its `bounded` range (or of the wrong numeric kind)."""
    prefix = f"{config.section}." if config.section else ""
    for f in dataclasses.fields(config):
        allowed, value = f.metadata.get(RANGE), getattr(config, f.name)
        if allowed is None:
            continue
        integer, optional = _numeric_kind(type(config), f.name)
        if value is None and optional:
            continue
        number = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not number or not math.isfinite(value) or not allowed.admits(value):
            kind = "an integer" if integer else "a number"
            what = " ".join(filter(None, [kind, allowed.describe(), "or None" if optional else ""]))
            why = f" ({allowed.why})" if allowed.why else ""
            raise UserError(f"{prefix}{f.name} must be {what}{why}, got {value!r}")


@functools.cache
def _numeric_kind(cls: type, name: str) -> tuple[bool, bool]:
    """(is the field an integer, may it be None) from its annotation."""
    hint = typing.get_type_hints(cls)[name]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return float not in allowed, type(None) in allowed


def _number(bound: float | None) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


@dataclass(frozen=True)
class Budget(Checked):
    """How much training a run gets; it stops at whichever limit comes first."""

    section = "budget"
    max_seconds: float | None = bounded(None, low=0, low_open=True)
    """Training wall-clock seconds (evaluation and checkpointing excluded); None = no limit."""
    max_units: int | None = bounded(None, low=1)
    """Training units (tokens for PTB); None = no limit."""
    max_epochs: float | None = bounded(None, low=0, low_open=True)
    """Passes over the training split; None = no limit."""
    eval_every_units: int | None = bounded(None, low=1)
    """Evaluate on validation every this many units, besides every epoch end and the end of training."""
    checkpoint_every_seconds: float = bounded(300.0, low=0, low_open=True)
    """Write a resumable checkpoint this often (and on SIGTERM/SIGINT)."""
    warmup_steps: int = bounded(5, low=0)
    """Optimizer steps left out of the throughput figure (allocator and kernel warm-up)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_seconds is None and self.max_units is None and self.max_epochs is None:
            raise UserError("a budget needs at least one of max_seconds, max_units, max_epochs")


# Budgets are data. Tasks add their own per-budget settings (model size, epochs) in `Task.presets`.
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": dict(max_seconds=20.0, eval_every_units=50_000, checkpoint_every_seconds=60.0),
    "small": dict(max_seconds=1800.0, checkpoint_every_seconds=300.0),
    "standard": dict(max_seconds=3600.0, checkpoint_every_seconds=600.0),
    "paper": dict(max_seconds=None, max_epochs=39, checkpoint_every_seconds=900.0),
}


@dataclass(frozen=True)
class TrainConfig(Checked):
    """Optimisation settings shared by every task."""

    section = "train"
    batch_size: int = bounded(20, low=1)
    """Training batch size (for PTB: parallel streams)."""
    eval_batch_size: int = bounded(10, low=1)
    """Evaluation batch size (pytorch/examples uses 10 for PTB)."""
    optimizer: str = "sgd"
    """sgd or adam."""
    lr: float = bounded(1.0, low=0, low_open=True)
    weight_decay: float = bounded(0.0, low=0)
    clip: float | None = bounded(5.0, low=0, low_open=True)
    """Gradient-norm clipping threshold; None disables clipping."""
    lr_decay: float = bounded(1.0, low=0, high=1, low_open=True)
    """Per-epoch learning-rate decay factor (1 = constant)."""
    lr_decay_after_epochs: int = bounded(0, low=0)
    """Epochs at the full learning rate; epoch e (from 0) runs at lr * lr_decay ** max(0, e + 1 - this)."""
    lr_warmup_steps: int = bounded(0, low=0)
    """Optimizer steps over which the learning rate rises linearly to its scheduled value (0 = none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.optimizer not in ("sgd", "adam"):
            raise UserError(f"train.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")


@dataclass(frozen=True)
class BackboneConfig(Checked):
    """Settings of the recurrent backbone (see baselines/)."""

    section = "backbone"
    hidden_size: int = bounded(200, low=1)
    """Units per layer and direction."""
    num_layers: int = bounded(2, low=1)
    dropout: float = bounded(0.0, low=0, high=1, high_open=True)
    """Dropout between recurrent layers."""
    cell: str | None = None
    """rnn, lstm or gru; only brnn and resrnn take it (None = their default, lstm)."""
    layer_norm: bool = False
    """resrnn only: layer norm on each layer's input."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cell not in (None, "rnn", "lstm", "gru"):
            raise UserError(f"backbone.cell must be rnn, lstm or gru, got {self.cell!r}")


@dataclass(frozen=True)
class RunConfig(Checked):
    """Everything that determines one run; its hash names the run."""

    section = ""  # its own fields are top-level flags: --seed, --finetune-units
    task: str
    model: str
    source: str = "real"
    budget_name: str = "small"
    precision: str = "fp32"
    seed: int = seed_field(1)
    """Seeds torch, numpy and Python's random for the run (`suite run --seed`)."""
    variant: str = "dense"
    parent: str | None = None
    """Run id of the dense parent (variants only)."""
    device: str = "auto"
    finetune_units: int = bounded(0, low=0)
    """Pruning variants: units of fine-tuning with the mask fixed, at the parent's final learning rate."""
    world_size: int = bounded(1, low=1)
    """Processes training the run together under torchrun (DDP); train.batch_size is the global batch."""
    budget: Budget = field(default_factory=Budget)
    train: TrainConfig = field(default_factory=TrainConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    options: Any = None
    """The task's own frozen options dataclass (`Task.Options`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _choose("precision", self.precision, PRECISIONS)
        _choose("source", self.source, SOURCES)
        _choose("variant", self.variant, VARIANTS)
        _choose("budget", self.budget_name, tuple(BUDGETS))
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UserError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if (self.variant == "dense") != (self.parent is None):
            raise UserError("a variant run needs a dense parent, and a dense run has none")
        if self.finetune_units and not self.variant.startswith("prune"):
            raise UserError("--finetune-units applies to prune-magnitude-* variants only")
        if self.train.batch_size % self.world_size:
            raise UserError(f"train.batch_size ({self.train.batch_size}) is the global batch and must divide evenly "
                            f"over the {self.world_size} processes: set --set train.batch_size=N with N a multiple "
                            f"of {self.world_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(identity(self.to_dict()), sort_keys=True).encode()).hexdigest()

    @property
    def run_id(self) -> str:
        parts = [self.task, self.model, self.budget_name, self.precision, self.variant, self.source]
        return "-".join([*parts, f"s{self.seed}", self.digest()[:8]])


ADDED_FIELDS: dict[tuple[str, ...], Any] = {("world_size",): 1, ("train", "lr_warmup_steps"): 0}
"""Fields added after runs were recorded, with their defaults: at the default they are left out of a run's
identity, so that the runs that could not set them keep their ids (and leaderboard rows)."""


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The config fields that name a run: all but the ADDED_FIELDS at their defaults."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for (*sections, name), default in ADDED_FIELDS.items():
        holder = out
        for section in sections:
            holder = holder.get(section) or {}
        if name in holder and holder[name] == default:
            del holder[name]
    return out


def _choose(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"unknown {what} {value!r}: choose from {', '.join(allowed)}")


def build_config(task: str, model: str, *, budget: str = "small", overrides: list[str] = (),
                 options_cls: type | None = None, presets: dict[str, dict[str, Any]] | None = None,
                 **top: Any) -> RunConfig:
    """Resolve defaults, the budget preset, the task's preset and `--set` overrides into a RunConfig."""
    _choose("budget", budget, tuple(BUDGETS))
    sections = {"budget": Budget(**BUDGETS[budget]), "train": TrainConfig(),
                "backbone": BackboneConfig(), "options": options_cls() if options_cls else None}
    sections = apply_overrides(sections, (presets or {}).get(budget, {}))
    sections = apply_overrides(sections, model_preset(model, task, budget))
    sections = apply_overrides(sections, parse_overrides(overrides))
    return RunConfig(task=task, model=model, budget_name=budget, **top, **sections)


def model_preset(model: str, task: str, budget: str) -> dict[str, Any]:
    """A registered model's own settings for a budget: its recipe for every task ("*"), then for this task.
    Models without `presets` (the recurrent baselines) add nothing, so the task's preset is their recipe."""
    from suite.registry import MODELS

    presets = getattr(MODELS.get(model), "presets", {})
    return {**presets.get("*", {}).get(budget, {}), **presets.get(task, {}).get(budget, {})}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["train.lr=1.0", "options.tie_weights=True"]` -> {"train.lr": 1.0, ...} (values by literal_eval)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or "." not in key:
            raise UserError(f"bad override {pair!r}: write section.key=value, e.g. train.lr=0.5")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()  # a bare word is a string, as in nanoGPT's configurator
    return out


def apply_overrides(sections: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Replace fields in the section dataclasses, type-checked against the field's annotation.

    Each section is replaced once with all its changes, so that validation sees the final combination
    (e.g. budget.max_seconds=None together with budget.max_units=1000).
    """
    changes: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        target = sections.get(section)
        fields = {f.name for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else set()
        if name not in fields:
            valid = [f"{s}.{f.name}" for s, d in sections.items() if d is not None for f in dataclasses.fields(d)]
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]}?" if close else f"valid keys: {', '.join(valid)}"
            raise UserError(f"unknown config key {key!r}: {hint}")
        hint = typing.get_type_hints(type(target))[name]
        changes.setdefault(section, {})[name] = _coerce(key, value, hint)
    return {s: dataclasses.replace(d, **changes[s]) if s in changes else d for s, d in sections.items()}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against a field annotation (int, float, bool, str and `X | None`)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind in (int, bool, str) and type(value) is kind:
            return value
    names = " or ".join("None" if k is type(None) else k.__name__ for k in allowed)
    raise UserError(f"{key} must be {names}, got {value!r} ({type(value).__name__})")


def config_from_dict(data: dict[str, Any], options_cls: type | None) -> RunConfig:
    """Rebuild a RunConfig from a record's or checkpoint's `config` dict."""
    data = dict(data)
    data["budget"] = Budget(**data["budget"])
    data["train"] = TrainConfig(**data["train"])
    data["backbone"] = BackboneConfig(**data["backbone"])
    data["options"] = options_cls(**data["options"]) if options_cls and data["options"] is not None else None
    return RunConfig(**data)
