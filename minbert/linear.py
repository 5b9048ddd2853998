"""A linear layer that keeps its low-precision weight copy between calls when nothing can change it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """nn.Linear, except under autocast with autograd off (evaluation, prediction).

    Autocast casts the fp32 weights to bf16 again at every call that enters a new autocast
    region, and an evaluation of many batches enters one per batch, each paying the cast of all
    the encoder's weights again. Here the cast copy is kept and reused while the
    weights are the same tensors at the same version (any in-place update, such as an optimiser
    step or loading a state dict, bumps the version and forces a new cast). With autograd on,
    autocast's own per-step cache does this job, so training takes the ordinary path.
    """

    _cast: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if torch.is_grad_enabled() or not torch.is_autocast_enabled(device_type):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device_type)
        key = (dtype, self.weight.data_ptr(), self.weight._version,
               None if self.bias is None else (self.bias.data_ptr(), self.bias._version))
        if self._cast is None or self._cast[0] != key:
            bias = None if self.bias is None else self.bias.to(dtype)
            self._cast = (key, self.weight.to(dtype), bias)
        _, weight, bias = self._cast
        with torch.autocast(device_type, enabled=False):
            return F.linear(x.to(dtype), weight, bias)
