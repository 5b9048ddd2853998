"""Divergences between two model outputs: the ℓ_s that SMART and R3F use for each kind of task head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The kinds of task head, each with its divergence (a task names its kind: multitask/tasks.py).
KINDS: tuple[str, ...] = ("multiclass", "binary", "regression")


def _batch_size(t: torch.Tensor, name: str) -> int:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 0:
        raise ValueError(f"{name} is a scalar; expected a batch of outputs with the batch first")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (shape {tuple(t.shape)}); a mean over it is undefined")
    return t.shape[0]


def _check_same_batch(p: torch.Tensor, q: torch.Tensor, p_name: str, q_name: str) -> int:
    bp, bq = _batch_size(p, p_name), _batch_size(q, q_name)
    if bp != bq:
        raise ValueError(
            f"batch sizes differ: {p_name} has shape {tuple(p.shape)}, {q_name} has shape "
            f"{tuple(q.shape)}; both must hold the same examples"
        )
    return bp


def _one_value_per_example(t: torch.Tensor, name: str) -> torch.Tensor:
    """[B] or [B, 1] → [B]; anything else is a caller bug, so say so instead of broadcasting."""
    if t.dim() == 1 or (t.dim() == 2 and t.shape[1] == 1):
        return t.reshape(-1)
    raise ValueError(f"{name} must have shape [B] or [B, 1], got {tuple(t.shape)}")


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) + KL(q‖p) for categorical distributions given as logits [B, C]; mean over the batch."""
    _check_same_batch(p_logits, q_logits, "p_logits", "q_logits")
    if p_logits.dim() != 2 or p_logits.shape != q_logits.shape:
        raise ValueError(
            f"symmetric_kl expects two [B, C] logit tensors of the same shape, got "
            f"{tuple(p_logits.shape)} and {tuple(q_logits.shape)}"
        )
    if p_logits.shape[1] < 2:
        # A softmax over one class is always 1, so the divergence would be silently 0.
        raise ValueError(
            f"symmetric_kl needs at least 2 classes, got shape {tuple(p_logits.shape)}; "
            "for a single logit use kind 'binary'"
        )
    log_p = F.log_softmax(p_logits, dim=-1)
    log_q = F.log_softmax(q_logits, dim=-1)
    # The two KL sums merge into Σ (p − q)(log p − log q). Every term is ≥ 0 (both factors share a
    # sign), so rounding cannot make the result negative, and log_softmax never takes log(0).
    per_example = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)
    return per_example.mean()


def symmetric_kl_binary(p_logit: torch.Tensor, q_logit: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) + KL(q‖p) for Bernoulli distributions σ(logit), logits [B] or [B, 1]; mean over batch."""
    _check_same_batch(p_logit, q_logit, "p_logit", "q_logit")
    a = _one_value_per_example(p_logit, "p_logit")
    b = _one_value_per_example(q_logit, "q_logit")
    # Written with logsigmoid the sum is
    #   (σ(a) − σ(b))·[(logσ(a) − logσ(b)) − (logσ(−a) − logσ(−b))],
    # and logσ(x) − logσ(−x) = x exactly, so the bracket is a − b. The closed form below is the
    # same quantity with no logarithm evaluated at all: finite for any finite logits, and ≥ 0
    # because σ is increasing.
    return ((torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)).mean()


def squared_error(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(p − q)² summed over output dimensions, mean over the batch; [B] and [B, 1] are interchangeable."""
    _check_same_batch(p, q, "p", "q")
    # Bring both to [B, D] explicitly: comparing [B, 1] with [B] must never broadcast to [B, B].
    p2 = p.unsqueeze(1) if p.dim() == 1 else p.reshape(p.shape[0], -1)
    q2 = q.unsqueeze(1) if q.dim() == 1 else q.reshape(q.shape[0], -1)
    if p2.shape != q2.shape:
        raise ValueError(
            f"squared_error got outputs of shapes {tuple(p.shape)} and {tuple(q.shape)}; "
            "they must hold the same number of values per example"
        )
    return (p2 - q2).pow(2).sum(dim=1).mean()


_BY_KIND = {
    "multiclass": symmetric_kl,
    "binary": symmetric_kl_binary,
    "regression": squared_error,
}


def check_kind(kind: str) -> None:
    """Raise ValueError unless kind is one of KINDS."""
    if kind not in _BY_KIND:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {', '.join(KINDS)}")


def divergence(kind: str, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The SMART ℓ_s for a head of the given kind ("multiclass", "binary" or "regression")."""
    check_kind(kind)
    return _BY_KIND[kind](p, q)
