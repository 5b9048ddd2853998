"""The word-embedding lookup, with a weight gradient written into one buffer reused from step to step.

torch's embedding backward allocates a fresh zero gradient the size of the whole table every step
(30522 × 384 fp32 = 47 MB for MiniLM). On the CPU an allocation that large comes straight from the
OS, so zeroing it faults in every page again: one of the largest single costs of a bf16 training
step outside the matmuls (results/README.md, "Step profile"), though a step's tokens touch a few
hundred rows.

Here the backward zeroes a buffer kept for the table and adds the rows into it, and the gradient
it returns shares that buffer's memory; autograd then adopts it as `weight.grad` without a copy.
The buffer is reused only while nothing else holds it: if `weight.grad` from an earlier backward
is still alive (gradient accumulation), or the table is looked up twice in one graph (R-Drop's
second pass, tied MLM weights), that backward gets a freshly allocated gradient instead, as
torch's would. The sums are the ones torch forms (row by row, positions in order), so the
gradient is bit-identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.weak import WeakIdKeyDictionary

# One buffer per table, kept outside the module so that copies of the model (the weight average)
# and checkpoints never carry it; it goes when the table's weight does.
_BUFFERS = WeakIdKeyDictionary()  # weight -> (buffer, its reference count when nothing else holds it)


# A private torch function (torch is pinned in requirements.txt); without it, torch's own lookup.
_CAN_COUNT = hasattr(torch._C, "_storage_Use_Count")


def _references(tensor: torch.Tensor) -> int:
    """How many tensors share `tensor`'s memory (plus one for the query itself)."""
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


def _gradient_buffer(weight: torch.Tensor) -> torch.Tensor:
    """A zeroed tensor shaped like `weight`: the table's own buffer if free, else a fresh one."""
    entry = _BUFFERS.get(weight)
    if entry is None or entry[0].shape != weight.shape or entry[0].dtype != weight.dtype:
        buffer = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        _BUFFERS[weight] = (buffer, _references(buffer))
        return buffer
    buffer, unshared = entry
    if _references(buffer) != unshared:
        return torch.zeros_like(weight, memory_format=torch.contiguous_format)
    return buffer.zero_()


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.weight = weight
        ctx.padding_idx = padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        gradient = _gradient_buffer(ctx.weight)
        gradient.index_add_(0, ids.reshape(-1), grad.reshape(-1, grad.shape[-1]).to(gradient.dtype))
        if ctx.padding_idx is not None:
            # As in torch: the padding row never receives a gradient.
            gradient[ctx.padding_idx] = 0
        # A new tensor over the buffer's memory, referenced only by autograd, so that it becomes
        # weight.grad as is.
        return None, gradient.detach(), None


class Embedding(nn.Embedding):
    """nn.Embedding whose weight gradient on the CPU reuses one buffer (see the module docstring)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        plain = (not _CAN_COUNT or self.max_norm is not None or self.scale_grad_by_freq or self.sparse
                 or self.weight.device.type != "cpu" or not (torch.is_grad_enabled() and self.weight.requires_grad))
        if plain:
            return super().forward(ids)
        return _Lookup.apply(ids, self.weight, self.padding_idx)
