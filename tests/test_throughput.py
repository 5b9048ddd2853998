"""The throughput report: model FLOPs per real token, a matmul peak that leaves the run's random stream alone."""

from __future__ import annotations

import pytest
import torch

from minbert import BertConfig
from multitask import throughput
from multitask.throughput import matmul_peak, training_flops_per_token
from multitask.records import EpochRecord, format_epoch
from tests.test_nonfinite_steps import trainer_with


def test_minilm_trains_at_three_times_21_2_mflop_per_token():
    minilm = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536)
    forward = 6 * 2 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert forward == 21_233_664
    assert training_flops_per_token(minilm) == 3 * forward


def test_measuring_the_peak_does_not_move_the_random_stream():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert matmul_peak(torch.device("cpu"), "fp32", seconds=0.01) > 0
    assert torch.equal(torch.rand(3), expected)


def test_the_peak_is_the_best_window_not_one_that_lost_a_core(monkeypatch):
    # A window during which the system held one of two cores reads about half the rate.
    rates, asked = iter([2e11, 4e11, 3.9e11]), []
    def window(a, b, seconds):
        asked.append(seconds)
        return next(rates)
    monkeypatch.setattr(throughput, "_matmul_rate", window)
    assert matmul_peak(torch.device("cpu"), "fp32", seconds=0.6, windows=3) == 4e11
    assert asked == pytest.approx([0.2, 0.2, 0.2])


def test_a_window_times_real_products():
    a = torch.ones(64, 32)
    assert throughput._matmul_rate(a, torch.ones(32, 16), seconds=0.01) > 0


def test_an_epoch_reports_its_real_tokens_and_share_of_the_peak(tmp_path):
    trainer = trainer_with(None, tmp_path)
    trainer.matmul_peak = 1e9
    [record] = trainer.train()
    tokens = sum(int(ds.side_lengths()[0].sum()) for ds in trainer.train_sets.values())
    assert record.extra["train_tokens"] == tokens
    flops = training_flops_per_token(trainer.model.encoder.config) * tokens
    # The record's seconds are rounded to 0.1 s; the rate was taken on the unrounded time.
    seconds = flops / (record.extra["of_peak"] * trainer.matmul_peak)
    assert abs(seconds - record.train_seconds) <= 0.05 + 1e-3 * seconds
    assert "of the matmul peak" in format_epoch(record)
    plain = EpochRecord(1, {"sst": 0.4}, 0.4, {"sst": 1.0}, 10.0, 64, 0)
    assert "peak" not in format_epoch(plain)
