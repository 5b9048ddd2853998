"""Readers for the course's tab-separated task files, with per-row validation and counted skips."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

# How many problem rows a warning spells out before it just gives the count.
REPORTED_PROBLEMS = 5



class DataError(ValueError):
    """A task file cannot be used at all: missing, empty, undecodable or not in the course format."""


class FileFormat(Protocol):
    """What the reader needs to know of a task's file (multitask.tasks.Task is one): its columns and labels."""

    name: str
    text_columns: tuple[str, ...]
    label_column: str

    @property
    def is_pair(self) -> bool: ...

    def parse_label(self, raw: str) -> Any: ...


@dataclass(frozen=True)
class SentenceExample:
    """One single-sentence row; `label` is None for test files."""

    id: str
    text: str
    label: int | None = None


@dataclass(frozen=True)
class PairExample:
    """One sentence-pair row; `label` is an int for paraphrase, a float for similarity, None for test."""

    id: str
    text_a: str
    text_b: str
    label: float | int | None = None


Example = SentenceExample | PairExample


@dataclass(frozen=True)
class RowProblem:
    """A row that was skipped or kept despite a defect, by its first physical line (header = 1)."""

    line: int
    reason: str


@dataclass
class ReadResult:
    """The usable examples of one file, in file order, and an account of the rows left out."""

    path: Path
    task: str
    labelled: bool
    examples: list[Example]
    skipped_rows: list[RowProblem] = field(default_factory=list)
    # Rows kept although something is off (test rows with empty text, duplicate ids).
    kept_with_problems: list[RowProblem] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.skipped_rows)

    @property
    def ids(self) -> list[str]:
        return [example.id for example in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)


class _SkipRow(Exception):
    """Internal signal: this row cannot become an example; the message is the reason."""


def _number(raw: str) -> float:
    text = raw.strip()
    if not text:
        raise ValueError("empty label")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"label {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"label {text!r} is not finite")
    return value


def parse_class_label(raw: str, num_classes: int) -> int:
    """An integer class 0..num_classes-1; "3" and "3.0" are both accepted (Quora writes "1.0")."""
    value = _number(raw)
    if not value.is_integer() or not 0 <= value < num_classes:
        raise ValueError(f"label {raw.strip()!r} is not an integer in 0..{num_classes - 1}")
    return int(value)


def parse_score_label(raw: str, low: float = 0.0, high: float = 5.0) -> float:
    """A real-valued score within [low, high]."""
    value = _number(raw)
    if not low <= value <= high:
        raise ValueError(f"label {raw.strip()!r} is outside [{low:g}, {high:g}]")
    return value


Row = TypeVar("Row")


def training_subset(rows: list[Row], fraction: float, seed: int, task: str) -> list[Row]:
    """round(fraction · len(rows)) of the rows (at least one), drawn without replacement, in file order.

    The draw depends on the seed and the task's name only (crc32, stable across processes, unlike
    hash()): runs that differ in anything else train on the same rows, so their scores pair up.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} is outside (0, 1]")
    count = max(1, round(fraction * len(rows)))
    rng = np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])
    chosen = np.sort(rng.choice(len(rows), size=count, replace=False))
    return [rows[i] for i in chosen]


def hashed_order(task: str, examples: Sequence[Example]) -> list[Example]:
    """The examples in a fixed pseudo-random order (by a hash of task and id): every prefix is a uniform
    sample, the same for every model, seed and machine, and unmoved by the file's row order. A file's first
    rows are no sample: SST's train and dev files run from mostly positive reviews to mostly negative ones."""
    def key(example: Example) -> str:
        return hashlib.sha256(f"{task}:{example.id}".encode()).hexdigest()
    return sorted(examples, key=key)


def limited(task: str, examples: list[Example], limit: int | None) -> list[Example]:
    """At most `limit` of the examples (all of them for None): the first of `hashed_order`, in file order."""
    if limit is None or limit >= len(examples):
        return examples
    kept = {id(example) for example in hashed_order(task, examples)[:limit]}
    return [example for example in examples if id(example) in kept]


def read_task_file(path: str | Path, task: FileFormat, labelled: bool = True) -> ReadResult:
    """Read a course CSV for `task`; bad rows are skipped, counted and logged once per file.

    Raises DataError when the file as a whole is unusable. With `labelled=False` (test
    files) the label column is not required and every row with an id is kept.
    """
    path = Path(path)
    text = _decode(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    header = _read_header(path, reader)
    columns = [name.strip() for name in header]
    _check_columns(path, task, columns, labelled)
    index = {name: columns.index(name) for name in ("id", *task.text_columns, task.label_column)
             if name in columns}

    result = ReadResult(path=path, task=task.name, labelled=labelled, examples=[])
    first_line_of_id: dict[str, int] = {}
    for first, last, fields in _records(path, reader):
        try:
            example, defect = _to_example(task, fields, len(columns), index, labelled, first, last)
        except _SkipRow as skip:
            result.skipped_rows.append(RowProblem(first, str(skip)))
            continue
        if defect:
            result.kept_with_problems.append(RowProblem(first, defect))
        if example.id in first_line_of_id:
            result.kept_with_problems.append(
                RowProblem(first, f"id {example.id} repeats line {first_line_of_id[example.id]}"))
        first_line_of_id.setdefault(example.id, first)
        result.examples.append(example)

    _report(result)
    if not result.examples:
        raise DataError(f"{path}: no usable rows ({result.skipped} skipped); "
                        f"check that it is a course file for task {task.name!r}")
    return result


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a tab-separated course file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror})") from None
    # utf-8-sig because a spreadsheet round trip adds a BOM, which would otherwise glue
    # itself to the first column name.
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        # err.object, not raw: offsets are counted after a stripped BOM.
        line = err.object.count(b"\n", 0, err.start) + 1
        bad = err.object[err.start:err.end]
        raise DataError(f"{path}: line {line}: bytes {bad!r} are not valid UTF-8; "
                        "re-save the file as UTF-8") from None


def _read_header(path: Path, reader: Any) -> list[str]:
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise DataError(f"{path}: line 1: unreadable header ({err})") from None
    if header is None:
        raise DataError(f"{path}: empty file (no header line)")
    if not any(name.strip() for name in header):
        raise DataError(f"{path}: line 1 is blank; expected a tab-separated header with an id column")
    return header


def _check_columns(path: Path, task: FileFormat, columns: list[str], labelled: bool) -> None:
    required = ["id", *task.text_columns] + ([task.label_column] if labelled else [])
    missing = [name for name in required if name not in columns]
    if not missing:
        return
    if len(columns) == 1:
        delimiter = " (it looks comma-separated)" if "," in columns[0] else ""
        hint = f"the header parses as a single column, so the file is not tab-separated{delimiter}"
    elif missing == [task.label_column]:
        hint = "test files have no labels: read this one with labelled=False"
    else:
        hint = f"is this a {task.name} file?"
    raise DataError(f"{path}: column {missing[0]!r} not found; columns found: {columns}; {hint}")


def _records(path: Path, reader: Any) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) per record; a quoted field may span several lines."""
    last = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{path}: line {reader.line_num}: cannot parse ({err})") from None
        first, last = last + 1, reader.line_num
        if fields:  # a blank line is no record at all
            yield first, last, fields


def _to_example(task: FileFormat, fields: list[str], width: int, index: dict[str, int], labelled: bool,
                first: int, last: int) -> tuple[Example, str | None]:
    """The example for one record and, for a test row kept despite a defect, what the defect is."""
    # A field spanning lines is almost always a stray quote that swallowed the rows after it.
    span = f"record spans lines {first}-{last} (an unbalanced quote joins lines)" if last > first else None
    if len(fields) != width:
        raise _SkipRow("; ".join(filter(None, [f"{len(fields)} fields where the header has {width}", span])))
    record_id = fields[index["id"]].strip()
    if not record_id:
        raise _SkipRow("missing id")
    texts = [fields[index[name]].strip() for name in task.text_columns]
    defects = [span] if span else []
    defects += [f"empty {name}" for name, text in zip(task.text_columns, texts) if not text]
    label = None
    if labelled:
        if defects:
            raise _SkipRow("; ".join(defects))
        try:
            label = task.parse_label(fields[index[task.label_column]])
        except ValueError as err:
            raise _SkipRow(str(err)) from None
    # A test row is kept even with empty text: the grader expects a prediction for every
    # test id, and a row missing from the output costs more than a guess on empty input.
    defect = "; ".join(defects) or None
    if task.is_pair:
        return PairExample(record_id, texts[0], texts[1], label), defect
    return SentenceExample(record_id, texts[0], label), defect


def _describe(problems: list[RowProblem]) -> str:
    shown = "; ".join(f"line {p.line}: {p.reason}" for p in problems[:REPORTED_PROBLEMS])
    more = len(problems) - REPORTED_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


def _report(result: ReadResult) -> None:
    if result.skipped_rows:
        logger.warning("%s: skipped %d malformed row(s): %s", result.path, result.skipped,
                       _describe(result.skipped_rows))
    if result.kept_with_problems:
        logger.warning("%s: kept %d row(s) despite a problem: %s", result.path,
                       len(result.kept_with_problems), _describe(result.kept_with_problems))
