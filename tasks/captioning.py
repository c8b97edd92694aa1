"""Image captioning with soft attention (tasks/captioner.py): every causal baseline as the decoder.

Sources:
- real, `options.dataset="coco"`: COCO 2017 captions (official archives, md5-checked); the Karpathy split
  when `dataset_coco.json` is in the cache folder, else train2017 / val2017 halved into valid and test.
- real, `options.dataset="flickr8k"` / `"flickr30k"`: Karpathy-split JSON and images placed by the user.
- synthetic: rendered shape scenes with five captions each (tasks/synthetic_scenes.py); the model then
  owns a small CNN trained end to end, since random ResNet features say little about 32-pixel shapes.

Real images become ResNet grid features once (suite/features.py; cached by data checksum, encoder,
weights and image size), so training time measures the decoder. The unit is a caption word (EOS counted);
each (image, reference) pair is a training example. Metrics (tasks/caption_metrics.py): BLEU-1..4 with
all references (BLEU-4 primary), CIDEr-D beside it, teacher-forced loss. Reference line: the blind
decoder, the same model without the image (tasks/twin.py).

Published anchors (BLEU-4, test): Show, Attend and Tell soft attention (Xu et al. 2015) Flickr8k 19.5,
Flickr30k 19.1, COCO 24.3; Show and Tell (Vinyals et al. 2015) COCO 27.7. Their tokenization and splits
(Karpathy's) are what `caption_metrics` and the Karpathy JSONs reproduce; their encoders were VGG / GoogLeNet.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from suite.config import Checked, bounded, seed_field
from suite.decoding import decode
from suite.errors import UserError
from suite.features import ENCODERS, GridEncoder, cached_features
from suite.registry import register_task
from tasks import caption_data
from tasks.base import BackboneFactory, Task
from tasks.batching import bucket_order
from tasks.caption_data import Captions, LazyImages, build_vocab, drop_uncaptioned, load_image, words
from tasks.caption_metrics import caption_metrics, signatures
from tasks.caption_report import save_captions, save_examples
from tasks.captioner import Captioner, SmallCNN, doubly_stochastic_penalty
from tasks.subwords import BOS, EOS, PAD, UNK
from tasks.synthetic_scenes import SceneSource
from tasks.twin import twin_reference

PREPROCESS = "rgb-squash-bilinear-v1"
"""Names `caption_data.load_image`'s preprocessing in the feature cache key: change it with the code."""

# paper: Show, Attend and Tell's soft attention as commonly re-implemented: ResNet-101 grid at 224 px
# (7 x 7 cells; the paper's VGG conv5_4 grid is 14 x 14, which at 448 px would need a 96 GB feature cache
# for COCO), LSTM 512, embeddings 512, dropout 0.5, Adam 4e-4, doubly stochastic weight 1, batch 32,
# 20 epochs, greedy. Run it with --model lstm. Attention reads the LSTM's output rather than feeding its
# context back into the LSTM's input (tasks/captioner.py), a departure from the paper's model.
_PAPER = {"backbone.hidden_size": 512, "backbone.num_layers": 1, "options.emb_size": 512,
          "options.encoder": "resnet101", "options.image_size": 224, "options.dropout": 0.5,
          "options.alpha_c": 1.0, "train.batch_size": 32, "train.eval_batch_size": 100, "train.optimizer": "adam",
          "train.lr": 4e-4, "train.clip": 5.0, "budget.max_epochs": 20}


@dataclass(frozen=True)
class CaptioningOptions(Checked):
    emb_size: int = bounded(256, low=1)
    attention: str = "additive"
    """additive (Bahdanau, as Show, Attend and Tell) or multiplicative (Luong general)."""
    blind: bool = False
    """Leave the image out: the blind-decoder reference line."""
    alpha_c: float = bounded(1.0, low=0)
    """Weight of the doubly stochastic attention regulariser."""
    dropout: float = bounded(0.0, low=0, high=1, high_open=True)
    dataset: str = "coco"
    """Real source: coco, flickr8k or flickr30k."""
    encoder: str = "resnet50"
    """Feature CNN of real images (ImageNet weights when in torch's cache, else a seeded random init)."""
    image_size: int = bounded(224, low=32, why="one cell of the ResNet's 32-pixel grid")
    finetune_cnn: bool = False
    """Train the encoder's last residual stage end to end with the decoder (images are then read at every
    step instead of cached features: far slower)."""
    download_weights: bool = True
    """Fetch the encoder's ImageNet weights when torch's cache lacks them (offline: a seeded random init,
    which the record says)."""
    min_word_count: int = bounded(5, low=1)
    """Training words seen fewer times become <unk>."""
    max_caption_len: int = bounded(20, low=1)
    """Words kept per training caption; also the most words a generated caption may have."""
    beam: int = bounded(1, low=1)
    length_penalty: float = bounded(0.0, low=0)
    examples: int = bounded(4, low=0)
    """Test images whose caption and attention maps are saved as PNG next to the record."""
    reference_units: int | None = bounded(None, low=1)
    """Caption words the blind twin trains for; None: the run's own budget (a fair line, twice the cost)."""
    split_seed: int = seed_field()
    """Seed of the val2017 valid/test halves when no Karpathy split is present."""
    synthetic_images: int = bounded(4_000, low=1)
    synthetic_eval_images: int = bounded(300, low=1)
    synthetic_seed: int = seed_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention not in ("additive", "multiplicative"):
            raise UserError(f"options.attention must be additive or multiplicative, got {self.attention!r} "
                            "(options.blind=True is the model without the image)")
        if self.dataset not in ("coco", "flickr8k", "flickr30k"):
            raise UserError(f"options.dataset must be coco, flickr8k or flickr30k, got {self.dataset!r}")
        if self.encoder not in ENCODERS:
            raise UserError(f"options.encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")


@register_task("captioning")
class Captioning(Task):
    version = 1
    shards = True
    causal = True  # the decoder generates left to right; a bidirectional one would see the caption's future
    unit = "tokens"
    metrics = {"bleu4": True, "cider": True, "bleu1": True, "bleu2": True, "bleu3": True, "loss": False}
    primary_metric = "bleu4"
    reference_name = "blind-decoder"
    Options = CaptioningOptions
    presets = {
        # A 1x64 decoder and a small CNN that ground the synthetic scenes' captions inside 20 s on 2 cores.
        "smoke": {"backbone.hidden_size": 64, "backbone.num_layers": 1, "options.emb_size": 32,
                  "options.min_word_count": 1, "train.batch_size": 32, "train.eval_batch_size": 300,
                  "train.optimizer": "adam", "train.lr": 3e-3, "train.clip": 1.0, "budget.eval_every_units": 50_000,
                  "options.reference_units": 150_000},
        "small": {"backbone.hidden_size": 256, "options.emb_size": 256, "options.dropout": 0.3,
                  "train.batch_size": 32, "train.eval_batch_size": 100, "train.optimizer": "adam",
                  "train.lr": 4e-4, "train.clip": 5.0},
        "standard": {**_PAPER, "options.encoder": "resnet50", "options.image_size": 224},
        "paper": _PAPER,
    }

    def prepare(self) -> None:
        opts: CaptioningOptions = self.cfg.options
        self.splits = self._synthetic(opts) if self.cfg.source == "synthetic" else self._real(opts)
        self.vocab = build_vocab(self.splits["train"], opts.min_word_count)
        self.words = list(self.vocab)
        self.pairs = {s: self._pairs(c) for s, c in self.splits.items()}
        self.captions: dict[str, list[str]] = {}

    def _synthetic(self, opts: CaptioningOptions) -> dict[str, Captions]:
        source = SceneSource(seed=opts.synthetic_seed)
        sizes = {"train": opts.synthetic_images, "valid": opts.synthetic_eval_images,
                 "test": opts.synthetic_eval_images}
        out, self.inputs = {}, {}
        for stream, (split, n) in enumerate(sizes.items()):
            pixels, refs = source.sample(n, stream)
            self.inputs[split] = torch.from_numpy(pixels)  # (n, 3, H, W): the model's CNN reads pixels
            out[split] = Captions(list(range(n)), refs)
        self.checksum = _checksum(out, extra=[hashlib.sha256(x.numpy().tobytes()).hexdigest()
                                              for x in self.inputs.values()])
        self._info = {"dataset": "synthetic", "generator": {"name": "SceneSource", **vars(source)}}
        return out

    def _real(self, opts: CaptioningOptions) -> dict[str, Captions]:
        out = caption_data.coco(opts.split_seed) if opts.dataset == "coco" else caption_data.flickr(opts.dataset)
        out, dropped = drop_uncaptioned(out)  # before the feature rows are laid out
        self.checksum = _checksum(out)
        encoder = self._encoder()
        self.inputs = {}
        for split, caps in out.items():
            if opts.finetune_cnn:  # the CNN trains, so its features change: read the images at every step
                self.inputs[split] = LazyImages(caps.images, opts.image_size)
                continue
            self.inputs[split] = cached_features(
                lambda sl, caps=caps: torch.stack([load_image(p, opts.image_size) for p in caps.images[sl]]),
                len(caps.images), encoder, _images_key(caps.images), opts.image_size)
        self._info = {"dataset": opts.dataset, "encoder": encoder.record, "weights": encoder.weights_description,
                      "uncaptioned_images_dropped": dropped, "files": caption_data.file_checksums(opts.dataset)}
        return out

    def _encoder(self) -> GridEncoder:
        opts: CaptioningOptions = self.cfg.options
        return GridEncoder(opts.encoder, trainable_last_block=opts.finetune_cnn,
                           allow_download=opts.download_weights).to(self.device)

    def _pairs(self, caps: Captions) -> tuple[np.ndarray, list[np.ndarray]]:
        """(image row of each (image, reference) pair, its word ids ending in EOS)."""
        rows, ids = [], []
        limit = self.cfg.options.max_caption_len
        for row, refs in enumerate(caps.references):
            for ref in refs:
                rows.append(row)
                ids.append(np.array([*(self.vocab.get(w, UNK) for w in words(ref)[:limit]), EOS], dtype=np.int64))
        return np.array(rows, dtype=np.int64), ids

    def data_info(self) -> dict[str, Any]:
        return {"source": self.cfg.source, **self._info, "images": {s: len(c.images) for s, c in self.splits.items()},
                "pairs": {s: len(p[1]) for s, p in self.pairs.items()}, "vocab_size": len(self.vocab),
                "data_sha256": self.checksum, "metrics": signatures(self.splits["test"].references)}

    def build(self, make_backbone: BackboneFactory) -> nn.Module:
        opts: CaptioningOptions = self.cfg.options
        cnn, feature_size = None, SmallCNN.channels
        if self.cfg.source == "synthetic":
            cnn = None if opts.blind else SmallCNN()
        elif opts.finetune_cnn:
            cnn = None if opts.blind else self._encoder()  # trained end to end from its ImageNet weights
            feature_size = cnn.dim if cnn else 1  # a blind model reads no features
        else:
            feature_size = self.inputs["train"].size(-1)
        return Captioner(len(self.vocab), feature_size, opts.emb_size, opts.attention, opts.blind, opts.dropout,
                         self.cfg.backbone, make_backbone, cnn)

    def units_per_epoch(self) -> int:
        return int(sum(len(x) for x in self.pairs["train"][1]))

    def _batch(self, split: str, index: np.ndarray) -> tuple:
        rows, ids = self.pairs[split]
        tgt = [ids[i] for i in index]
        width = max(len(t) for t in tgt)
        tgt_out = np.full((len(tgt), width), PAD, dtype=np.int64)
        tgt_in = np.full((len(tgt), width), PAD, dtype=np.int64)
        for i, t in enumerate(tgt):
            tgt_out[i, :len(t)], tgt_in[i, :len(t)] = t, [BOS, *t[:-1]]
        images = self.inputs[split][torch.from_numpy(rows[index])].float()
        return tuple(x.to(self.device) for x in (images, torch.from_numpy(tgt_in), torch.from_numpy(tgt_out)))

    def train_batches(self, epoch: int) -> Iterator[tuple]:
        rng = np.random.default_rng([self.cfg.seed, epoch])  # deterministic in (seed, epoch) for resume
        lengths = np.array([len(x) for x in self.pairs["train"][1]])
        order = bucket_order(lengths, self.cfg.train.batch_size, 20, rng)
        return (self._batch("train", self.shard(index)) for index in order)

    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[torch.Tensor, int, Any]:
        images, tgt_in, tgt_out = batch
        logits, weights = model(images, tgt_in, with_attention=True)  # (B, T, V), (B, T, N) | None
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=PAD)
        if weights is not None and self.cfg.options.alpha_c:
            loss = loss + self.cfg.options.alpha_c * doubly_stochastic_penalty(weights.float(), tgt_out)
        return loss, int((tgt_out != PAD).sum()), None

    @torch.no_grad()
    def generate(self, model: nn.Module, split: str) -> list[str]:
        """One caption per image of the split, in order."""
        opts, size = self.cfg.options, self.cfg.train.eval_batch_size
        inputs, out = self.inputs[split], []
        for start in range(0, inputs.size(0), size):
            images = inputs[start:start + size].float().to(self.device)
            found = decode(model.step, model.init_state(images), BOS, EOS, opts.max_caption_len + 1, opts.beam,
                           opts.length_penalty)
            out += [" ".join(self.words[t] for t in tokens) for tokens in found.tokens]
        return out

    @torch.no_grad()
    def _nll(self, model: nn.Module, split: str) -> float:
        total, size = 0.0, self.cfg.train.eval_batch_size
        count = len(self.pairs[split][1])
        for start in range(0, count, size):
            images, tgt_in, tgt_out = self._batch(split, np.arange(start, min(start + size, count)))
            logits = model(images, tgt_in)
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=PAD,
                                           reduction="sum"))
        return total / self.eval_units(split)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        self.captions[split] = self.generate(model, split)
        return {**caption_metrics(self.captions[split], self.splits[split].references),
                "loss": self._nll(model, split)}

    def eval_units(self, split: str) -> int:
        return int(sum(len(x) for x in self.pairs[split][1]))

    def reference(self) -> dict[str, Any]:
        if getattr(self, "_reference", None) is None:
            self._reference = twin_reference(self, {"blind": True, "examples": 0}, self.cfg.options.reference_units,
                                             self.checksum)
        return self._reference

    def flops_per_unit(self, model: nn.Module) -> int:
        """Decoder step, attention over the grid and the output layer per word (the image encoder, run once
        per caption, is left out). A Transformer decoder's step counts its own (nominal) attention, and its
        head is the output layer alone."""
        b = model.backbone
        side = self.cfg.options.image_size
        cells = (self.inputs["train"].size(-1) // 4) ** 2 if self.cfg.source == "synthetic" else (
            -(-side // 32)) ** 2
        attention = 0 if model.attention is None else 4 * cells * model.combine.in_features
        head = sum(2 * m.in_features * m.out_features for m in (model.combine, model.out) if m is not None)
        return b.flops_per_step() + attention + head

    def sample_input(self, batch_size: int, length: int) -> tuple:
        gen = torch.Generator().manual_seed(0)
        images = self.inputs["test"][:1].float().expand(batch_size, *self.inputs["test"].shape[1:])
        words_in = torch.randint(4, len(self.vocab), (batch_size, length), generator=gen)
        return images.to(self.device), words_in.to(self.device)

    def write_artifacts(self, model: nn.Module, out_dir: Path) -> dict[str, Path]:
        return {**save_captions(self, out_dir), **save_examples(self, model, out_dir)}


def _images_key(images: list[Path]) -> str:
    """What a split's cached features depend on besides the encoder: the images (file name, size in bytes
    and order) and how they are read (`load_image`'s preprocessing). Not the captions, nor where the cache is."""
    payload = [PREPROCESS, [(p.name, p.stat().st_size if p.is_file() else None) for p in images]]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _checksum(splits: dict[str, Captions], extra: list[str] = ()) -> str:
    """sha256 over image names, references and `extra` (pixel digests of in-memory images)."""
    payload = {s: [[str(i) for i in c.images], c.references] for s, c in splits.items()}
    return hashlib.sha256(json.dumps([payload, list(extra)]).encode()).hexdigest()

