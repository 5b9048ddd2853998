"""SMART and R3F wired into multitask training: settings from the CLI, loss terms per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from multitask.model import HEADS, MultitaskBert
from smart import MeanTeacher, bregman_loss, r3f_loss, smoothness_loss

# The mean teacher (SMART's Bregman target and the weight average that is scored) keeps the
# paper's β schedule, capped so that its time constant is at most a quarter of the run. The cap
# binds in runs under 4,000 updates (the default full run has 3,700: β ≤ 0.99892 there), where
# β = 0.999 would leave the average lagging far behind the trained weights.
TEACHER_WINDOW_FRACTION = 0.25


def mean_teacher(model: MultitaskBert, beta: float | None) -> MeanTeacher:
    """The run's mean teacher: `beta` constant, or None for the paper's schedule under the cap."""
    return MeanTeacher(model, beta=beta, window_fraction=TEACHER_WINDOW_FRACTION)


@dataclass
class RegularizerSettings:
    """Which regularisers run and their weights; defaults are the SMART paper's."""

    adversarial: bool = False
    bregman: bool = False
    r3f: bool = False
    smart_lambda: float = 1.0
    smart_eps: float = 1e-5
    smart_sigma: float = 1e-5
    smart_step_size: float = 1e-3
    smart_steps: int = 1
    bregman_mu: float = 1.0
    bregman_beta: float | None = None  # None: 0.99 for the first 10% of updates, then 0.999
    r3f_noise: str = "normal"
    r3f_eps: float = 1e-5
    r3f_lambda: float = 1.0
    # The tasks whose steps get the SMART terms and the R3F term; None: every task. A small task
    # that overfits (SST) can be smoothed without paying the extra passes on the large ones.
    smart_tasks: tuple[str, ...] | None = None
    r3f_tasks: tuple[str, ...] | None = None

    @property
    def any(self) -> bool:
        return ((self.adversarial and self.smart_lambda != 0) or (self.bregman and self.bregman_mu != 0)
                or (self.r3f and self.r3f_lambda != 0))


class Regularizers:
    """Adds the enabled terms to each training step; every term uses its task's divergence.

    A term whose weight is 0 is not computed at all, so it draws no random numbers and the run
    stays bit-identical to plain fine-tuning.
    """

    def __init__(self, model: MultitaskBert, settings: RegularizerSettings) -> None:
        self.settings = settings
        self.teacher = mean_teacher(model, settings.bregman_beta) if self.uses_teacher else None

    @property
    def uses_teacher(self) -> bool:
        return self.settings.bregman and self.settings.bregman_mu != 0

    def __call__(self, model: MultitaskBert, task: str, batch: dict[str, torch.Tensor], embeddings: torch.Tensor,
                 mask: torch.Tensor, output: torch.Tensor) -> dict[str, torch.Tensor]:
        s, kind = self.settings, HEADS[task].kind
        terms = {}
        smart_here = s.smart_tasks is None or task in s.smart_tasks
        r3f_here = s.r3f_tasks is None or task in s.r3f_tasks

        def fn(perturbed: torch.Tensor) -> torch.Tensor:
            return model.predict_from_embeddings(task, perturbed, mask)

        if smart_here and s.adversarial and s.smart_lambda != 0:
            terms["adversarial"] = s.smart_lambda * smoothness_loss(
                fn, embeddings, output, kind, eps=s.smart_eps, sigma=s.smart_sigma, step_size=s.smart_step_size,
                steps=s.smart_steps, mask=mask)
        if r3f_here and s.r3f and s.r3f_lambda != 0:
            terms["r3f"] = s.r3f_lambda * r3f_loss(fn, embeddings, output, kind, eps=s.r3f_eps, noise=s.r3f_noise,
                                                   mask=mask)
        if smart_here and self.teacher is not None:
            # The teacher is a fixed target: no dropout, no graph.
            self.teacher.model.eval()
            with torch.no_grad():
                teacher_output = self.teacher.model(task, batch)
            terms["bregman"] = s.bregman_mu * bregman_loss(output, teacher_output, kind)
        return terms
