"""Tests for the course CSV readers: real file counts, malformed files and counted row skips."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from multitask.data import DataError, PairExample, SentenceExample
from multitask.tasks import CFIMDB, COURSE_TASKS, PARA, SST, STS, TASKS

read_sst, read_para, read_sts, read_cfimdb = SST.read, PARA.read, STS.read, CFIMDB.read

DATA = Path(__file__).resolve().parent.parent / "data"

SST_HEADER = "\tid\tsentence\tsentiment\n"
PAIR_HEADER = "\tid\tsentence1\tsentence2\t{label}\n"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def sst_rows(*rows: tuple[str, str, str]) -> str:
    return SST_HEADER + "".join(f"{i}\t{rid}\t{text}\t{label}\n" for i, (rid, text, label) in enumerate(rows))


# --- the real course files --------------------------------------------------------------

@pytest.mark.parametrize("task, split, rows, skipped", [
    ("sst", "train", 8544, 0), ("sst", "dev", 1101, 0), ("sst", "test", 2210, 0),
    ("sts", "train", 6040, 0), ("sts", "dev", 863, 0), ("sts", "test", 1725, 0),
    ("para", "train", 15000, 0), ("para", "dev", 2999, 1), ("para", "test", 2214, 0),
    ("cfimdb", "train", 1707, 0), ("cfimdb", "dev", 245, 0), ("cfimdb", "test", 488, 0),
])
def test_real_files_load_with_expected_counts(task: str, split: str, rows: int, skipped: int) -> None:
    spec = TASKS[task]
    result = spec.read(spec.file(DATA, split), labelled=split != "test")
    assert len(result) == rows
    assert result.skipped == skipped
    assert len(set(result.ids)) == rows
    labels = [example.label for example in result]
    if split == "test":
        assert all(label is None for label in labels)
    else:
        assert all(label is not None for label in labels)


def test_real_label_types_and_text_stripped() -> None:
    sst = read_sst(DATA / "ids-sst-train.csv")
    first = sst.examples[0]
    assert isinstance(first, SentenceExample)
    assert first.id == "32a4f146782cbde1b7fa65799" and first.label == 3
    assert first.text.startswith("The Rock is destined") and first.text == first.text.strip()
    assert {e.label for e in sst} == {0, 1, 2, 3, 4}

    para = read_para(DATA / "quora-train.csv")
    assert {e.label for e in para} == {0, 1} and all(type(e.label) is int for e in para)
    sts = read_sts(DATA / "sts-dev.csv")
    assert all(isinstance(e, PairExample) and type(e.label) is float and 0 <= e.label <= 5 for e in sts)
    assert {e.label for e in read_cfimdb(DATA / "ids-cfimdb-dev.csv")} == {0, 1}


def test_quora_dev_empty_label_is_skipped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="multitask.data"):
        result = read_para(DATA / "quora-dev.csv")
    assert result.skipped == 1
    assert result.skipped_rows[0].line == 624 and result.skipped_rows[0].reason == "empty label"
    assert "ad118c967d683c93883bf072d" not in result.ids
    [record] = caplog.records
    assert "quora-dev.csv" in record.getMessage() and "line 624" in record.getMessage()


def test_quora_test_row_with_empty_sentence_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="multitask.data"):
        result = read_para(DATA / "quora-test-student.csv", labelled=False)
    kept = [e for e in result if e.id == "9054345d02cd6c5642a4904dc"]
    assert len(kept) == 1 and kept[0].text_b == ""
    assert [p.line for p in result.kept_with_problems] == [1428]
    assert "empty sentence2" in caplog.text


def test_task_registry() -> None:
    assert list(TASKS) == ["sst", "para", "sts", "cfimdb"] and COURSE_TASKS == ("sst", "para", "sts")
    assert (SST.kind, SST.outputs, SST.is_pair) == ("multiclass", 5, False)
    assert (PARA.kind, PARA.outputs, PARA.is_pair) == ("binary", 1, True)
    assert (STS.kind, STS.outputs, STS.is_pair) == ("regression", 1, True)
    assert (CFIMDB.kind, CFIMDB.outputs, CFIMDB.is_pair) == ("binary", 1, False)
    assert SST.file("d", "test") == Path("d/ids-sst-test-student.csv")
    assert PARA.file("d", "dev") == Path("d/quora-dev.csv")


# --- unusable files -> DataError ----------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_sst(tmp_path / "nope.csv")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        read_sst(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.csv", "")
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        read_sst(path)


def test_header_only_file_has_no_usable_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"header\.csv: no usable rows"):
        read_sst(write(tmp_path, "header.csv", SST_HEADER))


def test_missing_column_names_file_column_and_found_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "nolabel.csv", "\tid\tsentence\n0\ta1\tgood film\n")
    with pytest.raises(DataError) as info:
        read_sst(path)
    message = str(info.value)
    assert "nolabel.csv" in message and "'sentiment'" in message
    assert "['', 'id', 'sentence']" in message and "labelled=False" in message
    assert len(read_sst(path, labelled=False)) == 1

    path = write(tmp_path, "notext.csv", "\tid\ttext\tsentiment\n0\ta1\tgood\t3\n")
    with pytest.raises(DataError, match=r"notext\.csv: column 'sentence' not found"):
        read_sst(path)


def test_comma_separated_file_is_recognised(tmp_path: Path) -> None:
    path = write(tmp_path, "comma.csv", ",id,sentence,sentiment\n0,a1,good film,3\n")
    with pytest.raises(DataError, match=r"comma\.csv: .*not tab-separated \(it looks comma-separated\)"):
        read_sst(path)


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    content = sst_rows(("a1", "fine", "2")).encode() + b"1\ta2\tcaf\xe9 au lait\t3\n"
    path = write(tmp_path, "latin1.csv", content)
    with pytest.raises(DataError, match=r"latin1\.csv: line 3: .*not valid UTF-8"):
        read_sst(path)


def test_byte_order_mark_and_crlf_are_tolerated(tmp_path: Path) -> None:
    content = "id\tsentence\tsentiment\r\na1\t good film \t4\r\n"
    result = read_sst(write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + content.encode()))
    assert result.examples == [SentenceExample("a1", "good film", 4)]


# --- row-level validation -> counted skip, one warning per file ------------------------------

def test_bad_sst_labels_are_skipped_counted_and_reported_once(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "sst.csv", sst_rows(
        ("a0", "ok", "0"), ("a1", "words", "abc"), ("a2", "more", "7"), ("a3", "x", "-1"),
        ("a4", "y", "2.5"), ("a5", "z", ""), ("a6", "fine", "4"), ("a7", "float ok", "3.0")))
    with caplog.at_level(logging.WARNING, logger="multitask.data"):
        result = read_sst(path)
    assert [(e.id, e.label) for e in result] == [("a0", 0), ("a6", 4), ("a7", 3)]
    assert result.skipped == 5
    assert [p.line for p in result.skipped_rows] == [3, 4, 5, 6, 7]
    assert "not a number" in result.skipped_rows[0].reason
    assert "not an integer in 0..4" in result.skipped_rows[1].reason
    assert result.skipped_rows[4].reason == "empty label"
    [record] = caplog.records
    message = record.getMessage()
    assert "sst.csv" in message and "skipped 5" in message and "line 3" in message
    assert "and 0 more" not in message


@pytest.mark.parametrize("raw, expected", [
    ("0", 0), ("1", 1), ("0.0", 0), ("1.0", 1), ("2.0", None), ("0.5", None), ("yes", None), ("-1", None),
])
def test_paraphrase_labels(tmp_path: Path, raw: str, expected: int | None) -> None:
    content = PAIR_HEADER.format(label="is_duplicate") + f"0\tq1\tA?\tB?\t{raw}\n1\tq2\tC?\tD?\t1.0\n"
    result = read_para(write(tmp_path, "quora.csv", content))
    labels = {e.id: e.label for e in result}
    assert labels.get("q1") == expected and result.skipped == (expected is None)


@pytest.mark.parametrize("raw, expected", [
    ("0", 0.0), ("5.0", 5.0), ("3.6", 3.6), ("5.1", None), ("-0.1", None), ("nan", None), ("inf", None),
])
def test_similarity_labels(tmp_path: Path, raw: str, expected: float | None) -> None:
    content = PAIR_HEADER.format(label="similarity") + f"0\ts1\tA\tB\t{raw}\n1\ts2\tC\tD\t2.0\n"
    result = read_sts(write(tmp_path, "sts.csv", content))
    assert {e.id: e.label for e in result}.get("s1") == expected
    assert result.skipped == (expected is None)


def test_cfimdb_labels_are_binary(tmp_path: Path) -> None:
    path = write(tmp_path, "imdb.csv", sst_rows(("m1", "great", "1"), ("m2", "bad", "0"), ("m3", "meh", "2")))
    result = read_cfimdb(path)
    assert [e.label for e in result] == [1, 0] and result.skipped == 1


def test_structural_row_problems_are_skipped(tmp_path: Path) -> None:
    content = (SST_HEADER
               + "0\ta0\tgood\t3\n"
               + "1\t\tno id\t3\n"                # missing id
               + "2\ta2\t   \t3\n"                # empty text
               + "3\ta3\ttoo few\n"               # a field short
               + "4\ta4\ttoo\tmany\t3\n"          # a field over
               + "5\ta5\t\"stray quote\t3\n"      # quote swallows the next lines
               + "6\ta6\tswallowed\t1\n"
               + "7\ta7\tlast\t2\n")
    result = read_sst(write(tmp_path, "rows.csv", content))
    assert result.ids == ["a0"]
    reasons = {p.line: p.reason for p in result.skipped_rows}
    assert reasons[3] == "missing id"
    assert reasons[4] == "empty sentence"
    assert reasons[5] == "3 fields where the header has 4"
    assert reasons[6] == "5 fields where the header has 4"
    assert "spans lines 7-9" in reasons[7]


def test_a_file_whose_rows_are_all_bad_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"bad\.csv: no usable rows \(2 skipped\)"):
        read_sst(write(tmp_path, "bad.csv", sst_rows(("a", "x", "9"), ("b", "y", "9"))))


def test_test_file_keeps_rows_with_empty_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    content = "\tid\tsentence1\tsentence2\n0\tt1\tA?\tB?\n1\tt2\t\tB?\n2\t\tC?\tD?\n"
    with caplog.at_level(logging.WARNING, logger="multitask.data"):
        result = read_para(write(tmp_path, "quora-test.csv", content), labelled=False)
    assert result.examples == [PairExample("t1", "A?", "B?"), PairExample("t2", "", "B?")]
    assert [p.line for p in result.kept_with_problems] == [3]
    assert [(p.line, p.reason) for p in result.skipped_rows] == [(4, "missing id")]
    assert "kept 1" in caplog.text and "skipped 1" in caplog.text


def test_test_file_with_course_double_index_columns() -> None:
    # The SST and CFIMDB test files carry two leading index columns ("0" and "").
    result = read_sst(DATA / "ids-sst-test-student.csv", labelled=False)
    assert result.examples[0] == SentenceExample("b7573736a6ddf7be102b7fee0", "Effective but too-tepid biopic")


def test_duplicate_ids_are_kept_but_reported(tmp_path: Path) -> None:
    result = read_sst(write(tmp_path, "dup.csv", sst_rows(("a", "x", "1"), ("a", "y", "2"))))
    assert len(result) == 2
    assert [(p.line, p.reason) for p in result.kept_with_problems] == [(3, "id a repeats line 2")]


def test_quoted_field_spanning_lines_is_skipped_when_labelled_and_kept_in_test(tmp_path: Path) -> None:
    content = SST_HEADER + "0\ta0\t\"two\nlines\"\t3\n1\ta1\tone line\t2\n"
    result = read_sst(write(tmp_path, "span.csv", content))
    assert result.ids == ["a1"] and "spans lines 2-3" in result.skipped_rows[0].reason
    test = read_sst(write(tmp_path, "span-test.csv", content), labelled=False)
    assert test.ids == ["a0", "a1"] and test.kept_with_problems[0].line == 2


def test_non_utf8_line_is_right_after_a_byte_order_mark(tmp_path: Path) -> None:
    path = write(tmp_path, "bom-latin1.csv", b"\xef\xbb\xbf" + SST_HEADER.encode() + b"0\ta\tna\xefve\t2\n")
    with pytest.raises(DataError, match=r"bom-latin1\.csv: line 2: "):
        read_sst(path)
