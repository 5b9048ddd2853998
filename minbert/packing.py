"""Packing a padded batch down to its real tokens, so position-wise layers skip the padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Training batches have ever-changing token counts and widths, and tensors of ever-changing sizes
# fragment the C heap: without rounding, a run's RSS ratchets up epoch after epoch (results/README.md).
# With packed row counts rounded up to a multiple of ROW_GRANULE and the attention grid's width
# to a multiple of GRID_MULTIPLE there are a few dozen distinct sizes, and freed blocks are
# reused. The rounding rows are taken from pad positions and the extra grid columns are masked
# keys: both are computed and never read.
ROW_GRANULE = 64
GRID_MULTIPLE = 8


@dataclass(frozen=True)
class Packing:
    """Flat positions of the real tokens of a [B, T] batch, and where they sit in the attention grid.

    Dense layers, LayerNorm and GELU act on each token alone, so they can run on the [N, H]
    real tokens instead of all B·T positions; only attention needs a padded layout back, the
    [B, T'] grid (T' ≥ T). With a quarter of positions padding, that removes a quarter of the
    model's FLOPs.
    """

    index: torch.Tensor  # [N'] rows' positions in the flattened input grid [B·T]: the N real ones first
    pads: torch.Tensor  # the input grid's pad positions, those among the rows first
    grid_index: torch.Tensor  # [N'] the same rows' positions in the flattened attention grid [B·T']
    grid_unset: torch.Tensor  # attention-grid positions no row lands on
    real: int  # N
    batch: int
    length: int  # T
    grid_length: int  # T'

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor, granule: int = ROW_GRANULE,
                  grid_multiple: int = GRID_MULTIPLE) -> "Packing | None":
        """None when there is no padding to skip."""
        flat = attention_mask.reshape(-1)
        if bool(flat.all()):
            return None
        batch, length = attention_mask.shape
        real = flat.nonzero().squeeze(1)
        pads = (flat == 0).nonzero().squeeze(1)
        rows = min(flat.numel(), -(-real.numel() // granule) * granule)
        index = torch.cat([real, pads[: rows - real.numel()]])
        grid_length = -(-length // grid_multiple) * grid_multiple
        grid_index = index // length * grid_length + index % length
        written = torch.zeros(batch * grid_length, dtype=torch.bool, device=flat.device)
        written[grid_index] = True
        return cls(index, pads, grid_index, (~written).nonzero().squeeze(1), real.numel(), batch, length,
                   grid_length)

    def grid_mask(self) -> torch.Tensor:
        """[B, T'] attention mask of the grid: 1 at real tokens, 0 at pads and the extra columns."""
        mask = torch.zeros(self.batch * self.grid_length, dtype=torch.long, device=self.index.device)
        mask[self.grid_index[: self.real]] = 1
        return mask.view(self.batch, self.grid_length)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """Input grid [B, T, ...] to rows [N', ...]."""
        return padded.reshape(self.batch * self.length, *padded.shape[2:]).index_select(0, self.index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Rows [N', ...] to the input grid [B, T, ...]: the real tokens, zeros everywhere else."""
        return _scatter(packed[: self.real], self.index[: self.real], self.pads, self.batch, self.length)

    def to_grid(self, packed: torch.Tensor) -> torch.Tensor:
        """Rows [N', ...] to the attention grid [B, T', ...], zeros where no row lands."""
        return _scatter(packed, self.grid_index, self.grid_unset, self.batch, self.grid_length)

    def from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """Attention grid [B, T', ...] back to rows [N', ...]."""
        return grid.reshape(self.batch * self.grid_length, *grid.shape[2:]).index_select(0, self.grid_index)


def _scatter(rows: torch.Tensor, index: torch.Tensor, unset: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    # In place on a fresh tensor, zero-filling only the positions no row lands on: a zero-filled
    # grid with an out-of-place index_copy would pass over the whole grid twice more.
    flat = rows.new_empty(batch * length, *rows.shape[1:])
    flat.index_copy_(0, index, rows).index_fill_(0, unset, 0)
    return flat.view(batch, length, *rows.shape[1:])
