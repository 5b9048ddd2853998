"""Shared dropout masks: replay the random stream of a clean forward pass so later passes draw the same masks.

SMART's ℓ_s(f(x + δ), f(x)) compares two evaluations of one function f. In training mode every
forward pass draws new dropout masks, so without sharing, the term measures the disagreement of
two masks (which is R-Drop, a different regulariser) and δ hardly matters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class DropoutReplay:
    """The state of the generator dropout draws from on `device`, taken just before a clean pass.

    Dropout on the CPU draws from torch's CPU generator, on CUDA from that device's generator;
    both are captured where they apply. A pass run under `replaying()` starts from the captured
    state, so a pass of the same shapes draws exactly the clean pass's masks, and afterwards the
    stream is put back where it was, so whatever is drawn next (SMART's or R3F's noise) does not
    depend on how many passes were replayed. Backward passes draw nothing, so gradients see the
    same masks as the forward that built them.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    @contextmanager
    def replaying(self) -> Iterator[None]:
        cpu_now = torch.get_rng_state()
        cuda_now = torch.cuda.get_rng_state(self.device) if self.cuda_state is not None else None
        torch.set_rng_state(self.cpu_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        try:
            yield
        finally:
            torch.set_rng_state(cpu_now)
            if cuda_now is not None:
                torch.cuda.set_rng_state(cuda_now, self.device)

    def wrap(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """fn with every call replaying the captured masks."""

        def with_shared_masks(embeddings: torch.Tensor) -> torch.Tensor:
            with self.replaying():
                return fn(embeddings)

        return with_shared_masks
