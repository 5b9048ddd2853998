"""The CPU dropout masks: keep rate, exact expectation, independence across sites and steps, replay and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from minbert.dropout import LEVELS, Dropout, drop_mask, dropout, keep_threshold
from minbert.dropout import DropoutReplay


def kept(shape, p: float) -> torch.Tensor:
    drop, _ = drop_mask(torch.Size(shape), p, torch.device("cpu"))
    return (~drop).double()


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keep_rate_is_one_minus_p_within_sampling_error(p):
    torch.manual_seed(0)
    n = 2_000_000
    rate = kept((n,), p).mean().item()
    keep = keep_threshold(p) / LEVELS
    assert abs(keep - (1 - p)) <= 2 ** -17
    # Six standard errors of a binomial proportion.
    assert abs(rate - keep) < 6 * math.sqrt(keep * (1 - keep) / n)


def test_output_mean_is_the_input_exactly_in_expectation():
    _, scale = drop_mask(torch.Size((1,)), 0.1, torch.device("cpu"))
    assert scale * keep_threshold(0.1) == LEVELS
    torch.manual_seed(1)
    x = torch.full((1_000_000,), 3.0)
    y = dropout(x, 0.1, training=True)
    assert set(torch.unique(y).tolist()) <= {0.0, torch.tensor(3.0 * scale, dtype=torch.float32).item()}
    assert abs(y.mean().item() - 3.0) < 6 * 3.0 * scale * math.sqrt(0.9 * 0.1 / x.numel())


def test_masks_of_two_sites_and_two_steps_are_independent():
    torch.manual_seed(2)
    n = 1_000_000
    first, second, next_step = kept((n,), 0.1), kept((n,), 0.1), kept((n,), 0.1)
    for a, b in ((first, second), (first, next_step)):
        # Pearson correlation of two independent Bernoulli vectors: 0 within ~1/sqrt(n).
        correlation = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(correlation) < 6 / math.sqrt(n)
    # Neighbouring elements share a 64-bit draw (four 16-bit lanes each): still independent.
    lanes = kept((n // 4, 4), 0.1)
    correlations = torch.corrcoef(lanes.T)
    assert (correlations - torch.eye(4)).abs().max().item() < 6 / math.sqrt(n // 4)


def test_masks_follow_the_generator_so_seeding_and_replay_reproduce_them():
    x = torch.ones(64, 384)
    torch.manual_seed(3)
    a = dropout(x, 0.1, True)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1, True), a)
    replay = DropoutReplay("cpu")
    b = dropout(x, 0.1, True)
    after = torch.rand(3)
    with replay.replaying():
        assert torch.equal(dropout(x, 0.1, True), b)
    assert not torch.equal(b, dropout(x, 0.1, True))
    torch.manual_seed(3)
    dropout(x, 0.1, True), dropout(x, 0.1, True)
    assert torch.equal(torch.rand(3), after)


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(4)
    x = torch.randn(32, 50, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    y.backward(torch.ones_like(y))
    kept_scale = torch.where(y != 0, y / x, torch.zeros_like(y)).detach()
    assert torch.allclose(x.grad, kept_scale)
    torch.manual_seed(5)
    z = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    state = torch.get_rng_state()

    def fixed_mask(t):
        torch.set_rng_state(state)
        return dropout(t, 0.4, training=True)

    assert torch.autograd.gradcheck(fixed_mask, (z,))


def test_off_in_eval_and_at_zero_and_torch_beyond_the_cpu_grid():
    x = torch.randn(10, 10)
    module = Dropout(0.1).eval()
    assert module(x) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    bf16 = dropout(x.bfloat16(), 0.5, training=True)
    assert bf16.dtype == torch.bfloat16 and set(torch.unique(bf16[bf16 != 0] / x.bfloat16()[bf16 != 0]).tolist()) == {2.0}


def test_a_replayed_pass_takes_the_recorded_masks_and_draws_none(monkeypatch):
    import minbert.dropout as module

    x = torch.ones(8, 16)
    torch.manual_seed(6)
    replay = DropoutReplay("cpu")
    first, second = dropout(x, 0.1, True), dropout(x.t(), 0.3, True)
    draws = []
    real = module.drop_mask
    monkeypatch.setattr(module, "drop_mask", lambda *a: draws.append(a) or real(*a))
    for _ in range(2):
        with replay.replaying():
            torch.manual_seed(99)  # the masks come from the record, not from the generator
            assert torch.equal(dropout(x, 0.1, True), first)
            assert torch.equal(dropout(x.t(), 0.3, True), second)
    assert draws == []
    # Recording stopped at the first replay: later draws are not added to it.
    dropout(x, 0.1, True)
    assert len(replay.masks) == 2


def test_a_replayed_pass_unlike_the_recorded_one_is_an_error():
    replay = DropoutReplay("cpu")
    dropout(torch.ones(4, 4), 0.1, True)
    with replay.replaying(), pytest.raises(RuntimeError, match=r"call 0 .* \(4, 5\) mask .* a \(4, 4\) one"):
        dropout(torch.ones(4, 5), 0.1, True)
    with replay.replaying(), pytest.raises(RuntimeError, match="p=0.2 .* p=0.1"):
        dropout(torch.ones(4, 4), 0.2, True)
    with replay.replaying(), pytest.raises(RuntimeError, match="past the end .* no more masks"):
        dropout(torch.ones(4, 4), 0.1, True), dropout(torch.ones(4, 4), 0.1, True)


def test_a_replay_never_used_stops_recording_when_dropped():
    import gc
    import weakref

    import minbert.dropout as module

    replay = DropoutReplay("cpu")
    assert replay in module._RECORDING
    gone = weakref.ref(replay)
    del replay
    gc.collect()
    assert gone() is None  # the recording list does not keep it alive, so it no longer records
