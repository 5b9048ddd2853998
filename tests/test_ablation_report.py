"""The ablation report on hand-made runs: means over seeds, paired differences with t-intervals, fixed references."""

from __future__ import annotations

import argparse

import pytest

from multitask.ablation import RunResult
from multitask.ablation.report import Reference, aggregate, markdown, parse_reference, plot
from multitask.ablation.seed_stats import format_difference, format_stat, mean_std, metric_columns, time_ratio
from tests.test_ablation import ABLATE, settings


def run(config: str, seed: int, sst: float | None, sts: float | None = 0.8, seconds: float = 60.0,
        status: str = "done", machine: str | None = None) -> RunResult:
    if status != "done":
        return RunResult(config, seed, status, "x", error="boom")
    return RunResult(config, seed, status, "x", best_epoch=1, dev={"sst": sst, "para": 0.8, "sts": sts},
                     dev_mean=0.7, train_seconds=seconds, machine=machine)


def test_time_ratios_pair_only_runs_that_trained_on_the_same_machine():
    baseline = [run("baseline", 1, 0.4, seconds=100, machine="A"), run("baseline", 2, 0.4, seconds=100, machine="A")]
    r3f = [run("r3f", 1, 0.4, seconds=200, machine="A"), run("r3f", 2, 0.4, seconds=900, machine="B")]
    assert time_ratio(r3f, baseline) == 2.0  # seed 2's 9x measures machine B, not r3f
    assert time_ratio(r3f[1:], baseline) is None


def test_aggregation_gives_mean_and_sample_std_over_finished_runs(tmp_path):
    results = [run("baseline", 1, 0.40, 0.80, 100), run("baseline", 2, 0.50, 0.90, 200),
               run("baseline", 3, 0.60, 1.00, 300), run("baseline", 4, None, status="failed"),
               run("r3f", 1, 0.45), run("smart", 1, None, status="failed")]
    summary = {row["config"]: row for row in aggregate(results, ["baseline", "r3f", "smart"])}
    baseline = summary["baseline"]
    assert (baseline["runs"], baseline["failed"]) == (3, 1)
    assert baseline["dev_sst"].mean == pytest.approx(0.5) and baseline["dev_sst"].std == pytest.approx(0.1)
    assert baseline["dev_sts"].mean == pytest.approx(0.9) and baseline["dev_sts"].std == pytest.approx(0.1)
    assert baseline["dev_para"].std == pytest.approx(0.0)
    assert baseline["train_seconds"].mean == pytest.approx(200) and baseline["train_seconds"].n == 3
    assert summary["r3f"]["dev_sst"].std is None and summary["r3f"]["dev_sst"].n == 1
    assert summary["smart"]["dev_mean"].mean is None and summary["smart"]["failed"] == 1
    # std of 2, 4, 4, 4, 5, 5, 7, 9 with n - 1: sqrt(32 / 7)
    assert mean_std([2, 4, 4, 4, 5, 5, 7, 9, None]).std == pytest.approx((32 / 7) ** 0.5)

    assert format_stat(baseline["dev_sst"]) == "0.500 ± 0.100"
    assert format_stat(summary["r3f"]["dev_sst"]) == "0.450"
    assert format_stat(summary["smart"]["dev_sst"]) == "—"
    table = markdown(settings(tmp_path, configs=["baseline", "r3f", "smart"], seeds=[1, 2, 3, 4], train_limit=500),
                     results, list(summary.values()))
    assert ("| baseline | `--option finetune` | 3 (1 failed) | 0.500 ± 0.100 | 0.800 ± 0.000 "
            "| 0.900 ± 0.100 |") in table
    assert "| 3.3 ± 1.7 min |" in table
    assert "| smart | `--option finetune --smart` | 0 (1 failed) | — | — | — | — | — |" in table
    assert "- epochs: 2; training data: at most 500 examples per task" in table
    assert "- seeds: 1, 2, 3, 4" in table
    assert "- baseline, seed 4: boom" in table


def test_paired_differences_and_t_intervals_on_hand_made_numbers(tmp_path):
    # SST per seed: baseline 0.50, 0.60, 0.70; smart 0.52, 0.61, 0.75 → differences 0.02, 0.01, 0.05.
    # Mean 0.08/3 = 0.026667; sample sd sqrt(((-1/150)² + (-1/60)² + (7/300)²) / 2) = 0.020817;
    # standard error 0.020817 / √3 = 0.012019; t(0.975, 2 df) = 4.302653 → half-width 0.051713.
    results = [run("baseline", 1, 0.50, seconds=100), run("baseline", 2, 0.60, seconds=200),
               run("baseline", 3, 0.70, seconds=300), run("baseline", 9, 0.99),  # no partner: left out
               run("smart", 1, 0.52, seconds=250), run("smart", 2, 0.61, seconds=500),
               run("smart", 3, 0.75, seconds=900), run("r3f", 1, 0.40)]
    summary = {row["config"]: row for row in aggregate(results, ["baseline", "smart", "r3f"])}
    assert "vs_baseline" not in summary["baseline"]
    sst = summary["smart"]["vs_baseline"]["dev_sst"]
    assert sst.n == 3 and sst.mean == pytest.approx(0.026667, abs=1e-6)
    assert sst.low == pytest.approx(0.026667 - 0.051713, abs=1e-5)
    assert sst.high == pytest.approx(0.026667 + 0.051713, abs=1e-5)
    # Identical scores: a zero difference and no interval (a zero-width one would read as certainty).
    para = summary["smart"]["vs_baseline"]["dev_para"]
    assert (para.mean, para.low, para.high, para.no_spread) == (0.0, None, None, True)
    assert format_difference(para) == "+0.0 [no spread]"
    # Time: mean of the per-seed ratios 2.5, 2.5, 3.0.
    assert summary["smart"]["time_ratio"] == pytest.approx(8 / 3)
    # One pair: a difference without an interval.
    r3f = summary["r3f"]["vs_baseline"]["dev_sst"]
    assert (r3f.n, r3f.low, r3f.high) == (1, None, None) and r3f.mean == pytest.approx(-0.10)
    assert format_difference(sst) == "+2.7 [-2.5, +7.8]"
    assert format_difference(r3f) == "-10.0"
    table = markdown(settings(tmp_path, configs=["baseline", "smart", "r3f"], seeds=[1, 2, 3]), results,
                     list(summary.values()))
    assert "| smart | 3 | +2.7 [-2.5, +7.8] | +0.0 [no spread] |" in table and "| 2.67 |" in table
    assert "`[no spread]`: every seed gave the same difference" in table
    assert "†" not in table  # every run without a recorded machine: nothing to flag


def test_train_time_of_runs_from_several_machines_is_flagged(tmp_path):
    results = [run("baseline", 1, 0.5, seconds=100, machine="A"), run("baseline", 2, 0.5, seconds=100, machine="A"),
               run("r3f", 1, 0.5, seconds=200, machine="A"), run("r3f", 2, 0.5, seconds=900, machine="B")]
    table = markdown(settings(tmp_path, configs=["baseline", "r3f"], seeds=[1, 2]), results,
                     aggregate(results, ["baseline", "r3f"]))
    assert "| 100 ± 0 s |" in table and "| 9.2 ± 8.2 min † |" in table
    assert "† these runs trained on different machines" in table


def test_differences_from_fixed_reference_scores_on_hand_made_numbers(tmp_path):
    # SST per seed 0.48, 0.49, 0.50 against a fixed 0.482 → −0.002, 0.008, 0.018: mean 0.008, sample sd
    # 0.01, standard error 0.01 / √3 = 0.0057735, t(0.975, 2 df) = 4.302653 → half-width 0.024841.
    results = [run("baseline", 1, 0.48), run("baseline", 2, 0.49), run("baseline", 3, 0.50)]
    reference = parse_reference("single-task specialists: sst=0.482, para=0.836,sts=0.860")
    assert reference == Reference("single-task specialists", {"sst": 0.482, "para": 0.836, "sts": 0.860})
    row = aggregate(results, ["baseline"], reference)[0]["vs_reference"]
    assert row["dev_sst"].n == 3 and row["dev_sst"].mean == pytest.approx(0.008)
    assert (row["dev_sst"].low, row["dev_sst"].high) == (pytest.approx(0.008 - 0.024841, abs=1e-6),
                                                         pytest.approx(0.008 + 0.024841, abs=1e-6))
    # Quora 0.8 on every seed: −3.6 points with no spread.
    assert (row["dev_para"].mean, row["dev_para"].low) == (pytest.approx(-0.036), None)
    # The mean compares with the reference's own mean, STS as (r + 1) / 2: (0.482 + 0.836 + 0.93) / 3.
    assert row["dev_mean"].mean == pytest.approx(0.7 - 2.248 / 3)
    table = markdown(settings(tmp_path, configs=["baseline"], seeds=[1, 2, 3]), results,
                     aggregate(results, ["baseline"], reference), reference)
    assert "| single-task specialists | `--reference` | — | 0.482 | 0.836 | 0.860 | 0.749 | — |" in table
    assert "| baseline | 3 | +0.8 [-1.7, +3.3] | -3.6 [no spread] | -6.0 [no spread] | -4.9 [no spread] |" in table
    plot(tmp_path / "chart.png", settings(tmp_path, configs=["baseline"], seeds=[1, 2, 3]),
                aggregate(results, ["baseline"], reference), metric_columns(results), reference)
    assert (tmp_path / "chart.png").stat().st_size > 0

    # A task the runs were not scored on is left out of the reference's mean.
    wider = parse_reference("sst=0.482,para=0.836,sts=0.860,cfimdb=0.1")
    assert aggregate(results, ["baseline"], wider)[0]["vs_reference"]["dev_mean"].mean == \
        pytest.approx(0.7 - 2.248 / 3)
    # A reference without every scored task has no mean to compare with; unnamed, it is "reference".
    partial = parse_reference("sst=0.5")
    assert partial.name == "reference"
    assert set(aggregate(results, ["baseline"], partial)[0]["vs_reference"]) == {"dev_sst"}
    for bad in ("sst=high", "quora=0.8", "specialists:"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_reference(bad)
    with pytest.raises(SystemExit):  # the CLI refuses it in one line
        ABLATE.build_parser().parse_args(["--reference", "quora=0.8"])
