"""The command line refuses bad values before touching --out_dir; --resume refuses exactly what changes results."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from minbert.hub import default_checkpoint_dir
from multitask_classifier import main, open_run_state
from multitask.resume import FORMAT, NEUTRAL_FLAGS, PATH_SUFFIXES, STATE_DIR, STATE_FILE
from multitask.settings import build_parser, parse
from tests.test_pipeline import SEED, data_args, output_args, refused_flags, write_tiny_course_files

BASE = ["--option", "finetune", "--epochs", "2", "--batch_size", "8", "--seed", SEED, "--device", "cpu",
        "--precision", "fp32"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict:
    return write_tiny_course_files(tmp_path_factory.mktemp("data"))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ bad values

# (flags, what the message must name); every one is refused before anything is read or written.
BAD_FLAGS = [
    (["--epochs", "0"], "--epochs: expected an integer ≥ 1, got 0"),
    (["--epochs", "two"], "--epochs: expected an integer ≥ 1, got 'two'"),
    (["--batch_size", "0"], "--batch_size: expected an integer ≥ 1"),
    (["--global_batch_size", "-8"], "--global_batch_size: expected an integer ≥ 1"),
    (["--eval_batch_size", "0"], "--eval_batch_size: expected an integer ≥ 1"),
    (["--eval_every", "0"], "--eval_every: expected an integer ≥ 1"),
    (["--lr", "-1"], "--lr: expected a number > 0, got -1"),
    (["--lr", "nan"], "--lr: expected a number > 0"),
    (["--head_lr", "0"], "--head_lr: expected a number > 0"),
    (["--weight_decay", "-0.1"], "--weight_decay: expected a number ≥ 0"),
    (["--grad_accum", "0"], "--grad_accum: expected an integer ≥ 1"),
    (["--max_length", "3"], "--max_length: expected an integer ≥ 8"),
    (["--max_length", "1000"], "--max_length: expected an integer from 8 to 512 (the model's max_position_embeddings)"),
    (["--train_limit", "0"], "--train_limit: expected an integer ≥ 1"),
    (["--dev_limit", "-5"], "--dev_limit: expected an integer ≥ 1"),
    (["--train_fraction", "0"], "--train_fraction: expected a number in (0, 1], got 0"),
    (["--train_fraction", "1.5"], "--train_fraction: expected a number in (0, 1], got 1.5"),
    (["--save_every", "-1"], "--save_every: expected an integer ≥ 0"),
    (["--max_bad_steps", "-1"], "--max_bad_steps: expected an integer ≥ 0"),
    (["--seed", "-1"], "--seed: expected an integer from 0 to 4294967295"),
    (["--hidden_dropout_prob", "1"], "--hidden_dropout_prob: expected a number in [0, 1)"),
    (["--smart", "--smart_lambda", "-1"], "--smart_lambda: expected a number ≥ 0"),
    (["--smart", "--smart_eps", "0"], "--smart_eps: expected a number > 0"),
    (["--smart", "--smart_sigma=-1e-5"], "--smart_sigma: expected a number ≥ 0"),
    (["--smart", "--smart_step_size", "inf"], "--smart_step_size: expected a number > 0"),
    (["--smart", "--smart_steps", "0"], "--smart_steps: expected an integer ≥ 1"),
    (["--option", "finetune", "--smart", "--smart_sigma", "0"],
     "--smart_sigma 0 with shared dropout masks starts the ascent at the minimum"),
    (["--rdrop", "--rdrop_form", "both"], "--rdrop_form: invalid choice: 'both'"),
    (["--smart", "--bregman_mu", "-1"], "--bregman_mu: expected a number ≥ 0"),
    (["--smart", "--bregman_beta", "1"], "--bregman_beta: expected a number in [0, 1)"),
    (["--r3f", "--r3f_eps", "0"], "--r3f_eps: expected a number > 0"),
    (["--r3f", "--r3f_lambda", "-2"], "--r3f_lambda: expected a number ≥ 0"),
    (["--rdrop", "--rdrop_alpha", "-1"], "--rdrop_alpha: expected a number ≥ 0"),
    (["--tasks", "sst,nli"], "--tasks: unknown task(s) ['nli']"),
    (["--sst_train", "/no/such/sst-train.csv"], "--sst_train: /no/such/sst-train.csv is not a file"),
    (["--para_dev", "/no/such/quora-dev.csv"], "--para_dev: /no/such/quora-dev.csv is not a file"),
    (["--pretrained", "/no/such/model"], "--pretrained: /no/such/model is not a directory"),
    (["--smart_tasks", "sst"], "--smart_tasks narrows --smart to some tasks, but --smart is not on"),
]


@pytest.mark.parametrize("flags,named", BAD_FLAGS, ids=[" ".join(flags) for flags, _ in BAD_FLAGS])
def test_bad_flags_are_refused_in_one_line_and_leave_a_saved_run_untouched(tiny_data, tmp_path, capsys, flags, named):
    out_dir = tmp_path / "run"
    # What a run leaves in --out_dir: its resume state, best checkpoint and metrics. The bytes do not
    # matter, only that nothing of them is removed or rewritten.
    for name in (f"{STATE_DIR}/{STATE_FILE}", f"{STATE_DIR}/weights-000003.safetensors", "best/model.safetensors",
                 "best/run.json", "metrics.jsonl"):
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_bytes(name.encode() * 100)
    before = snapshot(out_dir)
    out_args, outputs = output_args(tmp_path / "predictions")
    for resume in ([], ["--resume"]):
        message = refused_flags(capsys, [*BASE, *data_args(tiny_data), *out_args, "--out_dir", str(out_dir),
                                         *flags, *resume])
        assert message.startswith("multitask_classifier.py: error: ") and named in message, message
        assert snapshot(out_dir) == before
    assert not (tmp_path / "predictions").exists()


def test_out_dir_that_is_a_file_is_refused(tiny_data, tmp_path, capsys):
    (tmp_path / "run").write_text("a file, not a directory")
    message = refused_flags(capsys, [*BASE, *data_args(tiny_data), "--out_dir", str(tmp_path / "run")])
    assert "--out_dir: " in message and "is not a directory" in message


def test_predict_only_without_a_checkpoint_is_refused(tiny_data, tmp_path, capsys):
    message = refused_flags(capsys, ["--predict_only", *data_args(tiny_data),
                                     "--out_dir", str(tmp_path / "nothing")])
    assert f"--checkpoint: {tmp_path / 'nothing' / 'best'} is not a directory" in message


# ---------------------------------------------------------------------------------- resume refusal

def changed_copy(source: Path, target: Path, change_one_byte: bool) -> Path:
    data = bytearray(source.read_bytes())
    if change_one_byte:
        # A label digit in the last row: same size, same format, another result.
        at = data.rstrip(b"\n").rfind(b"\t") + 1
        data[at] = ord("1") if data[at] != ord("1") else ord("0")
    target.write_bytes(bytes(data))
    return target


def flag_changes(tiny_data: dict, tmp_path: Path) -> dict[str, tuple[list[str], bool]]:
    """Every flag of the parser: (a change of it from BASE, whether --resume must refuse that change)."""
    files = tiny_data["files"]
    other = tmp_path / "other"
    other.mkdir()
    copy = {f"{t}_{s}": changed_copy(path, other / f"{t}-{s}-changed.csv", True) for (t, s), path in files.items()}
    moved = {f"{t}_{s}": changed_copy(path, other / f"{t}-{s}-moved.csv", False) for (t, s), path in files.items()}
    changes = {
        "option": (["--option", "pretrain"], True),
        "epochs": (["--epochs", "3"], True),
        "lr": (["--lr", "1e-4"], True),
        "head_lr": (["--head_lr", "1e-3"], True),
        "batch_size": (["--batch_size", "4"], True),
        "global_batch_size": (["--global_batch_size", "4"], True),
        "hidden_dropout_prob": (["--hidden_dropout_prob", "0.2"], True),
        "seed": (["--seed", "7"], True),
        "precision": (["--precision", "bf16"], True),
        "pretrained": (["--pretrained", str(tmp_path / "pretrained")], True),
        "tasks": (["--tasks", "sst,para"], True),
        "train_limit": (["--train_limit", "4"], True),
        "train_fraction": (["--train_fraction", "0.5"], True),
        "max_length": (["--max_length", "64"], True),
        "pooling": (["--pooling", "cls"], True),
        "pair_encoding": (["--pair_encoding", "bi"], True),
        "schedule": (["--schedule", "proportional"], True),
        "no_pair_swap": (["--no_pair_swap"], True),
        "grad_accum": (["--grad_accum", "2"], True),
        "weight_decay": (["--weight_decay", "0.1"], True),
        "eval_batch_size": (["--eval_batch_size", "16"], True),
        "eval_every": (["--eval_every", "2"], True),
        "no_ema": (["--no_ema"], True),
        "smart": (["--smart"], True),
        "no_adversarial": (["--smart", "--no_adversarial"], True),
        "no_bregman": (["--smart", "--no_bregman"], True),
        "smart_lambda": (["--smart_lambda", "2"], True),
        "smart_eps": (["--smart_eps", "1e-3"], True),
        "smart_sigma": (["--smart_sigma", "1e-4"], True),
        "smart_step_size": (["--smart_step_size", "1e-3"], True),
        "smart_steps": (["--smart_steps", "2"], True),
        "smart_ascent_precision": (["--smart_ascent_precision", "compute"], True),
        "smart_dropout": (["--smart_dropout", "independent"], True),
        "bregman_mu": (["--bregman_mu", "2"], True),
        "bregman_beta": (["--bregman_beta", "0.9"], True),
        "smart_tasks": (["--smart", "--smart_tasks", "sst"], True),
        "r3f": (["--r3f"], True),
        "r3f_tasks": (["--r3f", "--r3f_tasks", "sst"], True),
        "r3f_noise": (["--r3f_noise", "uniform"], True),
        "r3f_eps": (["--r3f_eps", "0.1"], True),
        "r3f_lambda": (["--r3f_lambda", "2"], True),
        "rdrop": (["--rdrop"], True),
        "rdrop_alpha": (["--rdrop_alpha", "2"], True),
        "rdrop_form": (["--rdrop_form", "first_pass"], True),
        "rdrop_tasks": (["--rdrop", "--rdrop_tasks", "sst"], True),
        "dev_limit": (["--dev_limit", "4"], True),
        # Neutral: where files go, how often the state is saved, when to give up, what is written after training.
        "save_every": (["--save_every", "5"], False),
        "max_bad_steps": (["--max_bad_steps", "3"], False),
        "checkpoint": (["--checkpoint", str(tmp_path / "elsewhere")], False),
        "skip_predictions": (["--skip_predictions"], False),
        "keep_resume": (["--keep_resume"], False),
        "device": (["--device", "auto"], False),  # still the CPU here: the device type is what counts
        "resume": ([], False),  # every command here has it
    }
    for task in ("sst", "para", "sts"):
        for split in ("train", "dev"):
            changes[f"{task}_{split}"] = (["--" + f"{task}_{split}", str(copy[f"{task}_{split}"])], True)
            changes[f"{task}_{split} moved"] = (["--" + f"{task}_{split}", str(moved[f"{task}_{split}"])], False)
        changes[f"{task}_test"] = (["--" + f"{task}_test", str(copy[f"{task}_test"])], False)
        for split in ("dev", "test"):
            changes[f"{task}_{split}_out"] = (["--" + f"{task}_{split}_out", str(tmp_path / f"{task}-{split}.csv")],
                                               False)
    # A registered task that is not trained: its files are never read, so no path of it counts.
    for flag in ("cfimdb_train", "cfimdb_dev", "cfimdb_test", "cfimdb_dev_out", "cfimdb_test_out"):
        changes[flag] = ([f"--{flag}", str(tmp_path / f"{flag}.csv")], False)
    return changes


# Flags with no run to resume: each starts something else (a prediction run, a CUDA run, another --out_dir).
NOT_RESUMABLE = {"predict_only", "use_gpu", "out_dir", "help"}


@pytest.fixture
def saved_run(tiny_data, tmp_path) -> dict:
    """An --out_dir whose resume state was saved by a run with BASE settings.

    Only the parts `RunState.load` checks are real (format, fingerprint from the CLI's own code);
    a state that passes them fails later, on its missing weights file, which marks acceptance.
    """
    out_dir = tmp_path / "run"
    # The packaged model under another path: a different --pretrained that loads.
    (tmp_path / "pretrained").mkdir()
    for item in default_checkpoint_dir().iterdir():
        if item.is_file():
            (tmp_path / "pretrained" / item.name).symlink_to(item)
    argv = [*BASE, *data_args(tiny_data), "--out_dir", str(out_dir), "--resume"]
    settings = parse(argv)
    train = dataclasses.replace(settings.train, lr=5e-5, precision="fp32")
    run_state, _ = open_run_state(settings, train, torch.device("cpu"))
    run_state.directory.mkdir(parents=True)
    torch.save({"format": FORMAT, "serial": 1, "weights": "weights-000001.safetensors",
                "fingerprint": json.dumps(run_state.fingerprint, sort_keys=True), "has_teacher": True,
                "trainer": {}, "rng": {}}, run_state.state_file)
    return {"argv": argv, "changes": flag_changes(tiny_data, tmp_path), "state_file": run_state.state_file}


def test_every_flag_is_in_the_table(saved_run):
    dests = {action.dest for action in build_parser()._actions}
    assert dests - NOT_RESUMABLE == {name.split(" ")[0] for name in saved_run["changes"]}
    # The resume code's neutral flags are the table's, leaving out file paths, which run_fingerprint
    # drops by their suffix (the trained tasks' files count by their hashes instead).
    neutral = {name for name, (_, refused) in saved_run["changes"].items()
               if not refused and " " not in name and not name.endswith(PATH_SUFFIXES)}
    assert NEUTRAL_FLAGS - NOT_RESUMABLE == neutral


def test_each_result_changing_flag_is_refused_and_each_neutral_one_accepted(saved_run):
    wrong = []
    for name, (flags, must_refuse) in saved_run["changes"].items():
        with pytest.raises(SystemExit) as stopped:
            main([*saved_run["argv"], *flags])
        message = str(stopped.value.code)
        refused = "refusing to resume" in message
        # Acceptance gets past the settings check and stops at the stand-in state's missing weights.
        accepted = "weights-000001.safetensors: missing" in message
        named = "--" + name.split(" ")[0]
        if must_refuse and not (refused and (named in message or f"content of {named}" in message)):
            wrong.append(f"{name}: not refused naming {named}: {message}")
        if not must_refuse and not accepted:
            wrong.append(f"{name}: not accepted: {message}")
    assert not wrong, "\n".join(wrong)
    assert saved_run["state_file"].is_file()
