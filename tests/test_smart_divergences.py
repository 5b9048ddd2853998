"""Tests for smart.divergences against independent closed forms and shape pitfalls."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, kl_divergence

from smart import KINDS, divergence, squared_error, symmetric_kl, symmetric_kl_binary


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _reference_categorical(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    cp, cq = Categorical(logits=p.double()), Categorical(logits=q.double())
    return (kl_divergence(cp, cq) + kl_divergence(cq, cp)).mean()


def _reference_bernoulli_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Explicit Σ over the two outcomes of p log(p/q), both directions, in float64."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    p = torch.stack([torch.sigmoid(a), torch.sigmoid(-a)], dim=1)
    q = torch.stack([torch.sigmoid(b), torch.sigmoid(-b)], dim=1)
    kl_pq = (p * (p.log() - q.log())).sum(dim=1)
    kl_qp = (q * (q.log() - p.log())).sum(dim=1)
    return (kl_pq + kl_qp).mean()


# --- closed forms ---------------------------------------------------------------------------


def test_symmetric_kl_hand_value() -> None:
    # p = (1/2, 1/2), q = (3/4, 1/4): KL(p‖q) + KL(q‖p) = ¼·ln 3.
    p = torch.tensor([[0.0, 0.0]])
    q = torch.tensor([[math.log(3.0), 0.0]])
    assert symmetric_kl(p, q).item() == pytest.approx(0.25 * math.log(3.0), rel=1e-6)


def test_symmetric_kl_matches_torch_distributions() -> None:
    p, q = 3 * torch.randn(7, 5), 3 * torch.randn(7, 5)
    torch.testing.assert_close(symmetric_kl(p, q).double(), _reference_categorical(p, q), rtol=1e-5, atol=1e-7)


def test_binary_hand_value() -> None:
    # σ(0) = 1/2 against σ(ln 3) = 3/4: the same pair as the categorical hand value.
    a, b = torch.tensor([0.0]), torch.tensor([math.log(3.0)])
    assert symmetric_kl_binary(a, b).item() == pytest.approx(0.25 * math.log(3.0), rel=1e-6)


def test_binary_matches_torch_distributions_and_explicit_sums() -> None:
    a, b = 4 * torch.randn(9), 4 * torch.randn(9)
    ba, bb = Bernoulli(logits=a.double()), Bernoulli(logits=b.double())
    ref = (kl_divergence(ba, bb) + kl_divergence(bb, ba)).mean()
    got = symmetric_kl_binary(a, b).double()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got, _reference_bernoulli_sums(a, b), rtol=1e-5, atol=1e-7)


def test_squared_error_sums_dims_and_averages_batch() -> None:
    p = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    q = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert squared_error(p, q).item() == pytest.approx(7.0)  # (1 + 4 + 9) / 2


# --- divergence properties ----------------------------------------------------------------


@pytest.mark.parametrize(
    "fn, shape",
    [(symmetric_kl, (6, 4)), (symmetric_kl_binary, (6,)), (squared_error, (6, 3))],
)
def test_non_negative_zero_only_when_equal_and_symmetric(fn, shape) -> None:
    for _ in range(20):
        p, q = 2 * torch.randn(shape), 2 * torch.randn(shape)
        d = fn(p, q)
        assert d.item() > 0.0
        assert torch.equal(d, fn(q, p))
        assert fn(p, p.clone()).item() == 0.0


def test_extreme_logits_stay_finite_and_correct() -> None:
    p = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, 0.0], [50.0, 50.0, -50.0]])
    q = torch.tensor([[-50.0, 50.0, 0.0], [50.0, -50.0, 0.0], [-50.0, 50.0, 50.0]])
    d = symmetric_kl(p, q)
    assert torch.isfinite(d)
    torch.testing.assert_close(d.double(), _reference_categorical(p, q), rtol=1e-5, atol=1e-5)
    # Swapping two near-certain classes costs ≈ 1·100 per KL direction (log-ratio 100), so 200;
    # moving half the mass across a log-ratio of 100 costs ½·100 per direction, so 100.
    assert d.item() == pytest.approx((200.0 + 200.0 + 100.0) / 3, rel=1e-4)

    a = torch.tensor([50.0, -50.0, 50.0, -50.0])
    b = torch.tensor([-50.0, 50.0, 49.0, -50.0])
    db = symmetric_kl_binary(a, b)
    assert torch.isfinite(db)
    torch.testing.assert_close(db.double(), _reference_bernoulli_sums(a, b), rtol=1e-5, atol=1e-5)
    assert db.item() == pytest.approx((100.0 + 100.0) / 4, rel=1e-4)


def test_extreme_logits_give_finite_gradients() -> None:
    p = torch.tensor([[50.0, -50.0]], requires_grad=True)
    a = torch.tensor([50.0, -50.0], requires_grad=True)
    symmetric_kl(p, torch.tensor([[-50.0, 50.0]])).backward()
    symmetric_kl_binary(a, torch.tensor([-50.0, 50.0])).backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(a.grad).all()


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [symmetric_kl_binary, squared_error])
def test_column_vs_flat_never_broadcasts(fn) -> None:
    p, q = torch.randn(8), torch.randn(8)
    flat = fn(p, q)
    assert flat.dim() == 0
    for a, b in [(p[:, None], q), (p, q[:, None]), (p[:, None], q[:, None])]:
        assert torch.equal(fn(a, b), flat)
    # The value the [B, B] broadcast would give is clearly different, so the check has teeth.
    if fn is squared_error:
        broadcast = (p[:, None] - q[None, :]).pow(2).mean()
        assert abs(broadcast.item() - flat.item()) > 1e-3


@pytest.mark.parametrize(
    "fn, p, q",
    [
        (symmetric_kl, torch.zeros(4, 3), torch.zeros(5, 3)),
        (symmetric_kl_binary, torch.zeros(4, 1), torch.zeros(5)),
        (squared_error, torch.zeros(4), torch.zeros(5, 1)),
    ],
)
def test_batch_mismatch_raises(fn, p, q) -> None:
    with pytest.raises(ValueError, match="batch sizes differ"):
        fn(p, q)


def test_other_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        symmetric_kl(torch.zeros(4, 1), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        symmetric_kl(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[B\] or \[B, 1\]"):
        symmetric_kl_binary(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="same number of values"):
        squared_error(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="scalar"):
        squared_error(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="empty batch"):
        squared_error(torch.zeros(0), torch.zeros(0))


# --- dispatch -------------------------------------------------------------------------------


def test_divergence_dispatches_by_kind() -> None:
    assert KINDS == ("multiclass", "binary", "regression")
    logits, logits2 = torch.randn(5, 3), torch.randn(5, 3)
    one, one2 = torch.randn(5, 1), torch.randn(5)
    assert torch.equal(divergence("multiclass", logits, logits2), symmetric_kl(logits, logits2))
    assert torch.equal(divergence("binary", one, one2), symmetric_kl_binary(one, one2))
    assert torch.equal(divergence("regression", one, one2), squared_error(one, one2))


def test_unknown_kind_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as info:
        divergence("ordinal", torch.zeros(2), torch.zeros(2))
    for kind in KINDS:
        assert kind in str(info.value)


def test_smart_imports_only_torch_and_the_standard_library() -> None:
    # smart must stay usable without minbert/multitask (DESIGN.md, Layout).
    allowed = {"torch", "smart", "__future__", "collections", "contextlib", "copy", "math", "typing"}
    for path in (Path(__file__).resolve().parent.parent / "smart").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"
