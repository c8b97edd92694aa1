import dataclasses

import pytest
from tiny import tiny_config

from suite.config import BUDGETS, Budget, RunConfig, config_from_dict, parse_overrides
from suite.errors import UserError
from tasks.ptb import PTB


def test_overrides_are_literals_checked_against_the_field_type():
    assert parse_overrides(["train.lr=0.5", "options.tie_weights=True", "train.optimizer=adam"]) == {
        "train.lr": 0.5, "options.tie_weights": True, "train.optimizer": "adam"}
    cfg = tiny_config("lstm", "train.lr=1", "train.clip=None")
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.train.clip is None
    with pytest.raises(UserError, match=r"backbone.hidden_size must be int, got 1.5"):
        tiny_config("lstm", "backbone.hidden_size=1.5")
    with pytest.raises(UserError, match=r"options.tie_weights must be bool, got 'yes'"):
        tiny_config("lstm", "options.tie_weights=yes")


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(UserError, match=r"unknown config key 'train.lrr': did you mean train.lr\?"):
        tiny_config("lstm", "train.lrr=1")
    with pytest.raises(UserError, match="write section.key=value"):
        tiny_config("lstm", "lr=1")


def test_precedence_defaults_budget_task_preset_then_user():
    cfg = tiny_config("lstm")
    assert cfg.budget.max_seconds == BUDGETS["smoke"]["max_seconds"]  # budget preset
    assert cfg.train.optimizer == PTB.presets["smoke"]["train.optimizer"]  # task preset for the budget
    assert cfg.backbone.hidden_size == 16  # user override wins over the preset's 64


def test_paper_preset_is_zaremba_medium():
    from suite.config import build_config

    cfg = build_config("ptb", "lstm", budget="paper", options_cls=PTB.Options, presets=PTB.presets)
    assert (cfg.backbone.hidden_size, cfg.backbone.num_layers, cfg.backbone.dropout) == (650, 2, 0.5)
    assert (cfg.options.bptt, cfg.train.batch_size, cfg.train.lr, cfg.train.clip) == (35, 20, 1.0, 5.0)
    assert cfg.budget.max_epochs == 39 and cfg.budget.max_seconds is None
    assert cfg.train.lr_decay == pytest.approx(1 / 1.2) and cfg.train.lr_decay_after_epochs == 6


@pytest.mark.parametrize("key, message", [
    ("budget.max_seconds=-1", "budget.max_seconds must be a number > 0 or None, got -1.0"),
    ("train.optimizer=rmsprop", "train.optimizer must be 'sgd' or 'adam'"),
    ("backbone.dropout=1.0", r"backbone.dropout must be a number in \[0, 1\), got 1.0"),
    ("backbone.cell=tcn", "backbone.cell must be rnn, lstm or gru"),
    ("train.lr_decay=2.0", r"train.lr_decay must be a number in \(0, 1\], got 2.0"),
])
def test_bad_values_are_refused_with_the_key(key, message):
    with pytest.raises(UserError, match=message):
        tiny_config("lstm", key)


def test_top_level_choices_and_contradictions():
    with pytest.raises(UserError, match="unknown precision 'fp8': choose from fp32, tf32, bf16, fp16"):
        tiny_config("lstm", precision="fp8")
    with pytest.raises(UserError, match="needs a dense parent"):
        tiny_config("lstm", variant="quant-dynamic-int8")
    with pytest.raises(UserError, match="at least one of max_seconds"):
        Budget(max_seconds=None)


def test_run_id_is_stable_and_config_round_trips():
    a, b = tiny_config("gru", seed=3), tiny_config("gru", seed=3)
    assert a.run_id == b.run_id and a.run_id.startswith("ptb-gru-smoke-fp32-dense-synthetic-s3-")
    assert tiny_config("gru", seed=4).run_id != a.run_id
    assert tiny_config("gru", "train.lr=0.1").run_id != a.run_id
    back = config_from_dict(a.to_dict(), PTB.Options)
    assert back == a and isinstance(back, RunConfig) and dataclasses.is_dataclass(back.options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.seed = 2


def test_a_models_preset_sits_between_the_tasks_and_the_users():
    from tiny import TASKS

    from baselines.transformer import Transformer
    from suite.config import build_config, model_preset

    imdb = TASKS["imdb"]

    def config(model, *overrides):
        return build_config("imdb", model, budget="smoke", options_cls=imdb.Options, presets=imdb.presets,
                            overrides=list(overrides))

    assert Transformer.presets["imdb"]["smoke"] == model_preset("transformer", "imdb", "smoke")
    lstm, transformer = config("lstm"), config("transformer")
    assert (lstm.options.pooling, lstm.train.lr) == ("last", imdb.presets["smoke"]["train.lr"])  # the task's recipe
    assert (transformer.options.pooling, transformer.train.lr) == ("max", 1e-3)  # the model's wins over it
    assert transformer.backbone == lstm.backbone  # sizes stay the task's, so the match to the LSTM holds
    assert config("transformer", "options.pooling=mean").options.pooling == "mean"  # and the user's over both
    assert model_preset("transformer", "video", "smoke") == {} and model_preset("nonesuch", "imdb", "smoke") == {}
