"""Tests for the weight average (SMART's mean teacher, an EMA of the student) and the Bregman proximal loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smart import WeightAverage, bregman_loss, divergence


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _student() -> nn.Module:
    # BatchNorm brings floating buffers (running stats) and an integer one (num_batches_tracked).
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()


def _perturb(model: nn.Module) -> None:
    # Moves every parameter, unlike a training step (a bias feeding BatchNorm gets zero gradient).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_teacher_is_a_frozen_independent_copy() -> None:
    student = _student()
    teacher = WeightAverage(student)
    assert teacher.model is not student
    for (n, t), (_, s) in zip(teacher.model.named_parameters(), student.named_parameters()):
        assert not t.requires_grad, n
        assert s.requires_grad, n
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr(), n


def test_update_equals_lerp_and_the_formula() -> None:
    student = _student()
    teacher = WeightAverage(student)
    _perturb(student)
    before = _params(teacher.model)
    beta = teacher.update(step=0, total_steps=100)
    assert beta == 0.99
    for n, s in student.named_parameters():
        t = dict(teacher.model.named_parameters())[n]
        assert not torch.equal(t, before[n]), f"{n} did not move"
        assert torch.equal(t, before[n].clone().lerp_(s.detach(), 1 - 0.99)), n
        torch.testing.assert_close(t, (1 - 0.99) * s.detach() + 0.99 * before[n], rtol=1e-6, atol=1e-7)


def test_buffers_follow_the_student() -> None:
    student = _student()
    teacher = WeightAverage(student)
    _train_step(student, torch.optim.SGD(student.parameters(), lr=0.1))  # train mode updates BN stats
    teacher.update(step=0, total_steps=10)
    for (n, t), (_, s) in zip(teacher.model.named_buffers(), student.named_buffers()):
        assert torch.equal(t, s), n
    assert teacher.model[1].num_batches_tracked.item() == 1


def test_beta_schedule_switches_at_ten_percent() -> None:
    teacher = WeightAverage(_student())
    assert [teacher.beta_at(s, 1000) for s in (0, 99, 100, 999)] == [0.99, 0.99, 0.999, 0.999]
    # 10% of 15 is 1.5: steps 0 and 1 are early, step 2 is late.
    assert [teacher.beta_at(s, 15) for s in (0, 1, 2)] == [0.99, 0.99, 0.999]


def test_window_cap_binds_only_in_short_runs() -> None:
    capped = WeightAverage(_student(), window_fraction=0.25)
    # Time constant 1/(1 - β) ≤ a quarter of the run: β ≤ 1 - 4/total.
    assert capped.beta_at(0, 100) == pytest.approx(0.96) and capped.beta_at(50, 100) == pytest.approx(0.96)
    assert capped.beta_at(0, 8) == pytest.approx(0.5)
    assert capped.beta_at(0, 2) == 0.0  # shorter than the window: the average is the latest weights
    # From 4,000 updates on the paper's schedule is untouched, the switch at 10% included.
    assert [capped.beta_at(s, 5000) for s in (0, 499, 500, 4999)] == [0.99, 0.99, 0.999, 0.999]
    # A constant β is honoured as given.
    assert WeightAverage(_student(), beta=0.999, window_fraction=0.25).beta_at(5, 10) == 0.999


def test_late_update_uses_late_beta() -> None:
    student = _student()
    teacher = WeightAverage(student)
    _perturb(student)
    before = _params(teacher.model)
    assert teacher.update(step=10, total_steps=100) == 0.999
    w = teacher.model[0].weight
    assert torch.equal(w, before["0.weight"].clone().lerp_(student[0].weight.detach(), 1 - 0.999))


def test_constant_beta_overrides_schedule() -> None:
    student = _student()
    teacher = WeightAverage(student, beta=0.5)
    assert teacher.beta_at(0, 100) == 0.5 and teacher.beta_at(99, 100) == 0.5
    _perturb(student)
    before = teacher.model[3].bias.clone()
    teacher.update(step=0, total_steps=100)
    torch.testing.assert_close(teacher.model[3].bias, 0.5 * before + 0.5 * student[3].bias.detach())


def test_teacher_unaffected_by_student_backward() -> None:
    student = _student()
    teacher = WeightAverage(student)
    before = _params(teacher.model)
    x = torch.randn(8, 4)
    with torch.no_grad():
        teacher_out = teacher.model(x)
    assert not teacher_out.requires_grad
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    for _ in range(3):
        _train_step(student, opt)
    for n, t in teacher.model.named_parameters():
        assert t.grad is None, n
        assert torch.equal(t, before[n]), n
    assert not torch.equal(student[0].weight, before["0.weight"])


def test_state_dict_round_trip_keeps_teacher_frozen() -> None:
    student = _student()
    teacher = WeightAverage(student)
    _perturb(student)
    teacher.update(step=0, total_steps=10)
    restored = WeightAverage(_student())
    restored.load_state_dict(teacher.state_dict())
    for (n, a), (_, b) in zip(restored.model.named_parameters(), teacher.model.named_parameters()):
        assert torch.equal(a, b) and not a.requires_grad, n


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="beta"):
        WeightAverage(_student(), beta=1.5)
    with pytest.raises(ValueError, match="window_fraction"):
        WeightAverage(_student(), window_fraction=0.0)
    with pytest.raises(ValueError, match="total_steps"):
        WeightAverage(_student()).beta_at(0, 0)


def test_bregman_loss_trains_only_the_student_side() -> None:
    student_out = torch.randn(6, 5, requires_grad=True)
    teacher_out = torch.randn(6, 5, requires_grad=True)
    loss = bregman_loss(student_out, teacher_out, "multiclass")
    assert torch.equal(loss, divergence("multiclass", student_out, teacher_out))
    loss.backward()
    assert student_out.grad is not None and student_out.grad.abs().sum().item() > 0
    assert teacher_out.grad is None
