"""Corrupted course files: broken rows are skipped and counted exactly; whatever loads is a valid example."""

from __future__ import annotations

import random

import pytest

from multitask.data import DataError, PairExample
from multitask.tasks import CFIMDB, PARA, SST, STS, Task

SOURCES = {"sst": (SST, "ids-sst-dev.csv"), "para": (PARA, "quora-dev.csv"), "sts": (STS, "sts-dev.csv"),
           "cfimdb": (CFIMDB, "ids-cfimdb-dev.csv")}
ROW_CASES = 30   # per file: files with a known set of broken rows
BYTE_CASES = 60  # per file: files with random byte-level damage
# Labels no reader may accept, per task (out of range, not a number, not finite, empty).
BAD_LABELS = {"sst": ["5", "-1", "2.5"], "para": ["2", "0.5", "-1"], "sts": ["5.5", "-0.1"],
              "cfimdb": ["2", "0.5"]}
COMMON_BAD_LABELS = ["", " ", "x", "nan", "inf", "1e999"]


def valid_label(task: Task, label) -> bool:
    if task.kind == "regression":
        return isinstance(label, float) and 0.0 <= label <= 5.0
    return isinstance(label, int) and 0 <= label < task.classes


def texts(example) -> list[str]:
    return [example.text_a, example.text_b] if isinstance(example, PairExample) else [example.text]


def check_loaded(task: Task, result, labelled: bool) -> None:
    """Every row that loaded is a usable example: an id, and with labels, non-empty texts and a valid label."""
    assert result.examples
    for example in result.examples:
        assert example.id and example.id == example.id.strip()
        if labelled:
            assert all(text for text in texts(example)), example
            assert valid_label(task, example.label), example


@pytest.fixture(scope="module")
def clean_lines(data_dir) -> dict[str, list[str]]:
    """The header and 80 data rows of each dev file; rows with a quote are left out, so one line is one row."""
    lines = {}
    for name, (task, file) in SOURCES.items():
        header, *rows = (data_dir / file).read_text(encoding="utf-8").split("\n")
        lines[name] = [header, *[row for row in rows if row and '"' not in row][:80]]
    return lines


def break_row(name: str, header: list[str], fields: list[str], rng: random.Random) -> list[str]:
    """One damage that makes a labelled row unusable: a bad label, an empty text or id, a field lost or added."""
    task, _ = SOURCES[name]
    fields = list(fields)
    kind = rng.choice(["label", "label", "text", "id", "fewer", "more"])
    if kind == "label":
        fields[header.index(task.label_column)] = rng.choice(BAD_LABELS[name] + COMMON_BAD_LABELS)
    elif kind == "text":
        fields[header.index(rng.choice(task.text_columns))] = rng.choice(["", "  "])
    elif kind == "id":
        fields[header.index("id")] = ""
    elif kind == "fewer":
        del fields[rng.randrange(len(fields))]
    else:
        fields.insert(rng.randrange(len(fields) + 1), "extra")
    return fields


@pytest.mark.parametrize("name", SOURCES)
def test_the_clean_slices_load_whole(name, clean_lines, tmp_path):
    task, _ = SOURCES[name]
    path = tmp_path / "clean.csv"
    path.write_text("\n".join(clean_lines[name]) + "\n", encoding="utf-8")
    result = task.read(path)
    assert result.skipped == 0 and len(result) == 80
    check_loaded(task, result, labelled=True)


@pytest.mark.parametrize("case", range(ROW_CASES))
@pytest.mark.parametrize("name", SOURCES)
def test_each_broken_row_is_skipped_and_counted_and_the_rest_load(name, case, clean_lines, tmp_path):
    task, _ = SOURCES[name]
    rng = random.Random(f"{name}-{case}")
    header_line, *rows = clean_lines[name]
    header = [column.strip() for column in header_line.split("\t")]
    broken = sorted(rng.sample(range(len(rows)), rng.randint(1, 6)))
    lines = [header_line]
    for index, row in enumerate(rows):
        lines.append("\t".join(break_row(name, header, row.split("\t"), rng)) if index in broken else row)
    path = tmp_path / f"{name}-{case}.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = task.read(path)
    assert result.skipped == len(broken)
    assert [problem.line for problem in result.skipped_rows] == [index + 2 for index in broken]  # header = line 1
    kept_ids = [row.split("\t")[header.index("id")].strip() for index, row in enumerate(rows) if index not in broken]
    assert result.ids == kept_ids
    check_loaded(task, result, labelled=True)


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """One random corruption of the kinds real files suffer: cut, flipped, inserted or deleted bytes."""
    kind = rng.choice(["truncate", "flip", "insert", "delete", "tabs_to_commas", "drop_lines", "duplicate_lines",
                       "bad_utf8", "quotes", "empty_fields", "header"])
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == "insert":
        at = rng.randrange(len(data))
        return data[:at] + bytes(rng.choice(b'\t\n\r",\x00ab9.-') for _ in range(rng.randint(1, 30))) + data[at:]
    if kind == "delete":
        at = rng.randrange(len(data))
        return data[:at] + data[at + rng.randint(1, 200):]
    if kind == "tabs_to_commas":
        return data.replace(b"\t", b",")
    lines = data.split(b"\n")
    if kind == "drop_lines":
        return b"\n".join(line for line in lines if rng.random() > 0.3)
    if kind == "duplicate_lines":
        return b"\n".join(line for line in lines for _ in range(rng.choice([1, 1, 2])))
    if kind == "bad_utf8":
        i = rng.randrange(len(lines))
        lines[i] = lines[i] + b"\xff\xfe"
        return b"\n".join(lines)
    if kind == "quotes":
        i = rng.randrange(1, len(lines))
        lines[i] = b'"' + lines[i]
        return b"\n".join(lines)
    if kind == "empty_fields":
        i = rng.randrange(1, len(lines))
        fields = lines[i].split(b"\t")
        fields[rng.randrange(len(fields))] = b""
        lines[i] = b"\t".join(fields)
        return b"\n".join(lines)
    lines[0] = lines[0].replace(rng.choice([b"id", b"sentence", b"sentiment", b"similarity", b"is_duplicate"]), b"x")
    return b"\n".join(lines)


def byte_case(name: str, case: int, data_dir, tmp_path) -> set[str]:
    """Read one randomly damaged file with and without labels; the outcomes ("loaded", "refused")."""
    task, file = SOURCES[name]
    original = b"\n".join((data_dir / file).read_bytes().split(b"\n")[:80])
    path = tmp_path / f"{name}-{case}.csv"
    path.write_bytes(corrupt(original, random.Random(f"{file}-{case}")))
    outcomes = set()
    for labelled in (True, False):
        try:
            result = task.read(path, labelled=labelled)
        except DataError as err:
            assert str(path) in str(err), f"error does not name the file: {err}"
            outcomes.add("refused")
            continue
        check_loaded(task, result, labelled)
        outcomes.add("loaded")
    return outcomes


@pytest.mark.parametrize("case", range(BYTE_CASES))
@pytest.mark.parametrize("name", SOURCES)
def test_random_damage_loads_valid_rows_or_raises_data_error_naming_the_file(name, case, data_dir, tmp_path):
    assert byte_case(name, case, data_dir, tmp_path)


@pytest.mark.parametrize("name", SOURCES)
def test_random_damage_exercises_both_outcomes(name, data_dir, tmp_path):
    # If every variant loaded, or every one was refused, the damage would not be exercising the reader.
    outcomes = set().union(*(byte_case(name, case, data_dir, tmp_path) for case in range(BYTE_CASES)))
    assert outcomes == {"loaded", "refused"}
