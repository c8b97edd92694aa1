"""Every applicable baseline completes the default smoke configuration on the synthetic source and beats unigram.

The smoke budget stops after 20 s of training, so what a run reaches in it depends on the machine and its load:
on two busy cores four baselines once ended above the bound. Here the same runs are capped by tokens instead
(the amount 20 s gives on two idle cores), so the verdict is the same on any machine; what a time limit must
do (stop the run as budget_exhausted by max_seconds) is tested in tests/test_cli.py and tests/test_runner.py.
"""
import pytest
from tiny import TASKS

from suite import experiment
from suite.config import build_config
from suite.registry import MODELS

PTB = TASKS["ptb"]
TOKENS = 250_000
"""About what 20 s of smoke training gives the slowest baseline on two idle cores."""


@pytest.mark.slow
@pytest.mark.parametrize("model", experiment.applicable_models(PTB))
def test_smoke_run_beats_unigram(model, tmp_path):
    cfg = build_config("ptb", model, budget="smoke", options_cls=PTB.Options, presets=PTB.presets,
                       source="synthetic", device="cpu",
                       overrides=[f"budget.max_units={TOKENS}", "budget.max_seconds=None"])
    record, _ = experiment.run(cfg, tmp_path, progress_bar=False)
    assert record["status"] == "completed" and record["stopped_by"] == "max_units"
    assert TOKENS <= record["budget_used"]["units"] < TOKENS + 1000
    ppl, unigram = record["metrics"]["test"]["ppl"], record["reference"]["test"]["ppl"]
    # The Transformer reference only has to beat the reference line clearly: at this budget it is far from
    # the recurrent models' 0.8 of unigram, which it passes only at the small budget.
    margin = 0.9 if getattr(MODELS[model], "reference_model", False) else 0.8
    assert ppl < margin * unigram, (ppl, unigram)
    assert record["reference"]["optimal"]["ppl"] < ppl
