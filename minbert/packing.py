"""Packing a padded batch down to its real tokens, so position-wise layers skip the padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Packed row counts are rounded up to a multiple of this many rows. Training batches have ever-
# changing token counts, and tensors of ever-changing sizes fragment the C heap: without rounding
# a run's RSS was measured to ratchet up by gigabytes. With a few dozen distinct sizes freed
# blocks are reused. The rounding rows are taken from pad positions and computed but never read.
ROW_GRANULE = 64


@dataclass(frozen=True)
class Packing:
    """Flat positions of the real tokens of a [B, T] batch (then some pad positions, see ROW_GRANULE).

    Dense layers, LayerNorm and GELU act on each token alone, so they can run on the [N, H]
    real tokens instead of all B·T positions; only attention needs the padded [B, T] layout
    back. With a quarter of positions padding, that removes a quarter of the model's FLOPs.
    """

    index: torch.Tensor  # [N'] positions in the flattened B·T grid: the N real ones first
    pads: torch.Tensor  # every pad position, those in `index` first
    real: int  # N
    batch: int
    length: int

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor, granule: int = ROW_GRANULE) -> "Packing | None":
        """None when there is no padding to skip."""
        flat = attention_mask.reshape(-1)
        if bool(flat.all()):
            return None
        real = flat.nonzero().squeeze(1)
        pads = (flat == 0).nonzero().squeeze(1)
        rows = min(flat.numel(), -(-real.numel() // granule) * granule)
        index = torch.cat([real, pads[: rows - real.numel()]])
        return cls(index, pads, real.numel(), attention_mask.shape[0], attention_mask.shape[1])

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] to [N', ...]."""
        return padded.reshape(self.batch * self.length, *padded.shape[2:]).index_select(0, self.index)

    def unpack(self, packed: torch.Tensor, real_only: bool = False) -> torch.Tensor:
        """[N', ...] to [B, T, ...], zeros at the pad positions (with `real_only`, at every one of them)."""
        index = self.index[: self.real] if real_only else self.index
        packed = packed[: self.real] if real_only else packed
        # Zeros only where no row is written: filling the whole grid first costs a full pass over it.
        unset = self.pads if real_only else self.pads[self.index.numel() - self.real:]
        # In place on a fresh tensor: the out-of-place forms would copy the whole grid once more.
        flat = packed.new_empty(self.batch * self.length, *packed.shape[1:])
        flat.index_copy_(0, index, packed).index_fill_(0, unset, 0)
        return flat.view(self.batch, self.length, *packed.shape[1:])
