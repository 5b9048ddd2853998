"""Crash-safe resume: an interrupted run continued with --resume ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from minbert import BertModel, CheckpointError
from multitask.checkpoint import load_checkpoint, save_checkpoint
from multitask.model import MultitaskBert
from multitask.records import TIMING_KEYS
from multitask.regularizers import RegularizerSettings, Regularizers, new_weight_average
from multitask.resume import STATE_FILE, RunState
from multitask.train import Trainer, TrainSettings
from multitask_classifier import main
from tests.test_checkpoint_errors import live_payload
from tests.test_pipeline import DATA, ROWS, SEED, SPLIT_FILES, STEMS, data_args, output_args, write_tiny_file
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
                 init_seed: int = 0, precision: str = "fp32") -> tuple[Trainer, RunState, Regularizers | None]:
    """A two-epoch run of a tiny random BERT on three tiny tasks, saving its state every 2 updates.

    `crash_at_update` raises Crash right after that optimiser update, between two saves, so the
    steps since the last save are lost as they would be in a kill.
    """
    torch.manual_seed(init_seed)
    random.seed(init_seed)
    np.random.seed(init_seed)
    model = MultitaskBert(BertModel(TINY))
    teacher = new_weight_average(model, None) if smart else None
    regularizers = Regularizers(RegularizerSettings(smart=True), teacher) if smart else None
    run_state = RunState(out_dir / "resume", FINGERPRINT)

    class CrashingTrainer(Trainer):
        def update(self) -> None:
            super().update()
            if self.updates == crash_at_update:
                raise Crash

    tasks = tiny_tasks()
    trainer = CrashingTrainer(model, tasks, tasks,
                              TrainSettings(epochs=2, batch_size=8, lr=1e-3, seed=0, grad_accum=grad_accum,
                                            precision=precision),
                              torch.device("cpu"), out_dir, regularizers=regularizers, average=teacher,
                              on_save_state=lambda t: run_state.save(t, teacher), save_every=2)
    return trainer, run_state, regularizers


def comparable(history) -> list[dict]:
    return [{k: v for k, v in record.as_json().items() if k not in TIMING_KEYS} for record in history]


def metrics_lines(out_dir: Path) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


@pytest.mark.parametrize("smart,grad_accum,crash_at_update,precision", [
    (True, 1, 13, "fp32"),   # SMART: adversarial noise and the mean teacher must both continue exactly
    (False, 1, 3, "fp32"),   # crash in the first epoch
    (True, 2, 7, "fp32"),    # accumulation: 9 steps an epoch, so the last group of each epoch is a single step
    (True, 1, 13, "bf16"),   # the same under bf16 autocast
    (False, 1, 13, "fp16"),  # fp16: the loss scale the scaler has settled on must continue too
], ids=["smart", "plain-epoch1", "smart-grad-accum", "smart-bf16", "plain-fp16"])
def test_interrupted_and_resumed_trainer_is_bit_identical(tmp_path, monkeypatch, caplog, smart, grad_accum,
                                                          crash_at_update, precision):
    reference, _, reference_regs = tiny_trainer(tmp_path / "reference", smart, grad_accum, precision=precision)
    reference_history = reference.train()

    crashed, _, _ = tiny_trainer(tmp_path / "run", smart, grad_accum, crash_at_update=crash_at_update,
                                 precision=precision)
    with pytest.raises(Crash):
        crashed.train()
    assert crashed.updates == crash_at_update
    lines_before = metrics_lines(tmp_path / "run")

    # A new "process": different initial weights and RNG draws, all to be overwritten by the state.
    resumed, run_state, resumed_regs = tiny_trainer(tmp_path / "run", smart, grad_accum, init_seed=123,
                                                    precision=precision)
    torch.rand(1000)
    state = run_state.load()
    assert state is not None
    run_state.restore(state, resumed, resumed_regs.average if resumed_regs else None)
    assert resumed.updates < crash_at_update  # the updates after the last save are redone
    # Output to a log file: the resumed process reports progress lines (every step, at interval 0)
    # from where it took over.
    monkeypatch.setattr("multitask.train.show_progress", lambda: False)
    resumed.progress_interval = 0
    epoch, updates_before = len(resumed.history), resumed.updates
    step = resumed.progress.step if resumed.progress is not None and resumed.progress.epoch == epoch else 0
    with caplog.at_level(logging.INFO, logger="multitask.train"):
        history = resumed.train()
    lines = [r.getMessage() for r in caplog.records if " examples/s; epoch ETA " in r.getMessage()]
    assert len(lines) == resumed.steps_per_epoch * (2 - epoch) - step
    assert lines[0].startswith(f"epoch {epoch + 1}/2, update {updates_before + (grad_accum == 1)}/")
    assert lines[-1].startswith(f"epoch 2/2, update {resumed.total_updates}/{resumed.total_updates}: ")

    assert comparable(history) == comparable(reference_history)
    assert_same_tensors(resumed.model.state_dict(), reference.model.state_dict())
    if smart:
        assert_same_tensors(resumed_regs.average.state_dict(), reference_regs.average.state_dict())
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


def test_pending_gradients_are_saved_and_restored(tmp_path):
    # A skipped non-finite step at the end of an accumulation group leaves gradients for the next update.
    trainer, run_state, _ = tiny_trainer(tmp_path, smart=False)
    pending = {name: torch.randn_like(p) for name, p in list(trainer.model.named_parameters())[:3]}
    for name, p in trainer.model.named_parameters():
        p.grad = pending.get(name)
    run_state.save(trainer)
    fresh, _, _ = tiny_trainer(tmp_path, smart=False, init_seed=5)
    run_state.restore(run_state.load(), fresh)
    restored = {name: p.grad for name, p in fresh.model.named_parameters() if p.grad is not None}
    assert_same_tensors(restored, pending)


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


def test_state_file_with_pickled_code_is_refused_naming_it_and_never_runs(saved_state, tmp_path):
    marker = tmp_path / "payload-ran"
    live_payload(saved_state.state_file, marker)
    with pytest.raises(CheckpointError, match=rf"{saved_state.state_file}: refused to load.*pickled"):
        saved_state.load()
    assert not marker.exists()


@pytest.mark.parametrize("failing_write", ["weights", "state"])
def test_a_save_that_fails_half_way_leaves_the_previous_state_loadable(saved_state, tmp_path, failing_write):
    before = saved_state.load()
    trainer, _, _ = tiny_trainer(tmp_path / "other", smart=False)
    trainer.updates = 99  # something the failed save would have recorded

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        # The tensors' file or the state file: the two writes of a save.
        patch.setattr("minbert.weights.save_file" if failing_write == "weights" else "multitask.resume.torch.save",
                      disk_full)
        with pytest.raises(OSError, match="No space left"):
            saved_state.save(trainer)
    after = RunState(saved_state.directory, FINGERPRINT).load()
    assert after["weights"] == before["weights"] and after["trainer"]["updates"] == before["trainer"]["updates"]
    resumed, _, _ = tiny_trainer(tmp_path / "resumed", smart=False)
    saved_state.restore(after, resumed)
    assert resumed.updates == before["trainer"]["updates"]
    assert not [p.name for p in saved_state.directory.iterdir() if p.name.endswith(".tmp")]


def test_truncated_weights_file_is_refused_naming_it(saved_state, tmp_path):
    state = saved_state.load()
    weights = saved_state.directory / state["weights"]
    weights.write_bytes(weights.read_bytes()[:1000])
    trainer, _, _ = tiny_trainer(tmp_path / "other", smart=False)
    with pytest.raises(CheckpointError, match=rf"{weights}: cannot read the weights.*truncated"):
        saved_state.restore(state, trainer)


def test_a_checkpoint_save_that_fails_half_way_leaves_the_previous_best_loadable(tmp_path):
    torch.manual_seed(0)
    first = MultitaskBert(BertModel(TINY))
    save_checkpoint(first, tmp_path / "best", {"lr": 1e-3}, {"dev_mean": 0.5}, tokenizer_from=None)
    second = MultitaskBert(BertModel(TINY))
    with pytest.MonkeyPatch.context() as patch:
        calls = []

        def full_on_second_file(tensors, path, metadata=None):
            # The encoder's weights are written, then the disk fills while writing the heads.
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            save_file(tensors, path, metadata=metadata)

        patch.setattr("minbert.weights.save_file", full_on_second_file)
        with pytest.raises(OSError, match="No space left"):
            save_checkpoint(second, tmp_path / "best", {"lr": 2e-3}, {"dev_mean": 0.6}, tokenizer_from=None)
    assert len(calls) == 2
    loaded, record = load_checkpoint(tmp_path / "best")
    assert record["dev_scores"] == {"dev_mean": 0.5}
    assert_same_tensors(loaded.state_dict(), first.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_different_settings_are_refused_naming_the_flag(saved_state):
    changed = RunState(saved_state.directory, {**FINGERPRINT, "lr": 2e-3})
    with pytest.raises(CheckpointError, match=r"refusing to resume.*--lr: saved 0\.001, now 0\.002"):
        changed.load()


# ------------------------------------------------------------------ the real thing: SIGKILL, then --resume

# Two epochs of 6 steps; with --save_every 2 the saves are numbered 1 (update 2), 2 (update 4),
# 3 (end of epoch 1), 4 (update 8), 5 (update 10, epoch 2 step 4), 6 (end of epoch 2).
KILL_AFTER_SAVE = 5
# The classifier with RunState.save wrapped: after save N it writes a marker file and blocks, so the
# test kills a run that is certainly mid-epoch 2 with save N complete, not whatever a poll catches.
BLOCK_AFTER_SAVE = """
import sys, time
from multitask import resume
from multitask_classifier import main

saves, marker = int(sys.argv[1]), sys.argv[2]
save = resume.RunState.save

def save_then_block(self, *args, **kwargs):
    save(self, *args, **kwargs)
    if self.serial == saves:
        open(marker, "w").close()
        while True:
            time.sleep(60)

resume.RunState.save = save_then_block
main(sys.argv[3:])
"""


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("data")
    files = {}
    for task, stem in STEMS.items():
        for split, suffix in SPLIT_FILES.items():
            files[task, split] = directory / f"{stem}-{suffix}.csv"
            write_tiny_file(DATA / f"{stem}-{suffix}.csv", files[task, split], ROWS[split])
    return {"files": files}


def start_run(tiny_files: dict, out_dir: Path, *extra: str, block_after: tuple[int, Path] | None = None
              ) -> subprocess.Popen:
    out_args, _ = output_args(out_dir / "predictions")
    program = [str(REPO / "multitask_classifier.py")] if block_after is None else \
        ["-c", BLOCK_AFTER_SAVE, str(block_after[0]), str(block_after[1])]
    command = [sys.executable, *program, "--option", "finetune", "--epochs", "2",
               "--batch_size", "8", "--seed", SEED, "--device", "cpu", *data_args(tiny_files), *out_args,
               "--out_dir", str(out_dir), *extra]
    # One thread in every run: a different thread count may change float summation order.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
    # Output to a file, not a pipe: nobody reads a pipe while the test polls, and a full one would stall the run.
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f"{out_dir.name}.log", "a", encoding="utf-8") as log:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def output_of(process: subprocess.Popen) -> str:
    out_dir = Path(process.args[process.args.index("--out_dir") + 1])
    return (out_dir.parent / f"{out_dir.name}.log").read_text(encoding="utf-8")


def finish(process: subprocess.Popen) -> str:
    process.wait(timeout=600)
    assert process.returncode == 0, output_of(process)[-3000:]
    return output_of(process)


# bf16 by default (the autocast path is the one with more state to get wrong); fp32 is opt-in with
# `-m slow`: the in-process resume tests above already cover fp32 (its cost: results/README.md, Test suite).
@pytest.mark.parametrize("precision", [pytest.param("fp32", marks=pytest.mark.slow), "bf16"])
def test_sigkilled_run_resumes_to_byte_identical_predictions_and_scores(tiny_files, tmp_path, precision):
    reference_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "interrupted"
    finish(start_run(tiny_files, reference_dir, "--save_every", "0", "--keep_resume", "--precision", precision))

    # Started with --resume too: with nothing saved yet it must say so and start fresh.
    marker = tmp_path / "blocked"
    process = start_run(tiny_files, run_dir, "--save_every", "2", "--resume", "--precision", precision,
                        block_after=(KILL_AFTER_SAVE, marker))
    deadline = time.monotonic() + 600
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended (code {process.returncode}) before its save {KILL_AFTER_SAVE}:\n"
                        f"{output_of(process)[-3000:]}")
        assert time.monotonic() < deadline, f"save {KILL_AFTER_SAVE} never came"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    first_log = output_of(process)
    assert "no saved state" in first_log and "starting a fresh run" in first_log
    _, outputs = output_args(run_dir / "predictions")
    assert not any(path.exists() for path in outputs.values())
    assert len(metrics_lines(run_dir)) == 1

    # A different --save_every does not change results, so it may differ on resumption.
    # --keep_resume: the refusals below need the finished run's state.
    resumed_log = finish(start_run(tiny_files, run_dir, "--save_every", "3", "--resume", "--keep_resume",
                                   "--precision", precision))[len(first_log):]
    assert f"resuming the run in {run_dir} at epoch 2, step 4" in resumed_log

    _, reference_outputs = output_args(reference_dir / "predictions")
    for key, path in outputs.items():
        assert path.read_bytes() == reference_outputs[key].read_bytes(), key
    assert metrics_lines(run_dir) == metrics_lines(reference_dir)
    assert [line["epoch"] for line in metrics_lines(run_dir)] == [1, 2]
    # The best epoch may be one finished before the kill, so compare the final weights as well.
    assert_same_tensors(final_weights(run_dir), final_weights(reference_dir))

    # Resuming with a setting that changes results is refused before any training, naming the flag.
    out_args, _ = output_args(run_dir / "predictions")
    command = ["--option", "finetune", "--epochs", "2", "--batch_size", "8", "--seed", SEED, "--device", "cpu",
               *data_args(tiny_files), *out_args, "--out_dir", str(run_dir), "--resume"]
    with pytest.raises(SystemExit) as refused:
        main([*command, "--precision", precision, "--lr", "1e-4"])
    message = str(refused.value.code)
    assert "refusing to resume" in message and "--lr: saved 5e-05, now 0.0001" in message
    assert "\n" not in message
    other = {"fp32": "bf16", "bf16": "fp32"}[precision]
    with pytest.raises(SystemExit) as refused:
        main([*command, "--precision", other])
    assert f"--precision: saved '{precision}', now '{other}'" in str(refused.value.code)


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out_dir / "resume" / STATE_FILE, weights_only=True)
    return load_file(str(out_dir / "resume" / state["weights"]))
