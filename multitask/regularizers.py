"""SMART, R3F and R-Drop wired into multitask training: their settings (and flags), loss terms per step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from minbert.dropout import DropoutReplay
from minbert.plumbing.flags import FlagError, flag, non_negative, positive, positive_int, probability
from multitask.model import MultitaskBert
from multitask.tasks import Task, parse_task_names
from smart import WeightAverage, bregman_loss, divergence, r3f_loss, smoothness_loss
from smart.adversarial import adversarial_perturbation
from smart.noise import keep_mask

if TYPE_CHECKING:  # a type only: multitask.settings imports this module
    from multitask.settings import RunSettings

# The weight average (what is scored, and SMART's Bregman target: the paper's mean teacher) keeps the
# paper's β schedule, capped so that its time constant is at most a quarter of the run. The cap
# binds in runs under 4,000 updates, where β = 0.999 would leave the average lagging far behind
# the trained weights.
TEACHER_WINDOW_FRACTION = 0.25


def new_weight_average(model: MultitaskBert, beta: float | None) -> WeightAverage:
    """The run's weight average: `beta` constant, or None for the paper's schedule under the cap."""
    return WeightAverage(model, beta=beta, window_fraction=TEACHER_WINDOW_FRACTION)


@dataclass(frozen=True)
class Term:
    """One regulariser term as the flags see it: the switch that turns it on, its weight, its tasks."""

    name: str  # the loss term's name in logs and metrics
    switch: str  # the RegularizerSettings property that is True when the term is switched on
    flag: str  # the command-line switch behind it
    weight: str  # the field holding its weight (0: the term does not run)
    tasks: str  # the field naming the tasks whose steps get it (None: every task)
    replays_masks: bool  # its perturbed pass replays the clean pass's masks under --smart_dropout shared


# The one table of the regularisers: the flag rules, the banner, the start-up mask check and the
# step's terms all read it. (The Bregman teacher replays the student's masks whatever the flag.)
TERMS = (Term("adversarial", "adversarial", "smart", "smart_lambda", "smart_tasks", True),
         Term("bregman", "bregman", "smart", "bregman_mu", "smart_tasks", False),
         Term("r3f", "r3f", "r3f", "r3f_lambda", "r3f_tasks", True),
         Term("rdrop", "rdrop", "rdrop", "rdrop_alpha", "rdrop_tasks", False))
TERM = {term.name: term for term in TERMS}
DROPOUT_MODES = ("shared", "independent")
RDROP_FORMS = ("paper", "first_pass")
# The paper's step-to-radius ratio η/ε = 1e-3/1e-5: one ℓ∞-normalised step takes nearly every
# coordinate of δ to the surface of the ball, δ ≈ ε·sign(g).
STEP_PER_EPS = 100.0


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
    smart_eps: float = flag(0.01, "ℓ∞ radius ε of δ, added after the embedding LayerNorm (entries of order 1); "
                                  "the paper's setting is 1e-5", type=positive)
    smart_sigma: float | None = flag(None, "std σ of δ's starting noise (default: ε, the paper's ratio); not 0 with "
                                           "shared masks, where the ascent would start at its minimum",
                                     type=non_negative)
    smart_step_size: float | None = flag(None, "ascent step η (default: 100·ε, the paper's ratio η/ε = 1e-3/1e-5)",
                                         type=positive)
    smart_steps: int = flag(1, "ascent steps T", type=positive_int)
    smart_ascent_precision: str = flag(
        "fp32", "precision of the ascent that finds δ under bf16: fp32 (autocast off; in bf16 the change δ₀ makes "
                "is lost in rounding and the ℓ∞ step follows noisy signs, a weaker attack) or compute (the run's "
                "precision, cheaper)",
        choices=("fp32", "compute"))
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
    rdrop_form: str = flag(
        "paper", "paper: the task loss on both passes plus α/2·(KL(P1||P2) + KL(P2||P1)), as Liang et al.; "
                 "first_pass: the task loss on the first pass only plus α·the symmetric KL, so the row differs "
                 "from plain fine-tuning by the consistency term alone (which then weighs 4× the paper's at the "
                 "same α)", choices=RDROP_FORMS)
    rdrop_tasks: tuple[str, ...] | None = flag(
        None, "comma-separated tasks whose steps get the --rdrop term (default: every task)", convert=parse_task_names)

    def __post_init__(self) -> None:
        if self.smart_dropout not in DROPOUT_MODES:
            raise ValueError(f"smart_dropout must be one of {DROPOUT_MODES}, got {self.smart_dropout!r}")
        if self.rdrop_form not in RDROP_FORMS:
            raise ValueError(f"rdrop_form must be one of {RDROP_FORMS}, got {self.rdrop_form!r}")

    @property
    def sigma(self) -> float:
        """σ of δ's starting noise: --smart_sigma, or ε."""
        return self.smart_eps if self.smart_sigma is None else self.smart_sigma

    @property
    def step_size(self) -> float:
        """The ascent step η: --smart_step_size, or STEP_PER_EPS·ε."""
        return STEP_PER_EPS * self.smart_eps if self.smart_step_size is None else self.smart_step_size

    @property
    def adversarial(self) -> bool:
        return self.smart and not self.no_adversarial

    @property
    def bregman(self) -> bool:
        return self.smart and not self.no_bregman

    def on(self, term: str) -> bool:
        """Whether `term` (a name in TERMS) is switched on with a nonzero weight."""
        spec = TERM[term]
        return getattr(self, spec.switch) and getattr(self, spec.weight) != 0

    def on_task(self, term: str, task: str) -> bool:
        """Whether `term` is on for this task's steps."""
        tasks = getattr(self, TERM[term].tasks)
        return self.on(term) and (tasks is None or task in tasks)

    @property
    def needs_average(self) -> bool:
        """Whether the Bregman term runs, and so needs the run's weight average."""
        return self.on("bregman")

    @property
    def any(self) -> bool:
        return any(self.on(term.name) for term in TERMS)


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

    def runs(self, term: str, task: Task) -> bool:
        """Whether `term` is switched on with a nonzero weight, for this task's steps."""
        return self.settings.on_task(term, task.name)

    def shares_masks(self, task: Task) -> bool:
        """Whether this task's step has a perturbed pass that replays the clean pass's dropout masks."""
        return self.settings.smart_dropout == "shared" and any(
            self.runs(term.name, task) for term in TERMS if term.replays_masks)

    def ascends_first(self, task: Task, masks: DropoutReplay | None, embeddings: torch.Tensor) -> bool:
        """Whether this step finds SMART's δ before its clean pass: with the fp32 ascent under autocast
        and shared masks, the ascent needs neither the clean output (it computes its own fp32 target)
        nor new masks, and the clean pass's activations are then not held while the ascent's fp32 ones
        are (the step's peak memory)."""
        return (self.runs("adversarial", task) and masks is not None
                and self.settings.smart_ascent_precision == "fp32"
                and torch.is_autocast_enabled(embeddings.device.type))

    def adversarial_delta(self, model: MultitaskBert, model_fn: Callable, f: Callable, embeddings: torch.Tensor,
                          task: Task, mask: torch.Tensor) -> torch.Tensor:
        """SMART's δ ahead of the clean pass (see `ascends_first`): model_fn's fp32 target pass draws the
        step's dropout masks, which the ascent's passes through f, and then the clean pass, replay."""
        s = self.settings
        with parameters_frozen(model):
            return adversarial_perturbation(f, embeddings, None, task.kind, s.smart_eps, s.sigma, s.step_size,
                                            s.smart_steps, keep_mask(embeddings, mask), ascent_in_fp32=True,
                                            target_fn=model_fn)

    def adversarial(self, f: Callable, embeddings: torch.Tensor, output: torch.Tensor, task: Task,
                    mask: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """λ_s·R_s; `delta` when `adversarial_delta` found it already."""
        s = self.settings
        return s.smart_lambda * smoothness_loss(f, embeddings, output, task.kind, eps=s.smart_eps,
                                                sigma=s.sigma, step_size=s.step_size, steps=s.smart_steps,
                                                mask=mask, ascent_in_fp32=s.smart_ascent_precision == "fp32",
                                                delta=delta)

    def r3f(self, f: Callable, embeddings: torch.Tensor, output: torch.Tensor, task: Task,
            mask: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return s.r3f_lambda * r3f_loss(f, embeddings, output, task.kind, eps=s.r3f_eps, noise=s.r3f_noise,
                                       mask=mask)

    def rdrop(self, model: MultitaskBert, task: Task, batch: dict[str, torch.Tensor],
              output: torch.Tensor) -> dict[str, torch.Tensor]:
        """R-Drop's terms: a whole second forward, embeddings included, with dropout masks of its own.

        "paper": {"rdrop_task": the task loss of the second pass, "rdrop": α/2·symmetric KL}, so the
        step's loss is L(P1) + L(P2) + α/2·(KL(P1‖P2) + KL(P2‖P1)), Liang et al.'s equation (3).
        "first_pass": {"rdrop": α·symmetric KL}; the task term is plain fine-tuning's own.
        """
        s = self.settings
        second = model(task, batch)
        consistency = divergence(task.kind, second, output)
        if s.rdrop_form == "first_pass":
            return {"rdrop": s.rdrop_alpha * consistency}
        return {"rdrop_task": task.loss(second, batch["labels"]), "rdrop": 0.5 * s.rdrop_alpha * consistency}

    def bregman(self, task: Task, batch: dict[str, torch.Tensor], output: torch.Tensor,
                step_masks: DropoutReplay) -> torch.Tensor:
        """μ·ℓ_s(f(x; θ), f(x; θ̃)): the average's forward in training mode, replaying the student pass's masks.

        Both passes are then one function at two parameter vectors, so the term is exactly 0 at
        θ = θ̃; a dropout-free teacher against a dropout-on student would also measure dropout noise.
        `step_masks` was taken before the student's `embed`, so the embedding dropout is replayed too.
        """
        teacher = self.average.model
        teacher.train()
        with torch.no_grad(), step_masks.replaying():
            teacher_output = teacher(task, batch)
        return self.settings.bregman_mu * bregman_loss(output, teacher_output, task.kind)


@contextmanager
def parameters_frozen(module: torch.nn.Module) -> Iterator[None]:
    """requires_grad off for the module's trainable parameters meanwhile: a pass whose only gradient is
    its input's then keeps no layer inputs for weight gradients (results/README.md, "SMART's peak")."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def check_regularizer_flags(regularizers: RegularizerSettings, run: RunSettings) -> None:
    """The flag rules of the regularisers (see --help): contradictions are errors naming both flags."""
    r = regularizers
    for tasks_flag, switch in {f"--{term.tasks}": term.flag for term in TERMS}.items():
        named = getattr(r, tasks_flag[2:])
        if named is None:
            continue
        if not getattr(r, switch):
            raise FlagError(f"{tasks_flag} narrows --{switch} to some tasks, but --{switch} is not on; "
                            f"add --{switch}, or drop {tasks_flag}")
        untrained = [t for t in named if t not in run.tasks]
        if untrained:
            raise FlagError(f"{tasks_flag}: {','.join(untrained)} not among the trained --tasks "
                            f"{','.join(run.tasks)}")
    for part in ("--no_adversarial", "--no_bregman"):
        if getattr(r, part[2:]) and not r.smart:
            raise FlagError(f"{part} switches off a part of --smart, which is not on; add --smart")
    if r.no_adversarial and r.no_bregman:
        raise FlagError("--no_adversarial with --no_bregman leaves nothing of --smart; drop --smart")
    if r.adversarial and r.smart_dropout == "shared" and r.smart_sigma == 0:
        raise FlagError("--smart_sigma 0 with shared dropout masks starts the ascent at the minimum of its "
                        "divergence, where the gradient is 0, so δ stays 0 and the adversarial term is off; "
                        "give σ > 0 (default: --smart_eps)")
    if r.adversarial and r.r3f:
        raise FlagError("--smart and --r3f both add a smoothness term at a perturbed δ (adversarial "
                        "and random); choose one, or use --smart --no_adversarial --r3f for R3F with the "
                        "Bregman term")
    switched = [f"--{name}" for name in dict.fromkeys(term.flag for term in TERMS) if getattr(r, name)]
    if switched and run.option != "finetune":
        raise FlagError(f"{' '.join(switched)} regularise fine-tuning, but --option {run.option} "
                        "freezes the encoder; add --option finetune")


def describe(settings: RegularizerSettings, tasks: tuple[str, ...]) -> str:
    """Which terms run on which tasks' steps, for the log."""
    if not settings.any:
        return "none (task losses only)"

    def on(named: tuple[str, ...] | None) -> str:
        return ",".join(t for t in tasks if named is None or t in named)

    parts = []
    if settings.on("adversarial"):
        parts.append(f"SMART adversarial (λ_s {settings.smart_lambda:g}, ε {settings.smart_eps:g}, η "
                     f"{settings.step_size:g}, σ {settings.sigma:g}, {settings.smart_steps} ascent step(s) in "
                     f"{settings.smart_ascent_precision}, {settings.smart_dropout} dropout masks) "
                     f"on {on(settings.smart_tasks)}")
    if settings.on("bregman"):
        parts.append(f"Bregman term towards the weight average (μ {settings.bregman_mu:g}) on {on(settings.smart_tasks)}")
    if settings.on("r3f"):
        parts.append(f"R3F ({settings.r3f_noise}, ε {settings.r3f_eps:g}, {settings.smart_dropout} dropout masks) "
                     f"on {on(settings.r3f_tasks)}")
    if settings.on("rdrop"):
        parts.append(f"R-Drop (α {settings.rdrop_alpha:g}, {settings.rdrop_form} form) on {on(settings.rdrop_tasks)}")
    return "; ".join(parts)
