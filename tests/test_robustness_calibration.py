"""Expected calibration error against hand-computed values: 15 equal-width bins, closed on the right."""

from __future__ import annotations

import math

import pytest
import torch

from multitask.robustness.calibration import classifier_ece, expected_calibration_error


def test_hand_computed_example():
    # Bins of width 1/15: 0.95 → (14/15, 1], 0.55 → (8/15, 9/15], 0.30 → (4/15, 5/15].
    # 4/8·|3/4 − 0.95| + 2/8·|1/2 − 0.55| + 2/8·|0 − 0.30| = 0.1 + 0.0125 + 0.075.
    confidence = [0.95, 0.95, 0.95, 0.95, 0.55, 0.55, 0.30, 0.30]
    correct = [1, 1, 1, 0, 1, 0, 0, 0]
    assert expected_calibration_error(torch.tensor(confidence), torch.tensor(correct)) == pytest.approx(0.1875)


def test_a_bin_compares_its_mean_accuracy_with_its_mean_confidence():
    # One bin: |1/2 − 0.965| = 0.465, not the mean of per-example gaps (0.94 + 0.01)/2 = 0.475.
    assert expected_calibration_error(torch.tensor([0.94, 0.99]), torch.tensor([0, 1])) == pytest.approx(0.465)


def test_fifteen_bins():
    # 0.61 and 0.69 fall in (9/15, 10/15] and (10/15, 11/15]; with ten bins they would share (0.6, 0.7].
    value = expected_calibration_error(torch.tensor([0.61, 0.69], dtype=torch.float64), torch.tensor([1, 0]))
    assert value == pytest.approx((0.39 + 0.69) / 2)


def test_bins_are_closed_on_the_right():
    # 2/15 belongs to (1/15, 2/15], apart from 0.14: (|1 − 2/15| + |0 − 0.14|)/2. Were the bins
    # closed on the left, the two would share a bin: |(1 − 2/15) − 0.14|/2.
    value = expected_calibration_error(torch.tensor([2 / 15, 0.14], dtype=torch.float64), torch.tensor([1, 0]))
    assert value == pytest.approx((1 - 2 / 15 + 0.14) / 2)
    assert expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1, 0])) == 0.0


def test_perfectly_calibrated_bins_give_zero():
    confidence = torch.full((10,), 0.7, dtype=torch.float64)
    assert expected_calibration_error(confidence, torch.tensor([1] * 7 + [0] * 3)) == pytest.approx(0.0, abs=1e-12)


def test_binary_confidence_is_the_larger_of_p_and_one_minus_p():
    # σ(log 9) = 0.9: class 1 at 0.9; σ(−log 9) = 0.1: class 0 at 0.9; σ(0) = 0.5: class 0 (logit > 0
    # predicts 1), at 0.5. All three right: 2/3·|1 − 0.9| + 1/3·|1 − 0.5|.
    logits = torch.tensor([math.log(9), -math.log(9), 0.0])
    assert classifier_ece("binary", logits, torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(2 / 3 * 0.1 + 1 / 3 * 0.5)
    # The first two wrong: 2/3·|0 − 0.9| + 1/3·|1 − 0.5|.
    assert classifier_ece("binary", logits, torch.tensor([0.0, 1.0, 0.0])) == pytest.approx(2 / 3 * 0.9 + 1 / 3 * 0.5)


def test_multiclass_confidence_is_the_max_softmax_probability():
    logits = torch.zeros(2, 5)
    logits[0, 0] = math.log(3)  # p = 3/7 on class 0, right
    logits[1, 2] = math.log(5)  # p = 5/9 on class 2, label 1: wrong
    assert classifier_ece("multiclass", logits, torch.tensor([0, 1])) == pytest.approx((1 - 3 / 7 + 5 / 9) / 2)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one correctness per confidence"):
        expected_calibration_error(torch.tensor([0.5, 0.6]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(torch.tensor([1.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="regression"):
        classifier_ece("regression", torch.zeros(3), torch.zeros(3))
