"""Run the ablation grid (plain, SMART parts, R3F, MLM) over seeds and summarise it as JSON, Markdown and PNG.

    python scripts/ablate.py --quick                                   # whole grid, tiny budget, minutes
    python scripts/ablate.py --epochs 2 --train_limit 4000 --seeds 3   # a real grid
    python scripts/ablate.py --configs baseline,r3f -- --batch_size 16 # training flags after --

Each configuration and seed trains in its own subprocess into <out_dir>/<config>/seed<seed>/;
rerunning the same command skips finished runs and retries failed ones. The same command with
--report_only rewrites the summaries from the runs finished so far (e.g. while the grid runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from multitask.ablation import (GRID, MLM_SCRIPT, GridError, GridSettings, check_extra_args,  # noqa: E402
                                finished_results, parse_configs, parse_seeds, run_grid)
from minbert.flags import OneLineErrorParser, positive_int  # noqa: E402
from minbert.precision import PRECISIONS  # noqa: E402
from multitask.ablation_report import write_reports  # noqa: E402
from multitask.train import TrainSettings  # noqa: E402

# --quick: every configuration once on a sliver of data, to check the whole grid runs (its time is
# in the README); scores from it say nothing about the methods.
QUICK = {"epochs": 1, "train_limit": 64, "seeds": "1", "dev_limit": 200, "skip_predictions": True,
         "mlm_steps": 10, "out_dir": Path("results/ablations_quick")}
# The full budget trains as long as multitask_classifier.py does by default.
FULL = {"epochs": TrainSettings.epochs, "train_limit": None, "seeds": "11711,1,2", "dev_limit": None,
        "skip_predictions": False, "mlm_steps": 300, "out_dir": Path("results/ablations")}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s [options] [-- training flags for multitask_classifier.py]")
    p.add_argument("--configs", default=",".join(GRID), help=f"comma list from {','.join(GRID)} (default: all)")
    p.add_argument("--seeds", help="a count (3 = 11711,1,2) or a comma list; '42,' is the single seed 42 "
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
                        "(default results/ablations; --quick: results/ablations_quick)")
    p.add_argument("--mlm_dir", type=Path, help="MLM-pretrained encoder (Hugging Face layout) for the mlm rows; "
                                                "without it the runner pretrains one into <out_dir>/mlm_encoder")
    p.add_argument("--mlm_steps", type=positive_int, help=f"MLM steps when the runner pretrains (default {FULL['mlm_steps']}; "
                                                 f"--quick: {QUICK['mlm_steps']})")
    p.add_argument("--mlm_script", type=Path, default=MLM_SCRIPT,
                   help="the MLM pretraining script (takes --out_dir --max_steps --seed)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="compute precision of every run and of the MLM stage (see multitask_classifier.py --help)")
    p.add_argument("--keep_checkpoints", action="store_true",
                   help="keep each run's best checkpoint (by default removed once the run is finished)")
    p.add_argument("--report_only", action="store_true",
                   help="run nothing: write the summaries from the runs of this grid that have finished")
    p.add_argument("--quick", action="store_true", help="the whole grid on a tiny budget: 1 epoch, 64 examples per "
                                                        "task, 1 seed, a 10-step MLM stage, no prediction files")
    return p


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
    defaults = QUICK if args.quick else FULL
    value = {key: default if getattr(args, key) is None else getattr(args, key) for key, default in defaults.items()}
    try:
        check_extra_args(extra)
        return GridSettings(out_dir=value["out_dir"], configs=parse_configs(args.configs),
                            seeds=parse_seeds(str(value["seeds"])), epochs=value["epochs"],
                            train_limit=value["train_limit"], dev_limit=value["dev_limit"],
                            skip_predictions=value["skip_predictions"], extra_args=extra, mlm_dir=args.mlm_dir,
                            mlm_steps=value["mlm_steps"], mlm_script=args.mlm_script,
                            keep_checkpoints=args.keep_checkpoints, precision=args.precision)
    except GridError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = settings_from_args(argv)
    if build_parser().parse_args(split_extra(argv)[0]).report_only:
        results = finished_results(settings)
        paths = write_reports(settings, results)
        print(f"{len(results)} of {len(settings.configs) * len(settings.seeds)} runs finished; "
              f"wrote {', '.join(str(p) for p in paths.values())}", flush=True)
        return 0
    results = run_grid(settings, say=lambda line: print(line, flush=True))
    paths = write_reports(settings, results)
    failed = [r for r in results if r.status == "failed"]
    reused = sum(r.reused for r in results)
    print(f"{len(results) - len(failed)} of {len(results)} runs finished ({reused} from earlier invocations); "
          f"wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed; run the same command again to retry them:", file=sys.stderr)
        for r in failed:
            print(f"  {r.config} seed {r.seed}: {r.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
