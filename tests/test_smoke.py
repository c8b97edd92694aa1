"""Every applicable baseline completes a default smoke run on the synthetic source and beats unigram."""
import pytest
from tiny import TASKS

from suite import experiment
from suite.config import build_config

PTB = TASKS["ptb"]


@pytest.mark.slow
@pytest.mark.parametrize("model", experiment.applicable_models(PTB))
def test_smoke_run_beats_unigram(model, tmp_path):
    cfg = build_config("ptb", model, budget="smoke", options_cls=PTB.Options, presets=PTB.presets,
                       source="synthetic", device="cpu")
    record, _ = experiment.run(cfg, tmp_path, progress_bar=False)
    assert record["status"] == "budget_exhausted" and record["budget_used"]["seconds"] >= 20
    ppl, unigram = record["metrics"]["test"]["ppl"], record["reference"]["test"]["ppl"]
    assert ppl < 0.8 * unigram, (ppl, unigram)
    assert record["reference"]["optimal"]["ppl"] < ppl
