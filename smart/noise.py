"""Masked random perturbations of input embeddings and the argument checks SMART and R3F share."""

from __future__ import annotations

import math

import torch

NOISE_KINDS: tuple[str, ...] = ("normal", "uniform")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise ValueError unless value is a finite number > 0 (or ≥ 0 with allow_zero)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def keep_mask(embeddings: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Check embeddings [B, T, H] and mask [B, T]; return a bool [B, T, 1] of positions that may move."""
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 3:
        is_tensor = isinstance(embeddings, torch.Tensor)
        shape = tuple(embeddings.shape) if is_tensor else type(embeddings).__name__
        raise ValueError(f"embeddings must be a [B, T, H] tensor, got {shape}")
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeddings.shape[:2]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"mask must have shape [B, T] = {tuple(embeddings.shape[:2])} to match the embeddings, got {shape}"
        )
    # Any non-zero entry counts as a real token, so bool, int and float attention masks all work.
    return mask.ne(0).to(embeddings.device).unsqueeze(-1)


def perturbation_dtype(embeddings: torch.Tensor) -> torch.dtype:
    """float32, or wider if the embeddings are wider.

    A perturbation of 1e-5 on values of order 1 is below the resolution of float16/bfloat16, so
    half-precision embeddings would silently receive no noise at all; promoting keeps it visible.
    """
    return torch.promote_types(embeddings.dtype, torch.float32)


def apply_mask(delta: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Zero δ at padding; torch.where (not a product) so pads are exactly +0 and never NaN·0."""
    if keep is None:
        return delta
    return torch.where(keep, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))


def masked_noise(
    embeddings: torch.Tensor,
    distribution: str,
    scale: float,
    keep: torch.Tensor | None,
) -> torch.Tensor:
    """Noise shaped like embeddings, N(0, scale²) or U(−scale, scale), zero where keep is False.

    Drawn from torch's global generator, so the caller's seeding makes it reproducible. The result
    does not require grad.
    """
    dtype = perturbation_dtype(embeddings)
    if distribution == "normal":
        delta = torch.randn(embeddings.shape, dtype=dtype, device=embeddings.device) * scale
    elif distribution == "uniform":
        delta = torch.empty(embeddings.shape, dtype=dtype, device=embeddings.device).uniform_(-scale, scale)
    else:
        raise ValueError(
            f"unknown noise distribution {distribution!r}; expected one of {', '.join(NOISE_KINDS)}"
        )
    return apply_mask(delta, keep)
