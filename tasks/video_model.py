"""The video tagger: per-frame features -> any backbone -> pooling over time -> linear, one score per tag.

Frames arrive as cached CNN features (B, T, D), or as pixels (B, T, 3, H, W) uint8 with a frame encoder
inside the model (the synthetic source's small CNN, or a ResNet trained end to end). The order-free variant
(the reference line) skips the backbone: the mean of the frame features goes straight to the head, so frame
order cannot matter to it.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from tasks.base import BackboneFactory
from tasks.pooling import AttentionPool, pool

POOLINGS = ("last", "mean", "attention")


class SmallFrameCNN(nn.Module):
    """frames (N, 3, H, W) uint8 -> (N, 1, D): two strided convolutions, then a linear map of the whole
    feature grid, so where a shape sits in the frame (the cue of motion) survives; global pooling would
    discard it."""

    def __init__(self, size: int, dim: int = 128):
        super().__init__()
        self.dim = dim
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        cells = math.ceil(math.ceil(size / 2) / 2)  # grid cells per side after two stride-2 convolutions
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(32 * cells * cells, dim), nn.ReLU())

    def forward(self, frames: Tensor) -> Tensor:
        return self.project(self.conv(frames.float() / 255)).unsqueeze(1)  # (N, 1, D)


class Tagger(nn.Module):
    """Clip frames (B, T, ...) and lengths (B,) -> tag logits (B, C)."""

    def __init__(self, feature_size: int, tags: int, pooling: str, dropout: float, order_free: bool,
                 make_backbone: BackboneFactory, frame_encoder: nn.Module | None = None):
        super().__init__()
        self.frame_encoder = frame_encoder  # None: the inputs are already features
        self.pooling, self.order_free = pooling, order_free
        self.backbone = None if order_free else make_backbone(feature_size)
        size = feature_size if order_free else self.backbone.output_size
        self.attend = AttentionPool(size) if pooling == "attention" and not order_free else None
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(size, tags)

    def features(self, frames: Tensor) -> Tensor:
        """(B, T, D) float features of each frame."""
        if self.frame_encoder is None:
            return frames.float()
        b, t = frames.shape[:2]
        return self.frame_encoder(frames.flatten(0, 1)).view(b, t, -1)  # encoder gives (B*T, 1, D)

    def forward(self, frames: Tensor, lengths: Tensor) -> Tensor:
        x = self.drop(self.features(frames))  # (B, T, D)
        if self.order_free:
            return self.head(self.drop(x.mean(dim=1)))  # every clip has all T frames
        out, _ = self.backbone(x, lengths)  # (B, T, H * dirs)
        if self.attend is not None:
            pooled = self.attend(out, lengths)
        else:
            pooled = pool(out, lengths, self.pooling, getattr(self.backbone, "directions", 1))
        return self.head(self.drop(pooled))  # (B, C)
