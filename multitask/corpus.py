"""In-domain text for MLM pretraining: the sentences of the course's training files, never dev or test."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from minbert.corpus import read_documents
from multitask.data import PairExample
from multitask.tasks import TASKS, Task


def training_files(data_dir: str | Path) -> list[tuple[Task, Path]]:
    """(task, training file) for every registered task (SST, Quora, STS, the CFIMDB reviews).

    Only the training split: the file name is built from "train", so no dev or test file can be
    picked up by mistake.
    """
    return [(task, task.file(data_dir, "train")) for task in TASKS.values()]


def training_texts(data_dir: str | Path) -> list[str]:
    """Every sentence of the training files (both sides of a pair), in file order, blanks dropped.

    Rows are read without their labels: a row whose label is unusable still has usable text.
    """
    texts = []
    for task, path in training_files(data_dir):
        for example in task.read(path, labelled=False):
            parts = (example.text_a, example.text_b) if isinstance(example, PairExample) else (example.text,)
            texts.extend(text for text in parts if text)
    return texts


def pretraining_texts(data_dir: str | Path, extra_files: Sequence[str | Path] = ()) -> list[str]:
    """The course training text followed by each extra file's lines (one document per line), not yet deduplicated."""
    texts = training_texts(data_dir)
    for path in extra_files:
        texts += read_documents(path)
    return texts
