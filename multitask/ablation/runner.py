"""The whole grid: every configuration for every seed run in turn, or the finished runs read back."""

from __future__ import annotations

from typing import Callable

from multitask.ablation.grid import GRID, GridSettings, run_dir
from multitask.ablation.mlm_stage import mlm_encoder_signature, prepare_mlm_encoder
from multitask.ablation.single_run import RunResult, check_robustness_module, finished_result, run_one


def finished_results(settings: GridSettings) -> list[RunResult]:
    """Every run of the grid that has finished, in run order; nothing is run (for `--report_only`)."""
    signature = mlm_encoder_signature(settings) if settings.uses_mlm else None
    results = (finished_result(settings, GRID[name], seed, signature)
               for seed in settings.seeds for name in settings.configs)
    return [result for result in results if result is not None]


def run_grid(settings: GridSettings, say: Callable[[str], None] = print,
             after_each: Callable[[list[RunResult]], object] | None = None) -> list[RunResult]:
    """Run every configuration for every seed (seed by seed, so a partial grid still compares all configs);
    `after_each` gets the results so far after every run."""
    if settings.robustness:
        check_robustness_module()
    configs = [GRID[name] for name in settings.configs]
    mlm_dir = mlm_signature = mlm_error = None
    if settings.uses_mlm:
        mlm_dir, mlm_signature, mlm_error = prepare_mlm_encoder(settings, say)
        if mlm_error:
            say(f"MLM encoder: {mlm_error}; the mlm configurations fail, the others still run")
    plan = [(config, seed) for seed in settings.seeds for config in configs]
    results = []
    for number, (config, seed) in enumerate(plan, start=1):
        tag = f"[{number}/{len(plan)}] {config.name} seed {seed}"
        if config.uses_mlm and mlm_error:
            results.append(RunResult(config.name, seed, "failed", str(run_dir(settings, config.name, seed)),
                                     error=mlm_error))
            say(f"{tag}: FAILED: no MLM encoder")
        else:
            results.append(run_one(settings, config, seed, mlm_dir, mlm_signature, say, tag))
        if after_each is not None:
            after_each(results)
    return results
