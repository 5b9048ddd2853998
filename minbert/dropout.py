"""Dropout whose CPU masks come from 16 random bits per element instead of a random double.

torch's CPU dropout draws one double per element from its Mersenne Twister (`bernoulli_`); in a
training step of this encoder that is as much CPU time as all of its matmuls. Here each element
takes 16 bits of one 64-bit draw: a quarter of the generator calls, and no floating-point
conversion. The masks still come from torch's default generator, so seeding, saving and restoring
its state (resume, SMART's shared-mask replay in smart/dropout.py) work as they do for torch's own
dropout. On other devices torch's fused dropout kernel is used as it is.
"""

from __future__ import annotations

import torch
from torch import nn

# Masks are drawn as 16-bit integers: keep an element when its draw falls below a threshold.
BITS = 16
LEVELS = 1 << BITS


def keep_threshold(p: float) -> int:
    """How many of the 2**16 draws keep an element: the keep probability is this / 2**16, within 2**-17 of 1 - p."""
    return round((1.0 - p) * LEVELS)


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A bool mask of the elements to zero, and the scale 1/P(keep) for the rest: E[output] is exactly the input."""
    count = 1
    for size in shape:
        count *= size
    words = -(-count // 4)
    # [low, high) spans every int64 but the largest, so each 16-bit lane is uniform to within 2**-64.
    draws = torch.randint(-(1 << 63), (1 << 63) - 1, (words,), dtype=torch.int64, device=device)
    lanes = draws.view(torch.int16)[:count].view(shape)
    threshold = keep_threshold(p)
    # int16 runs from -2**15: shift the threshold so that exactly `threshold` of the 2**16 values keep.
    return lanes >= threshold - LEVELS // 2, LEVELS / threshold


class _MaskedScale(torch.autograd.Function):
    """x zeroed where `drop`, the rest times `scale`; only the bool mask (not a scaled copy) is kept for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, drop: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.masked_fill(drop, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (drop,) = ctx.saved_tensors
        return grad.masked_fill(drop, 0).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p (to within 2**-17), scale the rest by 1/P(keep)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or keep_threshold(p) == 0:
        return torch.nn.functional.dropout(x, p, training=True)
    drop, scale = drop_mask(x.shape, p, x.device)
    return _MaskedScale.apply(x, drop, scale)


class Dropout(nn.Dropout):
    """nn.Dropout with the cheaper CPU masks of `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
