"""Packing a padded batch down to its real tokens, so position-wise layers skip the padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packing:
    """Flat positions of the real tokens of a [B, T] batch.

    Dense layers, LayerNorm and GELU act on each token alone, so they can run on the [N, H]
    real tokens instead of all B·T positions; only attention needs the padded [B, T] layout
    back. With a quarter of positions padding, that removes a quarter of the model's FLOPs.
    """

    index: torch.Tensor  # [N] positions in the flattened B·T grid
    batch: int
    length: int

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> "Packing | None":
        """None when there is no padding to skip."""
        flat = attention_mask.reshape(-1)
        if bool(flat.all()):
            return None
        return cls(flat.nonzero().squeeze(1), attention_mask.shape[0], attention_mask.shape[1])

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] to [N, ...]."""
        return padded.reshape(self.batch * self.length, *padded.shape[2:]).index_select(0, self.index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[N, ...] to [B, T, ...], zeros at the pad positions."""
        flat = packed.new_zeros(self.batch * self.length, *packed.shape[1:]).index_copy(0, self.index, packed)
        return flat.view(self.batch, self.length, *packed.shape[1:])
