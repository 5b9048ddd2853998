"""Run the ablation grid (plain, SMART parts, R3F, MLM) over seeds and summarise it as JSON, Markdown and PNG.

    python scripts/ablate.py --quick                                   # whole grid, tiny budget, minutes
    python scripts/ablate.py --epochs 2 --train_limit 4000 --seeds 3   # a real grid
    python scripts/ablate.py --configs baseline,r3f -- --batch_size 16 # training flags after --
    python scripts/ablate.py --configs baseline --reference "specialists: sst=S,para=Q,sts=R"  # vs fixed scores
    python scripts/ablate.py --train_fraction 0.02,0.1,0.3 --pilot                 # baseline's epochs per fraction
    python scripts/ablate.py --train_fraction 0.02,0.1,0.3 --seeds_by_fraction 0.02:5,0.1:5,0.3:3 \\
        --epochs_by_fraction 0.02:21,0.1:9,0.3:5 --robustness                     # the low-resource curve

Each configuration and seed trains in its own subprocess into <out_dir>/<config>/seed<seed>/ (with
--train_fraction, <out_dir>/frac<F>/<config>/seed<seed>/);
rerunning the same command skips finished runs and retries failed ones. The same command with
--report_only rewrites the summaries from the runs finished so far (e.g. while the grid runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minbert.mlm_training import MLMSettings  # noqa: E402
from minbert.plumbing.flags import COURSE_SEED, OneLineErrorParser, add_flags, positive_int  # noqa: E402
from multitask.ablation import (GRID, MLM_SCRIPT, GridError, GridSettings, RunResult, check_extra_args,  # noqa: E402
                                finished_results, parse_configs, parse_seeds, run_grid)
from multitask.ablation import by_size  # noqa: E402
from multitask.ablation.report import parse_reference, write_reports  # noqa: E402
from multitask.ablation.sizes import (BY_SIZE_ROWS, PILOT_EPOCHS, PLATEAU_POINTS, SizeGrid, epochs_flag,  # noqa: E402
                                      finished_by_size, pilot_grid, pilot_summary, run_by_size, size_grid)
from multitask.train import TrainSettings  # noqa: E402

# --quick: every configuration once on a sliver of data, to check the whole grid runs (its time is
# in results/README.md); scores from it say nothing about the methods, so its runs and summaries go
# to the git-ignored runs/ and never overwrite a committed file under results/.
QUICK = {"epochs": 1, "train_limit": 64, "seeds": "1", "dev_limit": 200, "skip_predictions": True,
         "mlm_steps": 10, "out_dir": Path("runs/ablations_quick")}
# The full budget trains as long as multitask_classifier.py does by default.
FULL = {"epochs": TrainSettings.epochs, "train_limit": None, "seeds": f"{COURSE_SEED},1,2", "dev_limit": None,
        "skip_predictions": False, "mlm_steps": MLMSettings.max_steps, "out_dir": Path("results/ablations")}
# The data-size axis writes elsewhere: its summaries are results/ablations_by_size.{json,md,png}.
BY_SIZE_OUT = {"full": Path("results/ablations_by_size"), "quick": Path("runs/ablations_by_size_quick")}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s [options] [-- training flags for multitask_classifier.py]")
    p.add_argument("--configs", help=f"comma list from {','.join(GRID)} (default: all; with --train_fraction: "
                                     f"{','.join(BY_SIZE_ROWS)})")
    p.add_argument("--seeds", help=f"a count (3 = {COURSE_SEED},1,2) or a comma list; '42,' is the single seed 42 "
                                   f"(default {FULL['seeds']}; --quick: 1)")
    p.add_argument("--epochs", type=positive_int, help=f"epochs per run (default {FULL['epochs']}; --quick: 1)")
    p.add_argument("--train_limit", type=positive_int,
                   help="at most N training examples per task (default: all; --quick: 64)")
    p.add_argument("--dev_limit", type=positive_int,
                   help="score on at most N dev examples per task (default: all; --quick: 200)")
    p.add_argument("--skip_predictions", action="store_const", const=True,
                   help="write no prediction files per run (--quick does this)")
    p.add_argument("--out_dir", type=Path,
                   help="run directories; the summaries go beside it as <out_dir>.json/.md/.png "
                        "(default results/ablations; --quick: runs/ablations_quick)")
    p.add_argument("--mlm_dir", type=Path, help="MLM-pretrained encoder (Hugging Face layout) for the mlm rows; "
                                                "without it the runner pretrains one into <out_dir>/mlm_encoder")
    p.add_argument("--mlm_steps", type=positive_int, help=f"MLM steps when the runner pretrains (default {FULL['mlm_steps']}; "
                                                 f"--quick: {QUICK['mlm_steps']})")
    p.add_argument("--mlm_script", type=Path, default=MLM_SCRIPT,
                   help="the MLM pretraining script (takes --out_dir --max_steps --seed)")
    add_flags(p, TrainSettings, only=("precision",))  # every run's precision, and the MLM stage's
    p.add_argument("--keep_checkpoints", action="store_true",
                   help="keep each run's best checkpoint (by default removed once the run is finished)")
    p.add_argument("--reference", type=parse_reference,
                   help="fixed dev scores to hold every row against, 'NAME: task=score,...', e.g. the single-task "
                        "specialists of ../shared/BASELINES.md; the summaries add each row's difference from "
                        "them with a t-interval over seeds")
    p.add_argument("--report_only", action="store_true",
                   help="run nothing: write the summaries from the runs of this grid that have finished")
    p.add_argument("--quick", action="store_true", help="the whole grid on a tiny budget: 1 epoch, 64 examples per "
                                                        "task, 1 seed, a 10-step MLM stage, no prediction files")
    p.add_argument("--robustness", action="store_true",
                   help="measure each finished run's best checkpoint with multitask.robustness (smoothness, typos, "
                        "deleted words, a word-level attack, calibration; fp32, the run's seed) before it is removed, "
                        "and keep the measures in the run's record; a run finished without them runs again")
    size = p.add_argument_group("data-size axis (the low-resource curve)")
    size.add_argument("--train_fraction", metavar="F[,F...]",
                      help="run the grid at each fraction F of every task's training file (a subset drawn by the "
                           "run's seed: the same rows for every row at a seed) into <out_dir>/frac<F>/; the "
                           f"summaries go to <out_dir>.json/.md/.png (default out_dir {BY_SIZE_OUT['full']})")
    size.add_argument("--seeds_by_fraction", metavar="F:N,...",
                      help=f"N seeds at fraction F (a count as in --seeds: 5 = {COURSE_SEED},1,2,3,4), e.g. 0.02:5,0.1:5,0.3:3; "
                           "other fractions take --seeds")
    size.add_argument("--epochs_by_fraction", metavar="F:E,...",
                      help="E epochs at fraction F, as --pilot reports them; other fractions take --epochs")
    size.add_argument("--pilot", action="store_true",
                      help="run only baseline at each fraction for --pilot_epochs, into <out_dir>_pilot, and report "
                           "the dev mean per epoch and each fraction's budget: the first epoch within "
                           f"{PLATEAU_POINTS} points of the best (default seeds: 1)")
    size.add_argument("--pilot_epochs", type=positive_int, default=PILOT_EPOCHS,
                      help=f"epochs of each pilot run (default {PILOT_EPOCHS})")
    size.add_argument("--full_data", type=Path, metavar="PATH",
                      help="the report of a full-data grid with the same rows (e.g. results/ablations.json), shown "
                           "as fraction 1 with its own budget: read, not rerun")
    return p


# Flags of the data-size axis alone, and those the pilot (baseline only, fixed epochs) leaves no room for.
SIZE_ONLY = ("seeds_by_fraction", "epochs_by_fraction", "pilot", "full_data")
NOT_IN_PILOT = ("configs", "seeds_by_fraction", "epochs_by_fraction", "robustness", "full_data")


def check_size_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.train_fraction is not None and args.reference is not None:
        parser.error("--reference belongs to the plain grid; the data-size axis compares each row with baseline at "
                     "the same fraction: drop --reference")
    if args.train_fraction is None:
        for name in SIZE_ONLY:
            if getattr(args, name):
                parser.error(f"--{name} belongs to the data-size axis; add --train_fraction F[,F...]")
    elif args.pilot:
        for name in NOT_IN_PILOT:
            if getattr(args, name):
                parser.error(f"--{name} does not apply to --pilot, which runs baseline alone for --pilot_epochs; "
                             f"drop --{name}, or drop --pilot to run the grid")


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the runner's flags, the training flags after `--`, which go to multitask_classifier.py untouched)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def settings_from_args(argv: list[str]) -> GridSettings:
    argv, extra = split_extra(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_size_flags(args, parser)
    defaults = dict(QUICK if args.quick else FULL)
    if args.train_fraction is not None:
        defaults["out_dir"] = BY_SIZE_OUT["quick" if args.quick else "full"]
        if args.pilot:
            defaults["seeds"] = "1"
    value = {key: default if getattr(args, key) is None else getattr(args, key) for key, default in defaults.items()}
    configs = args.configs or ",".join(GRID if args.train_fraction is None else BY_SIZE_ROWS)
    try:
        check_extra_args(extra)
        return GridSettings(out_dir=value["out_dir"], configs=parse_configs(configs),
                            seeds=parse_seeds(str(value["seeds"])), epochs=value["epochs"],
                            train_limit=value["train_limit"], dev_limit=value["dev_limit"],
                            skip_predictions=value["skip_predictions"], extra_args=extra, mlm_dir=args.mlm_dir,
                            mlm_steps=value["mlm_steps"], mlm_script=args.mlm_script,
                            keep_checkpoints=args.keep_checkpoints, precision=args.precision,
                            robustness=args.robustness)
    except GridError as err:
        parser.error(str(err))


def size_grid_from_args(argv: list[str]) -> tuple[SizeGrid, by_size.FullData | None]:
    """The data-size grid (the pilot's with --pilot) and the full-data point of the runner's flags."""
    base = settings_from_args(argv)
    parser = build_parser()
    args = parser.parse_args(split_extra(argv)[0])
    try:
        grid = size_grid(base, args.train_fraction, args.seeds_by_fraction, args.epochs_by_fraction)
        if args.pilot:
            return pilot_grid(grid, args.pilot_epochs), None
        if args.full_data is not None and 1.0 in grid.fractions:
            raise GridError("--full_data is fraction 1 from another grid, and --train_fraction runs fraction 1 "
                            "itself; drop one of them")
        return grid, None if args.full_data is None else by_size.load_full_data(args.full_data, base.configs)
    except GridError as err:
        parser.error(str(err))


# ----------------------------------------------- the summaries: <out_dir>.json, .md and .png

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = settings_from_args(argv)
    args = build_parser().parse_args(split_extra(argv)[0])
    if args.train_fraction is not None:
        return main_by_size(argv, args)
    try:
        if args.report_only:
            results = finished_results(settings)
        else:
            results = run_grid(settings, say=lambda line: print(line, flush=True))
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write_reports(settings, results, args.reference)
    return finish(results, paths, len(settings.configs) * len(settings.seeds), args.report_only)


def main_by_size(argv: list[str], args: argparse.Namespace) -> int:
    """The grid at each --train_fraction (or its --pilot); the reports are rewritten after each fraction."""
    grid, full = size_grid_from_args(argv)
    if args.pilot:
        def write(results):
            return by_size.write_pilot_reports(grid, results)
    else:
        def write(results):
            return by_size.write_reports(grid, results, full)
    try:
        if args.report_only:
            by_fraction = finished_by_size(grid)
        else:
            by_fraction = run_by_size(grid, lambda line: print(line, flush=True), write)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write(by_fraction)
    if args.pilot:
        print(f"budget by the pilot's rule: --epochs_by_fraction {epochs_flag(pilot_summary(by_fraction))}",
              flush=True)
    planned = sum(len(grid.at(f).configs) * len(grid.at(f).seeds) for f in grid.fractions)
    return finish([r for f in grid.fractions for r in by_fraction[f]], paths, planned, args.report_only)


def finish(results: list[RunResult], paths: dict[str, Path], planned: int, report_only: bool) -> int:
    """Say what finished and where the summaries went; 1 if a run failed."""
    if report_only:
        print(f"{len(results)} of {planned} runs finished; wrote {', '.join(str(p) for p in paths.values())}",
              flush=True)
        return 0
    failed = [r for r in results if r.status == "failed"]
    reused = sum(r.reused for r in results)
    print(f"{len(results) - len(failed)} of {len(results)} runs finished ({reused} from earlier invocations); "
          f"wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed; run the same command again to retry them:", file=sys.stderr)
        for r in failed:
            print(f"  {r.config} seed {r.seed} ({r.run_dir}): {r.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
