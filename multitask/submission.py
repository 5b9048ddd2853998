"""The course's prediction files: written for a model, checked against their inputs, scored on dev, zipped."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from minbert import load_tokenizer
from minbert.plumbing.atomic import atomic_path
from minbert.plumbing.machine import resolve_precision
from multitask.batching import encode_task
from multitask.checkpoint import load_checkpoint
from multitask.data import ReadResult
from multitask.evaluate import overall, predict
from multitask.model import MultitaskBert
from multitask.predictions import (PredictionFile, PredictionFileError, prediction_path, read_predictions,
                                   write_predictions)
from multitask.tasks import COURSE_TASKS, PREDICTED_SPLITS, TASKS

if TYPE_CHECKING:  # a type only: multitask.settings is above this module
    from multitask.settings import Settings

log = logging.getLogger(__name__)

# The course grades the three course tasks only; an optional task (CFIMDB) is not submitted.
PREDICTION_FILES = tuple((task, split) for task in COURSE_TASKS for split in PREDICTED_SPLITS)
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


@dataclass(frozen=True)
class DevScore:
    """One task's dev metric of a prediction file, over the predictions whose id has a usable dev label."""

    task: str
    score: float  # accuracy, or Pearson r for STS
    scored: int
    # Predictions whose id is not among the labelled dev examples: a row the reader skipped for its
    # label, or an id the dev file does not have. They cannot be scored, so they are left out.
    unscored: int


def score_dev_predictions(predictions: PredictionFile, dev: ReadResult) -> DevScore:
    """The task's metric (Task.score) of `predictions` against the labelled examples of `dev`, matched by id.

    Raises PredictionFileError when a labelled example has no prediction: a score over part of
    the dev set would not be the dev score.
    """
    task = TASKS[predictions.task]
    by_id = predictions.as_dict()
    missing = [example.id for example in dev if example.id not in by_id]
    if missing:
        raise PredictionFileError(predictions.path, None, f"{len(missing)} labelled id(s) of {dev.path} have no "
                                  f"prediction (first: {missing[0]}), so the file cannot be scored")
    values = torch.tensor([by_id[example.id] for example in dev])
    labels = torch.tensor([example.label for example in dev])
    labelled = {example.id for example in dev}
    return DevScore(task.name, task.score(values, labels), len(dev),
                    sum(example_id not in labelled for example_id in by_id))


def dev_scores(predictions_dir: Path, data_dir: Path) -> dict[str, DevScore]:
    """Each course task's dev score from its dev prediction file and the labelled dev file of `data_dir`.

    Raises PredictionFileError for a bad or incomplete prediction file and the reader's
    DataError for a dev file without usable labels.
    """
    scores = {}
    for task in COURSE_TASKS:
        predictions = read_predictions(prediction_path(predictions_dir, task, "dev"), task)
        scores[task] = score_dev_predictions(predictions, TASKS[task].read(TASKS[task].file(data_dir, "dev")))
    return scores


def dev_score_line(scores: dict[str, DevScore]) -> str:
    """One line: `dev scores of the packaged predictions: sst …  para …  sts …  mean …`, then any unscored rows.

    The mean is over tasks with Pearson r as (r + 1) / 2 (Task.unit_score), as training reports it.
    """
    mean = overall({task: s.score for task, s in scores.items()})
    line = "dev scores of the packaged predictions: " + "  ".join(
        [f"{task} {s.score:.3f}" for task, s in scores.items()] + [f"mean {mean:.3f}"])
    unscored = [f"{task} {s.unscored}" for task, s in scores.items() if s.unscored]
    if unscored:
        line += f"  (predictions without a usable dev label, not scored: {', '.join(unscored)})"
    return line


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


def predict_from_checkpoint(settings: Settings, device: torch.device) -> None:
    """--predict_only: the prediction files of a saved checkpoint, and the dev scores of what was written."""
    checkpoint = settings.run.best_dir
    model, record = load_checkpoint(checkpoint, unpad_inputs=True)
    precision = resolve_precision(settings.train.precision, device)
    write_all_predictions(model, load_tokenizer(checkpoint), settings, device, record["settings"]["max_length"],
                          precision, tasks=tuple(t for t in settings.run.tasks if t in model.tasks))


def write_all_predictions(model: MultitaskBert, tokenizer, settings: Settings, device: torch.device, max_length: int,
                          precision: str, kept_dev: dict[str, dict[str, float]] | None = None,
                          tasks: tuple[str, ...] | None = None) -> None:
    """Dev and test prediction files for each task, in the course's format and input order; logs the dev scores.

    `kept_dev` holds the kept epoch's dev predictions by id: rows found there are not predicted again.
    """
    model.to(device)
    dev_scores = {}
    for task in tasks or settings.run.tasks:
        spec = TASKS[task]
        for split in PREDICTED_SPLITS:
            # Read without labels: a dev row whose label is unusable still gets its prediction line.
            examples = spec.read(settings.data_file(task, split), labelled=False).examples
            known = (kept_dev or {}).get(task, {}) if split == "dev" else {}
            missing = [e for e in examples if e.id not in known]
            values = dict(known)
            if missing:
                dataset = encode_task(missing, tokenizer, spec, model.pair_encoding, max_length)
                values.update(zip(dataset.ids, predict(model, dataset, settings.train.eval_batch_size, device,
                                                       precision).tolist()))
            ids = [e.id for e in examples]
            path = write_predictions(settings.output_file(task, split), task, ids, [values[i] for i in ids])
            log.info("wrote %s (%d rows%s)", path, len(ids),
                     f", {len(ids) - len(missing)} from the kept epoch's dev scoring" if len(missing) < len(ids) else "")
            if split == "dev":
                written = PredictionFile(path, task, ids, [values[i] for i in ids])
                dev_scores[task] = score_dev_predictions(written, spec.read(settings.data_file(task, "dev"))).score
    if dev_scores:
        log.info("dev scores of the written files: %s  mean %.3f",
                 "  ".join(f"{task} {value:.3f}" for task, value in dev_scores.items()), overall(dev_scores))
