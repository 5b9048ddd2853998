"""Randomly corrupted course files: every variant either loads (with a skip count) or raises DataError."""

from __future__ import annotations

import random

import pytest

from multitask.data import CFIMDB, PARA, SST, STS, DataError

SOURCES = [(SST, "ids-sst-dev.csv"), (PARA, "quora-dev.csv"), (STS, "sts-dev.csv"), (CFIMDB, "ids-cfimdb-dev.csv")]
VARIANTS_PER_FILE = 60  # 4 files × 60 = 240 corrupted variants


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


@pytest.mark.parametrize("task,name", SOURCES, ids=[name for _, name in SOURCES])
def test_corrupted_files_load_or_raise_data_error(task, name, data_dir, tmp_path):
    # A slice of the file keeps 240 variants fast; corruption anywhere in it is what matters.
    original = b"\n".join((data_dir / name).read_bytes().split(b"\n")[:80])
    rng = random.Random(name)
    loaded = refused = 0
    for variant in range(VARIANTS_PER_FILE):
        path = tmp_path / f"{variant}.csv"
        path.write_bytes(corrupt(original, rng))
        for labelled in (True, False):
            try:
                result = task.read(path, labelled=labelled)
            except DataError as err:
                assert str(path) in str(err), f"error does not name the file: {err}"
                refused += 1
                continue
            assert result.skipped >= 0 and len(result.examples) > 0
            assert all(e.id for e in result.examples)
            loaded += 1
    # Both outcomes must actually occur, or the corruption is not exercising the readers.
    assert loaded > 0 and refused > 0
