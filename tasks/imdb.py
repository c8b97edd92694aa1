"""IMDB movie-review sentiment (Maas et al. 2011, Large Movie Review Dataset): 25k train / 25k test reviews.

Tokenization: lowercase, `<br />` -> space, then `TOKEN_RE` (runs of letters, digits and apostrophes, or
one other non-space character each). Vocabulary: the `vocab_size - 2` most frequent train tokens (ties by
word) after <pad>=0 and <unk>=1. A review longer than `max_len` keeps its last `max_len` tokens (Keras'
truncating="pre"), since reviews tend to end with their verdict. Vocabulary and ids are cached under
the data dir, keyed by the texts' checksum and the settings (`cached_tokens`).

Batches are length-bucketed and the backbone gets `lengths`, so packing skips the padding.

Published non-pretrained anchors (test accuracy): LSTM 86.5 % (Dai & Le 2015), a 2-layer BiLSTM about
86 %, NBSVM-bigram 91.2 % (Wang & Manning 2012; the bag-of-n-grams line a recurrent model should approach).
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from suite.archives import extract
from suite.config import Checked, bounded, seed_field
from suite.errors import DataError, UserError
from suite.fetch import RemoteFile, data_dir, fetch, write_cache
from suite.registry import register_task
from tasks.base import BackboneFactory, Task
from tasks.batching import bucket_order
from tasks.pooling import pool
from tasks.synthetic_reviews import ReviewSource

ORIGIN = "https://ai.stanford.edu/~amaas/data/sentiment"
FILE = RemoteFile("aclImdb_v1.tar.gz", "7c2ac02c03563afcf9b574c7e56c153a")
TOKENIZER_VERSION = 1
"""Bump when `tokenize`, `build_vocab` or `encode` change, so that cached token ids are not reused."""
TOKEN_RE = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")
PAD, UNK = 0, 1
POOLINGS = ("last", "mean", "max")

# paper: a 2-layer BiLSTM (--model brnn, its default cell), 256 units per direction, 300-d embeddings,
# dropout 0.5, Adam 1e-3, batch 64, 400 tokens, 25k vocabulary, 10 epochs: the anchors above.
_PAPER = {"backbone.hidden_size": 256, "backbone.num_layers": 2, "backbone.dropout": 0.5,
          "options.emb_size": 300, "options.dropout": 0.5, "options.max_len": 400, "options.vocab_size": 25_000,
          "train.batch_size": 64, "train.eval_batch_size": 256, "train.optimizer": "adam", "train.lr": 1e-3,
          "train.clip": 5.0, "budget.max_epochs": 10}


@dataclass(frozen=True)
class IMDBOptions(Checked):
    emb_size: int = bounded(128, low=1)
    vocab_size: int = bounded(25_000, low=3, why="<pad>, <unk> and one word")
    """Vocabulary size including <pad> and <unk>."""
    max_len: int = bounded(400, low=1)
    """Tokens kept per review (the last ones)."""
    pooling: str = "last"
    """last (final state, both directions for brnn), mean or max over the valid positions."""
    dropout: float = bounded(0.0, low=0, high=1, high_open=True)
    """Dropout on the embeddings and before the classifier."""
    valid_fraction: float = bounded(0.1, low=0, high=1, low_open=True, high_open=True)
    """Share of train carved out as validation by a permutation fixed by split_seed."""
    split_seed: int = seed_field()
    """Seed of the validation split (fixed across run seeds so that runs compare)."""
    bucket_batches: int = bounded(20, low=1)
    """Training batches per bucket: examples are sorted by length within chunks of this many batches."""
    synthetic_reviews: int = bounded(8_000, low=4, why="the test split gets a quarter as many")
    """Training reviews of the synthetic source (test gets a quarter as many; valid is carved from train)."""
    synthetic_seed: int = seed_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in POOLINGS:
            raise UserError(f"options.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text.lower().replace("<br />", " "))


def build_vocab(docs: list[list[str]], size: int) -> dict[str, int]:
    """<pad>, <unk>, then the most frequent words (ties broken by the word, so the order is stable)."""
    counts = Counter(w for doc in docs for w in doc)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 2]
    return {"<pad>": PAD, "<unk>": UNK, **{w: i + 2 for i, (w, _) in enumerate(ranked)}}


def encode(doc: list[str], vocab: dict[str, int], max_len: int) -> np.ndarray:
    return np.array([vocab.get(w, UNK) for w in doc[-max_len:]], dtype=np.int64)


def tokenize_splits(texts: dict[str, list[str]], vocab_size: int, max_len: int) -> tuple[dict, dict]:
    """(vocabulary from train, {split: [ids per review]})."""
    docs = {s: [tokenize(t) for t in ts] for s, ts in texts.items()}
    vocab = build_vocab(docs["train"], vocab_size)
    return vocab, {s: [encode(d, vocab, max_len) for d in ds] for s, ds in docs.items()}


def cached_tokens(texts: dict[str, list[str]], vocab_size: int, max_len: int) -> tuple[dict, dict]:
    """`tokenize_splits`, cached under the data dir by the texts' checksum and the settings: measured on
    8.8M words (the real data's size), tokenizing takes 2.6 s and loading the cache 0.1 s."""
    key = hashlib.sha256(f"{TOKENIZER_VERSION}/{vocab_size}/{max_len}".encode())
    for split in sorted(texts):
        key.update(split.encode())
        for text in texts[split]:
            key.update(text.encode() + b"\0")
    path = data_dir() / "imdb" / "tokens" / f"{key.hexdigest()[:24]}.npz"
    if path.is_file():
        with np.load(path) as z:
            vocab = {w: i for i, w in enumerate(z["vocab"].tolist())}
            return vocab, {s: np.split(z[f"{s}_ids"], np.cumsum(z[f"{s}_lengths"])[:-1]) for s in texts}
    vocab, ids = tokenize_splits(texts, vocab_size, max_len)
    arrays = {"vocab": np.array(list(vocab), dtype=str)}
    for split, rows in ids.items():
        arrays[f"{split}_ids"] = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        arrays[f"{split}_lengths"] = np.array([len(r) for r in rows], dtype=np.int64)
    write_cache(path, lambda out: np.savez(out, **arrays))  # atomic and fsynced: never half a cache file
    return vocab, ids


def read_split(root: Path, split: str) -> tuple[list[str], list[int]]:
    """Texts and labels (pos = 1) of aclImdb/<split>/{neg,pos}/*.txt in sorted file order."""
    texts, labels = [], []
    for label, folder in enumerate(("neg", "pos")):
        files = sorted((root / split / folder).glob("*.txt"))
        if not files:
            raise DataError(f"{root / split / folder} holds no reviews: delete {root.parent} and the archive "
                            f"beside it and run again, or use --source synthetic")
        try:
            texts += [f.read_text(encoding="utf-8") for f in files]
        except UnicodeDecodeError as exc:
            raise DataError(f"a review under {root / split / folder} is not UTF-8 ({exc.reason}): delete "
                            f"{root.parent} and the archive beside it and run again") from None
        labels += [label] * len(files)
    return texts, labels


def carve_valid(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, valid indices) of a seeded permutation: the first `fraction` of it is valid."""
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, round(n * fraction))
    return np.sort(perm[k:]), np.sort(perm[:k])


def collate(ids: list[np.ndarray], labels: np.ndarray, index: np.ndarray, device: torch.device) -> tuple:
    """(tokens (B, T) padded with <pad> to the batch's longest, lengths (B,), labels (B,))."""
    lengths = np.array([len(ids[i]) for i in index])
    tokens = np.full((len(index), lengths.max()), PAD, dtype=np.int64)
    for row, i in enumerate(index):
        tokens[row, : lengths[row]] = ids[i]
    return (torch.from_numpy(tokens).to(device), torch.from_numpy(lengths),
            torch.from_numpy(labels[index]).to(device))


class Classifier(nn.Module):
    """embedding -> dropout -> backbone (packed) -> pooling -> dropout -> linear to 2 classes."""

    def __init__(self, vocab_size: int, opts: IMDBOptions, make_backbone: BackboneFactory):
        super().__init__()
        self.pooling = opts.pooling
        self.embed = nn.Embedding(vocab_size, opts.emb_size, padding_idx=PAD)
        self.backbone = make_backbone(opts.emb_size)
        self.drop = nn.Dropout(opts.dropout)
        self.head = nn.Linear(self.backbone.output_size, 2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.embed(tokens))  # (B, T, E)
        out, _ = self.backbone(x, lengths)  # (B, T, H * dirs), zeros past each length
        directions = getattr(self.backbone, "directions", 1)
        return self.head(self.drop(pool(out, lengths, self.pooling, directions)))  # (B, 2)


def classification_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro F1 over the two classes (a class never predicted nor present scores 0)."""
    f1 = []
    for c in (0, 1):
        tp = int(((pred == c) & (target == c)).sum())
        wrong = int(((pred == c) != (target == c)).sum())  # false positives + false negatives
        f1.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    return {"accuracy": float((pred == target).float().mean()), "macro_f1": sum(f1) / 2}


@register_task("imdb")
class IMDB(Task):
    version = 1
    shards = True
    causal = False
    unit = "samples"
    metrics = {"accuracy": True, "macro_f1": True}
    primary_metric = "accuracy"
    reference_name = "bag-of-words"
    Options = IMDBOptions
    presets = {
        # Small and fast on two CPU cores: several epochs of the synthetic source inside 20 seconds.
        "smoke": {"backbone.hidden_size": 64, "backbone.num_layers": 1, "options.emb_size": 32,
                  "train.batch_size": 32, "train.eval_batch_size": 256, "train.optimizer": "adam",
                  "train.lr": 5e-3, "train.clip": 1.0, "budget.eval_every_units": 4_000},
        "small": {"backbone.hidden_size": 128, "backbone.num_layers": 1, "options.emb_size": 128,
                  "options.dropout": 0.3, "train.batch_size": 32, "train.eval_batch_size": 256,
                  "train.optimizer": "adam", "train.lr": 1e-3, "train.clip": 5.0, "budget.max_epochs": 5},
        "standard": {**_PAPER, "backbone.num_layers": 1, "backbone.dropout": 0.0, "budget.max_epochs": 8},
        "paper": _PAPER,
    }

    def prepare(self) -> None:
        opts: IMDBOptions = self.cfg.options
        (train_texts, train_labels), test = self._real() if self.cfg.source == "real" else self._synthetic(opts)
        keep, held = carve_valid(len(train_texts), opts.valid_fraction, opts.split_seed)
        texts = {"train": [train_texts[i] for i in keep], "valid": [train_texts[i] for i in held], "test": test[0]}
        labels = {"train": np.array(train_labels)[keep], "valid": np.array(train_labels)[held],
                  "test": np.array(test[1])}
        self.vocab, self.ids = cached_tokens(texts, opts.vocab_size, opts.max_len)
        self.labels = {s: y.astype(np.int64) for s, y in labels.items()}
        self.lengths = {s: np.array([len(x) for x in ids]) for s, ids in self.ids.items()}
        if min(len(y) for y in self.labels.values()) == 0 or min(x.min() for x in self.lengths.values()) == 0:
            raise DataError("an IMDB split is empty or holds an empty review: check the data files, or raise "
                            "options.synthetic_reviews for the synthetic source")
        self._reference: dict[str, Any] | None = None

    def _real(self) -> tuple:
        archive = fetch(ORIGIN, FILE, "imdb")
        root = extract(archive, archive.parent / "aclImdb_v1") / "aclImdb"
        self._info = {"files": {FILE.relpath: FILE.checksum}}  # fetch returns only a copy with this md5
        return read_split(root, "train"), read_split(root, "test")

    def _synthetic(self, opts: IMDBOptions) -> tuple:
        source = ReviewSource(seed=opts.synthetic_seed)
        train, test = source.sample(opts.synthetic_reviews, 0), source.sample(opts.synthetic_reviews // 4, 1)
        self._info = {"generator": {"name": "ReviewSource", **vars(source)},
                      "checksums": {"train": _md5_texts(train), "test": _md5_texts(test)}}
        return train, test

    def data_info(self) -> dict[str, Any]:
        opts: IMDBOptions = self.cfg.options
        return {"source": self.cfg.source, "samples": {s: len(y) for s, y in self.labels.items()},
                "valid_split": {"fraction": opts.valid_fraction, "seed": opts.split_seed,
                                "size": len(self.labels["valid"])},
                "tokens": {s: int(n.sum()) for s, n in self.lengths.items()}, "vocab_size": len(self.vocab),
                "max_len": opts.max_len, **self._info}

    def build(self, make_backbone: BackboneFactory) -> nn.Module:
        return Classifier(len(self.vocab), self.cfg.options, make_backbone)

    def units_per_epoch(self) -> int:
        return len(self.labels["train"])

    def train_batches(self, epoch: int) -> Iterator[tuple]:
        rng = np.random.default_rng([self.cfg.seed, epoch])  # deterministic in (seed, epoch) for resume
        order = bucket_order(self.lengths["train"], self.cfg.train.batch_size, self.cfg.options.bucket_batches, rng)
        return (collate(self.ids["train"], self.labels["train"], self.shard(index), self.device) for index in order)

    def eval_batches(self, split: str) -> Iterator[tuple]:
        """Batches of the split sorted by length: the least padding there can be."""
        order, size = np.argsort(self.lengths[split], kind="stable"), self.cfg.train.eval_batch_size
        return (collate(self.ids[split], self.labels[split], order[i:i + size], self.device)
                for i in range(0, len(order), size))

    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[torch.Tensor, int, Any]:
        tokens, lengths, labels = batch
        return F.cross_entropy(model(tokens, lengths).float(), labels), labels.numel(), None

    @torch.no_grad()
    def predict(self, model: nn.Module, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted classes, labels), both in length-sorted order."""
        preds, targets = [], []
        for tokens, lengths, labels in self.eval_batches(split):
            preds.append(model(tokens, lengths).argmax(-1).cpu())
            targets.append(labels.cpu())
        return torch.cat(preds), torch.cat(targets)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        return classification_metrics(*self.predict(model, split))

    def eval_units(self, split: str) -> int:
        return len(self.labels[split])

    def reference(self) -> dict[str, Any]:
        """Bag-of-words logistic regression on the train split's ids (what the models see); cached."""
        if self._reference is None:
            weights = fit_bow(self.ids["train"], self.labels["train"], len(self.vocab))
            self._reference = {"name": self.reference_name, **{
                s: classification_metrics(bow_predict(weights, self.ids[s]), torch.from_numpy(self.labels[s]))
                for s in ("valid", "test")}}
        return self._reference

    def flops_per_unit(self, model: nn.Module) -> int:
        mean_len = float(self.lengths["train"].mean())
        return int(model.backbone.flops_per_step() * mean_len) + 2 * model.head.in_features * 2 + 2

    def sample_input(self, batch_size: int, length: int) -> tuple:
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(2, len(self.vocab), (batch_size, length), generator=gen).to(self.device)
        return tokens, torch.full((batch_size,), length)


def bow_features(ids: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EmbeddingBag inputs for binary word presence, L2-normalised per review: (words, offsets, weights)."""
    uniq = [np.unique(x) for x in ids]
    words = torch.from_numpy(np.concatenate(uniq))
    offsets = torch.tensor([0, *np.cumsum([len(u) for u in uniq])[:-1]])
    weights = torch.cat([torch.full((len(u),), len(u) ** -0.5) for u in uniq])
    return words, offsets, weights


class BagOfWords(nn.Module):
    """Logistic regression over `bow_features`: one weight per word and a bias."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab_size, 1, mode="sum")
        nn.init.zeros_(self.bag.weight)  # from zeros, so the fit below is deterministic
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, words: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.bag(words, offsets, per_sample_weights=weights).squeeze(1) + self.bias  # (N,) logits


def fit_bow(ids: list[np.ndarray], labels: np.ndarray, vocab_size: int, l2: float = 1e-4) -> BagOfWords:
    """Full-batch L-BFGS on the L2-regularised logistic loss: deterministic, seconds on IMDB."""
    model, y = BagOfWords(vocab_size), torch.from_numpy(labels).float()
    words, offsets, weights = bow_features(ids)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(words, offsets, weights), y)
        loss = loss + l2 * model.bag.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


@torch.no_grad()
def bow_predict(model: BagOfWords, ids: list[np.ndarray]) -> torch.Tensor:
    return (model(*bow_features(ids)) > 0).long()


def _md5_texts(data: tuple[list[str], list[int]]) -> str:
    texts, labels = data
    return hashlib.md5(("\n".join(texts) + str(labels)).encode()).hexdigest()
