"""The settings of a multitask run, and the command line generated from them (the only place defaults are written)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minbert.plumbing.flags import (DefaultsHelpFormatter, FlagError, OneLineErrorParser, add_flags, flag,
                                    from_flags, non_negative_int, number, positive_int)
from multitask.model import ModelSettings
from multitask.predictions import prediction_path
from multitask.regularizers import RegularizerSettings
from multitask.tasks import COURSE_TASKS, DATA_DIR, PREDICTED_SPLITS, SPLITS, TASKS, parse_task_names
from multitask.train import TrainSettings



@dataclass
class RunSettings:
    """What the run does and where its files go; each default here is the command line's."""

    option: str = flag("pretrain", "pretrain: train the heads on a frozen encoder; finetune: train everything",
                       choices=("pretrain", "finetune"))
    tasks: tuple[str, ...] = flag(",".join(COURSE_TASKS),
                                  f"comma-separated tasks to train, from {','.join(TASKS)} (cfimdb: the course's "
                                  "binary movie-review sentiment, an optional fourth task)",
                                  convert=parse_task_names)
    train_limit: int | None = flag(None, "at most N training examples per task: a sample fixed by the task and "
                                           "each row's id, not the file's first rows", type=positive_int)
    # The low-resource curve of the ablation runner: every configuration at a seed must train on the
    # same rows, so the subset depends on the seed and the task only.
    train_fraction: float | None = flag(None, "train on a random fraction F in (0, 1] of each task's training file: "
                                              "round(F·N) rows (at least 1) in file order, fixed by --seed and the "
                                              "task, the same for every configuration; dev sets stay whole; "
                                              "--train_limit then samples N of them",
                                        type=number(0.0, 1.0, low_open=True))
    # For quick checks and ablation smoke runs, where scoring the full dev sets would take longer
    # than the training itself.
    dev_limit: int | None = flag(None, "score each epoch on at most N dev examples per task, a sample fixed by the "
                                       "task and each row's id (prediction files stay complete)", type=positive_int)
    device: str = flag("auto", "auto: CUDA when present", choices=("auto", "cpu", "cuda"))
    use_gpu: bool = flag(False, "train on CUDA (same as --device cuda)")
    average_weights: bool = flag(True, "score and keep the trained weights themselves, not their moving average",
                                 name="--no_ema", negated=True)
    out_dir: Path = flag(Path("runs/multitask"), "metrics.jsonl, the best checkpoint (<out_dir>/best) and the resume "
                                                 "state (<out_dir>/resume) go here", type=Path)
    checkpoint: Path | None = flag(None, "checkpoint for --predict_only (default: <out_dir>/best)", type=Path)
    predict_only: bool = flag(False, "write predictions from --checkpoint without training")
    resume: bool = flag(False, "continue the run saved in <out_dir>/resume exactly where it stopped (fresh if none)")
    save_every: int = flag(200, "save the state for --resume every N optimiser updates (0: only at epoch ends)",
                           type=non_negative_int)
    keep_resume: bool = flag(False, "keep <out_dir>/resume after the run has finished (by default it is removed)")
    skip_predictions: bool = flag(False, "train and evaluate, write no prediction files")

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):  # the flag's default, when built without the command line
            self.tasks = parse_task_names(self.tasks)

    @property
    def best_dir(self) -> Path:
        """The best checkpoint: where training keeps it and --predict_only reads it."""
        return self.checkpoint or self.out_dir / "best"


@dataclass
class Settings:
    """Everything one invocation of multitask_classifier.py was asked to do."""

    run: RunSettings
    model: ModelSettings
    train: TrainSettings
    regularizers: RegularizerSettings
    files: dict[str, Path]  # flag name -> path: "sst_train", ..., "sst_dev_out", ...
    flags: dict[str, Any]  # every flag as parsed: the run record and the resume fingerprint are made of it

    def data_file(self, task: str, split: str) -> Path:
        return self.files[f"{task}_{split}"]

    def output_file(self, task: str, split: str) -> Path:
        return self.files[f"{task}_{split}_out"]


def file_flags(task: str) -> dict[str, Path]:
    """A task's file flags (without the dashes) and their defaults: the course's files and prediction names."""
    flags = {f"{task}_{split}": TASKS[task].file(DATA_DIR, split) for split in SPLITS}
    flags.update({f"{task}_{split}_out": prediction_path("predictions", task, split) for split in PREDICTED_SPLITS})
    return flags


REGULARIZER_GROUP = ("regularisers (each off unless its switch is given; a *_tasks flag narrows a switched-on term "
                     "to some tasks' steps; all need --option finetune)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="multitask_classifier.py", formatter_class=DefaultsHelpFormatter,
                           usage="%(prog)s [--option {pretrain,finetune}] [flags, see below]",
                           description="Train one encoder on SST, Quora and STS (and optionally CFIMDB) together; "
                                       "write the course's prediction files.")
    add_flags(p.add_argument_group("run"), RunSettings)
    add_flags(p.add_argument_group("model"), ModelSettings)
    add_flags(p.add_argument_group("optimisation"), TrainSettings)
    add_flags(p.add_argument_group(REGULARIZER_GROUP), RegularizerSettings)
    files = p.add_argument_group("data and prediction files (only the trained tasks' are read or written)")
    for name in TASKS:
        for key, default in file_flags(name).items():
            split = key.split("_", 1)[1]
            what = f"{split.removesuffix('_out')} predictions" if split.endswith("_out") else f"{split} file"
            files.add_argument(f"--{key}", type=Path, default=default, help=f"{TASKS[name].label} {what}")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """The parsed flags as settings; raises FlagError for a value no flag type could check (a task list)."""
    flags = vars(args).copy()
    files = {key: flags[key] for name in TASKS for key in file_flags(name)}
    return Settings(run=from_flags(RunSettings, args), model=from_flags(ModelSettings, args),
                    train=from_flags(TrainSettings, args), regularizers=from_flags(RegularizerSettings, args),
                    files=files, flags=flags)


def parse(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    try:
        return settings_from(parser.parse_args(argv))
    except FlagError as err:
        parser.error(str(err))
        raise  # unreachable: error() exits
