"""A step whose loss is not finite is skipped and counted, never applied; too many abort the run."""

from __future__ import annotations

import pytest
import torch

from minbert import BertModel
from multitask.model import MultitaskBert
from multitask.regularizers import RegularizerSettings, Regularizers
from multitask.train import Trainer, TrainingAborted, TrainSettings
from tests.test_smart_training import TINY, tiny_tasks


class Poisoning(Regularizers):
    """R-Drop's place in the step taken by a term that is NaN on the given steps (from 0; None: every step)."""

    def __init__(self, bad_calls: set[int] | None) -> None:
        super().__init__(RegularizerSettings(rdrop=True))
        self.bad_calls, self.calls = bad_calls, 0

    def rdrop(self, model, task, batch, output):
        bad = self.bad_calls is None or self.calls in self.bad_calls
        self.calls += 1
        return {"rdrop": torch.tensor(float("nan") if bad else 0.0)}


def trainer_with(regularizers: Regularizers, tmp_path, max_bad_steps: int = 20) -> Trainer:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY))
    tasks = tiny_tasks()
    return Trainer(model, tasks, tasks, TrainSettings(epochs=1, batch_size=8, lr=1e-3, seed=0,
                                                      max_bad_steps=max_bad_steps, precision="fp32"),
                   torch.device("cpu"), tmp_path, regularizers=regularizers)


def test_non_finite_steps_are_skipped_and_counted(tmp_path):
    trainer = trainer_with(Poisoning({1, 4}), tmp_path)
    [record] = trainer.train()
    assert record.skipped_steps == 2 and trainer.bad_steps == 2
    assert trainer.updates == trainer.steps_per_epoch - 2
    assert record.train_examples == 24 * 3 - 2 * 8
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(torch.tensor(v)) for v in record.train_losses.values())


def test_too_many_non_finite_steps_abort_without_touching_the_weights(tmp_path):
    trainer = trainer_with(Poisoning(None), tmp_path, max_bad_steps=3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(TrainingAborted, match=r"4 steps had non-finite losses \(limit --max_bad_steps 3\)"):
        trainer.train()
    assert trainer.updates == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
