"""scripts/prepare_submit.py: good prediction files are scored on dev and zipped with the code; a bad one is named."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest
import scipy.stats

from multitask.predictions import read_predictions, write_predictions
from multitask.submission import dev_score_line, dev_scores, score_dev_predictions
from multitask.tasks import TASKS

REPO = Path(__file__).resolve().parent.parent
INPUT_STEMS = {"sst": "ids-sst", "para": "quora", "sts": "sts"}
SPLIT_SUFFIX = {"dev": "dev", "test": "test-student"}
ROWS = 6


def load_script():
    spec = importlib.util.spec_from_file_location("prepare_submit_script", REPO / "scripts" / "prepare_submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture
def submission(tmp_path) -> dict:
    """Tiny input files (the first quote-free rows of the course files) and matching good predictions."""
    data, predictions = tmp_path / "data", tmp_path / "predictions"
    data.mkdir()
    ids = {}
    for task, stem in INPUT_STEMS.items():
        for split, suffix in SPLIT_SUFFIX.items():
            header, *lines = (REPO / "data" / f"{stem}-{suffix}.csv").read_text(encoding="utf-8").split("\n")
            kept = [line for line in lines if line and '"' not in line][:ROWS]
            (data / f"{stem}-{suffix}.csv").write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
            ids[task, split] = TASKS[task].read(data / f"{stem}-{suffix}.csv", labelled=False).ids
            values = {"sst": [i % 5 for i in range(ROWS)], "para": [i % 2 for i in range(ROWS)],
                      "sts": [0.5 * i for i in range(ROWS)]}[task]
            write_predictions(predictions / f"{task}-{split}-output.csv", task, ids[task, split], values)
    return {"data": data, "predictions": predictions, "ids": ids, "zip": tmp_path / "out" / "submission.zip"}


def prepare(script, submission, *extra: str) -> int:
    return script.main(["--predictions", str(submission["predictions"]), "--data_dir", str(submission["data"]),
                        "--out", str(submission["zip"]), *extra])


def edit_line(path: Path, number: int, new: str | None) -> None:
    """Replace (or with None, delete) the 1-based line `number` of a prediction file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if new is None:
        del lines[number - 1]
    else:
        lines[number - 1] = new
    path.write_text("\n".join(lines), encoding="utf-8")


def test_good_files_are_zipped_with_the_code_and_nothing_else(script, submission, capsys):
    assert prepare(script, submission) == 0
    assert capsys.readouterr().out.count("ok   ") == 6
    with zipfile.ZipFile(submission["zip"]) as archive:
        names = archive.namelist()
        for task in INPUT_STEMS:
            for split in SPLIT_SUFFIX:
                name = f"predictions/{task}-{split}-output.csv"
                assert archive.read(name) == (submission["predictions"] / f"{task}-{split}-output.csv").read_bytes()
    for required in ("multitask_classifier.py", "requirements.txt", "README.md", "minbert/model.py",
                     "multitask/train.py", "smart/adversarial.py", "scripts/ablate.py", "scripts/prepare_submit.py"):
        assert required in names, required
    assert {name.split("/")[0] for name in names} == {"predictions", "minbert", "multitask", "smart", "scripts",
                                                      "multitask_classifier.py", "requirements.txt", "README.md"}
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc") or "/." in name]
    assert not list(submission["zip"].parent.glob("*.tmp"))


def test_check_only_writes_no_zip(script, submission):
    assert prepare(script, submission, "--check_only") == 0
    assert not submission["zip"].exists()


def test_the_dev_scores_of_the_packaged_files_are_printed_in_one_line(script, submission, capsys):
    assert prepare(script, submission, "--check_only") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dev scores")]
    assert lines == [dev_score_line(dev_scores(submission["predictions"], submission["data"]))]
    assert lines[0].startswith("dev scores of the packaged predictions: sst ")
    assert "  para " in lines[0] and "  sts " in lines[0] and "  mean " in lines[0]


# Hand-made dev files: (id, label) per row, in file order; an unusable label makes the reader skip the row.
HAND_DEV = {"sst": [("s1", "3"), ("s2", "0"), ("s3", "2"), ("s4", "7"), ("s5", "4"), ("s6", "1")],
            "para": [("p1", "1.0"), ("p2", "0.0"), ("p3", ""), ("p4", "1.0"), ("p5", "0.0")],
            "sts": [("t1", "1.0"), ("t2", "4.6"), ("t3", "2.5"), ("t4", "nan"), ("t5", "0.0"), ("t6", "3.2")]}
# Predictions, deliberately in another order than the dev file, with one id the dev file lacks.
HAND_PREDICTIONS = {"sst": {"s6": 1, "s5": 2, "s4": 4, "s3": 2, "s2": 0, "s1": 1, "x1": 3},
                    "para": {"p5": 1, "p4": 1, "p3": 0, "p2": 0, "p1": 1},
                    "sts": {"t6": 3.0, "t5": 0.4, "t4": 2.0, "t3": 2.0, "t2": 4.9, "t1": 2.2, "x2": 1.0}}
USABLE = {"sst": lambda text: text in {"0", "1", "2", "3", "4"}, "para": lambda text: text in {"0.0", "1.0"},
          "sts": lambda text: text != "nan"}


@pytest.fixture
def hand_made(tmp_path) -> dict:
    data, predictions = tmp_path / "data", tmp_path / "predictions"
    data.mkdir()
    for task, rows in HAND_DEV.items():
        spec = TASKS[task]
        header = ["", "id", *spec.text_columns, spec.label_column]
        lines = ["\t".join(header)] + ["\t".join([str(n), example_id, *["some text ."] * len(spec.text_columns),
                                                   label]) for n, (example_id, label) in enumerate(rows)]
        spec.file(data, "dev").write_text("\n".join(lines) + "\n", encoding="utf-8")
        values = HAND_PREDICTIONS[task]
        write_predictions(predictions / f"{task}-dev-output.csv", task, list(values), list(values.values()))
    return {"data": data, "predictions": predictions}


def expected_score(task: str) -> tuple[float, int]:
    """(the metric, the number of scored predictions), computed without the package's code."""
    labelled = {example_id: float(label) for example_id, label in HAND_DEV[task] if USABLE[task](label)}
    pairs = [(float(HAND_PREDICTIONS[task][example_id]), label) for example_id, label in labelled.items()]
    if task == "sts":
        return scipy.stats.pearsonr(*zip(*pairs)).statistic, len(pairs)
    return sum(prediction == label for prediction, label in pairs) / len(pairs), len(pairs)


def test_dev_scores_match_by_id_and_leave_out_predictions_without_a_usable_label(hand_made):
    scores = dev_scores(hand_made["predictions"], hand_made["data"])
    assert list(scores) == ["sst", "para", "sts"]
    for task, score in scores.items():
        value, scored = expected_score(task)
        assert score.score == pytest.approx(value), task
        assert score.scored == scored
        assert score.unscored == len(HAND_PREDICTIONS[task]) - scored
    # Written out: SST 3 of 5 right (s4's label 7 is unusable; x1 is not in the dev file); Quora 3 of 4.
    assert scores["sst"].score == pytest.approx(3 / 5) and scores["para"].score == pytest.approx(3 / 4)
    assert (scores["sst"].unscored, scores["para"].unscored, scores["sts"].unscored) == (2, 1, 2)

    r = expected_score("sts")[0]
    mean = (3 / 5 + 3 / 4 + (r + 1) / 2) / 3
    assert dev_score_line(scores) == (
        f"dev scores of the packaged predictions: sst 0.600  para 0.750  sts {r:.3f}  mean {mean:.3f}"
        "  (predictions without a usable dev label, not scored: sst 2, para 1, sts 2)")


def test_a_labelled_dev_id_without_prediction_is_refused_not_scored_on_part_of_dev(hand_made):
    path = hand_made["predictions"] / "para-dev-output.csv"
    values = {key: value for key, value in HAND_PREDICTIONS["para"].items() if key != "p2"}
    write_predictions(path, "para", list(values), list(values.values()))
    with pytest.raises(ValueError, match="1 labelled id.*first: p2"):
        score_dev_predictions(read_predictions(path, "para"), TASKS["para"].read(hand_made["data"] / "quora-dev.csv"))


def check_rejected(script, submission, capsys, path: Path, *expected: str) -> str:
    assert prepare(script, submission) == 1
    err = capsys.readouterr().err
    bad = [line for line in err.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1, err
    assert str(path) in bad[0]
    for text in expected:
        assert text in bad[0], bad[0]
    assert not submission["zip"].exists()
    return bad[0]


def test_a_wrong_header_is_named_with_file_and_line(script, submission, capsys):
    path = submission["predictions"] / "sts-dev-output.csv"
    edit_line(path, 1, "id \t Predicted_Similarity ")  # the correct spelling is what the grader rejects
    check_rejected(script, submission, capsys, path, "line 1:", "Predicted_Similiary")


def test_a_missing_id_is_named_with_the_line_where_it_belongs(script, submission, capsys):
    path = submission["predictions"] / "para-test-output.csv"
    edit_line(path, 4, None)  # the third prediction row
    missing = submission["ids"]["para", "test"][2]
    check_rejected(script, submission, capsys, path, "line 4:", f"expected id {missing}")


def test_a_truncated_file_names_the_first_id_without_prediction(script, submission, capsys):
    path = submission["predictions"] / "sst-test-output.csv"
    edit_line(path, ROWS + 1, None)
    last = submission["ids"]["sst", "test"][-1]
    check_rejected(script, submission, capsys, path, f"line {ROWS + 1}:", last)


@pytest.mark.parametrize("task, value", [("sst", "5"), ("sst", "2.0"), ("para", "2"), ("sts", "5.5"),
                                         ("sts", "nan"), ("sts", "-0.1")])
def test_an_out_of_range_value_is_named_with_file_and_line(script, submission, capsys, task, value):
    path = submission["predictions"] / f"{task}-dev-output.csv"
    example_id = submission["ids"][task, "dev"][3]
    edit_line(path, 5, f"{example_id} , {value} ")
    check_rejected(script, submission, capsys, path, "line 5:", repr(value))


def test_an_id_from_another_file_and_a_missing_file_are_both_reported(script, submission, capsys):
    wrong = submission["predictions"] / "sst-dev-output.csv"
    edit_line(wrong, 2, f"{submission['ids']['sst', 'test'][0]} , 1 ")
    gone = submission["predictions"] / "sts-test-output.csv"
    gone.unlink()
    assert prepare(script, submission) == 1
    bad = [line for line in capsys.readouterr().err.splitlines() if line.startswith("BAD")]
    assert len(bad) == 2
    assert str(wrong) in bad[0] and "line 2:" in bad[0] and "is not in" in bad[0]
    assert str(gone) in bad[1] and "file not found" in bad[1]
