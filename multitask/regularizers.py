"""SMART and R3F wired into multitask training: settings from the CLI, loss terms per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from multitask.model import MultitaskBert
from multitask.tasks import TASKS
from smart import DropoutReplay, MeanTeacher, bregman_loss, divergence, r3f_loss, smoothness_loss

# The mean teacher (SMART's Bregman target and the weight average that is scored) keeps the
# paper's β schedule, capped so that its time constant is at most a quarter of the run. The cap
# binds in runs under 4,000 updates (the default full run has 3,700: β ≤ 0.99892 there), where
# β = 0.999 would leave the average lagging far behind the trained weights.
TEACHER_WINDOW_FRACTION = 0.25


def mean_teacher(model: MultitaskBert, beta: float | None) -> MeanTeacher:
    """The run's mean teacher: `beta` constant, or None for the paper's schedule under the cap."""
    return MeanTeacher(model, beta=beta, window_fraction=TEACHER_WINDOW_FRACTION)


DROPOUT_MODES = ("shared", "independent")


@dataclass
class RegularizerSettings:
    """Which regularisers run and their weights.

    SMART's radius and step are calibrated for δ added after the embedding LayerNorm (README,
    "SMART"); the paper's own values are ε = σ = 1e-5, η = 1e-3.
    """

    adversarial: bool = False
    bregman: bool = False
    r3f: bool = False
    rdrop: bool = False
    smart_lambda: float = 1.0
    smart_eps: float = 1e-1
    smart_sigma: float = 1e-2
    smart_step_size: float = 1e-1
    smart_steps: int = 1
    # "shared": the perturbed passes of SMART and R3F reuse the clean pass's dropout masks, so the
    # term measures what δ changes; "independent": each pass draws its own (the mt-dnn code).
    smart_dropout: str = "shared"
    bregman_mu: float = 1.0
    bregman_beta: float | None = None  # None: 0.99 for the first 10% of updates, then 0.999
    r3f_noise: str = "normal"
    r3f_eps: float = 0.5
    r3f_lambda: float = 1.0
    rdrop_alpha: float = 1.0
    # The tasks whose steps get each term; None: every task. A small task that overfits (SST)
    # can be regularised without paying the extra passes on the large ones.
    smart_tasks: tuple[str, ...] | None = None
    r3f_tasks: tuple[str, ...] | None = None
    rdrop_tasks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.smart_dropout not in DROPOUT_MODES:
            raise ValueError(f"smart_dropout must be one of {DROPOUT_MODES}, got {self.smart_dropout!r}")

    @property
    def any(self) -> bool:
        return ((self.adversarial and self.smart_lambda != 0) or (self.bregman and self.bregman_mu != 0)
                or (self.r3f and self.r3f_lambda != 0) or (self.rdrop and self.rdrop_alpha != 0))


def runs_on(task: str, tasks: tuple[str, ...] | None) -> bool:
    return tasks is None or task in tasks


class Regularizers:
    """Adds the enabled terms to each training step; every term uses its task's divergence ℓ_s.

    - adversarial (SMART R_s): λ_s·ℓ_s(f(x + δ), f(x)), δ by projected ascent;
    - r3f: λ·ℓ_s(f(x + δ), f(x)), δ random;
    - bregman: μ·ℓ_s(f(x; θ), f(x; θ̃)) against the mean teacher;
    - rdrop: α·ℓ_s(f₁(x), f₂(x)), two passes with independent dropout masks.

    With shared masks, f in the first two is one function: every perturbed pass replays the clean
    pass's dropout masks. A term whose weight is 0 is not computed at all, so it draws no random
    numbers and the run stays bit-identical to plain fine-tuning.
    """

    def __init__(self, model: MultitaskBert, settings: RegularizerSettings) -> None:
        self.settings = settings
        self.teacher = mean_teacher(model, settings.bregman_beta) if self.uses_teacher else None

    @property
    def uses_teacher(self) -> bool:
        return self.settings.bregman and self.settings.bregman_mu != 0

    def __call__(self, model: MultitaskBert, task: str, batch: dict[str, torch.Tensor], embeddings: torch.Tensor,
                 mask: torch.Tensor, output: torch.Tensor, masks: DropoutReplay) -> dict[str, torch.Tensor]:
        """The terms for one step; `masks` replays the dropout masks the clean `output` was computed with."""
        s, kind = self.settings, TASKS[task].kind
        terms = {}
        smart_here = runs_on(task, s.smart_tasks)

        def fn(perturbed: torch.Tensor) -> torch.Tensor:
            return model.predict_from_embeddings(task, perturbed, mask)

        perturbed_fn = masks.wrap(fn) if s.smart_dropout == "shared" else fn
        if smart_here and s.adversarial and s.smart_lambda != 0:
            terms["adversarial"] = s.smart_lambda * smoothness_loss(
                perturbed_fn, embeddings, output, kind, eps=s.smart_eps, sigma=s.smart_sigma,
                step_size=s.smart_step_size, steps=s.smart_steps, mask=mask)
        if runs_on(task, s.r3f_tasks) and s.r3f and s.r3f_lambda != 0:
            terms["r3f"] = s.r3f_lambda * r3f_loss(perturbed_fn, embeddings, output, kind, eps=s.r3f_eps,
                                                   noise=s.r3f_noise, mask=mask)
        if runs_on(task, s.rdrop_tasks) and s.rdrop and s.rdrop_alpha != 0:
            # A whole second forward, embeddings included, with masks of its own. The task loss
            # stays on the first pass only: the task term is then the very one plain fine-tuning
            # has, so an ablation row differs from the baseline by this term alone (the paper
            # puts the task loss on both passes).
            second = model(task, batch)
            terms["rdrop"] = s.rdrop_alpha * divergence(kind, second, output)
        if smart_here and self.teacher is not None:
            # The teacher is a fixed target: no dropout, no graph.
            self.teacher.model.eval()
            with torch.no_grad():
                teacher_output = self.teacher.model(task, batch)
            terms["bregman"] = s.bregman_mu * bregman_loss(output, teacher_output, kind)
        return terms
