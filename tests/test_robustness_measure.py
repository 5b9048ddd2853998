"""measure_model / measure_checkpoint on a tiny character-level model, and scripts/robustness.py against them."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pytest
import torch

from minbert import BertConfig, BertModel, BertTokenizer
from multitask.checkpoint import save_checkpoint
from multitask.data import hashed_order
from multitask.model import MultitaskBert
from multitask.robustness import measure_checkpoint, measure_model, measure_names
from multitask.robustness.calibration import classifier_ece
from multitask.robustness.noise import perturb_examples
from multitask.robustness.report import format_table
from multitask.robustness.scoring import ModelScorer, labels_of, metric
from multitask.robustness.smoothness import Attack, smoothness
from multitask.batching import encode_task
from multitask.tasks import TASKS
from scripts import robustness as script

DATA = Path(__file__).resolve().parent.parent / "data"
ROWS = 6
MAX_LENGTH = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A vocabulary of single characters: WordPiece spells every word out, so any text encodes."""
    directory = tmp_path_factory.mktemp("tiny")
    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *".,?!'-:;()\"/&$%", *(f"##{c}" for c in chars)]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def tokenizer(tiny_dir) -> BertTokenizer:
    return BertTokenizer(tiny_dir / "vocab.txt")


def tiny_model(vocab_size: int, tasks=("sst", "para", "sts")) -> MultitaskBert:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=MAX_LENGTH, unpad_inputs=True)
    model = MultitaskBert(BertModel(config), tasks)
    with torch.no_grad():  # heads large enough that the classes differ and typos move the outputs
        for head in model.heads.values():
            head.weight.mul_(50)
    return model


@pytest.fixture(scope="module")
def model(tokenizer) -> MultitaskBert:
    return tiny_model(tokenizer.vocab_size)


@pytest.fixture(scope="module")
def dev_files(tmp_path_factory) -> dict[str, Path]:
    """The first ROWS rows of each course dev file, in the course's file names."""
    directory = tmp_path_factory.mktemp("data")
    files = {}
    for task in ("sst", "para", "sts"):
        source, target = TASKS[task].file(DATA, "dev"), TASKS[task].file(directory, "dev")
        header, *lines = source.read_text(encoding="utf-8").split("\n")
        target.write_text("\n".join([header, *lines[:ROWS]]) + "\n", encoding="utf-8")
        files[task] = target
    return files


@pytest.fixture(scope="module")
def dev_examples(dev_files) -> dict[str, list]:
    return {task: TASKS[task].read(path).examples for task, path in dev_files.items()}


@pytest.fixture(scope="module")
def measures(model, tokenizer, dev_examples) -> dict[str, float]:
    return measure_model(model, tokenizer, dev_examples, seed=3, max_length=MAX_LENGTH, attack_limit=4)


@pytest.fixture(scope="module")
def checkpoint(model, tiny_dir, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("run") / "best"
    save_checkpoint(model, directory, {"max_length": MAX_LENGTH}, {}, tokenizer_from=tiny_dir)
    return directory


def test_keys_are_exactly_the_promised_ones(measures):
    expected = {f"smooth_{t}_eps{e}" for t in ("sst", "para", "sts") for e in ("1e-3", "1e-2", "1e-1")}
    expected |= {f"{k}{r}_{t}" for k in ("typo", "delete") for r in (5, 10) for t in ("sst", "para", "sts")}
    expected |= {f"clean_{t}" for t in ("sst", "para", "sts")}
    expected |= {f"{m}_{t}" for m in ("attack_acc", "attack_success", "attack_examples", "ece") for t in ("sst", "para")}
    assert set(measures) == expected
    assert list(measures) == [name for t in ("sst", "para", "sts") for name in measure_names(t)]
    assert measures["attack_examples_sst"] == measures["attack_examples_para"] == 4
    assert all(math.isfinite(v) for k, v in measures.items() if not k.startswith("attack_success"))


def test_smoothness_grows_with_the_radius(measures):
    for task in ("sst", "para", "sts"):
        values = [measures[f"smooth_{task}_eps{e}"] for e in ("1e-3", "1e-2", "1e-1")]
        # ℓ_s is quadratic in a small δ: ten times the radius, about a hundred times the value.
        assert 0 < 10 * values[0] < values[1] and 10 * values[1] < values[2], (task, values)


def test_text_measures_are_the_metric_on_the_seeded_noisy_text(model, tokenizer, dev_examples, measures):
    scorer = ModelScorer(model, tokenizer, MAX_LENGTH, torch.device("cpu"))
    for task in ("sst", "sts"):
        examples = hashed_order(task, dev_examples[task])
        assert measures[f"clean_{task}"] == metric(scorer, task, examples)
        for kind, rate in (("typo", 10), ("delete", 5)):
            noisy = perturb_examples(task, examples, rate / 100, kind, seed=3)
            assert measures[f"{kind}{rate}_{task}"] == metric(scorer, task, noisy)
    para = hashed_order("para", dev_examples["para"])
    assert measures["ece_para"] == classifier_ece("binary", scorer.outputs("para", para), labels_of("para", para))


def test_the_measured_examples_are_a_sample_fixed_by_id_not_the_file_s_first_rows(model, tokenizer, dev_examples):
    sst = dev_examples["sst"]
    order = hashed_order("sst", sst)
    assert sorted(e.id for e in order) == sorted(e.id for e in sst) and order != sst
    assert hashed_order("sst", sst[::-1]) == order  # the file's row order does not matter
    # The measures on dev_limit=3 are those of the order's first three rows, wherever the file has them.
    limited = measure_model(model, tokenizer, {"sst": sst[::-1]}, max_length=MAX_LENGTH, dev_limit=3)
    assert limited == measure_model(model, tokenizer, {"sst": order[:3]}, max_length=MAX_LENGTH)
    assert limited != measure_model(model, tokenizer, {"sst": sst[:3]}, max_length=MAX_LENGTH)
    # On the real dev file, a 500-row sample keeps every class's share within 3 points of the whole
    # file's; the first 500 rows hold 1% of label 0 against 13% in the file.
    whole = TASKS["sst"].read(DATA / "ids-sst-dev.csv").examples
    def share(examples, label):
        return sum(e.label == label for e in examples) / len(examples)
    assert all(abs(share(hashed_order("sst", whole)[:500], c) - share(whole, c)) < 0.03 for c in range(5))
    assert share(whole[:500], 0) < 0.02


def test_the_ascent_finds_more_than_its_starting_noise(model, tokenizer, dev_examples):
    dataset = encode_task(dev_examples["sst"], tokenizer, TASKS["sst"], "cross", MAX_LENGTH)
    attacked = smoothness(model, dataset, 1e-2)
    noise_only = smoothness(model, dataset, 1e-2, Attack(steps=0))
    assert attacked > 3 * noise_only > 0


def test_measured_in_eval_mode_and_the_mode_is_restored(tokenizer, dev_examples):
    model = tiny_model(tokenizer.vocab_size, ("sst",))
    model.train()
    dataset = encode_task(dev_examples["sst"], tokenizer, TASKS["sst"], "cross", MAX_LENGTH)
    # With dropout on, f(x + δ) and f(x) would differ by two dropout masks, whatever δ.
    assert smoothness(model, dataset, 1e-6) < 1e-6
    assert model.training


def test_same_seed_same_measures_and_the_callers_rng_untouched(model, tokenizer, dev_examples, measures):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again = measure_model(model, tokenizer, dev_examples, seed=3, max_length=MAX_LENGTH, attack_limit=4)
    assert again == measures
    assert torch.equal(torch.get_rng_state(), state)
    # Another seed: other typos (STS's Pearson r shows it, six accuracies may not) and another δ₀.
    other = measure_model(model, tokenizer, {"sts": dev_examples["sts"]}, seed=4, max_length=MAX_LENGTH)
    assert other["typo10_sts"] != measures["typo10_sts"]
    assert other["smooth_sts_eps1e-1"] != measures["smooth_sts_eps1e-1"]


def test_limits_and_task_checks(model, tokenizer, dev_examples):
    small = measure_model(model, tokenizer, {"para": dev_examples["para"]}, max_length=MAX_LENGTH, dev_limit=3,
                          attack_limit=None)
    assert small["attack_examples_para"] == 3 and not any(k.endswith("_sst") for k in small)
    # smooth_limit: the smoothness of N examples (those dev_limit=N takes); every other measure on all.
    para = {"para": dev_examples["para"]}
    part = measure_model(model, tokenizer, para, max_length=MAX_LENGTH, attack_limit=None, smooth_limit=2)
    first_two = measure_model(model, tokenizer, para, max_length=MAX_LENGTH, attack_limit=None, dev_limit=2)
    whole = measure_model(model, tokenizer, para, max_length=MAX_LENGTH, attack_limit=None)
    assert len(dev_examples["para"]) > 2 and part.keys() == whole.keys()
    assert all(part[k] == (first_two if k.startswith("smooth_") else whole)[k] for k in part)
    assert any(part[k] != whole[k] for k in part if k.startswith("smooth_"))
    with pytest.raises(ValueError, match="cfimdb"):
        measure_model(model, tokenizer, {"cfimdb": []})
    with pytest.raises(ValueError, match="heads for"):
        measure_model(tiny_model(tokenizer.vocab_size, ("sst",)), tokenizer, {"para": dev_examples["para"]})


def test_checkpoint_measures_equal_the_in_memory_model(checkpoint, dev_files, measures):
    assert measure_checkpoint(checkpoint, dev_files, seed=3, attack_limit=4) == measures


def test_script_prints_and_writes_what_measure_checkpoint_returns(checkpoint, dev_files, tmp_path, capsys):
    out = tmp_path / "rob.json"
    returned = script.main(["--checkpoint", str(checkpoint), "--data_dir", str(dev_files["sst"].parent),
                            "--seed", "3", "--attack_limit", "4", "--smooth_limit", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    expected = measure_checkpoint(checkpoint, dev_files, seed=3, attack_limit=4, smooth_limit=2)
    assert returned == expected
    assert json.loads(out.read_text())["measures"] == expected
    assert format_table(expected) in printed
    assert printed.count("\n| ") == 4  # heading and one row per task


def test_script_errors_are_one_line(tmp_path, capsys, checkpoint):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--checkpoint", str(tmp_path / "nowhere")])
    message = str(exit_info.value.code)
    assert "nowhere" in message and "not a directory" in message and "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--checkpoint", str(tmp_path)])
    assert "run.json" in str(exit_info.value.code) and "\n" not in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--checkpoint", str(checkpoint), "--data_dir", str(tmp_path)])
    assert "ids-sst-dev.csv" in str(exit_info.value.code) and "--data_dir" in str(exit_info.value.code)
