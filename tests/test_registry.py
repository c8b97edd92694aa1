import math
import subprocess
import sys

import pytest
import torch
from tiny import prepared, task_param, tiny_config

from suite import registry
from suite.errors import UserError
from suite.experiment import applicable_models


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UserError, match=r"unknown model 'lstmm': did you mean lstm\?"):
        registry.get("model", "lstmm")
    with pytest.raises(UserError, match=r"unknown task 'pt': did you mean ptb\?"):
        registry.get("task", "pt")
    with pytest.raises(UserError, match="choose from"):
        registry.get("task", "zzzzzz")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model("lstm")(type("Another", (), {}))


def test_list_filters_with_fnmatch():
    assert registry.list_names("model", "*rnn") == ["brnn", "resrnn", "rnn"]
    assert registry.list_names("model") == sorted(["rnn", "lstm", "gru", "brnn", "resrnn", "transformer"])


def test_applicability_rules_out_bidirectional_on_causal_tasks():
    assert applicable_models(registry.TASKS["ptb"]) == ["rnn", "lstm", "gru", "resrnn", "transformer"]
    assert "brnn" in applicable_models(registry.TASKS["imdb"])  # and the transformer runs either way


CASES = [task_param(t, m) for t, tc in registry.TASKS.items() for m in applicable_models(tc)]


@pytest.mark.parametrize("task_name, model_name", CASES)
def test_contract_every_task_and_applicable_model(task_name, model_name):
    """One loss step and one evaluation over every registered task x applicable model."""
    task, model = prepared(tiny_config(model_name, task_name=task_name))
    batch = next(iter(task.train_batches(0)))
    loss, units, carry = task.loss(model, batch, None)
    loss.backward()
    assert loss.ndim == 0 and loss.item() > 0 and units > 0
    # Every trainable parameter takes part (DDP would hang on one that does not); the Transformer's one-row
    # token table is frozen, since its inputs come in as embeddings.
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    metrics = task.evaluate(model.eval(), "valid")
    assert set(metrics) == set(task.metrics) and all(math.isfinite(v) and v >= 0 for v in metrics.values())
    assert task.flops_per_unit(model) > 0 and task.eval_units("valid") > 0
    out = model(*task.sample_input(1, 7))
    out = out[0] if isinstance(out, tuple) else out  # (logits, state) for language models, logits otherwise
    assert out.shape[0] == 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("module", ["suite.experiment", "suite.runner", "suite.cli", "tasks", "baselines",
                                    "suite.leaderboard", "tasks.translation"])
def test_every_module_imports_first_in_a_fresh_interpreter(module):
    """Import cycles only show when a module is the first one imported."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
