"""The loop pieces fine-tuning and MLM pretraining share: parameter groups, the non-finite guard, the JSONL file."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from minbert import BertModel
from minbert.mlm import BertForMaskedLM
from minbert.mlm_training import MLMTrainingAborted
from minbert.optimizer import is_decayed
from minbert.plumbing.loop import JsonlWriter, NonFiniteGuard, TooManyBadSteps, parameter_groups
from multitask.ablation import read_metrics
from multitask.model import MultitaskBert
from multitask.train import TrainingAborted, build_optimizer
from tests.test_smart_training import TINY


class Toy(nn.Module):
    """Every kind of parameter: matrices and biases, in and out of `heads.`, a LayerNorm, a frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(2, 2)
        self.LayerNorm = nn.LayerNorm(2)
        self.heads = nn.ModuleDict({"a": nn.Linear(2, 1)})
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.last = nn.Linear(2, 2)


def names_of(model: nn.Module, groups: list[dict]) -> list[tuple[list[str], float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [([names[id(p)] for p in g["params"]], g["weight_decay"], g["lr"]) for g in groups]


def test_groups_are_decayed_then_plain_each_at_lr_then_at_the_prefix_rate():
    model = Toy()
    assert names_of(model, parameter_groups(model, 1e-3, 0.1, ("heads.", 5e-2))) == [
        (["first.weight", "last.weight"], 0.1, 1e-3),
        (["heads.a.weight"], 0.1, 5e-2),
        (["first.bias", "LayerNorm.weight", "LayerNorm.bias", "last.bias"], 0.0, 1e-3),
        (["heads.a.bias"], 0.0, 5e-2),
    ]
    assert names_of(model, parameter_groups(model, 1e-3, 0.1)) == [
        (["first.weight", "heads.a.weight", "last.weight"], 0.1, 1e-3),
        (["first.bias", "LayerNorm.weight", "LayerNorm.bias", "heads.a.bias", "last.bias"], 0.0, 1e-3),
    ]


def test_both_loops_keep_their_optimiser_layout():
    # The layout of saved optimiser states: named_parameters order, decayed group first.
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertModel(TINY))
    named = list(mlm.named_parameters())
    expected = [[n for n, p in named if is_decayed(n, p)], [n for n, p in named if not is_decayed(n, p)]]
    assert [names for names, _, _ in names_of(mlm, parameter_groups(mlm, 1e-4, 0.01))] == expected
    tied = sum(p is mlm.encoder.embeddings.word_embeddings.weight for g in parameter_groups(mlm, 1e-4, 0.01)
               for p in g["params"])
    assert tied == 1

    model = MultitaskBert(BertModel(TINY))
    named = list(model.named_parameters())
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.01, head_lr=1e-3)
    expected = [[n for n, p in named if is_decayed(n, p) == decayed and n.startswith("heads.") == head]
                for decayed, head in ((True, False), (True, True), (False, False), (False, True))]
    assert [names for names, _, _ in names_of(model, optimizer.param_groups)] == expected


# ------------------------------------------------------------------------------------------- the guard

def test_guard_counts_logs_the_values_and_raises_one_past_the_limit(caplog):
    guard = NonFiniteGuard(2, TrainingAborted, "--max_bad_steps", logging.getLogger("test.guard"))
    with caplog.at_level(logging.WARNING, logger="test.guard"):
        guard.skip("sst step", {"task": torch.tensor(float("nan")), "adversarial": 0.5})
        guard.skip("para step", {"task": float("inf")})
    assert guard.count == 2
    assert [r.getMessage() for r in caplog.records] == [
        "skipped a sst step with a non-finite loss {'task': nan, 'adversarial': 0.5} (1 skipped so far)",
        "skipped a para step with a non-finite loss {'task': inf} (2 skipped so far)"]
    with pytest.raises(TrainingAborted, match=r"^3 steps had non-finite losses \(limit --max_bad_steps 2\); "
                                              r"lower --lr or check the data$"):
        guard.skip("sts step", {"task": float("nan")})
    assert guard.count == 3


def test_guard_without_a_flag_and_the_abort_types_callers_catch():
    guard = NonFiniteGuard(0, MLMTrainingAborted)
    with pytest.raises(MLMTrainingAborted, match=r"^1 steps had non-finite losses \(limit 0\); lower --lr"):
        guard.skip("step", {"loss": float("nan")})
    # One base class: code that catches TooManyBadSteps sees both loops' aborts.
    assert issubclass(TrainingAborted, TooManyBadSteps) and issubclass(MLMTrainingAborted, TooManyBadSteps)
    with pytest.raises(TooManyBadSteps):
        NonFiniteGuard(0).skip("step", {"loss": float("nan")})


# ---------------------------------------------------------------------------------------- JSONL writer

def test_jsonl_rewrite_then_append_and_a_line_cut_short_is_dropped(tmp_path):
    path = tmp_path / "new" / "metrics.jsonl"  # the directory is made on the first write
    writer = JsonlWriter(path)
    writer.rewrite()
    assert path.read_text() == ""
    writer.rewrite([{"epoch": 1}, {"epoch": 2}])
    writer.append({"epoch": 3, "loss": 0.5})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"epoch": 1}, {"epoch": 2}, {"epoch": 3, "loss": 0.5}]

    # A crash in the middle of an append: readers skip the partial line, a rewrite removes it.
    with open(path, "a") as f:
        f.write('{"epoch": 4, "lo')
    assert read_metrics(path) == [{"epoch": 1}, {"epoch": 2}, {"epoch": 3, "loss": 0.5}]
    writer.rewrite([{"epoch": 1}])
    writer.append({"epoch": 2})
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert [p.name for p in path.parent.iterdir()] == ["metrics.jsonl"]  # no temporary file left
