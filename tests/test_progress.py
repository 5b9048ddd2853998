"""Progress lines for log files: the reporter on a fake clock, the training loop's use of it, the grid's relay."""

from __future__ import annotations

import logging
import sys

import pytest

from minbert.plumbing.progress import ProgressReporter, format_duration, last_progress, newest_progress
from multitask.ablation import run_logged
from tests.test_nonfinite_steps import trainer_with


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (44.6, "45s"), (250, "4m10s"), (3599, "59m59s"),
                                          (7500, "2h05m"), (-3, "0s")])
def test_durations_read_as_a_person_would_write_them(seconds, text):
    assert format_duration(seconds) == text


def test_a_line_at_most_every_interval_with_means_since_the_last_line_rate_and_eta():
    clock, lines = FakeClock(), []
    reporter = ProgressReporter(10, emit=lines.append, interval=30, clock=clock)
    reporter.add(8, {"sst loss": 1.0, "sst_adversarial loss": 0.5})
    clock.now += 12
    assert reporter.advance(1) is None and lines == []  # not yet 30 s
    reporter.add(8, {"sst loss": 2.0, "sst_adversarial loss": 0.25})
    reporter.add(4, {"para loss": 0.75})
    clock.now += 28
    # 4 of 10 updates in 40 s: 6 left at 10 s each; 20 examples in 40 s.
    assert reporter.advance(4) == ("update 4/10: sst loss 1.50, sst_adversarial loss 0.375, para loss 0.750; "
                                   "0.5 examples/s; ETA 1m00s")
    reporter.add(8, {"sst loss": 3.0})
    clock.now += 30
    # Means and rate restart at each line; the ETA keeps the whole stretch: 7 updates in 70 s.
    assert reporter.advance(7, "epoch 2/3, update 7/10") == ("epoch 2/3, update 7/10: sst loss 3.00; "
                                                             "0.3 examples/s; ETA 30s")
    assert lines == [lines[0], lines[1]] and len(lines) == 2


def test_a_resumed_stretch_measures_its_rate_from_its_own_units_only():
    clock, lines = FakeClock(), []
    # Resumed at step 50 of 100: the 50 steps an earlier process did cost this one no time.
    reporter = ProgressReporter(100, 50, emit=lines.append, interval=0, clock=clock, eta_of="epoch")
    reporter.add(32, {"loss": 1.0})
    clock.now += 20
    assert reporter.advance(60) == "update 60/100: loss 1.00; 1.6 examples/s; epoch ETA 1m20s"  # 2 s a step
    assert reporter.advance(60) == "update 60/100: no finished step; examples/s not measured yet; epoch ETA 1m20s"


def test_last_progress_finds_the_newest_line_behind_a_log_prefix(tmp_path):
    log = "\n".join([
        "$ python multitask_classifier.py --option finetune",
        "INFO multitask.train: epoch 1/2, update 40/400: sst loss 1.6000; 85.3 examples/s; epoch ETA 4m10s",
        "INFO multitask.train: epoch 1/2, update 80/400: sst loss 1.5000, para loss 0.6900; 84.0 examples/s; "
        "epoch ETA 3m20s",
        "epoch 1: dev sst 0.400  mean 0.500  (96 examples in 12s)",
        "WARNING multitask.train: skipped a sst step with a non-finite loss {'task': nan} (1 skipped so far)",
    ])
    assert last_progress(log) == "epoch 1/2, update 80/400, epoch ETA 3m20s"
    assert last_progress("update 12/300: train loss 3.2100; 412.0 examples/s; ETA 2m05s\n") == \
        "update 12/300, ETA 2m05s"
    assert last_progress("step 0: held-out loss 9.0\nepoch 1/2: nothing else\n") is None
    path = tmp_path / "train.log"
    path.write_text("x" * 20000 + "\n" + log + "\n")
    assert newest_progress(path, tail=4096) == "epoch 1/2, update 80/400, epoch ETA 3m20s"


# ------------------------------------------------------------------------------------- in the loops

@pytest.mark.parametrize("drawn,main,expect_lines", [(False, True, True), (True, True, False), (False, False, False)],
                         ids=["log-file", "terminal-bar", "other-rank"])
def test_fine_tuning_logs_progress_lines_only_without_a_bar_and_on_rank_0(tmp_path, monkeypatch, caplog,
                                                                          drawn, main, expect_lines):
    monkeypatch.setattr("multitask.train.show_progress", lambda: drawn)
    trainer = trainer_with(None, tmp_path)
    trainer.progress_interval = 0
    trainer.is_main = main
    with caplog.at_level(logging.INFO, logger="multitask.train"):
        trainer.train()
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    if not expect_lines:
        assert lines == []
        return
    # One line per step at interval 0; one epoch of 9 steps and 9 updates.
    assert len(lines) == trainer.steps_per_epoch == 9
    assert lines[0].startswith("epoch 1/1, update 1/9: sst loss ")
    assert lines[-1].startswith("epoch 1/1, update 9/9: ")
    assert all(" examples/s; epoch ETA " in line for line in lines)
    assert lines[-1].endswith("epoch ETA 0s")
    # Round robin: the first three steps are one of each task, each line holding that step's loss.
    assert [line.split(": ")[1].split(";")[0].rsplit(" ", 1)[0] for line in lines[:3]] == [
        "sst loss", "para loss", "sts loss"]


@pytest.mark.parametrize("drawn", [False, True], ids=["log-file", "terminal-bar"])
def test_fine_tuning_logs_one_estimate_of_its_length_after_the_first_steps(tmp_path, monkeypatch, caplog, drawn):
    monkeypatch.setattr("multitask.train.show_progress", lambda: drawn)
    monkeypatch.setattr("multitask.train.ESTIMATE_AFTER_STEPS", 3)
    trainer = trainer_with(None, tmp_path)
    with caplog.at_level(logging.INFO, logger="multitask.train"):
        trainer.train()
    [estimate] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimated time")]
    # 9 steps in the one epoch: 6 are left after the 3 timed ones.
    assert "(6 steps at " in estimate and "from the first 3;" in estimate


def test_the_grid_relays_the_newest_progress_line_of_a_running_subprocess(tmp_path):
    script = ("import sys, time\n"
              "print('INFO multitask.train: epoch 1/2, update 1/4: sst loss 1.0000; 8.0 examples/s; "
              "epoch ETA 3s', flush=True)\n"
              "time.sleep(1.0)\n"
              "print('INFO multitask.train: epoch 1/2, update 2/4: sst loss 0.9000; 8.0 examples/s; "
              "epoch ETA 2s', flush=True)\n"
              "time.sleep(1.0)\n"
              "sys.exit(3)\n")
    said = []
    log_path = tmp_path / "train.log"
    command = [sys.executable, "-c", script]
    assert run_logged(command, log_path, said.append, "[1/2] smart seed 1", every=0.1) == 3
    assert said == ["[1/2] smart seed 1: epoch 1/2, update 1/4, epoch ETA 3s",
                    "[1/2] smart seed 1: epoch 1/2, update 2/4, epoch ETA 2s"]
    # The log as before: the command line, then the output.
    text = log_path.read_text()
    assert text.startswith("$ " + " ".join(command) + "\n")
    assert text.endswith("update 2/4: sst loss 0.9000; 8.0 examples/s; epoch ETA 2s\n")
