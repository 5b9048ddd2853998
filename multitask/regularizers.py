"""SMART, R3F and R-Drop wired into multitask training: their settings (and flags), loss terms per step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from minbert.flags import flag, non_negative, positive, positive_int, probability
from multitask.model import MultitaskBert
from multitask.tasks import TASKS, parse_task_names
from smart import DropoutReplay, WeightAverage, bregman_loss, divergence, r3f_loss, smoothness_loss

# The weight average (what is scored, and SMART's Bregman target: the paper's mean teacher) keeps the
# paper's β schedule, capped so that its time constant is at most a quarter of the run. The cap
# binds in runs under 4,000 updates, where β = 0.999 would leave the average lagging far behind
# the trained weights.
TEACHER_WINDOW_FRACTION = 0.25


def new_weight_average(model: MultitaskBert, beta: float | None) -> WeightAverage:
    """The run's weight average: `beta` constant, or None for the paper's schedule under the cap."""
    return WeightAverage(model, beta=beta, window_fraction=TEACHER_WINDOW_FRACTION)


DROPOUT_MODES = ("shared", "independent")


@dataclass
class RegularizerSettings:
    """Which regularisers run, their weights and radii; each default here is the command line's.

    SMART's radius and step are calibrated for δ added after the embedding LayerNorm (the ε sweep,
    results/smart_sweep.md); the paper's own values are ε = σ = 1e-5, η = 1e-3.
    """

    smart: bool = flag(False, "SMART: the adversarial smoothness term and the Bregman proximal point (a pull towards the weight average)")
    no_adversarial: bool = flag(False, "with --smart: drop the adversarial term")
    no_bregman: bool = flag(False, "with --smart: drop the Bregman term")
    smart_lambda: float = flag(1.0, "weight λ_s of the adversarial term", type=non_negative)
    smart_eps: float = flag(1e-2, "ℓ∞ radius ε of δ, added after the embedding LayerNorm (entries of order 1); "
                                  "the paper's setting is 1e-5", type=positive)
    smart_sigma: float = flag(1e-3, "std σ of δ's starting noise (the paper's setting: 1e-5)", type=non_negative)
    smart_step_size: float = flag(1e-2, "ascent step η (the paper's setting: 1e-3)", type=positive)
    smart_steps: int = flag(1, "ascent steps T", type=positive_int)
    smart_dropout: str = flag(
        "shared", "dropout masks of the perturbed passes of --smart and --r3f: shared with the clean pass (the "
                  "function the paper's formula compares at x and x+δ), or independent (fresh masks per pass, as "
                  "the mt-dnn code)", choices=DROPOUT_MODES)
    bregman_mu: float = flag(1.0, "weight μ of the Bregman term", type=non_negative)
    bregman_beta: float | None = flag(
        None, "constant momentum β of the weight average, the Bregman term's teacher (default: 0.99 for the "
              "first 10%% of updates, then 0.999, capped at 1 - 4/updates in runs under 4,000 updates)",
        type=probability)
    smart_tasks: tuple[str, ...] | None = flag(
        None, "comma-separated tasks whose steps get the --smart terms (default: every task)", convert=parse_task_names)
    r3f: bool = flag(False, "R3F: the smoothness term at random δ, no ascent step (not with SMART's adversarial term)")
    r3f_tasks: tuple[str, ...] | None = flag(
        None, "comma-separated tasks whose steps get the --r3f term (default: every task)", convert=parse_task_names)
    r3f_noise: str = flag("normal", "distribution of R3F's δ", choices=("normal", "uniform"))
    r3f_eps: float = flag(0.5, "noise scale: std (normal) or half-width (uniform), same place as --smart_eps",
                          type=positive)
    r3f_lambda: float = flag(1.0, "weight of the R3F term", type=non_negative)
    rdrop: bool = flag(False, "R-Drop: the divergence between two forward passes with independent dropout masks")
    rdrop_alpha: float = flag(1.0, "weight α of the R-Drop term", type=non_negative)
    rdrop_tasks: tuple[str, ...] | None = flag(
        None, "comma-separated tasks whose steps get the --rdrop term (default: every task)", convert=parse_task_names)

    def __post_init__(self) -> None:
        if self.smart_dropout not in DROPOUT_MODES:
            raise ValueError(f"smart_dropout must be one of {DROPOUT_MODES}, got {self.smart_dropout!r}")

    @property
    def adversarial(self) -> bool:
        return self.smart and not self.no_adversarial

    @property
    def bregman(self) -> bool:
        return self.smart and not self.no_bregman

    @property
    def needs_average(self) -> bool:
        """Whether the Bregman term runs, and so needs the run's weight average."""
        return self.bregman and self.bregman_mu != 0

    @property
    def any(self) -> bool:
        return ((self.adversarial and self.smart_lambda != 0) or (self.bregman and self.bregman_mu != 0)
                or (self.r3f and self.r3f_lambda != 0) or (self.rdrop and self.rdrop_alpha != 0))


def runs_on(task: str, tasks: tuple[str, ...] | None) -> bool:
    return tasks is None or task in tasks


class Regularizers:
    """The regulariser terms a training step can add; each uses its task's divergence ℓ_s.

    - adversarial (SMART R_s): λ_s·ℓ_s(f(x + δ), f(x)), δ by projected ascent;
    - r3f: λ·ℓ_s(f(x + δ), f(x)), δ random;
    - rdrop: α·ℓ_s(f₁(x), f₂(x)), two passes with independent dropout masks;
    - bregman: μ·ℓ_s(f(x; θ), f(x; θ̃)) against the run's weight average θ̃.

    With shared masks, f in the first two is one function: every perturbed pass replays the clean
    pass's dropout masks. A term whose weight is 0 does not run at all, so it draws no random
    numbers and the run stays bit-identical to plain fine-tuning. The step that adds them is
    `multitask.train.StepLoss.forward`.
    """

    def __init__(self, settings: RegularizerSettings, average: WeightAverage | None = None) -> None:
        """`average`: the run's weight average, which the Bregman term pulls towards (needed only with it)."""
        self.settings = settings
        if settings.needs_average and average is None:
            raise ValueError("the Bregman term needs the run's weight average")
        self.average = average if settings.needs_average else None

    def runs(self, term: str, task: str) -> bool:
        """Whether `term` is switched on with a nonzero weight, for this task's steps."""
        s = self.settings
        switched, weight, tasks = {
            "adversarial": (s.adversarial, s.smart_lambda, s.smart_tasks),
            "r3f": (s.r3f, s.r3f_lambda, s.r3f_tasks),
            "rdrop": (s.rdrop, s.rdrop_alpha, s.rdrop_tasks),
            "bregman": (self.average is not None, s.bregman_mu, s.smart_tasks),
        }[term]
        return switched and weight != 0 and runs_on(task, tasks)

    def perturbed_function(self, model: MultitaskBert, task: str, mask: torch.Tensor,
                           masks: DropoutReplay) -> Callable[[torch.Tensor], torch.Tensor]:
        """x ↦ f(x): the task output from input embeddings, under the clean pass's dropout masks when shared."""
        def f(embeddings: torch.Tensor) -> torch.Tensor:
            return model.predict_from_embeddings(task, embeddings, mask)

        return masks.wrap(f) if self.settings.smart_dropout == "shared" else f

    def adversarial(self, f: Callable, embeddings: torch.Tensor, output: torch.Tensor, task: str,
                    mask: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return s.smart_lambda * smoothness_loss(f, embeddings, output, TASKS[task].kind, eps=s.smart_eps,
                                                sigma=s.smart_sigma, step_size=s.smart_step_size,
                                                steps=s.smart_steps, mask=mask)

    def r3f(self, f: Callable, embeddings: torch.Tensor, output: torch.Tensor, task: str,
            mask: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return s.r3f_lambda * r3f_loss(f, embeddings, output, TASKS[task].kind, eps=s.r3f_eps, noise=s.r3f_noise,
                                       mask=mask)

    def rdrop(self, model: MultitaskBert, task: str, batch: dict[str, torch.Tensor],
              output: torch.Tensor) -> torch.Tensor:
        # A whole second forward, embeddings included, with masks of its own. The task loss stays
        # on the first pass only: the task term is then the very one plain fine-tuning has, so an
        # ablation row differs from the baseline by this term alone (the paper puts the task loss
        # on both passes).
        second = model(task, batch)
        return self.settings.rdrop_alpha * divergence(TASKS[task].kind, second, output)

    def bregman(self, task: str, batch: dict[str, torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        # The average is a fixed target (SMART's teacher): no dropout, no graph.
        self.average.model.eval()
        with torch.no_grad():
            teacher_output = self.average.model(task, batch)
        return self.settings.bregman_mu * bregman_loss(output, teacher_output, TASKS[task].kind)
