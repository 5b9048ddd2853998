"""Which rows a run uses: --train_fraction's seeded subset of each training file, the same for every
configuration at a seed, and --train_limit / --dev_limit's sample fixed by id."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from multitask_classifier import encoded_datasets, main, training_examples
from minbert import load_tokenizer
from multitask.data import SentenceExample, hashed_order, limited, training_subset
from multitask.settings import parse
from multitask.tasks import TASKS
from tests.test_pipeline import data_args, write_tiny_course_files

ROWS = {"train": 40, "dev": 8, "test": 8}
# Flag sets of grid rows: anything but the seed and the fraction must leave the subset alone.
CONFIGURATIONS = {"baseline": [], "smart": ["--smart", "--smart_eps", "0.05"], "rdrop": ["--rdrop", "--lr", "3e-5"]}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict:
    return write_tiny_course_files(tmp_path_factory.mktemp("data"), ROWS)


def file_rows(path: Path) -> list[dict[str, str]]:
    """The file's records as the csv module reads them, independently of the package's reader."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def subsets(tiny_data: dict, seed: int, fraction: float, flags: list[str]) -> dict[str, list]:
    settings = parse(["--option", "finetune", "--seed", str(seed), "--train_fraction", str(fraction),
                      *data_args(tiny_data), *flags])
    return {task: training_examples(settings, task) for task in settings.run.tasks}


def test_the_subset_is_shared_by_configurations_and_drawn_anew_per_seed(tiny_data):
    chosen = {name: subsets(tiny_data, 7, 0.25, flags) for name, flags in CONFIGURATIONS.items()}
    assert chosen["smart"] == chosen["baseline"] and chosen["rdrop"] == chosen["baseline"]
    other_seed = subsets(tiny_data, 8, 0.25, [])
    for task, examples in chosen["baseline"].items():
        assert [e.id for e in other_seed[task]] != [e.id for e in examples], task
        # round(0.25 · 40) rows, each a row of the file, in file order, none twice.
        rows = file_rows(tiny_data["files"][task, "train"])
        ids = [row["id"].strip() for row in rows]
        picked = [e.id for e in examples]
        assert len(picked) == 10 and len(set(picked)) == 10
        assert picked == [i for i in ids if i in set(picked)]
        by_id = {row["id"].strip(): row for row in rows}
        for example in examples:
            text = example.text if task == "sst" else example.text_a
            column = "sentence" if task == "sst" else "sentence1"
            assert by_id[example.id][column].strip() == text, (task, example.id)
    # The tasks draw differently: one task's positions do not repeat in the next.
    positions = {task: [ids_in_file.index(e.id) for e in examples]
                 for task, examples in chosen["baseline"].items()
                 for ids_in_file in [[r["id"].strip() for r in file_rows(tiny_data["files"][task, "train"])]]}
    assert positions["sst"] != positions["para"] != positions["sts"]


def test_the_limit_samples_the_subset(tiny_data):
    subset = subsets(tiny_data, 7, 0.5, [])
    cut = subsets(tiny_data, 7, 0.5, ["--train_limit", "3"])
    for task, rows in subset.items():
        first = {e.id for e in hashed_order(task, rows)[:3]}
        assert cut[task] == [e for e in rows if e.id in first]  # the sample, in file order
    whole = parse(["--option", "finetune", *data_args(tiny_data)])
    assert {t: len(training_examples(whole, t)) for t in whole.run.tasks} == {"sst": 40, "para": 40, "sts": 40}


def sorted_by_label(count: int) -> list[SentenceExample]:
    """A file like SST's: rows sorted by label, so that its first rows hold one class only."""
    return [SentenceExample(f"row{i:04d}", "text", i * 5 // count) for i in range(count)]


def test_a_limit_keeps_a_sample_not_the_first_rows():
    rows = sorted_by_label(1000)
    kept = limited("sst", rows, 200)
    assert len(kept) == 200 and kept == [r for r in rows if r in kept]
    assert all(abs(sum(r.label == c for r in kept) / 200 - 0.2) < 0.06 for c in range(5))
    assert all(r.label == 0 for r in rows[:200])  # what a prefix would have kept
    # The rows kept depend on their ids, not on where the file has them; and on the task.
    assert {r.id for r in limited("sst", rows[::-1], 200)} == {r.id for r in kept}
    assert {r.id for r in limited("para", rows, 200)} != {r.id for r in kept}
    assert limited("sst", rows, None) == rows and limited("sst", rows, 1000) == rows


def test_the_dev_limit_scores_the_sample_the_robustness_measures_take(tiny_data):
    settings = parse(["--option", "finetune", "--dev_limit", "3", *data_args(tiny_data)])
    _, dev_sets = encoded_datasets(settings, settings.model, load_tokenizer())
    for task in settings.run.tasks:
        rows = TASKS[task].read(settings.data_file(task, "dev")).examples
        assert len(dev_sets[task]) == 3
        assert set(dev_sets[task].ids) == {e.id for e in hashed_order(task, rows)[:3]}


@pytest.fixture
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_run_trains_on_the_subset_and_scores_the_whole_dev_sets(tiny_data, tmp_path, caplog, one_torch_thread):
    caplog.set_level(logging.INFO, logger="multitask")
    main(["--option", "finetune", "--epochs", "1", "--batch_size", "8", "--seed", "7", "--device", "cpu",
          "--precision", "fp32", "--train_fraction", "0.25", "--skip_predictions", *data_args(tiny_data),
          "--out_dir", str(tmp_path / "run")])
    assert "data: sst train 10 dev 8, para train 10 dev 8, sts train 10 dev 8" in caplog.text


@pytest.mark.parametrize("fraction,size", [(1.0, 40), (0.5, 20), (0.01, 1), (0.0375, 2)])
def test_sizes_round_and_keep_at_least_one_row(fraction, size):
    rows = list(range(40))
    picked = training_subset(rows, fraction, 3, "sst")
    assert len(picked) == size and picked == sorted(set(picked))
    assert training_subset(rows, 1.0, 3, "sst") == rows


def test_a_fraction_outside_the_unit_interval_is_refused():
    for fraction in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="outside"):
            training_subset([1, 2, 3], fraction, 0, "sst")
