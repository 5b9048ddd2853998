"""Shared fixtures: the packaged checkpoint, the course data directory and Hugging Face references."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def pytest_configure(config: pytest.Config) -> None:
    # transformers is the reference implementation in tests only; keep its chatter out of the output.
    logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def checkpoint_dir() -> Path:
    from minbert.hub import default_checkpoint_dir
    return default_checkpoint_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """A module's tests on one thread, restored afterwards (`pytestmark = pytest.mark.usefixtures(...)`).

    The tiny runs gain nothing from a second thread, and on a 2-core machine shared with another
    torch process two spinning threads make each step several times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_column(path: Path, *columns: str, limit: int | None = None) -> list:
    """Values of the given columns from a course CSV, read with the plain csv module (independent of the package)."""
    with open(path, encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")]
    rows = rows[:limit] if limit else rows
    if len(columns) == 1:
        return [r[columns[0]] for r in rows]
    return [tuple(r[c] for c in columns) for r in rows]
