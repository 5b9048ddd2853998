"""Dropout with cheap CPU masks, and `DropoutReplay`: later passes under exactly the masks of an earlier one.

torch's CPU dropout draws a random double per element, as much CPU time in a training step as all
the matmuls; here each element takes 16 bits of one int64 draw from torch's default generator, so
seeding and resume work unchanged. SMART, R3F and the Bregman term replay the clean pass's masks;
on the CPU the replayed passes take the recorded masks instead of drawing them again.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

LEVELS = 1 << 16  # keep an element when its 16-bit draw falls below a threshold


def keep_threshold(p: float) -> int:
    """How many of the 2**16 draws keep an element: the keep probability is this / 2**16, within 2**-17 of 1 - p."""
    return round((1.0 - p) * LEVELS)


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A bool mask of the elements to zero, and the scale 1/P(keep) for the rest: E[output] is exactly the input."""
    count = math.prod(shape)
    words = -(-count // 4)
    # [low, high) spans every int64 but the largest, so each 16-bit lane is uniform to within 2**-64.
    draws = torch.randint(-(1 << 63), (1 << 63) - 1, (words,), dtype=torch.int64, device=device)
    lanes = draws.view(torch.int16)[:count].view(shape)
    threshold = keep_threshold(p)
    # int16 runs from -2**15: shift the threshold so that exactly `threshold` of the 2**16 values keep.
    return lanes >= threshold - LEVELS // 2, LEVELS / threshold


class DropoutReplay:
    """The dropout masks of the pass that follows its construction, for later passes run under `replaying()`.

    SMART's ℓ_s(f(x + δ), f(x)) compares two evaluations of one function f, and so do R3F and the
    Bregman term (at two parameter vectors). In training mode every forward pass draws new masks,
    so without replay such a term also measures the disagreement of two masks (which is R-Drop, a
    different regulariser).

    On the CPU `dropout` records every mask it draws from construction until the first replay, in
    order, and a replayed pass takes them back one per dropout call, drawing nothing; a call whose
    shape or p differs from the recorded one is an error, since its pass is not the recorded one.
    torch's own dropout (on CUDA) draws from that device's generator, whose state is captured here:
    a replayed pass starts from it, so a pass of the same shapes draws exactly the same masks.
    Afterwards the streams are put back where they were, so whatever is drawn next (SMART's or
    R3F's noise) does not depend on how many passes were replayed. Backward passes draw nothing,
    so gradients see the same masks as the forward that built them. A replay that is never used
    records until it is garbage: nothing else keeps it.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self.masks: list[tuple[float, torch.Tensor, float]] = []  # (p, drop mask, scale) per CPU dropout call
        _RECORDING.add(self)

    @contextmanager
    def replaying(self) -> Iterator[None]:
        _RECORDING.discard(self)
        cpu_now = torch.get_rng_state()
        cuda_now = torch.cuda.get_rng_state(self.device) if self.cuda_state is not None else None
        torch.set_rng_state(self.cpu_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        _REPLAYING.append(iter(enumerate(self.masks)))
        try:
            yield
        finally:
            _REPLAYING.pop()
            torch.set_rng_state(cpu_now)
            if cuda_now is not None:
                torch.cuda.set_rng_state(cuda_now, self.device)

    def wrap(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """fn with every call replaying the recorded masks."""

        def with_shared_masks(embeddings: torch.Tensor) -> torch.Tensor:
            with self.replaying():
                return fn(embeddings)

        return with_shared_masks


_RECORDING: weakref.WeakSet[DropoutReplay] = weakref.WeakSet()  # replays recording now
_REPLAYING: list[Iterator[tuple[int, tuple[float, torch.Tensor, float]]]] = []  # innermost replay last


def _next_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """The mask for this dropout call: the next recorded one in a replayed pass, else a new draw (recorded)."""
    if _REPLAYING:
        site, (recorded_p, drop, scale) = next(_REPLAYING[-1], (None, (None, None, None)))
        if drop is None or drop.shape != shape or recorded_p != p or drop.device != device:
            raise RuntimeError(
                f"dropout replay: call {site if site is not None else 'past the end'} of the replayed pass "
                f"wants a {tuple(shape)} mask at p={p} on {device}, but the recorded pass drew "
                f"{'no more masks' if drop is None else f'a {tuple(drop.shape)} one at p={recorded_p}'}; "
                "a replayed pass must run the same dropout calls as the pass it replays")
        return drop, scale
    drop, scale = drop_mask(shape, p, device)
    for replay in _RECORDING:
        replay.masks.append((p, drop, scale))
    return drop, scale


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
    drop, scale = _next_mask(x.shape, p, x.device)
    return _MaskedScale.apply(x, drop, scale)


class Dropout(nn.Dropout):
    """nn.Dropout with the cheaper CPU masks of `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
