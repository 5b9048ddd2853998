"""Crash-safe training state for `--resume`: save it at update boundaries, restore it exactly, refuse mismatches."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from minbert import CheckpointError
from minbert.plumbing.atomic import atomic_path
from minbert.weights import read_tensors, save_tensors
from multitask.train import Trainer
from smart import WeightAverage

log = logging.getLogger(__name__)

STATE_DIR = "resume"
STATE_FILE = "state.pt"
FORMAT = 1
# Flags that only say where files go, whether predictions are written after training, how often
# the state is saved or when to give up: changing them between an interrupted run and its
# resumption leaves every number the run produces as it was.
NEUTRAL_FLAGS = frozenset({"resume", "save_every", "out_dir", "checkpoint", "predict_only", "max_bad_steps",
                           "use_gpu", "device", "skip_predictions", "keep_resume"})
# Path flags that are not fingerprinted by path: outputs and test files are only used after training,
# training and dev files count by content (their hashes).
PATH_SUFFIXES = ("_out", "_test", "_train", "_dev")


def fingerprinted(flag: str) -> bool:
    """Whether a flag's value is part of a run's fingerprint as it stands."""
    return flag not in NEUTRAL_FLAGS and not flag.endswith(PATH_SUFFIXES)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_fingerprint(flags: dict, device: torch.device, data_files: dict[str, Path]) -> dict:
    """The settings that decide a run's results, as JSON values: what a resumed run must share.

    Training and dev files count by content, not path, so a moved data directory still resumes;
    test files and output paths are only read or written after training and do not count.
    """
    # Every task's file paths are left out (the trained tasks' files count by their hashes below).
    fingerprint = {key: str(value) if isinstance(value, Path) else value for key, value in sorted(flags.items())
                   if fingerprinted(key)}
    fingerprint["device"] = device.type
    fingerprint.update({f"sha256({key})": file_sha256(path) for key, path in sorted(data_files.items())})
    # Round-trip through JSON so tuples and lists (and int/float spellings) compare the same way
    # as they will after the state has been written and read back.
    return json.loads(json.dumps(fingerprint))


def capture_rng() -> dict:
    """The state of every random generator training draws from, in plain lists and tensors."""
    version, internal, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": [version, list(internal), gauss_next],
            "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    # device_count() is 0 without CUDA: a CPU run saved on a GPU machine may resume on a CPU-only one.
    restore_cuda_rng(state["cuda"], torch.cuda.device_count(),
                     lambda saved, index: torch.cuda.set_rng_state(saved, index))


def restore_cuda_rng(saved: list[torch.Tensor], visible: int,
                     set_state: Callable[[torch.Tensor, int], None]) -> int:
    """Put back the saved CUDA generator states of the devices this process sees; returns how many.

    A state saved with N visible GPUs may resume with M (another machine, another
    CUDA_VISIBLE_DEVICES): device i gets saved state i for i < min(N, M). Training uses device 0
    (one process) or reseeds per rank (torchrun), so a missing or surplus device changes nothing
    it draws from; the mismatch is logged in one line.
    """
    restored = min(len(saved), visible)
    for index in range(restored):
        set_state(saved[index], index)
    if len(saved) != visible:
        log.info("resume: the state holds the CUDA RNG states of %d device(s), %d visible here: restored %d%s",
                 len(saved), visible, restored,
                 f", dropped {len(saved) - restored}" if len(saved) > restored
                 else f", devices {restored}..{visible - 1} keep this run's seeding")
    return restored


class RunState:
    """The training state of one run in `<out_dir>/resume/`: one `state.pt` and the weights file it names.

    `state.pt` (torch.save of plain values and tensors, read with weights_only=True) holds the
    optimiser, LR schedule, RNG states, position in the epoch plan, running totals and metrics
    history; `weights-<n>.safetensors` holds the model, the weight average and any pending
    gradients. Each save writes a new weights file, then replaces `state.pt` atomically, then
    deletes what the new state no longer names: a kill at any moment leaves one complete state.
    """

    def __init__(self, directory: str | Path, fingerprint: dict) -> None:
        self.directory = Path(directory)
        self.state_file = self.directory / STATE_FILE
        self.fingerprint = fingerprint
        self.serial = 0

    def exists(self) -> bool:
        return self.state_file.is_file()

    def clear(self) -> None:
        """Forget a saved state (the state file first, so a half-cleared directory is no state)."""
        self.state_file.unlink(missing_ok=True)
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.is_file():
                    path.unlink()

    def remove(self) -> None:
        """Forget the state and remove its directory (a finished run has no use for it)."""
        self.clear()
        if self.directory.is_dir() and not any(self.directory.iterdir()):
            self.directory.rmdir()

    def identity(self, state: dict | None) -> str:
        """What a process would resume from, comparable between processes: its save and the files' content."""
        if state is None:
            return "no state"
        digest = hashlib.sha256()
        # Content, not only the serial: a copy from another run, or one made before a later save,
        # can carry the same serial and different weights.
        for path in (self.state_file, self.directory / state["weights"]):
            digest.update(file_sha256(path).encode() if path.is_file() else b"missing")
        return (f"save {state['serial']} at update {state['trainer'].get('updates')} "
                f"(content sha256 {digest.hexdigest()[:12]})")

    def save(self, trainer: Trainer, average: WeightAverage | None = None) -> None:
        """Save everything needed to continue `trainer` exactly; call only between updates."""
        self.serial += 1
        weights_name = f"weights-{self.serial:06d}.safetensors"
        tensors = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
        # "teacher" in the state's keys: the format predates the name "weight average".
        if average is not None:
            tensors.update({f"teacher.{k}": v for k, v in average.state_dict().items()})
        # Normally empty (updates clear gradients), but a skipped non-finite step at the end of an
        # accumulation group leaves gradients that the next update still adds in.
        tensors.update({f"grad.{name}": p.grad for name, p in trainer.model.named_parameters() if p.grad is not None})
        save_tensors(tensors, self.directory / weights_name)
        state = {"format": FORMAT, "serial": self.serial, "weights": weights_name,
                 "fingerprint": json.dumps(self.fingerprint, sort_keys=True), "has_teacher": average is not None,
                 "trainer": trainer.state_dict(), "rng": capture_rng()}
        with atomic_path(self.state_file) as tmp:
            torch.save(state, tmp)
        for path in self.directory.iterdir():
            # Older weights files and temporary files of writes a kill interrupted.
            if path.name not in (STATE_FILE, weights_name) and path.is_file():
                path.unlink()
        log.debug("saved %s at %s", self.state_file, position(trainer))

    def load(self) -> dict | None:
        """The saved state (None if there is none), checked against this run's settings.

        Raises CheckpointError naming the file when it is unreadable, unsafe or from a run with
        different settings.
        """
        if not self.exists():
            return None
        path = self.state_file
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than plain "
                                  f"values and tensors, which could run code ({str(err).splitlines()[0]})") from err
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read the resume state; the file is truncated or corrupt "
                                  f"({str(err).splitlines()[0]}); delete {self.directory} to start over") from err
        try:
            if state["format"] != FORMAT:
                raise ValueError(f"format {state['format']}, this version reads {FORMAT}")
            # States saved by earlier versions may carry a flag that is neutral now, or an untrained
            # task's file path: neither counts. ("device" is the device type the fingerprint
            # records, not the neutral flag of that name.)
            saved = {key: value for key, value in json.loads(state["fingerprint"]).items()
                     if key == "device" or fingerprinted(key)}
            # Fail here, with the file's name, rather than halfway through a restore.
            missing = [key for key in ("serial", "weights", "has_teacher", "trainer", "rng") if key not in state]
            if missing:
                raise KeyError(missing[0])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: not a resume state this version can read ({err!r}); "
                                  f"delete {self.directory} to start over") from err
        # Flags before file contents: after a changed --tasks, the flag is the news, not the files it drops.
        differences = sorted((key for key in saved.keys() | self.fingerprint.keys()
                              if saved.get(key) != self.fingerprint.get(key)),
                             key=lambda key: (key.startswith("sha256("), key))
        if differences:
            shown = "; ".join(f"{describe(key)}: saved {saved.get(key)!r}, now {self.fingerprint.get(key)!r}"
                              for key in differences[:4])
            raise CheckpointError(f"{path}: refusing to resume: the saved run had different settings ({shown}"
                                  f"{'; …' if len(differences) > 4 else ''}). Rerun with the saved settings, "
                                  "or drop --resume (or pick another --out_dir) to start over")
        return state

    def restore(self, state: dict, trainer: Trainer, average: WeightAverage | None = None) -> None:
        """Put a state from `load` back into a freshly built trainer (and weight average), RNGs last."""
        weights_file = self.directory / state["weights"]
        if not weights_file.is_file():
            raise CheckpointError(f"{weights_file}: missing, but {self.state_file} names it; "
                                  f"delete {self.directory} to start over")
        if state["has_teacher"] != (average is not None):
            raise CheckpointError(f"{self.state_file}: the saved run {'had' if state['has_teacher'] else 'had no'} "
                                  "weight average but this one has the opposite; check "
                                  "--no_ema / --smart / --no_bregman")
        tensors = read_tensors(weights_file)
        parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "teacher": {}, "grad": {}}
        for key, tensor in tensors.items():
            part, _, name = key.partition(".")
            if part not in parts:
                raise CheckpointError(f"{weights_file}: unexpected key {key}")
            parts[part][name] = tensor
        try:
            trainer.model.load_state_dict(parts["model"], strict=True)
            if average is not None:
                average.load_state_dict(parts["teacher"], strict=True)
            params = dict(trainer.model.named_parameters())
            for name, grad in parts["grad"].items():
                params[name].grad = grad.to(params[name].device)
            trainer.load_state_dict(state["trainer"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(f"{weights_file}: does not fit this model and optimiser "
                                  f"({str(err).splitlines()[0]}); delete {self.directory} to start over") from err
        self.serial = state["serial"]
        # Last, so that nothing built above draws from the restored generators.
        restore_rng(state["rng"])


def describe(key: str) -> str:
    """How a fingerprint key reads in a message: `--lr`, or the data file it hashes."""
    if key.startswith("sha256("):
        return f"content of --{key[len('sha256('):-1]}"
    return "device" if key == "device" else f"--{key}"


def position(trainer: Trainer) -> str:
    """Where a run stands, for log lines: `epoch E, step S` means S steps of epoch E (from 1) are done."""
    if trainer.progress is None:
        if len(trainer.history) >= trainer.settings.epochs:
            return "the end of training"
        return f"the start of epoch {len(trainer.history) + 1}"
    return f"epoch {trainer.progress.epoch + 1}, step {trainer.progress.step}"
