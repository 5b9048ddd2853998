"""AdamW (Loshchilov & Hutter) with the course's signature, written from scratch.

Weight decay is decoupled from the gradient and scaled by the learning rate. The bias
correction is the "efficient" form of Kingma & Ba §2: fold both corrections into the step size,
α_t = α·√(1−β₂ᵗ)/(1−β₁ᵗ), and divide the raw first moment by √v + ε. The update runs on whole
lists of tensors at once (torch._foreach_*), because per-tensor Python loops cost more than the
arithmetic for BERT's ~200 parameter tensors.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer


class AdamW(Optimizer):
    """Adam with decoupled weight decay; `correct_bias=False` skips the bias correction (as BERT's original)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}: must be >= 0")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, defaults)
        # √v + ε of each parameter, rewritten in place every step. Not optimiser state (nothing in it
        # survives a step): kept only so that the step does not allocate, and fault in, fresh memory
        # the size of the model each time, which costs more than the square roots themselves.
        self._denominators: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group)
        return loss

    def _denominator(self, param: torch.Tensor) -> torch.Tensor:
        buffer = self._denominators.get(param)
        if buffer is None or buffer.shape != param.shape or buffer.device != param.device:
            buffer = self._denominators[param] = torch.empty_like(param, memory_format=torch.preserve_format)
        return buffer

    def _update_group(self, group: dict) -> None:
        params, grads, first, second, step_sizes = [], [], [], [], []
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step_size = group["lr"]
            if group["correct_bias"]:
                t = state["step"]
                step_size *= math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
            params.append(p)
            grads.append(p.grad)
            first.append(state["exp_avg"])
            second.append(state["exp_avg_sq"])
            step_sizes.append(-step_size)
        if not params:
            return
        if group["weight_decay"]:
            # Decoupled decay: shrink the weights directly, before and apart from the Adam step.
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
        torch._foreach_lerp_(first, grads, 1.0 - beta1)          # m ← β₁m + (1−β₁)g
        torch._foreach_mul_(second, beta2)
        torch._foreach_addcmul_(second, grads, grads, 1.0 - beta2)  # v ← β₂v + (1−β₂)g²
        denominators = [self._denominator(p) for p in params]
        for v, d in zip(second, denominators):
            # √(v + the dtype's smallest normal number), not √v: on some CPUs (an AMD EPYC measured
            # in results/README.md) sqrt takes a slow path on zeros and subnormals, and v is exactly
            # 0 in every word-embedding row no token has reached yet, most of the table. The shift
            # moves √v by at most 1.1e-19 in fp32, far below the ulp of √v + ε for any ε ≥ 1e-12.
            torch.add(v, torch.finfo(v.dtype).tiny, out=d)
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_addcdiv_(params, first, denominators, step_sizes)


def warmup_linear_decay(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly over `warmup_steps`, then falling linearly to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def is_decayed(name: str, param: torch.Tensor) -> bool:
    """BERT's weight-decay rule: matrices are decayed, biases and LayerNorm weights are not."""
    return not (param.ndim < 2 or "LayerNorm" in name)
