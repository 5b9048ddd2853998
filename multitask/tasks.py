"""The task registry: each task's files, head, loss, metric and prediction format, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F

from multitask.data import parse_class_label, parse_score_label, read_task_file

if TYPE_CHECKING:
    from multitask.data import ReadResult

Kind = Literal["multiclass", "binary", "regression"]
Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
# The splits a run writes prediction files for, and those it learns and scores from.
PREDICTED_SPLITS: tuple[Split, ...] = ("dev", "test")
LABELLED_SPLITS: tuple[Split, ...] = ("train", "dev")
# The course's CSV files (data/README.md says where each comes from).
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class Task:
    """Everything the package knows about one task; the kind decides head width, loss, metric and output.

    - multiclass: `classes` logits, cross-entropy, accuracy, the argmax is predicted;
    - binary: one logit, BCE with logits, accuracy, 1 is predicted when the logit is > 0;
    - regression: one value, MSE, Pearson r, the value clamped to `score_range` is predicted.
    """

    name: str
    label: str  # how tables and logs name it, e.g. "Quora"
    file_stem: str  # course files are <file_stem>-{train,dev,test-student}.csv
    kind: Kind
    text_columns: tuple[str, ...]
    label_column: str
    # Header of the prediction file, `id \t <column> `, exactly as the course's grader reads it.
    prediction_column: str
    classes: int = 2  # for multiclass and binary
    score_range: tuple[float, float] = (0.0, 5.0)  # for regression

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def outputs(self) -> int:
        """Width of the head: the class count for multiclass, else a single logit or value."""
        return self.classes if self.kind == "multiclass" else 1

    @property
    def metric(self) -> str:
        return "pearson" if self.kind == "regression" else "accuracy"

    def parse_label(self, raw: str) -> int | float:
        if self.kind == "regression":
            return parse_score_label(raw, *self.score_range)
        return parse_class_label(raw, self.classes)

    def file(self, data_dir: str | Path, split: Split) -> Path:
        """The course file name for a split, e.g. `data/ids-sst-test-student.csv`."""
        suffix = "test-student" if split == "test" else split
        return Path(data_dir) / f"{self.file_stem}-{suffix}.csv"

    def read(self, path: str | Path, labelled: bool = True) -> ReadResult:
        """Read one file of this task; bad rows are skipped and counted (multitask.data.read_task_file)."""
        return read_task_file(path, self, labelled)

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch, in fp32; shapes are checked, since [B, 1] vs [B] would broadcast."""
        if self.kind == "multiclass":
            return F.cross_entropy(output.float(), labels.long())
        if output.shape != labels.shape:
            raise ValueError(f"{self.name}: output shape {tuple(output.shape)} != label shape {tuple(labels.shape)}")
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(output.float(), labels.float())
        return F.mse_loss(output.float(), labels.float())

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Head outputs turned into what is scored and written: class ids, 0/1 or clamped scores."""
        if self.kind == "multiclass":
            return outputs.argmax(-1)
        if self.kind == "binary":
            return (outputs > 0).long()
        return outputs.clamp(*self.score_range)

    def score(self, predictions: torch.Tensor, labels: torch.Tensor) -> float:
        """The dev metric: accuracy, or Pearson r for regression."""
        if self.kind == "regression":
            return pearson(predictions.double().numpy(), labels.double().numpy())
        return (predictions.long() == labels.long()).double().mean().item()

    def unit_score(self, value: float) -> float:
        """The metric mapped into [0, 1] for the mean over tasks: Pearson r becomes (r + 1) / 2."""
        return (value + 1) / 2 if self.metric == "pearson" else value

    def check_prediction(self, value: int | float) -> str | None:
        """Why the grader would misread `value` as this task's prediction, or None if it is valid."""
        if self.kind == "regression":
            low, high = self.score_range
            if not np.isfinite(value) or not low <= value <= high:
                return f"is not in [{low:g}, {high:g}]; clamp it first"
            return None
        if not float(value).is_integer() or not 0 <= value < self.classes:
            return f"is not an integer class in 0..{self.classes - 1}"
        return None


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; 0 when either side is constant (an untrained head), where r is undefined."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(scipy.stats.pearsonr(x, y).statistic)


SST = Task("sst", "SST", "ids-sst", "multiclass", ("sentence",), "sentiment",
           "Predicted_Sentiment", classes=5)
PARA = Task("para", "Quora", "quora", "binary", ("sentence1", "sentence2"), "is_duplicate",
            "Predicted_Is_Paraphrase")
# "Similiary" is misspelled on purpose: it is the column the grader expects.
STS = Task("sts", "STS", "sts", "regression", ("sentence1", "sentence2"), "similarity",
           "Predicted_Similiary", score_range=(0.0, 5.0))
# The course's first-part movie review sentiment set: an optional fourth task, and MLM text.
CFIMDB = Task("cfimdb", "CFIMDB", "ids-cfimdb", "binary", ("sentence",), "sentiment",
              "Predicted_Sentiment")

TASKS: dict[str, Task] = {task.name: task for task in (SST, PARA, STS, CFIMDB)}
# What `--tasks` trains by default and what the course's submission holds, in the course's order.
COURSE_TASKS: tuple[str, ...] = ("sst", "para", "sts")


def parse_task_names(text: str) -> tuple[str, ...]:
    """`sst,para` as a tuple of registered task names; ValueError naming the unknown ones."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in TASKS]
    if not names or unknown:
        raise ValueError(f"unknown task(s) {unknown or text!r}; choose from {','.join(TASKS)}")
    return names
