"""Run-time plumbing: device choice, seeding, progress bars."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


def pick_device(device: str = "auto", use_gpu: bool = False) -> torch.device:
    """`auto` takes CUDA when present; `--use_gpu` (the course's flag) asks for it explicitly."""
    if use_gpu and device == "auto":
        device = "cuda"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda / --use_gpu was given but no CUDA device is available; use --device cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) — the one piece of global state we set."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def show_progress() -> bool:
    """tqdm bars only for a person at a terminal: not when piped, logged or under CI.

    Under torchrun only rank 0 draws: every process shares the terminal, and N interleaved bars
    are unreadable.
    """
    return sys.stderr.isatty() and not os.environ.get("CI") and is_main_process()


def is_main_process() -> bool:
    """True unless torchrun started this process with a rank other than 0 (read from RANK, so it
    works before any process group exists, e.g. to set log levels)."""
    return os.environ.get("RANK", "0") == "0"


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
