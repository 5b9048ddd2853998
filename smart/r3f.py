"""R3F noise regulariser (Aghajanyan et al., ICLR 2021): SMART's smoothness term without the ascent."""

from __future__ import annotations

import torch

from smart.adversarial import OutputFn
from smart.divergences import check_kind, divergence
from smart.noise import NOISE_KINDS, check_positive, keep_mask, masked_noise


def r3f_loss(
    fn: OutputFn,
    embeddings: torch.Tensor,
    clean_output: torch.Tensor,
    kind: str,
    eps: float = 1e-5,
    noise: str = "normal",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ℓ_s(f(x + δ), f(x)), δ ~ N(0, eps²I) ("normal") or U(−eps, eps) ("uniform"), 0 at padding.

    clean_output is fn(embeddings), already computed for the task loss; fn is called once more.
    Gradients reach the parameters through both outputs, as in smoothness_loss.
    """
    check_kind(kind)
    check_positive("eps", eps)
    if noise not in NOISE_KINDS:
        raise ValueError(f"unknown noise {noise!r}; expected one of {', '.join(NOISE_KINDS)}")
    keep = keep_mask(embeddings, mask)
    delta = masked_noise(embeddings, noise, eps, keep)
    return divergence(kind, fn(embeddings + delta), clean_output)
