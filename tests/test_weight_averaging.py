"""Weight averaging in the Trainer: the mean teacher moves once per update, and it is what gets scored and kept."""

from __future__ import annotations

import torch

from minbert import BertModel
from multitask_classifier import weight_average
from multitask.evaluate import predict
from multitask.model import MultitaskBert
from multitask.regularizers import TEACHER_WINDOW_FRACTION
from multitask.settings import parse
from multitask.train import Trainer, TrainSettings
from smart import WeightAverage
from tests.test_smart_training import TINY, tiny_tasks, weights


class RecordingTeacher(WeightAverage):
    """A WeightAverage that remembers the (step, total_steps) of every update it was asked for."""

    def __init__(self, model, beta=None) -> None:
        super().__init__(model, beta)
        self.calls: list[tuple[int, int]] = []

    def update(self, step: int, total_steps: int) -> float:
        self.calls.append((step, total_steps))
        return super().update(step, total_steps)


def run(tmp_path, teacher: str, grad_accum: int = 1, freeze_encoder: bool = False):
    """Two epochs on tiny tasks; `teacher` is 'none', 'tracked' (moved, not scored) or 'scored'."""
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY))
    if freeze_encoder:
        model.encoder.requires_grad_(False)
    average = None if teacher == "none" else RecordingTeacher(model)
    kept = []
    tasks = tiny_tasks()
    settings = TrainSettings(epochs=2, batch_size=8, lr=1e-3, seed=0, grad_accum=grad_accum, precision="fp32")
    trainer = Trainer(model, tasks, tasks, settings, torch.device("cpu"), tmp_path, average=average,
                      score_average=teacher == "scored",
                      on_new_best=lambda best, record: kept.append((best, record)))
    history = trainer.train()
    return model, average, trainer, history, kept


def test_averaging_leaves_the_trained_weights_bit_identical(tmp_path):
    plain, *_ = run(tmp_path / "plain", "none")
    averaged, *_ = run(tmp_path / "averaged", "scored")
    a, b = weights(plain), weights(averaged)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_average_is_scored_and_kept_not_the_trained_weights(tmp_path):
    model, teacher, trainer, history, kept = run(tmp_path, "scored")
    assert kept and all(best is teacher.model for best, _ in kept)
    # After the last epoch the teacher still holds the weights its scores were measured on.
    last = history[-1]
    for task, dataset in trainer.dev_sets.items():
        outputs = predict(teacher.model, dataset, trainer.settings.eval_batch_size, torch.device("cpu"))
        assert last.dev_scores[task] == dataset.task.score(outputs, dataset.labels)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), teacher.model.parameters()))
    # Tracked but not scored: the trained weights are scored and kept, as without a teacher.
    tracked_model, _, _, tracked_history, tracked_kept = run(tmp_path / "tracked", "tracked")
    _, _, _, plain_history, _ = run(tmp_path / "plain", "none")
    assert tracked_kept and all(best is tracked_model for best, _ in tracked_kept)
    assert [r.dev_scores for r in tracked_history] == [r.dev_scores for r in plain_history]


def test_the_teacher_moves_once_per_optimiser_update_with_the_run_total(tmp_path):
    _, teacher, trainer, *_ = run(tmp_path, "scored", grad_accum=2)
    total = trainer.total_updates
    assert trainer.updates == total
    assert teacher.calls == [(step, total) for step in range(total)]


def test_a_frozen_encoder_is_not_averaged_and_stays_equal(tmp_path):
    model, teacher, *_ = run(tmp_path, "scored", freeze_encoder=True)
    student, average = weights(model), weights(teacher.model)
    encoder = [k for k in student if k.startswith("encoder.")]
    heads = [k for k in student if k.startswith("heads.")]
    assert encoder and all(torch.equal(student[k], average[k]) for k in encoder)
    assert any(not torch.equal(student[k], average[k]) for k in heads)


def test_the_cli_caps_the_window_of_the_average_and_of_smarts_teacher():
    model = MultitaskBert(BertModel(TINY))
    for flags in ([], ["--smart"], ["--smart", "--no_bregman"], ["--smart", "--no_ema"]):
        average = weight_average(model, parse(flags))
        assert average.window_fraction == TEACHER_WINDOW_FRACTION, flags
        # A short run's average follows the weights; a run of the default length keeps the paper's β.
        assert average.beta_at(50, 200) < 0.99 and average.beta_at(4000, 5000) == 0.999, flags
    # Nothing scores it and no Bregman term pulls towards it: no average is kept at all.
    assert weight_average(model, parse(["--no_ema"])) is None
    assert weight_average(model, parse(["--smart", "--no_bregman", "--no_ema"])) is None
