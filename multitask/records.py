"""What an epoch leaves behind: its record (a metrics.jsonl line), its running totals while in progress, its log line."""

from __future__ import annotations

from dataclasses import dataclass, field

from minbert.plumbing.progress import format_loss

# Epoch record fields that measure the machine rather than the run: two identical runs differ only in these.
TIMING_KEYS = frozenset({"train_seconds", "model_gflops_per_s", "matmul_peak_gflops_per_s", "of_peak"})


@dataclass
class EpochRecord:
    epoch: int
    dev_scores: dict[str, float]  # empty for an epoch that --eval_every leaves unscored
    dev_mean: float | None
    train_losses: dict[str, float]
    train_seconds: float
    train_examples: int
    skipped_steps: int
    extra: dict = field(default_factory=dict)

    def term_ratios(self) -> dict[str, float]:
        """Each regulariser term's epoch mean over its task's loss: `sst_adversarial` → mean / mean of `sst`."""
        ratios = {}
        for key, value in self.train_losses.items():
            task, _, term = key.partition("_")
            if term and self.train_losses.get(task):
                ratios[key] = value / self.train_losses[task]
        return ratios

    def as_json(self) -> dict:
        return {"epoch": self.epoch, **{f"dev_{k}": v for k, v in self.dev_scores.items()}, "dev_mean": self.dev_mean,
                **{f"loss_{k}": v for k, v in self.train_losses.items()},
                **{f"ratio_{k}": v for k, v in self.term_ratios().items()}, "train_seconds": self.train_seconds,
                "train_examples": self.train_examples, "skipped_steps": self.skipped_steps, **self.extra}


@dataclass
class EpochProgress:
    """How far the epoch in progress has got: the next step of its plan and its running totals."""

    epoch: int
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    examples: int = 0
    tokens: int = 0  # real (not padding) tokens of the finished steps
    seconds: float = 0.0
    bad_steps_before: int = 0
    scaler_skips_before: int = 0


def format_epoch(record: EpochRecord) -> str:
    """The epoch's dev scores, then its mean training losses, each regulariser term with its share of its task's."""
    if record.dev_mean is None:
        dev = "dev not scored (--eval_every)"
    else:
        scores = "  ".join(f"{task} {value:.3f}" for task, value in record.dev_scores.items())
        dev = f"dev {scores}  mean {record.dev_mean:.3f}"
    ratios = record.term_ratios()
    losses = ", ".join(f"{key} {format_loss(value)}" + (f" ({100 * ratios[key]:#.3g}% of {key.partition('_')[0]})" if key in ratios else "")
                       for key, value in record.train_losses.items())
    of_peak = record.extra.get("of_peak")
    rate = "" if of_peak is None else f", {of_peak:.0%} of the matmul peak"
    return (f"epoch {record.epoch}: {dev}  "
            f"({record.train_examples} examples in {record.train_seconds:.0f}s{rate}); train losses {losses}")
