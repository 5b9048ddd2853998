"""End to end through `multitask_classifier.main`: tiny course-format files, the packaged model, all outputs checked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import scipy.stats
import torch
from safetensors.torch import load_file

from minbert import BertModel
from minbert.plumbing.machine import resolve_precision
from multitask.regularizers import check_regularizer_flags
from multitask_classifier import main
from multitask.predictions import read_predictions
from multitask.settings import parse
from multitask.records import TIMING_KEYS
from tests.conftest import read_column

DATA = Path(__file__).resolve().parent.parent / "data"
STEMS = {"sst": "ids-sst", "para": "quora", "sts": "sts"}
SPLIT_FILES = {"train": "train", "dev": "dev", "test": "test-student"}
ROWS = {"train": 16, "dev": 8, "test": 8}
HEADERS = {"sst": "id \t Predicted_Sentiment \n", "para": "id \t Predicted_Is_Paraphrase \n",
           "sts": "id \t Predicted_Similiary \n"}
OUTPUTS = [(task, split) for task in STEMS for split in ("dev", "test")]
CHECKPOINT_FILES = ("config.json", "model.safetensors", "vocab.txt", "heads.safetensors", "run.json")
SEED = "1234"


def write_tiny_file(source: Path, target: Path, rows: int) -> list[str]:
    """The header and the first `rows` records of a course file, copied verbatim; returns their ids.

    Records with a double quote are passed over so that one line is one record, and the ids can
    be read back with the plain csv module independently of the package's reader.
    """
    with open(source, encoding="utf-8") as f:
        header, *lines = f.read().split("\n")
    kept = [line for line in lines if line and '"' not in line][:rows]
    target.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    with open(target, encoding="utf-8", newline="") as f:
        ids = [row["id"] for row in csv.DictReader(f, delimiter="\t")]
    assert len(ids) == rows
    return ids


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_tiny_course_files(directory: Path, rows: dict[str, int] = ROWS) -> dict:
    """{"files": {(task, split): path}, "ids": {(task, split): ids in file order}} for every course file."""
    files, ids = {}, {}
    for task, stem in STEMS.items():
        for split, suffix in SPLIT_FILES.items():
            files[task, split] = directory / f"{stem}-{suffix}.csv"
            ids[task, split] = write_tiny_file(DATA / f"{stem}-{suffix}.csv", files[task, split], rows[split])
    return {"files": files, "ids": ids}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, one_torch_thread) -> dict:
    return write_tiny_course_files(tmp_path_factory.mktemp("data"))


def data_args(tiny_data: dict) -> list[str]:
    return [arg for (task, split), path in tiny_data["files"].items() for arg in (f"--{task}_{split}", str(path))]


def output_args(directory: Path) -> tuple[list[str], dict[tuple[str, str], Path]]:
    outputs = {(task, split): directory / f"{task}-{split}-output.csv" for task, split in OUTPUTS}
    return [arg for (task, split), path in outputs.items() for arg in (f"--{task}_{split}_out", str(path))], outputs


def train_run(tiny_data: dict, out_dir: Path, option: str = "finetune", epochs: int = 1, *extra: str) -> dict:
    """One full training run through the CLI; returns where everything went."""
    out_args, outputs = output_args(out_dir / "predictions")
    main(["--option", option, "--epochs", str(epochs), "--batch_size", "8", "--seed", SEED, "--device", "cpu",
          *data_args(tiny_data), *out_args, "--out_dir", str(out_dir), *extra])
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {"out_dir": out_dir, "best": out_dir / "best", "outputs": outputs, "metrics": metrics}


@pytest.fixture(scope="module")
def finetune_run(tiny_data, tmp_path_factory) -> dict:
    return train_run(tiny_data, tmp_path_factory.mktemp("finetune"))


@pytest.fixture(scope="module")
def finetune_rerun(tiny_data, tmp_path_factory) -> dict:
    return train_run(tiny_data, tmp_path_factory.mktemp("finetune_again"))


@pytest.fixture(scope="module")
def pretrain_run(tiny_data, tmp_path_factory) -> dict:
    # Two epochs, so metrics.jsonl is checked with more than one line too; --no_pair_swap to check that switch.
    return train_run(tiny_data, tmp_path_factory.mktemp("pretrain"), "pretrain", 2, "--no_pair_swap")


@pytest.fixture(scope="module")
def packaged_encoder() -> dict[str, torch.Tensor]:
    return BertModel.from_pretrained().state_dict()


def check_predictions(run: dict, tiny_data: dict) -> None:
    for (task, split), path in run["outputs"].items():
        assert path.is_file(), path
        assert path.read_text(encoding="utf-8").startswith(HEADERS[task]), path
        parsed = read_predictions(path, task, expected_ids=tiny_data["ids"][task, split])
        assert parsed.ids == tiny_data["ids"][task, split], path


# ----------------------------------------------------------------------------------------------- finetune

def test_finetune_writes_six_valid_prediction_files_in_input_order(finetune_run, tiny_data):
    assert len(finetune_run["outputs"]) == 6
    check_predictions(finetune_run, tiny_data)
    # The task is recognised from the header alone, too.
    for (task, _), path in finetune_run["outputs"].items():
        assert read_predictions(path).task == task


def test_finetune_metrics_have_one_line_per_epoch(finetune_run):
    metrics = finetune_run["metrics"]
    assert len(metrics) == 1
    record = metrics[0]
    assert record["epoch"] == 1
    for key in ("dev_sst", "dev_para", "dev_sts", "dev_mean", "train_seconds", "train_examples"):
        assert key in record, key
    assert record["train_examples"] == 3 * ROWS["train"]  # every training row once
    assert 0.0 <= record["dev_sst"] <= 1.0 and 0.0 <= record["dev_para"] <= 1.0
    assert -1.0 <= record["dev_sts"] <= 1.0
    expected_mean = (record["dev_sst"] + record["dev_para"] + (record["dev_sts"] + 1) / 2) / 3
    assert record["dev_mean"] == pytest.approx(expected_mean)


@pytest.mark.parametrize("task,label_column", [("sst", "sentiment"), ("para", "is_duplicate"), ("sts", "similarity")])
def test_dev_prediction_files_reproduce_the_kept_epochs_scores(finetune_run, tiny_data, task, label_column):
    # Scored here from the written file and the dev labels, with the csv module and scipy: nothing
    # of the package's own evaluation is reused.
    kept = max(finetune_run["metrics"], key=lambda record: record["dev_mean"])
    labels = dict(read_column(tiny_data["files"][task, "dev"], "id", label_column))
    predicted = read_predictions(finetune_run["outputs"][task, "dev"], task).as_dict()
    assert predicted.keys() == {key.strip() for key in labels}
    truth = {key.strip(): float(value) for key, value in labels.items()}
    ids = sorted(truth)
    if task == "sts":
        recomputed = scipy.stats.pearsonr([predicted[i] for i in ids], [truth[i] for i in ids]).statistic
        assert kept["dev_sts"] == pytest.approx(recomputed, abs=1e-6)
    else:
        recomputed = sum(predicted[i] == int(truth[i]) for i in ids) / len(ids)
        assert kept[f"dev_{task}"] == pytest.approx(recomputed, abs=1e-12)


def test_finetune_saves_the_best_checkpoint(finetune_run, packaged_encoder):
    best = finetune_run["best"]
    for name in CHECKPOINT_FILES:
        assert (best / name).is_file(), name
    for leftover in ("best.partial", "best.old"):
        assert not (finetune_run["out_dir"] / leftover).exists()
    # The resume state is removed once the run has finished (--keep_resume keeps it).
    assert not (finetune_run["out_dir"] / "resume").exists()
    run = json.loads((best / "run.json").read_text())
    assert run["tasks"] == ["sst", "para", "sts"]
    # The precision that ran, not the flag's "auto".
    assert run["settings"]["precision"] == resolve_precision("auto", torch.device("cpu"))
    # Pairs are swapped in training and scored in both orders unless --no_pair_swap.
    assert run["symmetric_pairs"] is True and run["settings"]["swap_pairs"] is True
    # The default fine-tuning recipe is the task losses alone: no regulariser term is logged.
    assert [key for key in finetune_run["metrics"][0] if key.startswith("loss_")] == \
        ["loss_sst", "loss_para", "loss_sts"]
    assert run["dev_scores"]["dev_mean"] == pytest.approx(finetune_run["metrics"][0]["dev_mean"])
    heads = load_file(str(best / "heads.safetensors"))
    assert {key.split(".")[0] for key in heads} == {"sst", "para", "sts"}
    # Fine-tuning really moves the encoder (what makes the pretrain check below meaningful).
    saved = BertModel.from_pretrained(best).state_dict()
    assert any(not torch.equal(saved[key], packaged_encoder[key]) for key in packaged_encoder)


def test_predict_only_reproduces_the_prediction_files(finetune_run, tiny_data, tmp_path):
    out_args, outputs = output_args(tmp_path / "again")
    main(["--predict_only", "--checkpoint", str(finetune_run["best"]), "--device", "cpu",
          *data_args(tiny_data), *out_args, "--out_dir", str(tmp_path / "unused")])
    for key, path in outputs.items():
        assert path.read_bytes() == finetune_run["outputs"][key].read_bytes(), key


def test_same_seed_gives_identical_predictions_and_metrics(finetune_run, finetune_rerun):
    for key, path in finetune_run["outputs"].items():
        assert path.read_bytes() == finetune_rerun["outputs"][key].read_bytes(), key
    strip = [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in finetune_run["metrics"]]
    strip_again = [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in finetune_rerun["metrics"]]
    assert strip == strip_again
    heads = load_file(str(finetune_run["best"] / "heads.safetensors"))
    heads_again = load_file(str(finetune_rerun["best"] / "heads.safetensors"))
    assert all(torch.equal(heads[key], heads_again[key]) for key in heads)


# ------------------------------------------------------------------------------ an optional fourth task

@pytest.fixture(scope="module")
def cfimdb_run(tiny_data, tmp_path_factory) -> dict:
    """STS with CFIMDB, the registry's optional task: its files, flags, head, scores and predictions."""
    directory = tmp_path_factory.mktemp("cfimdb")
    files = {split: directory / f"ids-cfimdb-{suffix}.csv" for split, suffix in SPLIT_FILES.items()}
    ids = {split: write_tiny_file(DATA / f"ids-cfimdb-{suffix}.csv", files[split], ROWS[split])
           for split, suffix in SPLIT_FILES.items()}
    outputs = {(task, split): directory / "predictions" / f"{task}-{split}.csv"
               for task in ("sts", "cfimdb") for split in ("dev", "test")}
    flags = [*(arg for split, path in files.items() for arg in (f"--cfimdb_{split}", str(path))),
             *(arg for (task, split), path in outputs.items() for arg in (f"--{task}_{split}_out", str(path)))]
    main(["--option", "finetune", "--tasks", "sts,cfimdb", "--epochs", "1", "--batch_size", "8", "--seed", SEED,
          "--device", "cpu", *data_args(tiny_data), *flags, "--out_dir", str(directory / "run")])
    metrics = [json.loads(line) for line in (directory / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"files": files, "ids": ids, "outputs": outputs, "metrics": metrics, "flags": flags,
            "best": directory / "run" / "best"}


def test_cfimdb_trains_as_a_fourth_task_with_scores_and_predictions(cfimdb_run, tiny_data):
    [record] = cfimdb_run["metrics"]
    assert record["train_examples"] == 2 * ROWS["train"] and "loss_cfimdb" in record
    assert record["dev_mean"] == pytest.approx((record["dev_cfimdb"] + (record["dev_sts"] + 1) / 2) / 2)
    for split in ("dev", "test"):
        path = cfimdb_run["outputs"]["cfimdb", split]
        assert path.read_text(encoding="utf-8").startswith("id \t Predicted_Sentiment \n")
        assert read_predictions(path, "cfimdb").ids == cfimdb_run["ids"][split]
    # The dev file, scored with the csv module, gives the logged accuracy.
    labels = dict(read_column(cfimdb_run["files"]["dev"], "id", "sentiment"))
    predicted = read_predictions(cfimdb_run["outputs"]["cfimdb", "dev"], "cfimdb").as_dict()
    accuracy = sum(predicted[key.strip()] == int(value) for key, value in labels.items()) / len(labels)
    assert record["dev_cfimdb"] == pytest.approx(accuracy, abs=1e-12)
    heads = load_file(str(cfimdb_run["best"] / "heads.safetensors"))
    assert heads["cfimdb.weight"].shape[0] == 1 and heads["sts.weight"].shape[0] == 1


def test_predict_only_writes_the_optional_task_too(cfimdb_run, tiny_data, tmp_path):
    flags = [flag.replace(str(cfimdb_run["best"].parent.parent / "predictions"), str(tmp_path))
             for flag in cfimdb_run["flags"]]
    main(["--predict_only", "--tasks", "sts,cfimdb", "--checkpoint", str(cfimdb_run["best"]), "--device", "cpu",
          *data_args(tiny_data), *flags, "--out_dir", str(tmp_path / "unused")])
    for (task, split), path in cfimdb_run["outputs"].items():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), (task, split)


# ----------------------------------------------------------------------------------------------- pretrain

def test_pretrain_keeps_the_encoder_and_trains_the_heads(pretrain_run, packaged_encoder, tiny_data):
    saved = BertModel.from_pretrained(pretrain_run["best"]).state_dict()
    assert saved.keys() == packaged_encoder.keys()
    changed = [key for key in saved if not torch.equal(saved[key], packaged_encoder[key])]
    assert not changed, changed
    heads = load_file(str(pretrain_run["best"] / "heads.safetensors"))
    # Head biases start at zero (MultitaskBert's init); trained heads have moved them.
    for task in STEMS:
        assert heads[f"{task}.bias"].abs().max() > 0, task
    assert [record["epoch"] for record in pretrain_run["metrics"]] == [1, 2]
    check_predictions(pretrain_run, tiny_data)
    run = json.loads((pretrain_run["best"] / "run.json").read_text())
    assert run["symmetric_pairs"] is False and run["settings"]["swap_pairs"] is False  # --no_pair_swap
    assert not any(key.endswith("_r3f") for record in pretrain_run["metrics"] for key in record)


# ------------------------------------------------------------------------------------------------- errors

def refused_flags(capsys, argv: list[str]) -> str:
    """Run the CLI on flags it must refuse; return its one-line message after checking exit code 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "Traceback" not in message, message
    return message.removesuffix("\n")


def test_missing_training_file_exits_naming_it(tiny_data, tmp_path, capsys):
    missing = tmp_path / "no-such-sst-train.csv"
    out_args, outputs = output_args(tmp_path / "predictions")
    message = refused_flags(capsys, ["--option", "finetune", "--epochs", "1", "--device", "cpu", *data_args(tiny_data),
                                     "--sst_train", str(missing), *out_args, "--out_dir", str(tmp_path / "run")])
    assert f"error: --sst_train: {missing} is not a file" in message
    assert not any(path.exists() for path in outputs.values())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name,content,reason", [
    ("empty.csv", b"", "empty file"),
    ("comma.csv", b",id,sentence,sentiment\n0,a1,good film,3\n", "not tab-separated"),
    ("latin1.csv", b"\tid\tsentence\tsentiment\n0\ta1\tcaf\xe9 au lait\t3\n", "not valid UTF-8"),
])
def test_unusable_training_file_exits_with_one_line_naming_it(tiny_data, tmp_path, name, content, reason):
    bad = tmp_path / name
    bad.write_bytes(content)
    out_args, _ = output_args(tmp_path / "predictions")
    with pytest.raises(SystemExit) as excinfo:
        main(["--option", "finetune", "--device", "cpu", *data_args(tiny_data), "--sst_train", str(bad), *out_args,
              "--out_dir", str(tmp_path / "run")])
    message = str(excinfo.value.code)
    assert message.startswith(f"error: {bad}: ") and reason in message and "\n" not in message


@pytest.mark.parametrize("tasks,flags,expected", [
    ("para", ["--r3f", "--r3f_tasks", "sst"], "error: --r3f_tasks: sst not among the trained --tasks para"),
    ("sst,para", ["--smart", "--smart_tasks", "sts"],
     "error: --smart_tasks: sts not among the trained --tasks sst,para"),
    ("sst,para,sts", ["--r3f", "--r3f_tasks", "sst,nli"], "error: --r3f_tasks: unknown task(s) ['nli']"),
    ("sst,para,sts", ["--rdrop", "--rdrop_tasks", "none"], "error: --rdrop_tasks: unknown task(s) ['none']"),
])
def test_regularising_a_task_not_trained_exits_naming_it(tiny_data, tmp_path, capsys, tasks, flags, expected):
    out_args, _ = output_args(tmp_path / "predictions")
    message = refused_flags(capsys, ["--option", "finetune", "--device", "cpu", *data_args(tiny_data), *out_args,
                                     "--tasks", tasks, *flags, "--out_dir", str(tmp_path / "run")])
    assert message.startswith(f"multitask_classifier.py: {expected}"), message


# Each rule of the regulariser flags: a *_tasks flag only narrows a switched-on term, and
# contradictions are errors that name both flags.
@pytest.mark.parametrize("flags,named", [
    (["--smart_tasks", "sst"], ("--smart_tasks", "--smart")),
    (["--r3f_tasks", "sst"], ("--r3f_tasks", "--r3f")),
    (["--rdrop_tasks", "sst"], ("--rdrop_tasks", "--rdrop")),
    (["--smart", "--r3f"], ("--smart", "--r3f")),
    (["--no_bregman"], ("--no_bregman", "--smart")),
    (["--smart", "--no_adversarial", "--no_bregman"], ("--no_adversarial", "--no_bregman")),
    (["--option", "pretrain", "--smart"], ("--smart", "--option pretrain")),
    (["--option", "pretrain", "--rdrop"], ("--rdrop", "--option pretrain")),
])
def test_contradictory_regulariser_flags_exit_naming_both(tiny_data, tmp_path, capsys, flags, named):
    out_args, _ = output_args(tmp_path / "predictions")
    message = refused_flags(capsys, ["--option", "finetune", "--device", "cpu", *data_args(tiny_data), *out_args,
                                     *flags, "--out_dir", str(tmp_path / "run")])
    assert all(flag in message for flag in named), message
    assert not (tmp_path / "run").exists()


def test_r3f_with_the_mean_teacher_alone_is_allowed():
    parsed = parse(["--option", "finetune", "--smart", "--no_adversarial", "--r3f", "--r3f_tasks", "sst"])
    check_regularizer_flags(parsed.regularizers, parsed.run)
    settings = parsed.regularizers
    assert (settings.adversarial, settings.bregman, settings.r3f, settings.r3f_tasks) == (False, True, True, ("sst",))
