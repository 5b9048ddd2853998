"""Multi-head self-attention with a fused query/key/value projection and two kernels.

`eager` is the textbook computation, softmax(QKᵀ/√d + mask)·V, kept for readers and as the
reference; `sdpa` calls torch's fused scaled_dot_product_attention and is the default, except
for training on the CPU, where it takes the textbook path too (see the note in `forward`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minbert.config import BertConfig
from minbert.dropout import dropout as masked_dropout
from minbert.linear import Linear
from minbert.packing import Packing


class BertSelfAttention(nn.Module):
    """Self-attention over a padded batch; `additive_mask` is 0 on real keys, very negative on pads."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        # One [3H, H] matmul instead of three [H, H] ones; the rows are query, key, value in order.
        self.qkv = Linear(config.hidden_size, 3 * config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.implementation = config.attn_implementation

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor,
                packing: Packing | None = None) -> torch.Tensor:
        """hidden is [B, T, H], or the packed [N, H] real tokens when `packing` is given."""
        qkv = self.qkv(hidden)
        if packing is not None:
            qkv = packing.to_grid(qkv)  # attention mixes positions: back to a padded grid
        batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        # [B, T, 3, heads, d] -> three tensors of [B, heads, T, d]
        q, k, v = qkv.view(batch, length, 3, self.num_heads, self.head_size).permute(2, 0, 3, 1, 4)
        dropout = self.dropout_prob if self.training else 0.0
        # On the CPU, torch's fused kernel has no dropout: with dropout it falls back to a generic
        # path that upcasts bf16 softmax to fp32, slower and larger than the explicit computation
        # (measured in results/README.md).
        if self.implementation == "eager" or (dropout > 0 and q.device.type == "cpu"):
            context = eager_attention(q, k, v, additive_mask, dropout)
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, length, width)
        return context if packing is None else packing.from_grid(context)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive_mask: torch.Tensor,
                    dropout: float) -> torch.Tensor:
    """softmax(QKᵀ/√d + mask)·V with dropout on the attention probabilities."""
    # Scaling q ([B, h, T, d]) rather than the scores ([B, h, T, T]) is the same product, cheaper.
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)
    # In the scores' dtype: an fp32 mask would promote bf16 scores (under autocast) to fp32.
    scores = scores + additive_mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1)
    probs = masked_dropout(probs, dropout, training=dropout > 0)
    return probs @ v


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] mask of 1 (real) / 0 (pad) to a [B, 1, 1, T] bias added to attention scores."""
    # The dtype's most negative finite value, not -inf: a row of all pads then stays finite.
    blocked = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return blocked
