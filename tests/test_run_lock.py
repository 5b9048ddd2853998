"""One run per output: a second run on the same --out_dir or prediction directory refuses in one line naming the first."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multitask import run_lock
from multitask_classifier import main
from multitask.data import DataError
from multitask.run_lock import (OUT_DIR_LOCK, PREDICTIONS_LOCK, LockOwner, LockSpec, RunLockError, holding,
                                machine_id, output_locks)
from multitask.settings import parse
from tests.test_pipeline import SEED, data_args, output_args, write_tiny_course_files
from tests.test_resume import BLOCK_AFTER_SAVE

REPO = Path(__file__).resolve().parent.parent


def spec(directory: Path, name: str = OUT_DIR_LOCK) -> LockSpec:
    return LockSpec(directory / name, f"--out_dir {directory}", "pick another --out_dir")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(path: Path, pid: int, host: str | None = None, machine: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01 09:00:00 UTC",
                                "command": "multitask_classifier.py --out_dir x",
                                "machine": machine_id() if machine is None else machine}))


# ------------------------------------------------------------------------------------------------ the lock

def test_the_lock_names_its_run_and_goes_with_it(tmp_path):
    out_dir = tmp_path / "run"
    with holding([spec(out_dir)]):
        owner = json.loads((out_dir / OUT_DIR_LOCK).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert owner["started"] and owner["command"]
    assert not (out_dir / OUT_DIR_LOCK).exists()
    # The lock made the directory and nothing else was written there: it goes too.
    assert not out_dir.exists()


def test_a_second_holder_is_refused_in_one_line_naming_the_first(tmp_path):
    with holding([spec(tmp_path)]):
        started = LockOwner.from_json((tmp_path / OUT_DIR_LOCK).read_text()).started
        with pytest.raises(RunLockError) as refused:
            with holding([spec(tmp_path)]):
                pass
        message = str(refused.value)
        assert "\n" not in message
        assert f"--out_dir {tmp_path} is in use by another run (pid {os.getpid()} on host {socket.gethostname()}, " \
               f"started {started}" in message and message.endswith("pick another --out_dir")
        # The refusal left the first run's lock alone.
        assert LockOwner.from_json((tmp_path / OUT_DIR_LOCK).read_text()).pid == os.getpid()


def test_locks_are_all_or_none(tmp_path):
    free, taken = spec(tmp_path / "free"), spec(tmp_path / "taken")
    with holding([taken]):
        with pytest.raises(RunLockError):
            with holding([free, taken]):
                pass
        assert not free.path.exists() and taken.path.exists()


def test_a_lock_of_a_dead_process_on_this_machine_is_taken_over_with_one_warning(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path / OUT_DIR_LOCK, pid)
    with caplog.at_level(logging.WARNING, logger="multitask.run_lock"):
        with holding([spec(tmp_path)]):
            assert LockOwner.from_json((tmp_path / OUT_DIR_LOCK).read_text()).pid == os.getpid()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"took over {tmp_path / OUT_DIR_LOCK}" in warnings[0] and f"pid {pid} " in warnings[0]
    assert not (tmp_path / f"{OUT_DIR_LOCK}.takeover").exists()


@pytest.mark.parametrize("host,machine", [("another-host", None), (None, "another-boot/pid:[1]")],
                         ids=["other-host", "same-name-other-machine"])
def test_a_lock_from_another_machine_is_never_taken_over(tmp_path, host, machine):
    # A dead pid: were the lock from here, it would be taken over.
    write_lock(tmp_path / OUT_DIR_LOCK, dead_pid(), host, machine)
    with pytest.raises(RunLockError) as refused:
        with holding([spec(tmp_path)]):
            pass
    message = str(refused.value)
    assert "in use by a run on another machine" in message and f"delete {tmp_path / OUT_DIR_LOCK} and rerun" in message
    assert "\n" not in message


def test_a_live_lock_of_another_process_is_not_taken_over(tmp_path):
    # pid 1 exists in every pid namespace.
    write_lock(tmp_path / OUT_DIR_LOCK, 1)
    with pytest.raises(RunLockError, match=r"in use by another run \(pid 1 on host"):
        with holding([spec(tmp_path)]):
            pass


def test_an_unreadable_lock_is_refused_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "READ_PATIENCE_SECONDS", 0.2)
    (tmp_path / OUT_DIR_LOCK).write_text("{not json")
    with pytest.raises(RunLockError, match=rf"{tmp_path / OUT_DIR_LOCK}: a lock file with no readable owner.*delete"):
        with holding([spec(tmp_path)]):
            pass


def test_a_directory_that_cannot_be_made_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("a file where the directory should be")
    with pytest.raises(RunLockError, match=rf"^--out_dir {tmp_path / 'file' / 'run'}: cannot create "
                                           rf"{tmp_path / 'file' / 'run'} \(.*\); pick another --out_dir$"):
        with holding([spec(tmp_path / "file" / "run")]):
            pass


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    with holding([spec(tmp_path)]):
        # Deleted by hand and taken by another run meanwhile.
        write_lock(tmp_path / OUT_DIR_LOCK, 1)
    assert LockOwner.from_json((tmp_path / OUT_DIR_LOCK).read_text()).pid == 1


# ------------------------------------------------------------------------------------- what a run locks

def test_a_run_locks_its_out_dir_and_each_prediction_directory_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = output_locks(parse(["--out_dir", "runs/a"]))
    assert [s.path for s in default] == [Path("runs/a") / OUT_DIR_LOCK, tmp_path / "predictions" / PREDICTIONS_LOCK]
    # Two spellings of one directory are one lock (else a run would refuse itself).
    spelled = output_locks(parse(["--out_dir", "runs/a", "--sst_dev_out", "./predictions/../predictions/s.csv"]))
    assert len(spelled) == 2
    split = output_locks(parse(["--out_dir", "runs/a", "--sst_test_out", "elsewhere/sst.csv"]))
    assert [s.path for s in split][1:] == [tmp_path / "predictions" / PREDICTIONS_LOCK,
                                           tmp_path / "elsewhere" / PREDICTIONS_LOCK]
    assert "--sst_test_out" in split[2].instead and "--sst_dev_out" not in split[2].instead
    assert [s.path for s in output_locks(parse(["--out_dir", "runs/a", "--skip_predictions"]))] == \
        [Path("runs/a") / OUT_DIR_LOCK]
    # --predict_only reads --checkpoint and writes only prediction files.
    assert [s.path for s in output_locks(parse(["--predict_only"]))] == [tmp_path / "predictions" / PREDICTIONS_LOCK]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict:
    return write_tiny_course_files(tmp_path_factory.mktemp("data"))


def cli_args(tiny_data: dict, out_dir: Path, predictions: Path, *extra: str) -> list[str]:
    out_args, _ = output_args(predictions)
    return ["--option", "finetune", "--epochs", "1", "--batch_size", "8", "--seed", SEED, "--device", "cpu",
            "--precision", "fp32", *data_args(tiny_data), *out_args, "--out_dir", str(out_dir), *extra]


@pytest.mark.parametrize("which", ["out_dir", "predictions"])
def test_the_cli_refuses_a_held_output_in_one_line(tiny_data, tmp_path, which):
    predictions = tmp_path / "predictions"
    held = spec(tmp_path / "run") if which == "out_dir" else spec(predictions, PREDICTIONS_LOCK)
    with holding([held]):
        with pytest.raises(SystemExit) as refused:
            main(cli_args(tiny_data, tmp_path / ("run" if which == "out_dir" else "other"), predictions))
    message = str(refused.value.code)
    what = f"--out_dir {tmp_path / 'run'}" if which == "out_dir" else f"the prediction directory {predictions}"
    assert message.startswith(f"error: {what} is in use by another run (pid {os.getpid()} ") and "\n" not in message
    # Nothing of this run is left behind: no directory made for it, no lock.
    assert not (tmp_path / "other").exists() and not any(tmp_path.rglob("*.lock"))


@pytest.mark.parametrize("raised", [KeyboardInterrupt, DataError])
def test_the_cli_releases_its_locks_when_the_run_stops(tiny_data, tmp_path, monkeypatch, raised):
    out_dir, predictions = tmp_path / "run", tmp_path / "predictions"
    seen = []

    def stopped(settings, env, device):
        seen.append(sorted(p.name for p in tmp_path.rglob("*lock")))
        raise raised("stopped")

    monkeypatch.setattr("multitask_classifier.train_and_predict", stopped)
    with pytest.raises(SystemExit if raised is DataError else KeyboardInterrupt):
        main(cli_args(tiny_data, out_dir, predictions))
    assert seen == [[PREDICTIONS_LOCK, OUT_DIR_LOCK]]
    assert not any(tmp_path.rglob("*lock"))


# ------------------------------------------------------------------------------ two real processes

def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
    return subprocess.run([sys.executable, "multitask_classifier.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_second_process_is_refused_while_the_first_runs_and_a_killed_runs_locks_are_taken_over(tiny_data, tmp_path):
    run_dir, predictions = tmp_path / "run", tmp_path / "predictions"
    args = cli_args(tiny_data, run_dir, predictions, "--resume", "--save_every", "2")
    marker = tmp_path / "blocked"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
    with open(tmp_path / "first.log", "w", encoding="utf-8") as log:
        # The first run blocks right after its first saved state (update 2 of 6), holding its locks.
        first = subprocess.Popen([sys.executable, "-c", BLOCK_AFTER_SAVE, "1", str(marker), *args], cwd=REPO, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        state = snapshot(run_dir / "resume")

        # The same command again, --resume included: it would splice its run onto the first's state.
        second = run_cli(args)
        assert second.returncode != 0
        line = second.stderr.strip()
        assert "\n" not in line and line.startswith(f"error: --out_dir {run_dir} is in use by another run "
                                                    f"(pid {first.pid} on host {socket.gethostname()}, started "), line
        assert snapshot(run_dir / "resume") == state

        # Another --out_dir, the same prediction files.
        third = run_cli(cli_args(tiny_data, tmp_path / "other", predictions))
        assert third.returncode != 0
        line = third.stderr.strip()
        assert "\n" not in line and line.startswith(f"error: the prediction directory {predictions} is in use by "
                                                    f"another run (pid {first.pid} "), line
        assert "--skip_predictions" in line and not (tmp_path / "other").exists()
    finally:
        first.kill()
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert LockOwner.from_json((run_dir / OUT_DIR_LOCK).read_text()).pid == first.pid

    # The killed run's locks are stale: its resumption takes them over, says so, and finishes.
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    took_over = [line for line in resumed.stderr.splitlines() if line.startswith("WARNING multitask.run_lock: took over")]
    assert len(took_over) == 2 and all(f"(pid {first.pid} " in line for line in took_over), resumed.stderr[-3000:]
    assert f"resuming the run in {run_dir} at epoch 1, step 2" in resumed.stderr
    _, outputs = output_args(predictions)
    assert all(path.is_file() for path in outputs.values())
    assert not (run_dir / OUT_DIR_LOCK).exists() and not (predictions / PREDICTIONS_LOCK).exists()
