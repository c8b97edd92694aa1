"""Acoustic model for CTC speech recognition: stacked log-mel frames -> any backbone -> a linear head over
the output symbols (blank first), log-softmaxed per frame."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tasks.base import BackboneFactory


class CTCModel(nn.Module):
    """features (B, T, F) and their lengths -> per-frame log-probabilities (B, T, C) for torch's CTC loss."""

    def __init__(self, feature_size: int, symbols: int, dropout: float, make_backbone: BackboneFactory):
        super().__init__()
        self.backbone = make_backbone(feature_size)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.output_size, symbols)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        out, _ = self.backbone(features, lengths)  # (B, T, H * dirs), zeros past each length
        return F.log_softmax(self.head(self.drop(out)).float(), dim=-1)  # (B, T, C)


def ctc_loss(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Mean over the batch of each utterance's CTC loss divided by its target length (torch's 'mean'), with
    impossible alignments (more symbols than frames) counted as zero rather than infinity."""
    return F.ctc_loss(log_probs.transpose(0, 1), targets, lengths.cpu(), target_lengths.cpu(), blank=0,
                      reduction="mean", zero_infinity=True)
