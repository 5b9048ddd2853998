"""--eval_every: dev scored after every N-th epoch and the last, with training itself unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from minbert import BertModel
from multitask.model import MultitaskBert
from multitask.records import EpochRecord, format_epoch
from multitask.train import Trainer, TrainSettings
from tests.test_smart_training import TINY, tiny_tasks, weights


def train(tmp_path, epochs: int, eval_every: int):
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY))
    tasks = tiny_tasks()
    kept = []
    settings = TrainSettings(epochs=epochs, batch_size=8, lr=1e-3, seed=0, precision="fp32", eval_every=eval_every)
    trainer = Trainer(model, tasks, tasks, settings, torch.device("cpu"), tmp_path,
                      on_new_best=lambda best, record: kept.append(record.epoch))
    calls = []
    evaluate = trainer.evaluate
    trainer.evaluate = lambda: calls.append(len(trainer.history) + 1) or evaluate()
    history = trainer.train()
    return model, trainer, history, kept, calls


@pytest.mark.parametrize("epochs, every, scored", [(3, 2, [2, 3]), (4, 2, [2, 4]), (3, 3, [3]), (2, 1, [1, 2])])
def test_dev_is_scored_every_nth_epoch_and_after_the_last(tmp_path, epochs, every, scored):
    _, _, history, kept, calls = train(tmp_path, epochs, every)
    assert calls == scored
    assert [r.epoch for r in history if r.dev_mean is not None] == scored
    assert all(r.dev_scores == {} for r in history if r.epoch not in scored)
    # Only a scored epoch can become the kept checkpoint.
    assert kept and set(kept) <= set(scored)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == list(range(1, epochs + 1))
    assert [line["dev_mean"] is not None for line in lines] == [e in scored for e in range(1, epochs + 1)]


def test_skipping_the_dev_scoring_leaves_training_bit_identical(tmp_path):
    every_epoch, _, scored_history, _, _ = train(tmp_path / "every", 3, 1)
    last_only, _, last_history, _, _ = train(tmp_path / "last", 3, 3)
    a, b = weights(every_epoch), weights(last_only)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert last_history[-1].dev_scores == scored_history[-1].dev_scores
    assert [r.train_losses for r in last_history] == [r.train_losses for r in scored_history]


def test_an_unscored_epoch_survives_the_resume_state_and_prints_as_unscored(tmp_path):
    _, trainer, history, _, _ = train(tmp_path, 2, 2)
    state = trainer.state_dict()
    trainer.load_state_dict(state)
    assert trainer.history == history and trainer.history[0].dev_mean is None
    line = format_epoch(history[0])
    assert line.startswith("epoch 1: dev not scored (--eval_every)  (") and "train losses" in line
    scored = EpochRecord(2, {"sst": 0.5}, 0.5, {"sst": 1.0}, 1.0, 10, 0)
    assert format_epoch(scored).startswith("epoch 2: dev sst 0.500  mean 0.500  (")
