"""The ablation grid: named training configurations, each run per seed as its own subprocess, resumable."""

# The package's modules split the runner by job; these names are its public surface, importable
# from `multitask.ablation` as before the split.
from multitask.ablation.grid import (BASELINE, COURSE_SEED, GRID, MLM_SCRIPT, REPO, RUNNER_FLAGS, Configuration,
                                     GridError, GridSettings, check_extra_args, fraction_label, parse_configs,
                                     parse_seeds, report_paths, run_dir)
from multitask.ablation.mlm_stage import checkpoint_problem, mlm_encoder_signature, prepare_mlm_encoder
from multitask.ablation.runner import finished_results, run_grid
from multitask.ablation.single_run import (CLASSIFIER, DONE, RunResult, build_command, complete, finished_marker,
                                           finished_result, last_error_line, read_metrics,
                                           recorded_result, result_from_metrics, run_logged, run_one,
                                           run_signature)

__all__ = ["BASELINE", "CLASSIFIER", "COURSE_SEED", "DONE", "GRID", "MLM_SCRIPT", "REPO", "RUNNER_FLAGS",
           "Configuration", "GridError", "GridSettings", "RunResult", "build_command", "check_extra_args",
           "checkpoint_problem", "complete", "finished_marker", "finished_result", "finished_results",
           "fraction_label", "last_error_line",
           "mlm_encoder_signature", "parse_configs", "parse_seeds", "prepare_mlm_encoder",
           "read_metrics", "recorded_result", "report_paths", "result_from_metrics", "run_dir", "run_grid",
           "run_logged", "run_one", "run_signature"]
