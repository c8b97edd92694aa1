"""Video tagging metrics against scikit-learn and brute force."""
from __future__ import annotations

import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, top_k_accuracy_score

from tasks.video_metrics import best_threshold, mean_average_precision, micro_f1, top_k_accuracy


def test_top_k_accuracy_equals_scikit_learn() -> None:
    gen = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(200, 12, generator=gen), torch.randint(0, 12, (200,), generator=gen)
    for k in (1, 5):
        want = 100 * top_k_accuracy_score(labels.numpy(), scores.numpy(), k=k, labels=list(range(12)))
        assert top_k_accuracy(scores, labels, k) == pytest.approx(want)
    assert top_k_accuracy(scores, labels, 50) == 100.0  # k beyond the classes: every row is a hit


@pytest.mark.parametrize("quantize", [False, True])
def test_map_equals_scikit_learn_average_precision_with_and_without_ties(quantize: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    targets = torch.rand(300, 7, generator=gen) < torch.linspace(0.05, 0.6, 7)
    scores = targets.float() * 0.8 + torch.rand(300, 7, generator=gen)  # informative but imperfect
    if quantize:
        scores = (scores * 4).round() / 4  # many tied scores
    targets[:, 3] = False  # a tag with no positive clip is left out of the mean
    kept = [j for j in range(7) if j != 3]
    want = 100 * sum(average_precision_score(targets[:, j].numpy(), scores[:, j].numpy()) for j in kept) / 6
    assert mean_average_precision(scores, targets) == pytest.approx(want, abs=1e-9)


def test_map_refuses_a_split_without_positives() -> None:
    with pytest.raises(ValueError, match="no tag has a positive clip"):
        mean_average_precision(torch.rand(4, 2), torch.zeros(4, 2, dtype=torch.bool))


def test_micro_f1_equals_scikit_learn_and_the_best_threshold_beats_every_other() -> None:
    gen = torch.Generator().manual_seed(2)
    targets = torch.rand(80, 5, generator=gen) < 0.3
    scores = ((targets.float() * 0.5 + torch.rand(80, 5, generator=gen)) * 10).round() / 10  # ties
    for t in (0.3, 0.7):
        want = 100 * f1_score(targets.numpy(), (scores >= t).numpy(), average="micro")
        assert micro_f1(scores, targets, t) == pytest.approx(want)
    best = best_threshold(scores, targets)
    brute = max(micro_f1(scores, targets, t) for t in torch.unique(scores).tolist())
    assert micro_f1(scores, targets, best) == pytest.approx(brute)
    assert best in torch.unique(scores).tolist()
