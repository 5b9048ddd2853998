"""The model as the measures see it: raw outputs, class probabilities and the dev metric of a list of examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from minbert.tokenizer import BertTokenizer
from multitask.batching import encode_task
from multitask.data import Example
from multitask.evaluate import raw_outputs
from multitask.model import MultitaskBert
from multitask.tasks import TASKS


class Scorer(Protocol):
    """Head outputs of examples given as text; what the text-level measures need of a model."""

    def outputs(self, task: str, examples: Sequence[Example]) -> torch.Tensor:
        """[N, C] logits (multiclass), [N] logits (binary) or [N] scores (regression), in input order."""
        ...


class ModelScorer:
    """A MultitaskBert and its tokenizer: text is encoded as in evaluation and predicted with
    `multitask.evaluate.raw_outputs`, so a pair model that averages both sentence orders does so here too."""

    def __init__(self, model: MultitaskBert, tokenizer: BertTokenizer, max_length: int,
                 device: torch.device, precision: str = "fp32", batch_size: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device
        self.precision = precision
        self.batch_size = batch_size

    def outputs(self, task: str, examples: Sequence[Example]) -> torch.Tensor:
        dataset = encode_task(examples, self.tokenizer, TASKS[task], self.model.pair_encoding, self.max_length)
        return raw_outputs(self.model, dataset, self.batch_size, self.device, self.precision)


def class_probabilities(kind: str, outputs: torch.Tensor) -> torch.Tensor:
    """[N, C] probabilities in float64: the softmax of multiclass logits, [1 − p, p] for a binary logit."""
    if kind == "multiclass":
        return torch.softmax(outputs.double(), dim=-1)
    if kind == "binary":
        p = torch.sigmoid(outputs.double().reshape(-1))
        return torch.stack([1 - p, p], dim=-1)
    raise ValueError(f"{kind!r} heads have no class probabilities; expected multiclass or binary")


def labels_of(task: str, examples: Sequence[Example]) -> torch.Tensor:
    """The examples' labels as the task's metric takes them."""
    if any(e.label is None for e in examples):
        raise ValueError(f"{task}: every example needs a label to be scored; read the dev file with labels")
    dtype = torch.float64 if TASKS[task].kind == "regression" else torch.long
    return torch.tensor([e.label for e in examples], dtype=dtype)


def metric(scorer: Scorer, task: str, examples: Sequence[Example]) -> float:
    """The task's dev metric (accuracy, or Pearson r) of the scorer's predictions on these examples."""
    return metric_of_outputs(task, scorer.outputs(task, examples), examples)


def metric_of_outputs(task: str, outputs: torch.Tensor, examples: Sequence[Example]) -> float:
    """The task's dev metric of head outputs already computed for these examples."""
    spec = TASKS[task]
    return spec.score(spec.predictions(outputs), labels_of(task, examples))
