"""The word-embedding lookup that reuses its gradient buffer: same gradients as nn.Embedding, never a clobbered one."""

from __future__ import annotations

import copy

import pytest
import torch

from minbert.lookup import _BUFFERS, Embedding


def pair(padding_idx=0):
    torch.manual_seed(0)
    ours = Embedding(50, 8, padding_idx=padding_idx)
    theirs = torch.nn.Embedding(50, 8, padding_idx=padding_idx)
    theirs.weight.data.copy_(ours.weight.data)
    return ours, theirs


IDS = torch.tensor([[1, 2, 2, 0, 7], [3, 0, 1, 1, 49]])


@pytest.mark.parametrize("padding_idx", [0, None])
def test_gradient_is_bit_identical_and_reuses_one_buffer_across_steps(padding_idx):
    ours, theirs = pair(padding_idx)
    pointers = set()
    for step in range(3):
        weights = torch.randn(2, 5, 8)
        (ours(IDS) * weights).sum().backward()
        (theirs(IDS) * weights).sum().backward()
        assert torch.equal(ours.weight.grad, theirs.weight.grad)
        pointers.add(ours.weight.grad.data_ptr())
        ours.weight.grad = theirs.weight.grad = None
    assert pointers == {_BUFFERS[ours.weight][0].data_ptr()}


def test_two_lookups_in_one_graph_add_up():
    # R-Drop and R3F look the table up twice before one backward; the second backward call must
    # not zero the buffer the first one's gradient still lives in.
    ours, theirs = pair()
    (ours(IDS).sum() + ours(IDS).pow(2).sum()).backward()
    (theirs(IDS).sum() + theirs(IDS).pow(2).sum()).backward()
    assert torch.equal(ours.weight.grad, theirs.weight.grad)


def test_a_kept_gradient_is_accumulated_into_not_overwritten():
    ours, theirs = pair()
    for power in (2, 3):
        ours(IDS).pow(power).sum().backward()
        theirs(IDS).pow(power).sum().backward()
    assert torch.equal(ours.weight.grad, theirs.weight.grad)
    assert ours.weight.grad.abs().sum() > 0


def test_tied_weights_get_both_contributions():
    # The MLM head multiplies by the same table it looked the tokens up in.
    ours, theirs = pair()
    for table in (ours, theirs):
        hidden = table(IDS)
        (hidden @ table.weight.t()).logsumexp(-1).sum().backward()
    assert torch.allclose(ours.weight.grad, theirs.weight.grad, atol=1e-6)


def test_without_autograd_or_off_the_cpu_path_it_is_plain_nn_embedding():
    ours, theirs = pair()
    with torch.no_grad():
        assert torch.equal(ours(IDS), theirs(IDS))
    ours.weight.requires_grad_(False)
    assert ours(IDS).grad_fn is None


def test_copies_of_the_model_do_not_carry_the_buffer():
    ours, _ = pair()
    ours(IDS).sum().backward()
    before = len(_BUFFERS)
    teacher = copy.deepcopy(ours)
    assert len(_BUFFERS) == before and teacher.weight not in _BUFFERS
