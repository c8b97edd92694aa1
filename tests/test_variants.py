import pytest
import torch
from tiny import prepared, tiny_config
from torch import nn
from torch.nn.utils import prune

from suite import experiment, variant_run
from suite.config import config_from_dict
from suite.errors import UserError
from tasks.ptb import PTB


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    out = {}
    for model in ("lstm", "rnn"):
        cfg = tiny_config(model, "budget.max_units=3000", "budget.max_seconds=None")
        record, path = experiment.run(cfg, results, progress_bar=False)
        out[model] = (record, path)
    return results, out


def independent_prune(parent, amount, results):
    """The parent's best weights pruned in the test: global L1 over recurrent and linear weight matrices."""
    cfg = config_from_dict(parent["config"], PTB.Options)
    task, model = prepared(cfg)
    model.load_state_dict(torch.load(results / parent["checkpoint"])["model"])
    weights = [(m, n) for m in model.modules() if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))
               for n, _ in m.named_parameters(recurse=False) if n.startswith("weight")]
    weights += [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]
    prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=amount)
    return task, model, weights


def test_prune_matches_an_independent_pruning_and_links_the_parent(parents):
    results, found = parents
    parent, parent_path = found["lstm"]
    record, path = variant_run.run_variant("prune-magnitude-70", 0, parent, parent_path, results, progress_bar=False)
    task, model, weights = independent_prune(parent, 0.7, results)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in weights)
    total = sum(getattr(m, n).numel() for m, n in weights)
    v = record["variant"]
    assert v["sparsity"] == pytest.approx(zeros / total, abs=1e-9) and v["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert v["parent_run_id"] == parent["run_id"] and v["parent_record"] == str(parent_path)
    assert record["config"]["parent"] == parent["run_id"] and record["config"]["variant"] == "prune-magnitude-70"
    ppl = task.evaluate(model.eval(), "test")["ppl"]
    assert record["metrics"]["test"]["ppl"] == pytest.approx(ppl, rel=1e-6)
    assert v["quality_delta"]["test/ppl"] == pytest.approx(ppl - parent["metrics"]["test"]["ppl"], rel=1e-6)
    assert v["compressed_bytes"] < v["parent_compressed_bytes"] and v["latency_ms"] > 0
    assert path.parent == parent_path.parent and path != parent_path


def test_fine_tuning_keeps_the_mask(parents):
    results, found = parents
    parent, parent_path = found["lstm"]
    record, _ = variant_run.run_variant("prune-magnitude-50", 400, parent, parent_path, results, progress_bar=False)
    assert record["budget_used"]["units"] >= 400 and record["variant"]["finetune_units"] == 400
    assert record["variant"]["sparsity"] == pytest.approx(0.5, abs=1e-3)  # zeros stayed zeros while training
    assert record["learning_curve"] and record["status"] == "completed"
    assert "fine-tuned 400 units with the mask fixed" in record["variant"]["notes"][0]


def test_dynamic_int8(parents):
    results, found = parents
    lstm, lstm_path = found["lstm"]
    record, _ = variant_run.run_variant("quant-dynamic-int8", 0, lstm, lstm_path, results, progress_bar=False)
    v = record["variant"]
    decoder_bytes = 4 * 16 * 10_000  # the fp32 output layer, which int8 stores in a quarter of the bytes
    assert v["parent_size_bytes"] - v["size_bytes"] > 0.7 * decoder_bytes and v["notes"] == []
    assert abs(v["quality_delta"]["test/ppl"]) < 0.05 * lstm["metrics"]["test"]["ppl"]
    rnn, rnn_path = found["rnn"]
    record, _ = variant_run.run_variant("quant-dynamic-int8", 0, rnn, rnn_path, results, progress_bar=False)
    assert "Elman (nn.RNN) layers: they stay fp32" in record["variant"]["notes"][0]


def test_missing_or_unfinished_parent_is_refused(parents, tmp_path):
    results, found = parents
    cfg = tiny_config("gru", "budget.max_units=3000", "budget.max_seconds=None")
    with pytest.raises(UserError, match="no dense parent record at .*run the same command without --variant"):
        variant_run.find_parent(cfg, results, None)
    record, path = found["lstm"]
    assert variant_run.find_parent(config_from_dict(record["config"], PTB.Options), results, None)[1] == path
