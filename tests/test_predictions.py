"""Tests for prediction files: exact course bytes, atomic writes and the validator's line numbers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from minbert.plumbing import atomic
from multitask.data import DataError
from multitask.predictions import (PredictionFileError, prediction_path, read_predictions,
                                   write_predictions)


def test_sst_file_bytes(tmp_path: Path) -> None:
    path = write_predictions(tmp_path / "sst-dev-output.csv", "sst", ["a1", "b2", "c3"], [3, 0, 4])
    assert path.read_bytes() == b"id \t Predicted_Sentiment \na1 , 3 \nb2 , 0 \nc3 , 4 \n"


def test_para_file_bytes_from_tensor_values(tmp_path: Path) -> None:
    path = tmp_path / "para-test-output.csv"
    write_predictions(path, "para", ["q1", "q2"], torch.tensor([1.0, 0.0]))
    assert path.read_bytes() == b"id \t Predicted_Is_Paraphrase \nq1 , 1 \nq2 , 0 \n"


def test_sts_file_bytes_use_python_float_str(tmp_path: Path) -> None:
    path = tmp_path / "sts-dev-output.csv"
    write_predictions(path, "sts", ["s1", "s2", "s3", "s4"], [3, 0.25, np.float32(0.1), torch.tensor(5.0)])
    assert path.read_text(encoding="utf-8") == (
        "id \t Predicted_Similiary \n"
        "s1 , 3.0 \n"
        "s2 , 0.25 \n"
        "s3 , 0.10000000149011612 \n"
        "s4 , 5.0 \n")


def test_prediction_path_follows_course_names(tmp_path: Path) -> None:
    assert prediction_path(tmp_path, "sts", "test") == tmp_path / "sts-test-output.csv"
    assert prediction_path(tmp_path, "cfimdb", "dev") == tmp_path / "cfimdb-dev-output.csv"
    with pytest.raises(ValueError, match="unknown task 'imdb'"):
        prediction_path(tmp_path, "imdb", "dev")


def test_atomic_write_creates_parent_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "predictions" / "nested" / "sst-dev-output.csv"
    write_predictions(path, "sst", ["a"], [1])
    write_predictions(path, "sst", ["a", "b"], [2, 3])  # overwrite in place
    assert os.listdir(path.parent) == ["sst-dev-output.csv"]
    assert read_predictions(path).values == [2, 3]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_failed_replace_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_predictions(tmp_path / "sst-dev-output.csv", "sst", ["a"], [1])
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_predictions(path, "sst", ["a"], [4])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["sst-dev-output.csv"]


@pytest.mark.parametrize("task, ids, values, message", [
    ("sst", ["a"], [5], "not an integer class in 0..4"),
    ("sst", ["a"], [2.5], "not an integer class"),
    ("para", ["a"], [0.7], "not an integer class in 0..1"),
    ("sts", ["a"], [5.2], "clamp it first"),
    ("sts", ["a"], [float("nan")], "not in"),
    ("sst", ["a"], ["3"], "not a number"),
    ("sst", ["a", "a"], [1, 2], "appears twice"),
    ("sst", ["a b"], [1], "whitespace or a comma"),
    ("sst", ["a", "b"], [1], "2 ids but 1 predictions"),
])
def test_writer_rejects_values_the_grader_would_misread(tmp_path: Path, task: str, ids: list, values: list,
                                                        message: str) -> None:
    path = tmp_path / "out.csv"
    with pytest.raises(ValueError, match=message):
        write_predictions(path, task, ids, values)
    assert not path.exists() and os.listdir(tmp_path) == []


def test_round_trip_infers_task_and_checks_expected_ids(tmp_path: Path) -> None:
    path = write_predictions(tmp_path / "sts.csv", "sts", ["x", "y"], [1.5, 4.75])
    parsed = read_predictions(path, expected_ids=["y", "x"])
    assert parsed.task == "sts" and parsed.ids == ["x", "y"] and parsed.values == [1.5, 4.75]
    assert parsed.as_dict() == {"x": 1.5, "y": 4.75}


def write_raw(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pred.csv"
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize("text, task, line, message", [
    ("id,Predicted_Sentiment\na , 1 \n", "sst", 1, "header"),
    ("id \t Predicted_Similarity \na , 1.0 \n", "sts", 1, "should be 'id \\\\t Predicted_Similiary"),
    ("id \t Predicted_Sentiment \na , 1 \nb , 7 \n", "sst", 3, "should be an integer in 0..4"),
    ("id \t Predicted_Sentiment \na , 1 \nb , 2.0 \n", "sst", 3, "should be an integer"),
    ("id \t Predicted_Is_Paraphrase \na , 1 \nb , 0.5 \n", "para", 3, "integer in 0..1"),
    ("id \t Predicted_Similiary \na , 1.0 \nb , 5.5 \n", "sts", 3, "float in \\[0, 5\\]"),
    ("id \t Predicted_Similiary \na , 1.0 \nb , nan \n", "sts", 3, "float in"),
    ("id \t Predicted_Sentiment \na , 1 \nb,2\n", "sst", 3, "not of the form"),
    ("id \t Predicted_Sentiment \na , 1 \n\nb , 2 \n", "sst", 3, "not of the form"),
    ("id \t Predicted_Sentiment \na , 1 \nb , 2\n", "sst", 3, "not of the form"),
    ("id \t Predicted_Sentiment \r\na , 1 \r\n", "sst", 1, "header"),
    ("id \t Predicted_Sentiment \na , 1 \nb , 2 \na , 3 \n", "sst", 4, "already on line 2"),
    ("id \t Predicted_Sentiment \n , 1 \n", "sst", 2, "non-empty"),
])
def test_validator_names_the_first_bad_line(tmp_path: Path, text: str, task: str, line: int, message: str) -> None:
    with pytest.raises(PredictionFileError, match=message) as info:
        read_predictions(write_raw(tmp_path, text), task)
    assert info.value.line == line
    assert str(info.value).startswith(f"{tmp_path / 'pred.csv'}: line {line}: ")
    assert isinstance(info.value, DataError)


def test_validator_reports_missing_and_unexpected_ids(tmp_path: Path) -> None:
    path = write_raw(tmp_path, "id \t Predicted_Sentiment \na , 1 \nb , 2 \n")
    with pytest.raises(PredictionFileError, match=r"1 of 3 ids have no prediction \(e.g. c\)"):
        read_predictions(path, "sst", expected_ids=["a", "b", "c"])
    with pytest.raises(PredictionFileError, match="line 3: id b is not in the sst input file"):
        read_predictions(path, "sst", expected_ids=["a"])


def test_validator_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(PredictionFileError, match="file not found"):
        read_predictions(tmp_path / "missing.csv")
    with pytest.raises(PredictionFileError, match="empty file"):
        read_predictions(write_raw(tmp_path, ""))
    with pytest.raises(PredictionFileError, match="line 1: header .* is none of"):
        read_predictions(write_raw(tmp_path, "id \t Predicted_Nothing \n"))
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"id \t Predicted_Sentiment \na , 1 \n\xff , 2 \n")
    with pytest.raises(PredictionFileError, match="line 3: not valid UTF-8"):
        read_predictions(path)


def test_last_row_without_newline_is_accepted(tmp_path: Path) -> None:
    parsed = read_predictions(write_raw(tmp_path, "id \t Predicted_Is_Paraphrase \na , 1 \nb , 0 "))
    assert parsed.task == "para" and parsed.values == [1, 0]
