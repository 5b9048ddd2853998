"""The ablation grid's definition: its configurations, the settings a grid shares, and parsing them from flags."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from minbert.mlm_training import MLMSettings
from minbert.plumbing.flags import COURSE_SEED
from multitask.tasks import PREDICTED_SPLITS, TASKS

REPO = Path(__file__).resolve().parents[2]
MLM_SCRIPT = REPO / "scripts" / "pretrain_mlm.py"
# The row every other configuration is compared with, seed by seed.
BASELINE = "baseline"


@dataclass(frozen=True)
class Configuration:
    """One row of the grid: the flags added to plain fine-tuning, and whether it starts from the MLM encoder."""

    name: str
    flags: tuple[str, ...]
    uses_mlm: bool = False

    def describe(self) -> str:
        flags = ["--option finetune", *self.flags] + (["--pretrained <MLM encoder>"] if self.uses_mlm else [])
        return " ".join(flags)


GRID: dict[str, Configuration] = {c.name: c for c in (
    Configuration("baseline", ()),
    Configuration("rdrop", ("--rdrop",)),
    Configuration("r3f", ("--r3f",)),
    Configuration("adversarial", ("--smart", "--no_bregman")),
    Configuration("bregman", ("--smart", "--no_adversarial")),
    Configuration("smart", ("--smart",)),
    Configuration("smart-independent", ("--smart", "--smart_dropout", "independent")),
    Configuration("mlm", (), uses_mlm=True),
    Configuration("mlm+smart", ("--smart",), uses_mlm=True),
)}

# The runner sets these per run; letting them through after `--` would make runs of one grid
# differ in budget, or write into each other's directories.
RUNNER_FLAGS = ("--epochs", "--seed", "--out_dir", "--train_limit", "--train_fraction", "--dev_limit",
                "--skip_predictions", "--precision", "--option", "--predict_only", "--checkpoint",
                *(f"--{task}_{split}_out" for task in TASKS for split in PREDICTED_SPLITS))


class GridError(ValueError):
    """The grid cannot start: an unknown configuration, malformed seeds, a runner's flag, an unreadable report."""


@dataclass
class GridSettings:
    """Everything that defines a grid: which runs, their shared budget, and where they go."""

    out_dir: Path
    configs: list[str]
    seeds: list[int]
    epochs: int
    train_limit: int | None = None
    dev_limit: int | None = None
    skip_predictions: bool = False
    extra_args: list[str] = field(default_factory=list)
    mlm_dir: Path | None = None
    mlm_steps: int = MLMSettings.max_steps
    mlm_script: Path = MLM_SCRIPT
    keep_checkpoints: bool = False
    precision: str = "auto"  # passed to every run and to the MLM stage
    python: str = sys.executable
    train_fraction: float | None = None  # every run trains on this seeded fraction of each training file
    robustness: bool = False  # measure each finished run's best checkpoint (multitask.robustness)
    # Dev scored once, after the last epoch (--eval_every epochs): every row is judged at the same budget,
    # and short epochs do not pay a dev scoring each.
    last_epoch_only: bool = False

    def budget(self) -> dict:
        """The settings every run shares, as stated above the results table."""
        budget = {"epochs": self.epochs, "train_limit": self.train_limit, "dev_limit": self.dev_limit,
                  "seeds": self.seeds, "extra_args": self.extra_args, "predictions": not self.skip_predictions,
                  "mlm_dir": None if self.mlm_dir is None else str(self.mlm_dir),
                  "mlm_steps": self.mlm_steps if self.mlm_dir is None and self.uses_mlm else None}
        # Only when set: the reports of grids without them stay as they were.
        if self.train_fraction is not None:
            budget["train_fraction"] = self.train_fraction
        if self.robustness:
            budget["robustness"] = True
        if self.last_epoch_only:
            budget["dev_scored"] = "after the last epoch only"
        return budget

    @property
    def uses_mlm(self) -> bool:
        return any(GRID[name].uses_mlm for name in self.configs)


def parse_configs(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in GRID]
    if not names or unknown:
        raise GridError(f"--configs: unknown configuration(s) {unknown or text!r}; choose from {','.join(GRID)}")
    return list(dict.fromkeys(names))


def parse_seeds(text: str) -> list[int]:
    """`3` is a count (11711, 1, 2); `11711,1,2` a list; `42,` the single seed 42."""
    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) == 1:
            count = int(parts[0])
            if count < 1:
                raise ValueError
            # The course's seed first: the first run of any grid is the README's default command.
            return [COURSE_SEED, *range(1, count)]
        seeds = [int(part) for part in parts if part]
    except ValueError:
        raise GridError(f"--seeds {text!r}: give a count (3) or a comma list ({COURSE_SEED},1,2; '42,' for the "
                        "single seed 42)") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise GridError(f"--seeds {text!r}: the list is empty or repeats a seed")
    return seeds


def check_extra_args(extra: list[str]) -> None:
    if not extra:
        return
    from multitask.settings import build_parser  # imports torch: only when there are flags to check

    known = [flag for flag in build_parser()._option_string_actions if flag.startswith("--")]
    for arg in extra:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or name in known and name not in RUNNER_FLAGS:
            continue
        # argparse takes an unambiguous prefix for the full flag (--epoch is --epochs): resolve it the same way.
        matches = [name] if name in known else [flag for flag in known if flag.startswith(name)]
        if len(matches) == 1 and matches[0] in RUNNER_FLAGS:
            raise GridError(f"training flag {arg!r} after `--` is set by the ablation runner itself; use the "
                            "runner's own --epochs/--seeds/--train_limit/--train_fraction/--dev_limit/--out_dir "
                            "instead")


def report_paths(out_dir: Path) -> dict[str, Path]:
    """results/ablations/ → results/ablations.json, .md and .png beside the run directories."""
    out_dir = Path(out_dir)
    return {ext: out_dir.parent / f"{out_dir.name}.{ext}" for ext in ("json", "md", "png")}


def fraction_label(fraction: float) -> str:
    """0.1 → "0.1", 1.0 → "1": how directories, JSON keys and tables name a training fraction."""
    return f"{fraction:g}"


def run_dir(settings: GridSettings, config: str, seed: int) -> Path:
    """Where one run of the grid trains and logs: <out_dir>/<config>/seed<seed>, or
    <out_dir>/frac<F>/<config>/seed<seed> on a fraction of the training data."""
    base = settings.out_dir
    if settings.train_fraction is not None:
        base = base / f"frac{fraction_label(settings.train_fraction)}"
    return base / config / f"seed{seed}"
