"""One transformer layer (attention, add & norm, GELU feed-forward, add & norm) and the pooler."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minbert.attention import BertSelfAttention
from minbert.config import BertConfig
from minbert.dropout import Dropout
from minbert.linear import Linear
from minbert.packing import Packing


def activation(name: str):
    """The feed-forward non-linearity named in config.json."""
    if name == "gelu":
        return F.gelu  # the exact erf form, as BERT's "gelu"
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}")


class AddNorm(nn.Module):
    """LayerNorm(residual + dropout(dense(x))): the sub-layer output of a post-norm transformer."""

    def __init__(self, in_size: int, config: BertConfig) -> None:
        super().__init__()
        self.dense = Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class BertLayer(nn.Module):
    """Self-attention then a position-wise feed-forward block, each wrapped in add & norm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_output = AddNorm(config.hidden_size, config)
        self.intermediate = Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.output = AddNorm(config.intermediate_size, config)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor,
                packing: Packing | None = None) -> torch.Tensor:
        attended = self.attention_output(self.attention(hidden, additive_mask, packing), hidden)
        return self.output(self.act(self.intermediate(attended)), attended)


class BertPooler(nn.Module):
    """tanh(dense(h[CLS])): the sentence vector BERT was pretrained to use."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))
