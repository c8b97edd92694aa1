"""Every numeric config field declares its range, and a value outside it fails at once: one line naming
`section.field` and the range, exit 2 from the CLI, before any data is read or any record written."""
import dataclasses
import json
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import torch
from tiny import TASKS, tiny_config

from suite.config import (
    BUDGETS,
    RANGE,
    SEED_LIMIT,
    BackboneConfig,
    Budget,
    Checked,
    RunConfig,
    TrainConfig,
    build_config,
    config_from_dict,
)
from suite.errors import UserError
from suite.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
SEEDS = "in [0, 4294967296)"
DROPOUT = "a number in [0, 1)"


def core_instances() -> list[Checked]:
    """A valid instance of each core config dataclass (RunConfig needs its two names and a budget)."""
    budget = Budget(max_seconds=1.0)
    return [budget, TrainConfig(), BackboneConfig(), RunConfig(task="ptb", model="gru", budget=budget)]


def all_instances() -> list[Checked]:
    return [*core_instances(), *(task.Options() for task in TASKS.values())]


def numeric(cls: type, name: str) -> bool:
    """Is the field an int or a float (or either or None)? A bool is a switch, not a number."""
    hint = typing.get_type_hints(cls)[name]
    kinds = set(typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)) - {type(None)}
    return bool(kinds) and kinds <= {int, float}


def outside(field: dataclasses.Field) -> list[float]:
    """Values just past each declared bound."""
    r = field.metadata[RANGE]
    values = []
    if r.low is not None:
        values.append(r.low if r.low_open else r.low - 1)
    if r.high is not None:
        values.append(r.high if r.high_open else r.high + 1)
    return values


# ---------------------------------------------------------------- declared everywhere, enforced everywhere

@pytest.mark.parametrize("config", all_instances(), ids=lambda c: type(c).__name__)
def test_every_numeric_field_declares_a_range(config):
    assert isinstance(config, Checked)
    missing = [f.name for f in dataclasses.fields(config) if numeric(type(config), f.name) and RANGE not in f.metadata]
    assert not missing, f"{type(config).__name__}: give {', '.join(missing)} a range with suite.config.bounded"


@pytest.mark.parametrize("config", all_instances(), ids=lambda c: type(c).__name__)
def test_every_declared_bound_is_enforced_with_the_field_and_range(config):
    prefix = f"{config.section}." if config.section else ""
    ranged = [f for f in dataclasses.fields(config) if RANGE in f.metadata]
    assert all(outside(f) for f in ranged if f.metadata[RANGE].describe())  # a range that bounds nothing is a slip
    for f in ranged:
        for value in outside(f):
            with pytest.raises(UserError) as info:
                dataclasses.replace(config, **{f.name: value})
            message = str(info.value)
            assert message.startswith(f"{prefix}{f.name} must be ") and "\n" not in message, message
            assert f.metadata[RANGE].describe() in message and message.endswith(f"got {value!r}")


def test_non_finite_numbers_and_the_wrong_kind_are_refused():
    with pytest.raises(UserError, match="train.lr must be a number > 0, got nan"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(UserError, match="train.lr must be a number > 0, got inf"):
        TrainConfig(lr=float("inf"))  # `--set train.lr=1e309` parses to infinity
    with pytest.raises(UserError, match="budget.max_seconds must be a number > 0 or None, got inf"):
        Budget(max_seconds=float("inf"))  # None is the way to say no limit
    with pytest.raises(UserError, match="options.word_score must be a number, got nan"):
        TASKS["librispeech"].Options(word_score=float("nan"))
    with pytest.raises(UserError, match="train.batch_size must be an integer >= 1, got 2.5"):
        TrainConfig(batch_size=2.5)
    with pytest.raises(UserError, match="backbone.num_layers must be an integer >= 1, got True"):
        BackboneConfig(num_layers=True)
    with pytest.raises(UserError, match="train.eval_batch_size must be an integer >= 1, got None"):
        TrainConfig(eval_batch_size=None)
    assert TrainConfig(clip=None).clip is None and Budget(max_units=5).max_seconds is None  # `X | None` allows None


def test_presets_and_committed_records_lie_inside_the_ranges():
    for name, task in TASKS.items():
        for budget in BUDGETS:
            for model in MODELS:
                build_config(name, model, budget=budget, options_cls=task.Options, presets=task.presets)
    records = sorted((ROOT / "results" / "baselines").rglob("*.json"))
    assert records
    for path in records:
        config = json.loads(path.read_text())["config"]
        config_from_dict(config, TASKS[config["task"]].Options)


# ---------------------------------------------------------------- the cases of issue 21, task by task

OPTION_CASES = {
    "ptb": [("options.bptt=0", "options.bptt must be an integer >= 1, got 0"),
            ("options.emb_size=0", "options.emb_size must be an integer >= 1, got 0"),
            ("options.dropout=1.0", f"options.dropout must be {DROPOUT}, got 1.0"),
            ("options.init_range=0.0", "options.init_range must be a number > 0 or None, got 0.0"),
            ("options.synthetic_tokens=39", "options.synthetic_tokens must be an integer >= 40 (valid and test"),
            ("options.synthetic_seed=-1", f"options.synthetic_seed must be an integer {SEEDS}, got -1")],
    "imdb": [("options.emb_size=0", "options.emb_size must be an integer >= 1, got 0"),
             ("options.vocab_size=2", "options.vocab_size must be an integer >= 3 (<pad>, <unk> and one word)"),
             ("options.max_len=0", "options.max_len must be an integer >= 1, got 0"),
             ("options.dropout=1.0", f"options.dropout must be {DROPOUT}, got 1.0"),
             ("options.valid_fraction=1.0", "options.valid_fraction must be a number in (0, 1), got 1.0"),
             ("options.bucket_batches=0", "options.bucket_batches must be an integer >= 1, got 0"),
             ("options.synthetic_reviews=3", "options.synthetic_reviews must be an integer >= 4"),
             ("options.split_seed=-1", f"options.split_seed must be an integer {SEEDS}, got -1"),
             ("options.synthetic_seed=-1", f"options.synthetic_seed must be an integer {SEEDS}, got -1")],
    "translation": [("options.emb_size=0", "options.emb_size must be an integer >= 1, got 0"),
                    ("options.dropout=1.0", f"options.dropout must be {DROPOUT}, got 1.0"),
                    ("options.vocab_size=7", "options.vocab_size must be an integer >= 8, got 7"),
                    ("options.beam=0", "options.beam must be an integer >= 1, got 0"),
                    ("options.length_penalty=-0.5", "options.length_penalty must be a number >= 0, got -0.5"),
                    ("options.max_len_b=0", "options.max_len_b must be an integer >= 1, got 0"),
                    ("options.heatmaps=-1", "options.heatmaps must be an integer >= 0, got -1"),
                    ("options.reference_units=0", "options.reference_units must be an integer >= 1 or None, got 0"),
                    ("options.synthetic_pairs=0", "options.synthetic_pairs must be an integer >= 1, got 0"),
                    ("options.synthetic_seed=-1", f"options.synthetic_seed must be an integer {SEEDS}, got -1")],
    "captioning": [("options.emb_size=0", "options.emb_size must be an integer >= 1, got 0"),
                   ("options.dropout=1.0", f"options.dropout must be {DROPOUT}, got 1.0"),
                   ("options.alpha_c=-1.0", "options.alpha_c must be a number >= 0, got -1.0"),
                   ("options.image_size=16", "options.image_size must be an integer >= 32"),
                   ("options.max_caption_len=0", "options.max_caption_len must be an integer >= 1, got 0"),
                   ("options.examples=-1", "options.examples must be an integer >= 0, got -1"),
                   ("options.split_seed=4294967296", f"options.split_seed must be an integer {SEEDS}"),
                   ("options.synthetic_seed=-1", f"options.synthetic_seed must be an integer {SEEDS}, got -1")],
    "librispeech": [("options.stack=0", "options.stack must be an integer >= 1, got 0"),
                    ("options.batch_seconds=0.0", "options.batch_seconds must be a number > 0, got 0.0"),
                    ("options.dropout=1.0", f"options.dropout must be {DROPOUT}, got 1.0"),
                    ("options.bpe_vocab=16", "options.bpe_vocab must be an integer >= 32 (specials, letters"),
                    ("options.beam=0", "options.beam must be an integer >= 1, got 0"),
                    ("options.lm_weight=-1.0", "options.lm_weight must be a number >= 0, got -1.0"),
                    ("options.synthetic_utterances=0", "options.synthetic_utterances must be an integer >= 1, got 0"),
                    ("options.synthetic_seed=-1", f"options.synthetic_seed must be an integer {SEEDS}, got -1")],
    "video": [("options.ucf101_split=4", "options.ucf101_split must be an integer in [1, 3], got 4"),
              ("options.valid_fraction=0.0", "options.valid_fraction must be a number in (0, 1), got 0.0"),
              ("options.frames=0", "options.frames must be an integer >= 1, got 0"),
              ("options.image_size=31", "options.image_size must be an integer >= 32"),
              ("options.train_views=0", "options.train_views must be an integer >= 1, got 0"),
              ("options.dropout=1.0", f"options.dropout must be {DROPOUT}, got 1.0"),
              ("options.synthetic_clips=0", "options.synthetic_clips must be an integer >= 1, got 0"),
              ("options.split_seed=-1", f"options.split_seed must be an integer {SEEDS}, got -1"),
              ("options.synthetic_seed=-1", f"options.synthetic_seed must be an integer {SEEDS}, got -1")],
}
CORE_CASES = [
    ("backbone.dropout=1.0", f"backbone.dropout must be {DROPOUT}, got 1.0"),
    ("backbone.hidden_size=0", "backbone.hidden_size must be an integer >= 1, got 0"),
    ("budget.checkpoint_every_seconds=-1", "budget.checkpoint_every_seconds must be a number > 0, got -1.0"),
    ("budget.max_units=0", "budget.max_units must be an integer >= 1 or None, got 0"),
    ("budget.warmup_steps=-1", "budget.warmup_steps must be an integer >= 0, got -1"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be an integer >= 1, got 0"),
    ("train.weight_decay=-0.1", "train.weight_decay must be a number >= 0, got -0.1"),
    ("train.clip=0", "train.clip must be a number > 0 or None, got 0.0"),
    ("train.lr_decay_after_epochs=-1", "train.lr_decay_after_epochs must be an integer >= 0, got -1"),
]


@pytest.mark.parametrize("task_name, override, message",
                         [(t, o, m) for t, cases in OPTION_CASES.items() for o, m in cases]
                         + [(t, o, m) for t in TASKS for o, m in CORE_CASES])
def test_an_override_outside_its_range_is_refused(task_name, override, message):
    with pytest.raises(UserError) as info:
        tiny_config("lstm", override, task_name=task_name)
    assert message in str(info.value)


def test_every_task_has_cases_here():
    assert set(OPTION_CASES) == set(TASKS)


@pytest.mark.parametrize("seed, ok", [(-1, False), (0, True), (SEED_LIMIT - 1, True), (SEED_LIMIT, False),
                                      (5_000_000_000, False)])
def test_the_run_seed_is_checked_in_the_run_config(seed, ok):
    if ok:
        assert tiny_config("gru", seed=seed).seed == seed
        return
    with pytest.raises(UserError) as info:
        tiny_config("gru", seed=seed)
    assert str(info.value) == f"seed must be an integer {SEEDS}, got {seed}"


def test_ptb_names_the_evaluation_batch_size_when_that_is_too_large():
    """valid and test get 2000 / 20 = 100 tokens: 80 rows of them are one token long, too short for a target."""
    cfg = tiny_config("gru", "options.synthetic_tokens=2000", "train.eval_batch_size=80")
    with pytest.raises(UserError, match=r"PTB valid split \(100 tokens\) is shorter than train.eval_batch_size=80 "
                                        r"rows of 2 tokens: lower train.eval_batch_size$"):
        TASKS["ptb"](cfg, torch.device("cpu")).prepare()


# ---------------------------------------------------------------- through the real command line

def suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


RUN = ["run", "--task", "ptb", "--model", "gru", "--source", "synthetic", "--budget", "smoke", "--device", "cpu"]
SWEEP = ["sweep", "--task", "ptb", "--model", "gru", "--source", "synthetic", "--budget", "smoke"]


@pytest.mark.parametrize("args, fragment", [
    ([*RUN, "--seed", "-1"], "seed must be an integer in [0, 4294967296), got -1"),
    ([*RUN, "--set", "options.bptt=0"], "options.bptt must be an integer >= 1, got 0"),
    ([*RUN, "--set", "budget.checkpoint_every_seconds=-1"], "budget.checkpoint_every_seconds must be a number > 0"),
    ([*SWEEP, "--seed", "5000000000"], "seed must be an integer in [0, 4294967296), got 5000000000"),
])
def test_the_cli_refuses_before_anything_runs(tmp_path, args, fragment):
    results = tmp_path / "results"
    proc = suite(*args, "--results", str(results))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert not results.exists() or not any(results.rglob("*")), "nothing may be written"
