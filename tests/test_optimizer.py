"""The from-scratch AdamW against torch.optim.AdamW and against its own formula."""

from __future__ import annotations

import math

import pytest
import torch

from minbert.optimizer import AdamW


def regression_problem():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=generator)
    y = x @ torch.randn(10, 1, generator=generator) + 0.1 * torch.randn(64, 1, generator=generator)
    return x, y


def train(optimizer_class, steps: int = 1000, **kwargs) -> torch.Tensor:
    x, y = regression_problem()
    torch.manual_seed(1)
    model = torch.nn.Linear(10, 1)
    optimizer = optimizer_class(model.parameters(), **kwargs)
    for _ in range(steps):
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_matches_torch_adamw_over_1000_steps(weight_decay):
    # eps is tiny so the efficient bias correction's different eps placement cannot matter.
    ours = train(AdamW, lr=1e-2, eps=1e-10, weight_decay=weight_decay)
    theirs = train(torch.optim.AdamW, lr=1e-2, eps=1e-10, weight_decay=weight_decay)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()


def test_weight_decay_changes_the_result():
    assert not torch.allclose(train(AdamW, steps=200, lr=1e-2), train(AdamW, steps=200, lr=1e-2, weight_decay=0.5))


def test_without_bias_correction_follows_the_formula():
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.999), 1e-6, 0.05
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    optimizer = AdamW([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, correct_bias=False)
    expected = [1.0, -2.0, 0.5]
    m = [0.0] * 3
    v = [0.0] * 3
    for step in range(1, 51):
        grad = [math.sin(step + i) * (i + 1) for i in range(3)]
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        for i in range(3):
            expected[i] *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * grad[i]
            v[i] = b2 * v[i] + (1 - b2) * grad[i] ** 2
            expected[i] -= lr * m[i] / (math.sqrt(v[i]) + eps)
    assert torch.allclose(param.detach(), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_first_step_size_is_lr_with_bias_correction():
    # With correction, m̂/√v̂ = g/|g| on step one, so every coordinate moves by exactly lr.
    param = torch.nn.Parameter(torch.tensor([3.0, -1.0], dtype=torch.float64))
    param.grad = torch.tensor([0.2, -7.0], dtype=torch.float64)
    AdamW([param], lr=0.1, eps=0.0).step()
    assert torch.allclose(param.detach(), torch.tensor([2.9, -0.9], dtype=torch.float64), atol=1e-12)


def test_parameters_without_gradient_are_untouched():
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    used.grad = torch.ones(2)
    AdamW([used, unused], lr=0.1, weight_decay=0.1).step()
    assert torch.equal(unused.detach(), torch.ones(2)) and not torch.equal(used.detach(), torch.ones(2))


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(eps=-1e-8), dict(weight_decay=-0.1)])
def test_invalid_hyperparameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        AdamW([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_rows_without_any_gradient_yet_only_decay():
    # Like word-embedding rows no token has reached: m = v = 0 there, and even with eps = 0 the
    # step must leave them at exactly (1 - lr·wd)·θ, not 0/0.
    param = torch.nn.Parameter(torch.ones(4, 3))
    grad = torch.zeros(4, 3)
    grad[1] = torch.tensor([0.5, -2.0, 1e-3])
    param.grad = grad
    AdamW([param], lr=0.1, eps=0.0, weight_decay=0.1).step()
    untouched = torch.full((3,), 1.0 - 0.1 * 0.1)
    for row in (0, 2, 3):
        assert torch.equal(param.detach()[row], untouched)
    # With bias correction the first step moves every coordinate with a gradient by exactly lr.
    assert torch.allclose(param.detach()[1], untouched - 0.1 * grad[1].sign(), atol=1e-6)
