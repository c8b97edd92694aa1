"""pytest-benchmark microbenchmarks: one training step and one evaluation step per baseline at a fixed
shape (the PTB smoke model: batch 8 x 20 tokens, 64 units, 10k vocabulary), on the CPU.

    pytest benchmarks/test_micro.py --benchmark-only
"""
import pytest
import torch
import torch.nn.functional as F

from baselines import backbone_factory
from suite.config import build_config
from suite.experiment import applicable_models
from suite.registry import MODELS, TASKS, load_plugins

load_plugins()
PTB = TASKS["ptb"]
SHAPE = (8, 20)


def language_model(name: str):
    cfg = build_config("ptb", name, budget="smoke", options_cls=PTB.Options, presets=PTB.presets,
                       source="synthetic", device="cpu", overrides=["options.synthetic_tokens=2000"])
    torch.manual_seed(0)
    task = PTB(cfg, torch.device("cpu"))
    task.prepare()
    model = task.build(backbone_factory(MODELS[name], cfg.backbone, task.causal))
    tokens = torch.randint(10_000, (SHAPE[0], SHAPE[1] + 1), generator=torch.Generator().manual_seed(0))
    return model, tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("name", applicable_models(PTB))
def test_train_step(benchmark, name):
    model, x, y = language_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    benchmark(step)


@pytest.mark.parametrize("name", applicable_models(PTB))
def test_eval_step(benchmark, name):
    model, x, _ = language_model(name)
    model.eval()

    @torch.no_grad()
    def step():
        return model(x)[0].sum().item()

    benchmark(step)
