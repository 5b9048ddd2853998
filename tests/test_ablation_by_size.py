"""The ablation runner's data-size axis: fractions, seeds and epochs per fraction, the budget pilot, the
robustness measures of each run, the by-size report, resuming; runs are faked unless a test says otherwise."""

from __future__ import annotations

import dataclasses
import json
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest

from multitask.ablation import GRID, GridError, GridSettings, build_command, finished_results, run_dir, run_signature
from multitask.ablation import by_size
from multitask.ablation.seed_stats import paired_difference
from multitask.ablation.single_run import ROBUSTNESS, RunResult, code_version, dev_files, run_one
from multitask.ablation.sizes import (BY_SIZE_ROWS, SizeGrid, epochs_flag, finished_by_size, mean_curve,
                                      parse_by_fraction, parse_fractions, pilot_grid, pilot_summary, plateau_epoch,
                                      run_by_size, size_grid)
from multitask.settings import build_parser
from tests.test_ablation import ABLATE, REPO, SPLITS, STEMS, ablate, copy_head, read_json, training_flags


# The fake classifier's scores: a function of the row, seed, fraction and epoch, so that the tests can
# compute every summary by hand. Rows differ by a fixed offset plus a seed-dependent part (the spread the
# t-interval sees); the curve approaches its final value faster on less data (plateau: see the pilot test).
SCORES = '''
OFFSET = {"baseline": 0.0, "smart": 0.02, "adversarial": 0.01, "bregman": -0.01, "r3f": -0.02, "rdrop": 0.005}

def dev_mean(config, seed, fraction, epoch):
    rate = 0.25 if fraction <= 0.25 else 0.5
    return 0.5 + 0.2 * fraction + OFFSET[config] + 0.002 * ((seed * 7 + 2 * len(config)) % 5) - 0.05 * rate ** (epoch - 1)
'''
_scores: dict = {}
exec(SCORES, _scores)  # the same functions here as in the fake
dev_mean, OFFSET = _scores["dev_mean"], _scores["OFFSET"]

FAKE_CLASSIFIER = f'''#!{sys.executable}
"""Stand-in for `python multitask_classifier.py ...`: epoch records from SCORES and a best checkpoint."""
import argparse, json, sys
from pathlib import Path
{SCORES}
p = argparse.ArgumentParser()
p.add_argument("classifier")
p.add_argument("--out_dir", type=Path, required=True)
p.add_argument("--epochs", type=int, required=True)
p.add_argument("--seed", type=int, required=True)
p.add_argument("--train_fraction", type=float, default=1.0)
p.add_argument("--eval_every", type=int, default=1)
p.add_argument("--smart", action="store_true")
p.add_argument("--no_bregman", action="store_true")
p.add_argument("--no_adversarial", action="store_true")
p.add_argument("--r3f", action="store_true")
p.add_argument("--rdrop", action="store_true")
args, _ = p.parse_known_args()
config = ("adversarial" if args.no_bregman else "bregman" if args.no_adversarial else "smart" if args.smart
          else "r3f" if args.r3f else "rdrop" if args.rdrop else "baseline")
with open(Path(__file__).with_suffix(".calls"), "a") as f:
    f.write(json.dumps(sys.argv[2:]) + "\\n")
args.out_dir.mkdir(parents=True, exist_ok=True)
(args.out_dir / "best").mkdir(exist_ok=True)
(args.out_dir / "best" / "model.safetensors").write_bytes(b"weights")
with open(args.out_dir / "metrics.jsonl", "w") as f:
    for epoch in range(1, args.epochs + 1):
        mean = dev_mean(config, args.seed, args.train_fraction, epoch)
        scores = {{"dev_sst": mean - 0.2, "dev_para": mean + 0.1, "dev_sts": mean + 0.05, "dev_mean": mean}}
        if epoch % args.eval_every and epoch < args.epochs:
            scores = {{"dev_mean": None}}  # as multitask_classifier.py writes an epoch --eval_every skips
        f.write(json.dumps({{"epoch": epoch, **scores, "train_seconds": 100 * args.train_fraction}}) + "\\n")
'''


@pytest.fixture
def fake_classifier(tmp_path) -> Path:
    path = tmp_path / "fake_classifier.py"
    path.write_text(FAKE_CLASSIFIER)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def calls(fake: Path) -> list[list[str]]:
    path = fake.with_suffix(".calls")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def measures(config: str, seed: int) -> dict[str, float]:
    """What the stand-in measure_checkpoint returns for a run."""
    return {"typo5_sst": 0.4 + OFFSET[config] + 0.001 * (seed % 10), "smooth_sst_eps1e-2": 1e-3 * (2 + OFFSET[config]),
            "attack_examples_sst": 500.0}


class FakeRobustness:
    """multitask.robustness as a stand-in module: records each call and what the checkpoint held then."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict] = []
        self.fail = fail

    def measure_checkpoint(self, checkpoint: Path, dev_files: dict[str, Path], *, seed: int = 0, device: str = "cpu",
                           precision: str = "fp32", dev_limit: int | None = None,
                           attack_limit: int | None = 500, smooth_limit: int | None = None) -> dict[str, float]:
        self.calls.append({"checkpoint": checkpoint, "present": (checkpoint / "model.safetensors").is_file(),
                           "dev_files": dev_files, "seed": seed, "device": device, "precision": precision,
                           "dev_limit": dev_limit, "attack_limit": attack_limit, "smooth_limit": smooth_limit})
        if self.fail:
            raise RuntimeError("the attack ran out of words")
        # The run's configuration names its directory: <out_dir>/frac<F>/<config>/seed<seed>/best.
        return measures(checkpoint.parent.parent.name, seed)


@pytest.fixture
def robustness(monkeypatch) -> FakeRobustness:
    fake = FakeRobustness()
    module = types.ModuleType("multitask.robustness")
    module.measure_checkpoint = fake.measure_checkpoint
    monkeypatch.setitem(sys.modules, "multitask.robustness", module)
    return fake


def grid_of(tmp_path: Path, fake: Path, **changes) -> SizeGrid:
    base = GridSettings(out_dir=tmp_path / "ablations_by_size", configs=["baseline", "smart", "r3f"], seeds=[11711, 1],
                        epochs=3, skip_predictions=True, python=str(fake), robustness=True)
    base = dataclasses.replace(base, **changes)
    return size_grid(base, "0.5,0.25", "0.25:3", "0.25:2")


def quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------------------------------------- parsing

def test_fractions_and_per_fraction_counts_are_parsed_or_refused():
    assert parse_fractions("0.3, 0.02,0.1,0.1") == [0.02, 0.1, 0.3]
    for bad in ("0", "1.5", "x", ",", "nan", "-0.1"):
        with pytest.raises(GridError, match="--train_fraction"):
            parse_fractions(bad)
    assert parse_by_fraction("0.02:5,0.10:3", "--seeds_by_fraction", [0.02, 0.1]) == {0.02: 5, 0.1: 3}
    with pytest.raises(GridError, match="0.2 is not among --train_fraction 0.02,0.1"):
        parse_by_fraction("0.2:5", "--seeds_by_fraction", [0.02, 0.1])
    for bad in ("0.1:0", "0.1:x", "0.1", ""):
        with pytest.raises(GridError, match="--epochs_by_fraction"):
            parse_by_fraction(bad, "--epochs_by_fraction", [0.1])


@pytest.mark.parametrize("flags,named", [
    (["--pilot"], "--pilot belongs to the data-size axis; add --train_fraction"),
    (["--seeds_by_fraction", "0.1:5"], "--seeds_by_fraction belongs to the data-size axis"),
    (["--train_fraction", "0"], "--train_fraction: '0' is not a fraction in (0, 1]"),
    (["--train_fraction", "0.1", "--seeds_by_fraction", "0.3:3"], "0.3 is not among --train_fraction 0.1"),
    (["--train_fraction", "0.1", "--pilot", "--configs", "smart"], "--configs does not apply to --pilot"),
    (["--train_fraction", "0.1", "--pilot", "--robustness"], "--robustness does not apply to --pilot"),
    (["--train_fraction", "0.1,1", "--full_data", "results/ablations.json"], "--full_data is fraction 1"),
    (["--train_fraction", "0.1", "--full_data", "/no/such.json"], "--full_data /no/such.json: not a readable"),
    (["--train_fraction", "0.1", "--", "--train_fraction", "0.5"], "is set by the ablation runner"),
    (["--train_fraction", "0.1", "--reference", "sst=0.5"], "--reference belongs to the plain grid"),
])
def test_the_runner_refuses_bad_size_flags_in_one_line(capsys, tmp_path, flags, named):
    # --report_only into tmp_path: were a flag accepted, nothing would train and nothing under results/ change.
    with pytest.raises(SystemExit) as stopped:
        ABLATE.main(["--report_only", "--out_dir", str(tmp_path / "grid"), *flags])
    message = capsys.readouterr().err
    assert stopped.value.code == 2 and message.count("\n") == 1 and named in message, message


def test_size_flags_set_each_fraction_s_seeds_epochs_directory_and_command(tmp_path, fake_classifier):
    grid, full = ABLATE.size_grid_from_args(["--train_fraction", "0.3,0.02,0.1", "--seeds_by_fraction", "0.02:5,0.1:5",
                                             "--epochs_by_fraction", "0.02:8,0.1:5,0.3:3", "--seeds", "3"])
    assert full is None and grid.fractions == [0.02, 0.1, 0.3] and grid.base.configs == list(BY_SIZE_ROWS)
    assert grid.base.out_dir == Path("results/ablations_by_size") and not grid.base.robustness
    assert [(grid.at(f).seeds, grid.at(f).epochs) for f in grid.fractions] == [
        ([11711, 1, 2, 3, 4], 8), ([11711, 1, 2, 3, 4], 5), ([11711, 1, 2], 3)]
    settings = grid.at(0.02)
    assert run_dir(settings, "smart", 4) == Path("results/ablations_by_size/frac0.02/smart/seed4")
    args = build_parser().parse_args(build_command(settings, GRID["smart"], 4, None)[2:])
    assert (args.train_fraction, args.epochs, args.seed, args.smart) == (0.02, 8, 4, True)
    # Every row at a fraction is scored once, at the end of its budget.
    assert args.eval_every == 8
    assert args.out_dir == Path("results/ablations_by_size/frac0.02/smart/seed4")
    signatures = [run_signature(grid.at(f), GRID["smart"], 1, None) for f in grid.fractions]
    assert [s["train_fraction"] for s in signatures] == [0.02, 0.1, 0.3]
    assert [s["eval_every"] for s in signatures] == [8, 5, 3]
    pilot = ABLATE.size_grid_from_args(["--train_fraction", "0.1", "--pilot"])[0]
    assert (pilot.base.configs, pilot.base.epochs, pilot.at(0.1).seeds, pilot.base.out_dir) == (
        ["baseline"], 10, [11711], Path("results/ablations_by_size_pilot"))
    # The pilot needs its whole dev curve: every epoch scored.
    pilot_args = build_parser().parse_args(build_command(pilot.at(0.1), GRID["baseline"], 11711, None)[2:])
    assert pilot_args.eval_every == 1 and "eval_every" not in run_signature(pilot.at(0.1), GRID["baseline"], 1, None)


def test_grids_without_the_new_settings_keep_their_signatures():
    # The committed full-data grid's records must still match, or a fresh clone would rerun all of them.
    document = read_json(REPO / "results" / "ablations.json")
    b = document["budget"]
    grid = GridSettings(out_dir=Path("results/ablations"), configs=list(GRID), seeds=b["seeds"], epochs=b["epochs"])
    for record in document["runs"]:
        if record["config"] in GRID and not GRID[record["config"]].uses_mlm:
            assert run_signature(grid, GRID[record["config"]], record["seed"], None) == record["signature"]
    with_measures = run_signature(dataclasses.replace(grid, robustness=True), GRID["smart"], 1, None)
    assert with_measures["robustness"] == ROBUSTNESS and "robustness" not in run_signature(grid, GRID["smart"], 1, None)


def test_the_code_version_is_the_commit_marked_when_code_changed_but_not_results(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    assert code_version(tmp_path) is None  # not a checkout
    (tmp_path / "results").mkdir()
    (tmp_path / "train.py").write_text("a = 1\n")
    (tmp_path / "results" / "grid.md").write_text("report\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    commit = code_version(tmp_path)
    assert commit is not None and len(commit) == 12 and int(commit, 16) >= 0
    (tmp_path / "results" / "grid.md").write_text("rewritten by a running grid\n")
    (tmp_path / "untracked.py").write_text("")
    assert code_version(tmp_path) == commit
    (tmp_path / "train.py").write_text("a = 2\n")
    assert code_version(tmp_path) == commit + "+changes"


def test_dev_files_follow_the_run_s_command(tmp_path):
    settings = GridSettings(out_dir=tmp_path, configs=["baseline"], seeds=[1], epochs=1,
                            extra_args=["--sst_dev", str(tmp_path / "sst.csv"), "--tasks", "sst,sts"])
    files = dev_files(build_command(settings, GRID["baseline"], 1, None))
    assert files == {"sst": tmp_path / "sst.csv", "sts": REPO / "data" / "sts-dev.csv"}


# -------------------------------------------------------------------------------------- the grid, faked runs

def test_the_grid_runs_every_fraction_measures_each_checkpoint_and_reports(tmp_path, fake_classifier, robustness):
    grid = grid_of(tmp_path, fake_classifier, dev_limit=30)
    written = []

    def write(results: dict) -> None:
        # The report is rewritten after every run: a grid killed midway keeps every finished run's record.
        written.append({f: len(runs) for f, runs in results.items()})
        by_size.write_reports(grid, results)

    results = run_by_size(grid, quiet, write)
    assert written == [*({0.25: n, 0.5: 0} for n in range(1, 10)), {0.25: 9, 0.5: 0},
                       *({0.25: 9, 0.5: n} for n in range(1, 7)), {0.25: 9, 0.5: 6}]
    assert {f: [(r.config, r.seed, r.status) for r in runs] for f, runs in results.items()} == {
        0.25: [(c, s, "done") for s in (11711, 1, 2) for c in ("baseline", "smart", "r3f")],
        0.5: [(c, s, "done") for s in (11711, 1) for c in ("baseline", "smart", "r3f")]}
    commands = calls(fake_classifier)
    assert len(commands) == 15
    assert sum(c[c.index("--train_fraction") + 1] == "0.25" and c[c.index("--epochs") + 1] == "2" for c in commands) == 9
    assert sum(c[c.index("--train_fraction") + 1] == "0.5" and c[c.index("--epochs") + 1] == "3" for c in commands) == 6
    assert all(c[c.index("--eval_every") + 1] == c[c.index("--epochs") + 1] for c in commands)
    assert all(r.best_epoch == grid.at(f).epochs and r.dev_curve == [] for f, runs in results.items() for r in runs)

    # Measured once per run, on the checkpoint while it existed, which is gone afterwards.
    assert len(robustness.calls) == 15 and all(call["present"] for call in robustness.calls)
    first = robustness.calls[0]
    assert first["checkpoint"] == grid.base.out_dir / "frac0.25" / "baseline" / "seed11711" / "best"
    assert (first["seed"], first["device"], first["precision"], first["dev_limit"], first["attack_limit"],
            first["smooth_limit"]) == (11711, "cpu", "fp32", 30, 30, 30)
    assert first["dev_files"] == {task: REPO / "data" / name for task, name in
                                  (("sst", "ids-sst-dev.csv"), ("para", "quora-dev.csv"), ("sts", "sts-dev.csv"))}
    for run in results[0.25] + results[0.5]:
        directory = Path(run.run_dir)
        assert not (directory / "best").exists()
        assert run.robustness == measures(run.config, run.seed)
        assert read_json(directory / "done.json")["robustness"] == run.robustness
        assert run.code == code_version() and run.code

    # The report: per fraction and row, mean ± std and the paired difference from baseline.
    document = read_json(grid.base.out_dir.parent / "ablations_by_size.json")
    assert document["budget"]["by_fraction"] == {"0.25": {"epochs": 2, "seeds": [11711, 1, 2]},
                                                 "0.5": {"epochs": 3, "seeds": [11711, 1]}}
    assert len(document["runs"]) == 15 and all(r["machine"] and r["signature"]["train_fraction"] in (0.25, 0.5)
                                               for r in document["runs"])
    smart = {row["config"]: row for row in document["summary"]["0.25"]}["smart"]
    expected = paired_difference({s: dev_mean("smart", s, 0.25, 2) for s in (11711, 1, 2)},
                                 {s: dev_mean("baseline", s, 0.25, 2) for s in (11711, 1, 2)})
    assert smart["vs_baseline"]["dev_mean"]["mean"] == pytest.approx(expected.mean)
    assert smart["vs_baseline"]["dev_mean"]["low"] == pytest.approx(expected.low)
    assert smart["robustness_vs_baseline"]["typo5_sst"]["mean"] == pytest.approx(0.02)
    assert "attack_examples_sst" not in smart["robustness"]
    table = (grid.base.out_dir.parent / "ablations_by_size.md").read_text()
    assert "| 0.25 | 2 | 11711, 1, 2 | 9 of 9 |" in table and "| 0.5 | 3 | 11711, 1 | 6 of 6 |" in table
    assert f"| 0.25 | smart | 3 | {100 * expected.mean:+.1f} [" in table
    assert "| typo5_sst | 0.401 ± 0.001 | +2.0 [no spread] | -2.0 [no spread] |" in table
    assert "| smooth_sst_eps1e-2 | 0.002 ± 0 | +2e-05 [no spread] | -2e-05 [no spread] |" in table
    assert (grid.base.out_dir.parent / "ablations_by_size.png").read_bytes().startswith(b"\x89PNG")

    # A rerun trains and measures nothing again; the records keep their measures.
    again = run_by_size(grid, quiet, lambda r: by_size.write_reports(grid, r))
    assert len(calls(fake_classifier)) == 15 and len(robustness.calls) == 15
    assert all(r.reused and r.robustness == measures(r.config, r.seed) for runs in again.values() for r in runs)

    # On a fresh clone (no run directories) the report holds every run, measures included.
    shutil.rmtree(grid.base.out_dir)
    recorded = finished_by_size(grid)
    assert [(r.config, r.seed, r.robustness) for r in recorded[0.5]] == [
        (r.config, r.seed, r.robustness) for r in results[0.5]]
    # and the grid resumes from it: the report rewritten after the first fraction keeps the second's records.
    resumed = run_by_size(grid, quiet, lambda r: by_size.write_reports(grid, r))
    assert len(calls(fake_classifier)) == 15 and all(r.reused for runs in resumed.values() for r in runs)
    # --report_only rebuilds the summaries from that JSON alone.
    (grid.base.out_dir.parent / "ablations_by_size.md").unlink()
    result = ablate("--train_fraction", "0.25,0.5", "--seeds_by_fraction", "0.25:3", "--seeds", "2",
                    "--epochs_by_fraction", "0.25:2", "--epochs", "3", "--configs", "baseline,smart,r3f",
                    "--skip_predictions", "--dev_limit", "30", "--robustness", "--out_dir", str(grid.base.out_dir),
                    "--report_only")
    assert result.returncode == 0, result.stderr
    assert "15 of 15 runs finished" in result.stdout and not grid.base.out_dir.exists()
    rebuilt = (grid.base.out_dir.parent / "ablations_by_size.md").read_text()
    assert f"| 0.25 | smart | 3 | {100 * expected.mean:+.1f} [" in rebuilt and "| typo5_sst |" in rebuilt


def test_noise_drops_are_clean_minus_noisy_per_run_after_each_tasks_noise_columns():
    def run(config: str, seed: int, clean: float, typo: float) -> RunResult:
        return RunResult(config, seed, "done", f"{config}/seed{seed}", robustness={
            "smooth_sst_eps1e-2": 0.5, "clean_sst": clean, "typo5_sst": typo, "delete5_sst": typo + 0.01,
            "attack_acc_sst": 0.1, "attack_examples_sst": 500.0, "clean_sts": 0.8, "typo5_sts": 0.7})

    # smart scores 3 points higher on clean text and 1 point higher on noisy text: the noise costs it 2 more.
    runs = [run("baseline", 1, 0.50, 0.45), run("baseline", 2, 0.40, 0.36),
            run("smart", 1, 0.53, 0.46), run("smart", 2, 0.43, 0.37)]
    measures = by_size.robustness_measures(runs)
    assert measures == ["smooth_sst_eps1e-2", "clean_sst", "typo5_sst", "delete5_sst", "drop_typo5_sst",
                        "drop_delete5_sst", "attack_acc_sst", "clean_sts", "typo5_sts", "drop_typo5_sts"]
    assert by_size.noise_task("typo10_para") == "para" and by_size.noise_task("clean_sst") is None
    assert by_size.noise_task("attack_acc_sst") is None and by_size.noise_task("typo_sst") is None
    rows = {row["config"]: row for row in by_size.fraction_rows(runs, ["baseline", "smart"], [], measures)}
    assert rows["baseline"]["robustness"]["drop_typo5_sst"].mean == pytest.approx((0.05 + 0.04) / 2)
    assert rows["smart"]["robustness_vs_baseline"]["drop_typo5_sst"].mean == pytest.approx(0.02)
    assert rows["smart"]["robustness_vs_baseline"]["typo5_sst"].mean == pytest.approx(0.01)
    # A run without its clean score has no drop, rather than a drop from nothing.
    bare = RunResult("baseline", 3, "done", "b3", robustness={"typo5_sst": 0.4})
    assert by_size.robustness_measures([bare]) == ["typo5_sst"]
    assert by_size.run_measure(bare, "drop_typo5_sst") is None


def test_a_report_written_midway_has_no_robustness_table_for_a_fraction_not_reached(tmp_path, fake_classifier,
                                                                                  robustness):
    grid = grid_of(tmp_path, fake_classifier)
    settings = grid.at(0.25)
    reached = [run_one(settings, GRID[name], 11711, None, None, quiet, "t") for name in ("baseline", "smart")]
    table = by_size.write_reports(grid, {0.25: reached, 0.5: []})["md"].read_text()
    assert "Fraction 0.25:" in table and "Fraction 0.5:" not in table
    assert "on 500 examples of each dev set (the smoothness ascent on 200 of them)" in table
    # Nor for runs without measures (as the full-data grid's, read with --full_data).
    unmeasured = dataclasses.replace(grid.at(0.5), robustness=False)
    plain = [run_one(unmeasured, GRID[name], 1, None, None, quiet, "t") for name in ("baseline", "smart")]
    table = by_size.write_reports(grid, {0.25: reached, 0.5: plain})["md"].read_text()
    assert "Fraction 0.25:" in table and "Fraction 0.5:" not in table


def test_a_report_written_while_a_run_is_redone_keeps_the_runs_after_it(tmp_path, fake_classifier, robustness):
    grid = grid_of(tmp_path, fake_classifier)
    run_by_size(grid, quiet, lambda results: None)
    (run_dir(grid.at(0.25), "baseline", 11711) / "done.json").unlink()  # the first run of the plan
    written = []
    run_by_size(grid, quiet, lambda results: written.append({f: len(runs) for f, runs in results.items()}))
    assert len(calls(fake_classifier)) == 16
    assert written == [{0.25: 9, 0.5: 6}] * 17


def test_a_failed_measure_fails_the_run_and_keeps_its_checkpoint(tmp_path, fake_classifier, robustness):
    robustness.fail = True
    settings = grid_of(tmp_path, fake_classifier).at(0.5)
    result = run_one(settings, GRID["smart"], 1, None, None, quiet, "t")
    directory = run_dir(settings, "smart", 1)
    assert result.status == "failed" and "robustness measures: RuntimeError: the attack ran out of words" in result.error
    assert (directory / "best" / "model.safetensors").is_file() and not (directory / "done.json").exists()
    assert finished_results(settings) == []
    # The next invocation measures the kept checkpoint without training the run again (as after a grid
    # killed while measuring), and the done marker then replaces the trained one.
    robustness.fail = False
    said = []
    again = run_one(settings, GRID["smart"], 1, None, None, said.append, "t")
    assert again.status == "done" and again.robustness == measures("smart", 1) and len(calls(fake_classifier)) == 1
    assert any("trained by an earlier invocation" in line for line in said)
    assert (directory / "done.json").exists() and not (directory / "trained.json").exists()


def test_a_trained_marker_of_another_budget_or_without_its_checkpoint_trains_again(tmp_path, fake_classifier,
                                                                                     robustness):
    robustness.fail = True
    settings = grid_of(tmp_path, fake_classifier).at(0.5)
    run_one(settings, GRID["smart"], 1, None, None, quiet, "t")
    robustness.fail = False
    longer = dataclasses.replace(settings, epochs=settings.epochs + 1)
    assert run_one(longer, GRID["smart"], 1, None, None, quiet, "t").status == "done"
    assert len(calls(fake_classifier)) == 2
    run_one(settings, GRID["r3f"], 1, None, None, quiet, "t")  # trained and measured: no marker is left
    robustness.fail = True
    run_one(settings, GRID["baseline"], 1, None, None, quiet, "t")
    shutil.rmtree(run_dir(settings, "baseline", 1) / "best")
    robustness.fail = False
    assert run_one(settings, GRID["baseline"], 1, None, None, quiet, "t").status == "done"
    assert len(calls(fake_classifier)) == 5


def test_a_grid_with_robustness_stops_before_training_when_the_measures_cannot_be_imported(
        tmp_path, fake_classifier, monkeypatch):
    monkeypatch.setitem(sys.modules, "multitask.robustness", None)  # what a checkout without the module gives
    grid = grid_of(tmp_path, fake_classifier)
    with pytest.raises(GridError, match="--robustness: cannot import multitask.robustness"):
        run_by_size(grid, quiet, lambda r: None)
    assert calls(fake_classifier) == []
    assert run_by_size(grid_of(tmp_path, fake_classifier, robustness=False), quiet, lambda r: None)[0.5]


def test_without_robustness_nothing_is_measured(tmp_path, fake_classifier, robustness):
    settings = grid_of(tmp_path, fake_classifier, robustness=False).at(0.5)
    result = run_one(settings, GRID["smart"], 1, None, None, quiet, "t")
    assert result.status == "done" and result.robustness == {} and robustness.calls == []
    assert "robustness" not in read_json(Path(result.run_dir) / "done.json")


# ------------------------------------------------------------------------------------------------ the pilot

def test_the_pilot_runs_baseline_alone_and_reads_each_fraction_s_budget(tmp_path, fake_classifier, robustness):
    pilot = pilot_grid(grid_of(tmp_path, fake_classifier, seeds=[11711]), 10)
    results = run_by_size(pilot, quiet, lambda r: by_size.write_pilot_reports(pilot, r))
    commands = calls(fake_classifier)
    assert len(commands) == 2 and robustness.calls == []  # baseline, one seed per fraction; no measures
    assert all(c[c.index("--epochs") + 1] == "10" and "--skip_predictions" in c and "--smart" not in c
               for c in commands)
    assert run_dir(pilot.at(0.25), "baseline", 11711) == tmp_path / "ablations_by_size_pilot" / "frac0.25" / \
        "baseline" / "seed11711"
    # On a quarter of the data the gap to the final score shrinks 4x per epoch, on half 2x: within 0.1 points
    # (0.001) of the best from epoch 4 (gap 0.05/64 - 0.05/4^9) and epoch 7 (0.05/64 - 0.05/512).
    summary = pilot_summary(results)
    assert {label: row["plateau_epoch"] for label, row in summary.items()} == {"0.25": 4, "0.5": 7}
    assert summary["0.5"]["curve"] == pytest.approx([dev_mean("baseline", 11711, 0.5, e) for e in range(1, 11)])
    assert summary["0.5"]["epoch_seconds"] == pytest.approx(50)
    document = read_json(tmp_path / "ablations_by_size_pilot.json")
    assert document["epochs_by_fraction"] == "0.25:4,0.5:7" and len(document["runs"][0]["dev_curve"]) == 10
    table = (tmp_path / "ablations_by_size_pilot.md").read_text()
    assert "`--epochs_by_fraction 0.25:4,0.5:7`" in table
    first_two = " | ".join(f"{dev_mean('baseline', 11711, 0.5, e):.4f}" for e in (1, 2))
    assert f"| 0.5 | 1 | {first_two} |" in table and "| 10 | 7 | 50 | 5.8 min |" in table
    assert (tmp_path / "ablations_by_size_pilot.png").read_bytes().startswith(b"\x89PNG")
    # The grid's report says the budget it used, what the pilot beside it gave, and where the two differ;
    # without a pilot, that its epochs were set by hand.
    grid = grid_of(tmp_path, fake_classifier)
    assert "epochs per fraction: `--epochs_by_fraction 0.25:2,0.5:3`; the pilot's rule" in by_size.markdown(
        grid, {}, {}, None)
    assert "gave `0.25:4,0.5:7`; set by hand at 0.25, 0.5" in by_size.markdown(grid, {}, {}, None)
    pilot_budget = size_grid(grid.base, "0.5,0.25", "0.25:3", "0.25:4,0.5:7")
    assert "gave `0.25:4,0.5:7`\n" in by_size.markdown(pilot_budget, {}, {}, None)
    assert "set by hand at 0.5\n" in by_size.markdown(size_grid(grid.base, "0.5,0.25", None, "0.25:4,0.5:8"),
                                                          {}, {}, None)
    assert "0.25:2,0.5:3`, set by hand (no pilot report" in by_size.markdown(
        grid_of(tmp_path / "elsewhere", fake_classifier), {}, {}, None)


def test_the_plateau_rule_on_hand_made_curves():
    # Best 0.751 at epoch 4; epoch 2's 0.750 is within 0.1 points (0.001) of it, epoch 1's 0.749 is not.
    assert plateau_epoch([0.749, 0.750, 0.7495, 0.751, 0.748]) == 2
    assert plateau_epoch([0.70, 0.72, 0.74]) == 3
    assert plateau_epoch([0.74]) == 1
    assert mean_curve([]) == []
    runs = by_size.RunResult("baseline", 1, "done", "x", dev_curve=[0.7, 0.8], train_seconds=20.0)
    other = by_size.RunResult("baseline", 2, "done", "y", dev_curve=[0.74, 0.76], train_seconds=40.0)
    summary = pilot_summary({0.1: [runs, other]})["0.1"]
    assert summary["curve"] == pytest.approx([0.72, 0.78]) and summary["plateau_epoch"] == 2
    assert summary["still_improving"] and summary["epoch_seconds"] == pytest.approx(15)
    assert epochs_flag({"0.02": {"plateau_epoch": 8}, "0.1": {"plateau_epoch": 5}}) == "0.02:8,0.1:5"


# ------------------------------------------------------------------------------------- the full-data point

def test_the_full_data_grid_is_read_as_fraction_one(tmp_path, fake_classifier, robustness):
    full = by_size.load_full_data(REPO / "results" / "ablations.json", list(BY_SIZE_ROWS))
    assert len(full.runs) == 18 and full.budget["epochs"] == 2
    grid = grid_of(tmp_path, fake_classifier, configs=list(BY_SIZE_ROWS), seeds=[11711])
    grid = SizeGrid(grid.base, [0.5])
    paths = by_size.write_reports(grid, {0.5: []}, full)
    document = read_json(paths["json"])
    committed = {row["config"]: row for row in read_json(REPO / "results" / "ablations.json")["summary"]}
    ours = {row["config"]: row for row in document["summary"]["1"]}
    for name in BY_SIZE_ROWS[1:]:
        assert ours[name]["vs_baseline"]["dev_mean"] == committed[name]["vs_baseline"]["dev_mean"]
    assert document["runs"] == [] and len(document["full_data"]["runs"]) == 18
    assert "| 1 (`" in paths["md"].read_text() and "not rerun" in paths["md"].read_text()


# ------------------------------------------------------------------------------------------- real subprocess

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """16 training rows per task (as tests/test_ablation.py's grids use)."""
    directory = tmp_path_factory.mktemp("data")
    files = {}
    for task, stem in STEMS.items():
        for split, (suffix, rows) in SPLITS.items():
            files[task, split] = directory / f"{stem}-{suffix}.csv"
            copy_head(REPO / "data" / f"{stem}-{suffix}.csv", files[task, split], rows)
    return files


def test_pilot_and_grid_train_on_the_fraction_through_the_classifier(tiny_data, tmp_path):
    out = tmp_path / "by_size"
    common = ["--train_fraction", "0.5", "--dev_limit", "4", "--out_dir", str(out)]
    pilot = ablate(*common, "--pilot", "--pilot_epochs", "2", "--", *training_flags(tiny_data))
    assert pilot.returncode == 0, pilot.stdout[-2000:] + pilot.stderr[-2000:]
    assert "budget by the pilot's rule: --epochs_by_fraction 0.5:" in pilot.stdout
    log = (tmp_path / "by_size_pilot" / "frac0.5" / "baseline" / "seed11711" / "train.log").read_text()
    assert "data: sst train 8 dev 4, para train 8 dev 4, sts train 8 dev 4" in log
    assert len(read_json(tmp_path / "by_size_pilot.json")["pilot"]["0.5"]["curve"]) == 2

    grid = ablate(*common, "--configs", "baseline", "--seeds", "1", "--epochs", "1", "--skip_predictions", "--",
                  *training_flags(tiny_data))
    assert grid.returncode == 0, grid.stdout[-2000:] + grid.stderr[-2000:]
    assert "data: sst train 8" in (out / "frac0.5" / "baseline" / "seed11711" / "train.log").read_text()
    assert read_json(tmp_path / "by_size.json")["runs"][0]["signature"]["train_fraction"] == 0.5


def test_a_measure_every_seed_moved_alike_gets_no_interval():
    # 0.25 on both seeds, exactly (binary fractions): a zero-width interval would read as certainty.
    alike = paired_difference({1: 0.75, 2: 0.5}, {1: 0.5, 2: 0.25})
    assert alike.no_spread and alike.low is None
    assert by_size.format_measure_difference("smooth_sst_eps1e-2", alike) == "+0.25 [no spread]"
    assert by_size.format_measure_difference("attack_success_sst", alike) == "+25.0 [no spread]"
    apart = paired_difference({1: 0.75, 2: 0.5}, {1: 0.5, 2: 0.5})
    assert not apart.no_spread and by_size.format_measure_difference("smooth_sst_eps1e-2", apart).endswith("]")
