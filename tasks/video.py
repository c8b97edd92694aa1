"""Video tagging with recurrent models over frame features: tags of short clips where frame order matters.

Sources:
- real, `options.dataset="ucf101"`: UCF101 (101 actions, one label per clip; official split lists, a
  validation set carved from train by group), downloaded or an existing copy (`options.copy_dir`).
- real, `options.dataset="csv"`: any folder of videos (`options.video_dir`) with a CSV of
  `video,tags,split` rows (`options.tags_csv`), several `;`-separated tags per clip: multi-label.
- synthetic: clips of moving shapes whose tags come in time-reversal pairs (tasks/synthetic_video.py), so
  only frame order tells them apart; multi-label.
Decoding is PyAV's (tasks/video_data.py): `options.frames` frames per clip, the middle of each of that many
equal segments at evaluation, a random frame within each in training.

Features: real frames go through an ImageNet ResNet (`options.encoder`, globally pooled) once, cached by
the video files, the sampling, the encoder, its weights and the image size (suite/features.py). A training
clip has `options.train_views` cached random samplings, one drawn per epoch; `options.finetune_cnn` trains
the ResNet's last stage end to end and decodes at every step instead. Synthetic frames go through a small
CNN trained with the model.

Model (tasks/video_model.py): frame features -> backbone -> last / mean / attention pooling -> linear.
Single-label: softmax cross-entropy, top-1 (primary) and top-5 accuracy. Multi-label: sigmoid binary
cross-entropy, mAP (primary) and micro F1 at the threshold best on the validation split (tasks/video_metrics.py).
Reference line: the order-free twin, the mean of the frame features into the same head, trained alike.

Published anchors, UCF101 split 1, RGB only: LRCN (Donahue et al. 2015) 68.2 % against its single-frame
model's 67.4 %; Ng et al. 2015, LSTM over GoogLeNet frame features, 82.6 % without optical flow. Frame order
adds little on UCF101 (the mean-of-frames line sits close), which is why the synthetic source makes order
decide.
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

from suite.array_cache import file_fingerprint
from suite.config import Checked, bounded, seed_field
from suite.errors import DataError, UserError
from suite.features import ENCODERS, GridEncoder, cached_features
from suite.registry import register_task
from tasks import video_data
from tasks.base import BackboneFactory, Task
from tasks.synthetic_video import TAGS, VideoSource
from tasks.twin import twin_reference
from tasks.video_metrics import best_threshold, mean_average_precision, micro_f1, top_k_accuracy
from tasks.video_model import POOLINGS, SmallFrameCNN, Tagger

SAMPLING_VERSION = 1
"""Part of the feature cache key: bump it when frame sampling or decoding changes."""
SINGLE_LABEL = {"top1": True, "top5": True}
MULTI_LABEL = {"map": True, "f1": True}

# paper: LRCN's recipe on our features: one LSTM layer of 256 units (--model lstm) over 16 frames of
# globally pooled ImageNet ResNet-50 features at 224x224, mean pooling of the outputs (LRCN averages its
# per-frame predictions), dropout 0.5, Adam 1e-3, batch 32, 30 epochs on UCF101 split 1.
_PAPER = {"backbone.hidden_size": 256, "backbone.num_layers": 1, "options.frames": 16, "options.image_size": 224,
          "options.encoder": "resnet50", "options.pooling": "mean", "options.dropout": 0.5,
          "train.batch_size": 32, "train.eval_batch_size": 64, "train.optimizer": "adam", "train.lr": 1e-3,
          "train.clip": 5.0, "budget.max_epochs": 30}


@dataclass(frozen=True)
class VideoOptions(Checked):
    dataset: str = "ucf101"
    """Real source: ucf101 (single-label) or csv (multi-label, `tags_csv` and `video_dir`)."""
    copy_dir: str = ""
    """An existing UCF101 copy (holding UCF-101/ and ucfTrainTestlist/) instead of downloading."""
    ucf101_split: int = bounded(1, low=1, high=3)
    """Which of UCF101's three official train/test splits."""
    tags_csv: str = ""
    video_dir: str = ""
    valid_fraction: float = bounded(0.1, low=0, high=1, low_open=True, high_open=True)
    """UCF101: the share of training groups held out for validation."""
    split_seed: int = seed_field()
    frames: int = bounded(16, low=1)
    image_size: int = bounded(224, low=32, why="the ResNet's total stride")
    encoder: str = "resnet50"
    download_weights: bool = True
    """Fetch the encoder's ImageNet weights when torch's cache lacks them (offline: a seeded random init,
    which the record says)."""
    finetune_cnn: bool = False
    """Train the encoder's last stage end to end (frames are then decoded at every step: far slower)."""
    train_views: int = bounded(2, low=1)
    """Cached random samplings of each training clip; each epoch uses one of them per clip."""
    pooling: str = "mean"
    """Over the backbone's outputs: last (final state, both directions for brnn), mean or attention."""
    dropout: float = bounded(0.0, low=0, high=1, high_open=True)
    order_free: bool = False
    """Leave the backbone out and average the frame features: the order-free reference line."""
    reference_units: int | None = bounded(None, low=1)
    """Clips the order-free twin trains for; None: the run's own budget."""
    synthetic_clips: int = bounded(2_000, low=1)
    synthetic_eval_clips: int = bounded(300, low=1)
    synthetic_seed: int = seed_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset not in ("ucf101", "csv"):
            raise UserError(f"options.dataset must be ucf101 or csv, got {self.dataset!r}")
        if self.encoder not in ENCODERS:
            raise UserError(f"options.encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.pooling not in POOLINGS:
            raise UserError(f"options.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")


@register_task("video")
class Video(Task):
    version = 1
    shards = True
    causal = False  # a clip's tags are read after the whole clip
    unit = "clips"
    metrics = {**MULTI_LABEL, **SINGLE_LABEL}  # every metric the task can report; a run declares its own two
    primary_metric = "map"
    reference_name = "order-free-mean"
    Options = VideoOptions
    presets = {
        # A 1x64 backbone over 12 frames of 32x32 synthetic clips: tens of epochs inside 20 s on 2 cores.
        "smoke": {"backbone.hidden_size": 64, "backbone.num_layers": 1, "train.batch_size": 32,
                  "train.eval_batch_size": 300, "train.optimizer": "adam", "train.lr": 1e-3, "train.clip": 1.0,
                  "budget.eval_every_units": 10_000, "options.image_size": 112, "options.encoder": "resnet18"},
        "small": {"backbone.hidden_size": 256, "backbone.num_layers": 1, "options.dropout": 0.3,
                  "train.batch_size": 32, "train.eval_batch_size": 64, "train.optimizer": "adam", "train.lr": 1e-3,
                  "train.clip": 5.0, "options.encoder": "resnet18", "options.image_size": 112},
        "standard": {**_PAPER, "budget.max_epochs": 15},
        "paper": _PAPER,
    }

    def __init__(self, cfg: Any, device: torch.device):
        super().__init__(cfg, device)
        self.multi_label = cfg.source == "synthetic" or cfg.options.dataset == "csv"
        self.metrics = dict(MULTI_LABEL if self.multi_label else SINGLE_LABEL)
        self.primary_metric = "map" if self.multi_label else "top1"

    def prepare(self) -> None:
        opts: VideoOptions = self.cfg.options
        if opts.order_free:  # the twin sets it on a copy of a prepared task; a run never does
            raise UserError("options.order_free is the reference line, which every run trains and reports "
                            "itself: leave it False")
        if self.cfg.source == "synthetic":
            self._synthetic(opts)
        else:
            self._real(opts)
        self._reference: dict[str, Any] | None = None

    def _synthetic(self, opts: VideoOptions) -> None:
        source = VideoSource(seed=opts.synthetic_seed)
        sizes = {"train": opts.synthetic_clips, "valid": opts.synthetic_eval_clips, "test": opts.synthetic_eval_clips}
        self.inputs, self.targets, digest = {}, {}, hashlib.sha256()
        for stream, (split, n) in enumerate(sizes.items()):
            clips, labels = source.sample(n, stream)  # (n, T, 3, S, S) uint8, (n, K) bool
            self.inputs[split], self.targets[split] = torch.from_numpy(clips), torch.from_numpy(labels).float()
            digest.update(clips.tobytes() + labels.tobytes())
        self.tags, self.clips, self.checksum = list(TAGS), None, digest.hexdigest()
        self._info = {"dataset": "synthetic", "generator": {"name": "VideoSource", **vars(source)}}

    def _real(self, opts: VideoOptions) -> None:
        if opts.dataset == "ucf101":
            self.tags, self.clips = video_data.ucf101_splits(Path(opts.copy_dir) if opts.copy_dir else None,
                                                             opts.ucf101_split, opts.valid_fraction, opts.split_seed)
            files = {f.relpath: f.checksum for f in (video_data.VIDEOS, video_data.SPLITS)}
        else:
            if not opts.tags_csv or not opts.video_dir:
                raise UserError("options.dataset='csv' needs options.tags_csv and options.video_dir")
            self.tags, self.clips = video_data.read_tagged_csv(Path(opts.tags_csv), Path(opts.video_dir))
            files = {}
        empty = [s for s in ("train", "valid", "test") if not self.clips[s]]
        if empty:
            where = opts.tags_csv if opts.dataset == "csv" else "the UCF101 split lists"
            raise DataError(f"{where} gives no {' or '.join(empty)} clip: assign some clips to every split "
                            "(UCF101: raise options.valid_fraction)")
        self.targets = {s: self._label_tensor(cs) for s, cs in self.clips.items()}
        encoder = self._encoder()
        listing = [[s, str(c.path), c.labels] for s in ("train", "valid", "test") for c in self.clips[s]]
        clips_digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        # What the twin reference depends on: the clips (paths, labels, file size and time) and the encoder's
        # actual weights (an offline random init and ImageNet weights share one config).
        self.checksum = hashlib.sha256(json.dumps(
            [clips_digest, file_fingerprint([c.path for s in ("train", "valid", "test") for c in self.clips[s]]),
             encoder.record]).encode()).hexdigest()
        self.inputs = {} if opts.finetune_cnn else {s: self._features(s, encoder) for s in self.clips}
        # The dataset names what results are comparable within (one leaderboard board each): a UCF101 split,
        # or one CSV's clips and tags.
        dataset = f"ucf101-split{opts.ucf101_split}" if opts.dataset == "ucf101" else f"csv-{clips_digest[:8]}"
        self._info = {"dataset": dataset, "encoder": encoder.record, "weights": encoder.weights_description,
                      "files": files}

    def _label_tensor(self, clips: list[video_data.Clip]) -> torch.Tensor:
        """(n,) class ids for single-label data, (n, K) multi-hot floats for multi-label data."""
        if not self.multi_label:
            return torch.tensor([c.labels[0] for c in clips])
        out = torch.zeros(len(clips), len(self.tags))
        for i, c in enumerate(clips):
            out[i, list(c.labels)] = 1.0
        return out

    def _encoder(self) -> GridEncoder:
        opts: VideoOptions = self.cfg.options
        return GridEncoder(opts.encoder, trainable_last_block=opts.finetune_cnn, allow_download=opts.download_weights,
                           pooled=True).to(self.device)

    def _views(self, split: str) -> int:
        return self.cfg.options.train_views if split == "train" else 1

    def _read(self, split: str, clip: int, rng: np.random.Generator | None) -> torch.Tensor:
        opts: VideoOptions = self.cfg.options
        return video_data.read_clip(self.clips[split][clip].path, opts.frames, opts.image_size, rng)

    def _features(self, split: str, encoder: GridEncoder) -> torch.Tensor:
        """(clips * views * frames, 1, D) cached frame features of a split: row block (clip * views + view)."""
        opts: VideoOptions = self.cfg.options
        clips, views, frames = self.clips[split], self._views(split), opts.frames

        def one_view(rows: slice) -> torch.Tensor:  # rows of one (clip, view): the cache asks `frames` at a time
            clip, view = divmod(rows.start // frames, views)
            return self._read(split, clip, self._view_rng(clip, view) if split == "train" else None)

        key = json.dumps([SAMPLING_VERSION, file_fingerprint([c.path for c in clips]), frames, views,
                          split == "train", opts.split_seed])
        return cached_features(one_view, len(clips) * views * frames, encoder,
                               hashlib.sha256(key.encode()).hexdigest(), opts.image_size, batch_size=frames)

    def _view_rng(self, clip: int, view: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.options.split_seed, clip, view])

    def data_info(self) -> dict[str, Any]:
        opts: VideoOptions = self.cfg.options
        frames = self.inputs["train"].shape[1] if self.cfg.source == "synthetic" else opts.frames
        return {"source": self.cfg.source, **self._info, "clips": {s: len(t) for s, t in self.targets.items()},
                "tags": self.tags, "multi_label": self.multi_label, "frames": frames, "data_sha256": self.checksum}

    def build(self, make_backbone: BackboneFactory) -> nn.Module:
        opts: VideoOptions = self.cfg.options
        if self.cfg.source == "synthetic":
            encoder = SmallFrameCNN(self.inputs["train"].shape[-1])
        else:
            encoder = self._encoder() if opts.finetune_cnn else None
        size = encoder.dim if encoder is not None else self.inputs["train"].shape[-1]
        return Tagger(size, len(self.tags), opts.pooling, opts.dropout, opts.order_free, make_backbone, encoder)

    def units_per_epoch(self) -> int:
        return len(self.targets["train"])

    def _batch(self, split: str, index: np.ndarray, rng: np.random.Generator | None) -> tuple:
        """(frames (B, T, ...), lengths (B,), targets) of clips `index`; `rng` picks training views."""
        if self.cfg.source == "synthetic":
            x = self.inputs[split][index]  # (B, T, 3, S, S) uint8
        elif self.cfg.options.finetune_cnn:  # decoded now: a fresh random sampling every epoch in training
            x = torch.stack([self._read(split, int(i), rng) for i in index])
        else:
            frames, views = self.cfg.options.frames, self._views(split)
            view = rng.integers(views, size=len(index)) if rng is not None else np.zeros(len(index), np.int64)
            rows = ((index * views + view)[:, None] * frames + np.arange(frames)).reshape(-1)  # (B * T,)
            x = self.inputs[split][torch.from_numpy(rows)].view(len(index), frames, -1)  # (B, T, D) float16
        lengths = torch.full((len(index),), x.shape[1])
        return x.to(self.device), lengths, self.targets[split][torch.from_numpy(index)].to(self.device)

    def train_batches(self, epoch: int) -> Iterator[tuple]:
        rng = np.random.default_rng([self.cfg.seed, epoch])  # deterministic in (seed, epoch) for resume
        order, size = rng.permutation(len(self.targets["train"])), self.cfg.train.batch_size
        return (self._batch("train", self.shard(order[i:i + size]), rng) for i in range(0, len(order), size))

    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[torch.Tensor, int, Any]:
        frames, lengths, targets = batch
        logits = model(frames, lengths).float()
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, targets), len(targets), None
        return F.cross_entropy(logits, targets), len(targets), None

    @torch.no_grad()
    def scores(self, model: nn.Module, split: str) -> torch.Tensor:
        """(n, K) tag probabilities of every clip of the split, in order (sigmoid or softmax)."""
        out, size = [], self.cfg.train.eval_batch_size
        n = len(self.targets[split])
        for start in range(0, n, size):
            frames, lengths, _ = self._batch(split, np.arange(start, min(start + size, n)), None)
            logits = model(frames, lengths).float().cpu()
            out.append(logits.sigmoid() if self.multi_label else logits.softmax(-1))
        return torch.cat(out)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        scores, targets = self.scores(model, split), self.targets[split]
        if not self.multi_label:
            return {"top1": top_k_accuracy(scores, targets, 1), "top5": top_k_accuracy(scores, targets, 5)}
        valid = scores if split == "valid" else self.scores(model, "valid")
        threshold = best_threshold(valid, self.targets["valid"].bool())  # chosen on valid, applied as is
        return {"map": mean_average_precision(scores, targets.bool()),
                "f1": micro_f1(scores, targets.bool(), threshold)}

    def eval_units(self, split: str) -> int:
        return len(self.targets[split])

    def reference(self) -> dict[str, Any]:
        if self._reference is None:
            # The twin has no backbone: one model name for all, so every baseline shares its line.
            self._reference = twin_reference(self, {"order_free": True}, self.cfg.options.reference_units,
                                             self.checksum, model="gru")
        return self._reference

    def flops_per_unit(self, model: nn.Module) -> int:
        """Per clip: the backbone over every frame, attention pooling and the head (the frame CNN, run once
        per frame whether cached or trained, is left out)."""
        frames = self.inputs["train"].shape[1] if self.cfg.source == "synthetic" else self.cfg.options.frames
        size = model.head.in_features
        attend = 0 if model.attend is None else 2 * size * model.attend.project.out_features + 4 * size
        return frames * (model.backbone.flops_per_step() + attend) + 2 * size * model.head.out_features

    def sample_input(self, batch_size: int, length: int) -> tuple:
        x, lengths, _ = self._batch("test", np.zeros(batch_size, dtype=np.int64), None)
        return x, lengths
