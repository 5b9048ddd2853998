"""The SMART sweep's report: each point's term sizes and whether it is active, from hand-made runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from multitask.ablation import RunResult

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "smart_sweep.py"


def load_script():
    spec = importlib.util.spec_from_file_location("smart_sweep_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SWEEP = load_script()
TASKS = ["sst", "para", "sts"]


def run(config: str, seed: int, mean: float, ratios: dict[str, float] | None = None) -> RunResult:
    terms = {}
    for task, ratio in (ratios or {}).items():
        terms[f"loss_{task}"] = 2.0
        terms[f"loss_{task}_adversarial"] = 2.0 * ratio
        terms[f"ratio_{task}_adversarial"] = ratio
    return RunResult(config, seed, "done", "/nowhere", best_epoch=1, dev={"sst": mean, "para": mean, "sts": mean},
                     dev_mean=mean, train_seconds=100.0, machine="m", terms=terms)


def test_a_point_is_active_only_when_every_task_reaches_the_ratio():
    active = [run("smart", 1, 0.7, {"sst": 0.02, "para": 0.012, "sts": 0.05}),
              run("smart", 2, 0.7, {"sst": 0.02, "para": 0.010, "sts": 0.05})]
    sizes = SWEEP.term_sizes(active, TASKS)
    assert sizes["para"] == pytest.approx((2.0 * 0.011, 0.011))
    assert SWEEP.is_active(sizes, TASKS)
    one_task_off = [run("smart", 1, 0.7, {"sst": 0.5, "para": 0.5, "sts": 0.005})]
    assert not SWEEP.is_active(SWEEP.term_sizes(one_task_off, TASKS), TASKS)
    assert not SWEEP.is_active(SWEEP.term_sizes([run("smart", 1, 0.7)], TASKS), TASKS)


def test_the_report_lists_term_sizes_and_activity_per_point():
    rows = {"baseline": [run("baseline", 1, 0.70)],
            "eps1e-1_lambda1": [run("smart", 1, 0.71, {"sst": 0.02, "para": 0.03, "sts": 0.04})],
            "eps1e-3_lambda1": [run("smart", 1, 0.70, {"sst": 1e-5, "para": 2e-5, "sts": 3e-5})]}
    text = SWEEP.markdown([1], rows)
    active_line = next(line for line in text.splitlines() if line.startswith("| eps1e-1_lambda1 |") and "%" in line)
    assert active_line.endswith("| yes |") and "0.0400 (2.00%)" in active_line
    quiet_line = next(line for line in text.splitlines() if line.startswith("| eps1e-3_lambda1 |") and "%" in line)
    assert quiet_line.endswith("| no |") and "2.00e-05 (0.00100%)" in quiet_line


def test_each_point_records_its_runs_for_a_fresh_clone_and_two_lanes_merge(tmp_path):
    settings = SWEEP.point_settings(tmp_path / "sweep", "eps1e-1_lambda1", [11711], "auto")
    SWEEP.record_runs(settings, [run("smart", 11711, 0.70, {"sst": 0.02})])
    other_lane = SWEEP.point_settings(tmp_path / "sweep", "eps1e-1_lambda1", [1], "auto")
    SWEEP.record_runs(other_lane, [run("smart", 1, 0.71, {"sst": 0.03}),
                                   RunResult("smart", 2, "failed", "/nowhere", error="boom")])
    SWEEP.record_runs(settings, [run("smart", 11711, 0.72, {"sst": 0.02})])  # a rerun replaces its record
    report = json.loads((tmp_path / "sweep" / "eps1e-1_lambda1.json").read_text())
    assert [(r["seed"], r["dev_mean"]) for r in report["runs"]] == [(1, 0.71), (11711, 0.72)]
    assert report["runs"][0]["terms"]["ratio_sst_adversarial"] == 0.03
