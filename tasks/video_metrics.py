"""Tagging metrics of the video task, in percent.

- Single-label: top-1 (primary) and top-5 accuracy; a clip counts for top-k when its class is among the
  k highest scores (ties broken by torch.topk, i.e. by position).
- Multi-label: mAP (primary), the mean over tags of average precision, AP = sum_n (R_n - R_n-1) P_n over
  the distinct score thresholds taken from high to low (scikit-learn's `average_precision_score`, no
  interpolation; tied scores enter together). Tags without a positive clip in the split have no AP and are
  left out of the mean. F1 is micro-averaged over all (clip, tag) decisions at one score threshold, chosen
  on the validation split (`best_threshold`) and then applied unchanged to the test split.
"""
from __future__ import annotations

import torch
from torch import Tensor


def top_k_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    """Percent of rows whose label is among their k highest scores; scores (N, C), labels (N,)."""
    k = min(k, scores.size(1))
    hits = (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)  # (N,)
    return 100.0 * hits.float().mean().item()


def average_precision(scores: Tensor, positive: Tensor) -> float:
    """AP of one tag: scores (N,), positive (N,) bool with at least one True."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, hit = scores[order], positive[order].double()
    true_pos = hit.cumsum(0)  # (N,)
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]  # a threshold sits after the last clip of each run of equal scores
    true_pos, seen = true_pos[last_of_tie], torch.arange(1, len(s) + 1, dtype=torch.double)[last_of_tie]
    precision, recall = true_pos / seen, true_pos / true_pos[-1]
    recall_step = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.double))
    return float((recall_step * precision).sum())


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """mAP in percent over the tags with at least one positive; scores (N, K), targets (N, K) bool."""
    aps = [average_precision(scores[:, j], targets[:, j]) for j in range(targets.size(1)) if targets[:, j].any()]
    if not aps:
        raise ValueError("no tag has a positive clip: mAP is undefined")
    return 100.0 * sum(aps) / len(aps)


def micro_f1(scores: Tensor, targets: Tensor, threshold: float) -> float:
    """Micro F1 in percent of the decisions `score >= threshold` against targets (N, K) bool."""
    predicted = scores >= threshold
    true_pos = (predicted & targets).sum().item()
    denominator = predicted.sum().item() + targets.sum().item()
    return 100.0 * 2 * true_pos / denominator if denominator else 100.0


def best_threshold(scores: Tensor, targets: Tensor) -> float:
    """The score threshold with the highest micro F1 on (scores, targets), among the distinct scores
    themselves (every achievable decision set); ties go to the higher threshold."""
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    s, hit = scores.flatten()[order], targets.flatten()[order].double()
    true_pos = hit.cumsum(0)
    predicted = torch.arange(1, len(s) + 1, dtype=torch.double)
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]  # thresholding at a score predicts its whole run of ties
    f1 = 2 * true_pos / (predicted + hit.sum())  # (N * K,): micro F1 of "score >= s[i]"
    f1[~last_of_tie] = -1.0
    return float(s[int(f1.argmax())])  # argmax takes the first maximum: the highest such threshold
