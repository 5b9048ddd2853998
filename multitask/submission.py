"""Submission packaging: the six course prediction files checked against their inputs, then zipped with the code."""

from __future__ import annotations

import zipfile
from pathlib import Path

from minbert.atomic import atomic_path
from multitask.predictions import PredictionFile, PredictionFileError, prediction_path, read_predictions
from multitask.tasks import COURSE_TASKS, TASKS

# The course grades the three course tasks only; an optional task (CFIMDB) is not submitted.
PREDICTION_FILES = tuple((task, split) for task in COURSE_TASKS for split in ("dev", "test"))
# What the grader gets besides the predictions: the code that made them, nothing run-specific.
CODE = ("minbert", "multitask", "smart", "scripts", "multitask_classifier.py", "requirements.txt", "README.md")
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".tmp")


def check_prediction_file(path: Path, task: str, input_path: Path) -> PredictionFile:
    """Validate one prediction file: course format and values (read_predictions), then one row per input id, in order.

    Raises PredictionFileError naming the first bad line; a missing or unreadable input file
    raises the reader's DataError.
    """
    # labelled=False, as when the predictions were written: every input row has an id to predict.
    expected = TASKS[task].read(input_path, labelled=False).ids
    parsed = read_predictions(path, task)
    expected_set = set(expected)
    for row, (found, wanted) in enumerate(zip(parsed.ids, expected)):
        if found != wanted:
            line = row + 2  # line 1 is the header
            if found not in expected_set:
                problem = f"id {found} is not in {input_path}"
            else:
                problem = (f"expected id {wanted} (row {row + 1} of {input_path}) but found {found}: "
                           "a row is missing or out of order")
            raise PredictionFileError(path, line, problem)
    if len(parsed) < len(expected):
        raise PredictionFileError(path, len(parsed) + 2, f"the file ends after {len(parsed)} rows but {input_path} "
                                  f"has {len(expected)} ids (first without a prediction: {expected[len(parsed)]})")
    if len(parsed) > len(expected):
        raise PredictionFileError(path, len(expected) + 2, f"extra row: {input_path} has only {len(expected)} ids")
    return parsed


def check_predictions(predictions_dir: Path, data_dir: Path) -> tuple[dict[Path, int], list[str]]:
    """All six files: ({path: rows} of the good ones, one message per bad one)."""
    good, problems = {}, []
    for task, split in PREDICTION_FILES:
        path = prediction_path(predictions_dir, task, split)
        try:
            good[path] = len(check_prediction_file(path, task, TASKS[task].file(data_dir, split)))
        except ValueError as err:  # PredictionFileError and the input reader's DataError
            problems.append(str(err))
    return good, problems


def code_files(repo: Path) -> list[Path]:
    """The files of CODE under `repo`, without caches, hidden files or leftovers of atomic writes."""
    files = []
    for name in CODE:
        root = repo / name
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            for path in sorted(root.rglob("*")):
                parts = path.relative_to(repo).parts
                if (path.is_file() and not path.name.endswith(SKIPPED_SUFFIXES)
                        and not any(part.startswith(".") or part == "__pycache__" or part.endswith(".egg-info")
                                    for part in parts)):
                    files.append(path)
        else:
            raise FileNotFoundError(f"{root}: part of the submission's code but missing")
    return files


def build_zip(zip_path: Path, repo: Path, predictions: list[Path]) -> list[str]:
    """Write the zip atomically (a failed run leaves no half archive); returns its member names."""
    members = [(path, path.relative_to(repo).as_posix()) for path in code_files(repo)]
    members += [(path, f"predictions/{path.name}") for path in predictions]
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path, name in members:
                archive.write(path, name)
    return [name for _, name in members]
