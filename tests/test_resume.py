"""Crash-safe resume: an interrupted run continued with --resume ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from minbert import BertModel, CheckpointError
from multitask.model import MultitaskBert
from multitask.regularizers import RegularizerSettings, Regularizers
from multitask.resume import STATE_FILE, RunState
from multitask.train import Trainer, TrainSettings
from tests.test_pipeline import OUTPUTS, SEED, data_args, output_args, write_tiny_file
from tests.test_smart_training import TINY, tiny_tasks

REPO = Path(__file__).resolve().parent.parent
FINGERPRINT = {"lr": 1e-3, "seed": 0}


class Crash(Exception):
    """Stands in for a kill: training stops wherever it is raised."""


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------- in-process, tiny model

def tiny_trainer(out_dir: Path, smart: bool, grad_accum: int = 1, crash_at_update: int | None = None,
                 init_seed: int = 0) -> tuple[Trainer, RunState, Regularizers | None]:
    """A two-epoch run of a tiny random BERT on three tiny tasks, saving its state every 2 updates.

    `crash_at_update` raises Crash right after that optimiser update, between two saves, so the
    steps since the last save are lost as they would be in a kill.
    """
    torch.manual_seed(init_seed)
    random.seed(init_seed)
    np.random.seed(init_seed)
    model = MultitaskBert(BertModel(TINY))
    regularizers = Regularizers(model, RegularizerSettings(adversarial=True, bregman=True)) if smart else None
    teacher = regularizers.teacher if regularizers else None
    run_state = RunState(out_dir / "resume", FINGERPRINT)

    def after_update(updates: int, total: int) -> None:
        if regularizers is not None:
            regularizers.after_update(updates, total)
        if updates == crash_at_update:
            raise Crash

    tasks = tiny_tasks()
    trainer = Trainer(model, tasks, tasks, TrainSettings(epochs=2, batch_size=8, lr=1e-3, seed=0, grad_accum=grad_accum),
                      torch.device("cpu"), out_dir, regularizer=regularizers, after_update=after_update,
                      on_checkpoint=lambda t: run_state.save(t, teacher), save_every=2)
    return trainer, run_state, regularizers


def comparable(history) -> list[dict]:
    return [{k: v for k, v in record.as_json().items() if k != "train_seconds"} for record in history]


def metrics_lines(out_dir: Path) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"} for line in lines]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


@pytest.mark.parametrize("smart,grad_accum,crash_at_update", [
    (True, 1, 13),   # SMART: adversarial noise and the mean teacher must both continue exactly
    (False, 1, 3),   # crash in the first epoch
    (True, 2, 7),    # accumulation: 9 steps an epoch, so the last group of each epoch is a single step
], ids=["smart", "plain-epoch1", "smart-grad-accum"])
def test_interrupted_and_resumed_trainer_is_bit_identical(tmp_path, smart, grad_accum, crash_at_update):
    reference, _, reference_regs = tiny_trainer(tmp_path / "reference", smart, grad_accum)
    reference_history = reference.train()

    crashed, _, _ = tiny_trainer(tmp_path / "run", smart, grad_accum, crash_at_update=crash_at_update)
    with pytest.raises(Crash):
        crashed.train()
    assert crashed.updates == crash_at_update
    lines_before = metrics_lines(tmp_path / "run")

    # A new "process": different initial weights and RNG draws, all to be overwritten by the state.
    resumed, run_state, resumed_regs = tiny_trainer(tmp_path / "run", smart, grad_accum, init_seed=123)
    torch.rand(1000)
    state = run_state.load()
    assert state is not None
    run_state.restore(state, resumed, resumed_regs.teacher if resumed_regs else None)
    assert resumed.updates < crash_at_update  # the updates after the last save are redone
    history = resumed.train()

    assert comparable(history) == comparable(reference_history)
    assert_same_tensors(resumed.model.state_dict(), reference.model.state_dict())
    if smart:
        assert_same_tensors(resumed_regs.teacher.state_dict(), reference_regs.teacher.state_dict())
    # metrics.jsonl: the finished epochs' lines kept, nothing duplicated, the same as uninterrupted.
    assert metrics_lines(tmp_path / "run") == metrics_lines(tmp_path / "reference")
    assert lines_before == metrics_lines(tmp_path / "reference")[: len(lines_before)]


def test_a_finished_run_resumes_to_nothing_left_to_do(tmp_path):
    trainer, run_state, _ = tiny_trainer(tmp_path, smart=False)
    history = trainer.train()
    again, run_state, _ = tiny_trainer(tmp_path, smart=False)
    run_state.restore(run_state.load(), again, None)
    assert comparable(again.train()) == comparable(history)
    assert again.updates == trainer.updates
    assert len(metrics_lines(tmp_path)) == 2


def test_only_the_current_state_is_kept_on_disk(tmp_path):
    trainer, run_state, _ = tiny_trainer(tmp_path, smart=True)
    run_state.directory.mkdir(parents=True)
    (run_state.directory / ".state.pt.leftover.tmp").write_bytes(b"a write a kill interrupted")
    trainer.train()
    state = torch.load(run_state.state_file, weights_only=True)
    assert state["weights"].startswith("weights-")
    assert sorted(p.name for p in run_state.directory.iterdir()) == sorted([STATE_FILE, state["weights"]])


# ---------------------------------------------------------------------------------- broken or foreign state

@pytest.fixture
def saved_state(tmp_path) -> RunState:
    trainer, run_state, _ = tiny_trainer(tmp_path, smart=False, crash_at_update=3)
    with pytest.raises(Crash):
        trainer.train()
    return run_state


def test_truncated_state_file_is_refused_naming_it(saved_state):
    data = saved_state.state_file.read_bytes()
    saved_state.state_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{saved_state.state_file}: cannot read the resume state.*truncated"):
        saved_state.load()


def test_state_file_with_pickled_code_is_refused_naming_it(saved_state):
    torch.save({"format": 1, "payload": shutil.rmtree}, saved_state.state_file)
    with pytest.raises(CheckpointError, match=rf"{saved_state.state_file}: refused to load.*pickled"):
        saved_state.load()


def test_truncated_weights_file_is_refused_naming_it(saved_state, tmp_path):
    state = saved_state.load()
    weights = saved_state.directory / state["weights"]
    weights.write_bytes(weights.read_bytes()[:1000])
    trainer, _, _ = tiny_trainer(tmp_path / "other", smart=False)
    with pytest.raises(CheckpointError, match=rf"{weights}: cannot read the weights.*truncated"):
        saved_state.restore(state, trainer)


def test_different_settings_are_refused_naming_the_flag(saved_state):
    changed = RunState(saved_state.directory, {**FINGERPRINT, "lr": 2e-3})
    with pytest.raises(CheckpointError, match=r"refusing to resume.*--lr: saved 0\.001, now 0\.002"):
        changed.load()
