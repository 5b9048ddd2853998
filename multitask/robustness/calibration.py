"""Expected calibration error of a classifier's confidence (Guo et al., ICML 2017)."""

from __future__ import annotations

import torch

from multitask.robustness.scoring import class_probabilities

BINS = 15


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> float:
    """Σ_m |B_m|/n · |accuracy(B_m) − mean confidence(B_m)| over `bins` equal-width bins of [0, 1].

    Bin m holds the confidences in ((m − 1)/bins, m/bins] (the first also holds 0), the convention
    of Guo et al.; empty bins add nothing.
    """
    confidence = torch.as_tensor(confidence, dtype=torch.float64).reshape(-1)
    correct = torch.as_tensor(correct).reshape(-1).to(torch.float64)
    if confidence.numel() == 0 or confidence.shape != correct.shape:
        raise ValueError(f"need one correctness per confidence and at least one of each, got "
                         f"{tuple(confidence.shape)} and {tuple(correct.shape)}")
    if bins < 1:
        raise ValueError(f"bins must be ≥ 1, got {bins}")
    if not bool(((confidence >= 0) & (confidence <= 1)).all()):
        raise ValueError("confidences must lie in [0, 1]")
    # Inner edges 1/bins … (bins−1)/bins; right=False puts a value equal to an edge in the bin
    # that edge closes, so the bins are closed on the right.
    inner = torch.arange(1, bins, dtype=torch.float64) / bins
    index = torch.bucketize(confidence, inner, right=False)
    count = torch.bincount(index, minlength=bins).to(torch.float64)
    gap = torch.bincount(index, weights=correct - confidence, minlength=bins)
    # |Σ (correct − conf)| / n per bin is |acc − conf| · |B_m| / n.
    return float(gap.abs().sum() / count.sum())


def classifier_ece(kind: str, outputs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """ECE of the predicted class's probability: max softmax (multiclass), max(p, 1 − p) (binary)."""
    probabilities = class_probabilities(kind, outputs)
    confidence, predicted = probabilities.max(dim=-1)
    return expected_calibration_error(confidence, predicted == labels.long().reshape(-1), bins)
