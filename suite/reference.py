"""A fixed reference workload timed in the same process as each run, so throughput can be compared
across noisy machines: `normalized = run throughput / reference throughput`.

The workload is a hand-written fp32 training loop (the pytorch/examples step) of a fixed small LSTM
language model on fixed random batches; it never changes with the code under test, so a slower model
or harness shows up as a lower normalized figure while a slower machine cancels out.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, HIDDEN, BATCH, BPTT = 4096, 128, 16, 32
WARMUP_STEPS, MEASURE_SECONDS = 3, 1.0


class _ReferenceLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.lstm = nn.LSTM(HIDDEN, HIDDEN, batch_first=True)
        self.decoder = nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.lstm(self.embed(tokens))[0])  # (B, T, V)


def reference_throughput(device: torch.device) -> float:
    """Tokens per second of the reference loop on `device`, after warm-up (about one second)."""
    # Fork CPU and CUDA generators: the run's random streams (dropout masks) must not notice this loop.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        return _measure(device)


def _measure(device: torch.device) -> float:
    gen = torch.Generator().manual_seed(0)
    model = _ReferenceLM().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tokens = torch.randint(VOCAB, (BATCH, BPTT + 1), generator=gen).to(device)
    steps, start = 0, 0.0
    while True:
        if steps == WARMUP_STEPS:
            _sync(device)
            start = time.perf_counter()
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        loss.item()
        steps += 1
        if steps > WARMUP_STEPS and time.perf_counter() - start >= MEASURE_SECONDS:
            break
    return (steps - WARMUP_STEPS) * BATCH * BPTT / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
