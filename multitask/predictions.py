"""Writing and checking prediction files in the exact format the CS224N grader parses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from minbert.plumbing.atomic import atomic_write_bytes
from multitask.data import DataError
from multitask.tasks import TASKS, Task


class PredictionFileError(DataError):
    """A prediction file does not follow the course format; names the file and the first bad line."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}: line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line


@dataclass
class PredictionFile:
    """The parsed rows of one prediction file, in file order."""

    path: Path
    task: str
    ids: list[str]
    values: list[int | float]

    def as_dict(self) -> dict[str, int | float]:
        return dict(zip(self.ids, self.values))

    def __len__(self) -> int:
        return len(self.ids)


def header_line(task: str) -> str:
    """The first line of a prediction file, newline included: `id \\t {column} \\n`."""
    return f"id \t {_task(task).prediction_column} \n"


def prediction_path(out_dir: str | Path, task: str, split: str) -> Path:
    """Where the course keeps a task's predictions, e.g. `predictions/sst-dev-output.csv`."""
    _task(task)
    return Path(out_dir) / f"{task}-{split}-output.csv"


def format_value(task: str, value: Any) -> str:
    """A prediction as the grader reads it: an int class for a classification task, a float for regression.

    Raises ValueError for a value the grader would misread or score as out of range; the
    model code is expected to argmax, threshold or clamp before writing.
    """
    spec = _task(task)
    number = value.item() if hasattr(value, "item") else value
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"{task} prediction {value!r} is not a number")
    if spec.kind == "regression":
        number = float(number)
    problem = spec.check_prediction(number)
    if problem:
        raise ValueError(f"{task} prediction {value!r} {problem}")
    return str(number) if spec.kind == "regression" else str(int(number))


def write_predictions(path: str | Path, task: str, ids: Sequence[str], values: Iterable[Any]) -> Path:
    """Write one prediction file atomically, rows in the given order; returns the path.

    All values are checked before anything is written, so a bad value never leaves a
    half-written or stale-looking file behind.
    """
    path = Path(path)
    values = list(values)
    if len(ids) != len(values):
        raise ValueError(f"{path}: {len(ids)} ids but {len(values)} predictions")
    seen: set[str] = set()
    rows = [header_line(task)]
    for position, (example_id, value) in enumerate(zip(ids, values)):
        problem = _id_problem(example_id)
        if problem is None and example_id in seen:
            problem = "appears twice"
        if problem:
            raise ValueError(f"{path}: id #{position} {example_id!r} {problem}")
        seen.add(example_id)
        rows.append(f"{example_id} , {format_value(task, value)} \n")
    atomic_write_bytes(path, "".join(rows).encode("utf-8"))
    return path


def read_predictions(path: str | Path, task: str | None = None,
                     expected_ids: Iterable[str] | None = None) -> PredictionFile:
    """Parse and validate a prediction file; the task is taken from the header when not given.

    Checks the exact header, the `{id} , {value} ` row layout, unique ids, values in range
    and, with `expected_ids`, that the file has exactly one row per expected id. Raises
    PredictionFileError at the first problem, naming its line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PredictionFileError(path, None, "file not found") from None
    except OSError as err:
        raise PredictionFileError(path, None, f"cannot read the file ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PredictionFileError(path, raw.count(b"\n", 0, err.start) + 1, "not valid UTF-8") from None
    # Split on "\n" only: str.splitlines would also break on form feeds and U+2028.
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    if not lines:
        raise PredictionFileError(path, None, "empty file (expected a header line)")
    task = _check_header(path, lines[0], task)

    parsed = PredictionFile(path=path, task=task, ids=[], values=[])
    first_line: dict[str, int] = {}
    expected = None if expected_ids is None else set(expected_ids)
    for number, line in enumerate(lines[1:], start=2):
        example_id, value = _parse_row(path, number, line, task)
        if example_id in first_line:
            raise PredictionFileError(path, number, f"id {example_id} already on line {first_line[example_id]}")
        if expected is not None and example_id not in expected:
            raise PredictionFileError(path, number, f"id {example_id} is not in the {task} input file")
        first_line[example_id] = number
        parsed.ids.append(example_id)
        parsed.values.append(value)
    if expected is not None and len(first_line) != len(expected):
        missing = sorted(expected - first_line.keys())
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise PredictionFileError(path, None, f"{len(missing)} of {len(expected)} ids have no prediction "
                                  f"(e.g. {shown})")
    return parsed


def _task(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


def _id_problem(example_id: Any) -> str | None:
    if not isinstance(example_id, str) or not example_id:
        return "is not a non-empty string"
    # Whitespace or a comma inside an id would make the ` , ` row split ambiguous.
    if "," in example_id or any(ch.isspace() for ch in example_id):
        return "contains whitespace or a comma"
    return None


def _check_header(path: Path, line: str, task: str | None) -> str:
    if task is None:
        # SST and CFIMDB share a header: the first registered task with it (sst) is taken.
        task = next((name for name in TASKS if line == header_line(name)), None)
        if task is None:
            choices = " or ".join(dict.fromkeys(repr(header_line(name)) for name in TASKS))
            raise PredictionFileError(path, 1, f"header {line!r} is none of {choices}")
    elif line != header_line(task):
        raise PredictionFileError(path, 1, f"header {line!r} should be {header_line(task)!r}")
    return task


def _parse_row(path: Path, number: int, line: str, task: str) -> tuple[str, int | float]:
    body = line[:-1] if line.endswith("\n") else line  # the last row may lack its newline
    parts = body.split(" , ")
    if len(parts) != 2 or not parts[1].endswith(" ") or parts[1].endswith("  "):
        raise PredictionFileError(path, number, f"{line!r} is not of the form '{{id}} , {{value}} '")
    example_id, value_text = parts[0], parts[1][:-1]
    problem = _id_problem(example_id)
    if problem:
        raise PredictionFileError(path, number, f"id {example_id!r} {problem}")
    spec = TASKS[task]
    try:
        if spec.kind == "regression":
            value: int | float = float(value_text)
        elif value_text in {str(k) for k in range(spec.classes)}:
            value = int(value_text)
        else:
            raise ValueError
        format_value(task, value)
    except ValueError:
        low, high = spec.score_range
        expected = (f"a float in [{low:g}, {high:g}]" if spec.kind == "regression"
                    else f"an integer in 0..{spec.classes - 1}")
        raise PredictionFileError(path, number, f"value {value_text!r} should be {expected}") from None
    return example_id, value
