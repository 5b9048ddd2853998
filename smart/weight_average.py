"""The weight average θ̃ of the student θ (SMART's mean teacher) and the Bregman proximal loss towards it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from smart.divergences import divergence

# Paper schedule: a faster-moving teacher while the student changes most, then a slow one.
EARLY_BETA = 0.99
LATE_BETA = 0.999


class WeightAverage:
    """θ̃ ← (1 − β)·θ + β·θ̃ after every optimiser step, where θ is the student and θ̃ the teacher.

    `.model` is a deep copy of the student taken at construction, with requires_grad False on all
    of its parameters: the teacher moves only through `update`, never through gradients. Its
    train/eval mode is copied from the student and left to the caller. Buffers (e.g. running
    statistics) are copied from the student rather than averaged, and parameters the student does
    not train are left as copied. The student must stay on the device and keep the parameter
    names it had when the teacher was built.

    `beta=None` follows the paper's schedule (0.99, then 0.999 after 10% of the updates); a number
    is used for every update. `window_fraction` (only with the schedule) caps β so that the
    average's time constant 1/(1 − β) is at most that fraction of the run: in a run of a few
    hundred updates a β of 0.999 would still hold mostly the starting weights at the end.
    """

    def __init__(self, model: nn.Module, beta: float | None = None, window_fraction: float | None = None) -> None:
        numeric = isinstance(beta, (int, float)) and not isinstance(beta, bool)
        if beta is not None and not (numeric and 0.0 <= beta <= 1.0):
            raise ValueError(f"beta must be None (paper schedule) or a number in [0, 1], got {beta!r}")
        if window_fraction is not None and not 0.0 < window_fraction <= 1.0:
            raise ValueError(f"window_fraction must be None or in (0, 1], got {window_fraction!r}")
        self.student = model
        self.beta = None if beta is None else float(beta)
        self.window_fraction = window_fraction
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None

    def beta_at(self, step: int, total_steps: int) -> float:
        """β for the update after optimiser step `step` (counted from 0) of `total_steps`."""
        if self.beta is not None:
            return self.beta
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps!r}")
        if step < 0:
            raise ValueError(f"step must be ≥ 0, got {step!r}")
        # step < 0.1·total in integers, so no float rounding decides which side a step falls on.
        beta = EARLY_BETA if 10 * step < total_steps else LATE_BETA
        if self.window_fraction is not None:
            beta = min(beta, max(0.0, 1.0 - 1.0 / (self.window_fraction * total_steps)))
        return beta

    @torch.no_grad()
    def update(self, step: int, total_steps: int) -> float:
        """Move the teacher towards the student; call after each optimiser step. Returns the β used."""
        beta = self.beta_at(step, total_steps)
        teacher_params = dict(self.model.named_parameters())
        student_params = dict(self.student.named_parameters())
        if teacher_params.keys() != student_params.keys():
            missing = sorted(teacher_params.keys() ^ student_params.keys())
            raise ValueError(
                f"student and teacher parameters no longer match (differ in: {missing[:5]}); "
                "build the WeightAverage after the student's final structure is set"
            )
        # A frozen parameter (the encoder under --option pretrain) equals its copy for good, so
        # averaging it would only spend time.
        names = [n for n in teacher_params if student_params[n].requires_grad]
        # lerp_(θ̃, θ, 1 − β) = θ̃ + (1 − β)(θ − θ̃) = (1 − β)θ + βθ̃.
        torch._foreach_lerp_(
            [teacher_params[n] for n in names],
            [student_params[n].detach() for n in names],
            1.0 - beta,
        )
        student_buffers = dict(self.student.named_buffers())
        for name, buf in self.model.named_buffers():
            buf.copy_(student_buffers[name])
        return beta

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights, for checkpointing next to the student's."""
        return self.model.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        """Restore teacher weights saved by state_dict (in place, so requires_grad stays False)."""
        return self.model.load_state_dict(state_dict, strict=strict)


def bregman_loss(student_output: torch.Tensor, teacher_output: torch.Tensor, kind: str) -> torch.Tensor:
    """D_Breg = ℓ_s(f(x; θ), f(x; θ̃)); only the student output carries gradients.

    The caller runs the teacher forward under torch.no_grad(); the detach here makes the loss safe
    even if it did not.
    """
    return divergence(kind, student_output, teacher_output.detach())
