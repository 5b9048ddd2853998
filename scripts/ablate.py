"""Run the ablation grid (plain, SMART parts, R3F, MLM) over seeds and summarise it as JSON, Markdown and PNG.

    python scripts/ablate.py --quick                                   # whole grid, tiny budget, minutes
    python scripts/ablate.py --epochs 2 --train_limit 4000 --seeds 3   # a real grid
    python scripts/ablate.py --configs baseline,r3f -- --batch_size 16 # training flags after --
    python scripts/ablate.py --configs baseline --reference "specialists: sst=S,para=Q,sts=R"  # vs fixed scores
    python scripts/ablate.py --train_fraction 0.02,0.1,0.3 --pilot                 # baseline's epochs per fraction
    python scripts/ablate.py --train_fraction 0.02,0.1,0.3 --seeds_by_fraction 0.02:5,0.1:5,0.3:3 \
        --epochs_by_fraction 0.02:8,0.1:5,0.3:3 --robustness                      # the low-resource curve

Each configuration and seed trains in its own subprocess into <out_dir>/<config>/seed<seed>/ (with
--train_fraction, <out_dir>/frac<F>/<config>/seed<seed>/);
rerunning the same command skips finished runs and retries failed ones. The same command with
--report_only rewrites the summaries from the runs finished so far (e.g. while the grid runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minbert.plumbing.atomic import atomic_write_text  # noqa: E402
from minbert.mlm_training import MLMSettings  # noqa: E402
from minbert.plumbing.flags import COURSE_SEED, OneLineErrorParser, add_flags, positive_int  # noqa: E402
from multitask.ablation import (BASELINE, GRID, MLM_SCRIPT, GridError, GridSettings, RunResult,  # noqa: E402
                                check_extra_args, finished_results, parse_configs, parse_seeds, report_paths,
                                run_grid)
from multitask.ablation import by_size  # noqa: E402
from multitask.ablation.sizes import (BY_SIZE_ROWS, PILOT_EPOCHS, PLATEAU_POINTS, SizeGrid, epochs_flag,  # noqa: E402
                                      finished_by_size, pilot_grid, pilot_summary, run_by_size, size_grid)
from multitask.ablation.seed_stats import (CONFIDENCE, Difference, Stat, closing_lines, difference_from,  # noqa: E402
                                           format_difference, format_stat, machine_lines, mean_std, metric_columns,
                                           paired_difference, per_seed, save_figure, time_ratio)
from multitask.evaluate import overall  # noqa: E402
from multitask.tasks import TASKS  # noqa: E402
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


@dataclass(frozen=True)
class Reference:
    """Fixed dev scores every row is held against, e.g. single-task models trained elsewhere, once."""

    name: str
    scores: dict[str, float]

    def values(self, metrics: Sequence[tuple[str, str]]) -> dict[str, float]:
        """The fixed score per metric column (`metric_columns`) it covers, in column order; the mean only
        when it covers every task column, computed from those tasks alone."""
        tasks = [key.removeprefix("dev_") for key, _ in metrics if key != "dev_mean"]
        fixed = {f"dev_{task}": self.scores[task] for task in tasks if task in self.scores}
        if tasks and len(fixed) == len(tasks):
            fixed["dev_mean"] = overall({task: self.scores[task] for task in tasks})
        return fixed

    def as_json(self) -> dict:
        return {"name": self.name, "scores": self.scores}


def parse_reference(text: str) -> Reference:
    """`NAME: sst=0.482,para=0.836,sts=0.860` (the name is optional)."""
    name, _, scores = text.rpartition(":")
    parsed = {}
    for part in filter(None, (p.strip() for p in scores.split(","))):
        task, _, value = part.partition("=")
        task = task.strip()
        if task not in TASKS:
            raise argparse.ArgumentTypeError(f"{task!r} is not a task (tasks: {', '.join(TASKS)})")
        try:
            parsed[task] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: give task=score, e.g. sst=0.482") from None
    if not parsed:
        raise argparse.ArgumentTypeError(f"{text!r}: give task=score pairs, e.g. sst=0.482,para=0.836")
    return Reference(name.strip() or "reference", parsed)


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

def aggregate(results: Sequence[RunResult], configs: Sequence[str], reference: Reference | None = None) -> list[dict]:
    """Per configuration, in grid order: run counts, how many machines the finished runs trained on, a Stat
    per metric and, beside the baseline, the paired Difference per metric and the mean per-seed ratio of
    training time; with a reference, each metric's Difference from its fixed score."""
    finished = {name: [r for r in results if r.config == name and r.status == "done"] for name in configs}
    metrics = metric_columns(results)
    fixed = {} if reference is None else reference.values(metrics)
    summary = []
    for name in configs:
        done = finished[name]
        row = {"config": name, "runs": len(done), "failed": sum(r.config == name for r in results) - len(done),
               "machines": len({r.machine for r in done})}  # unrecorded counts as one machine
        for key, _ in (*metrics, ("train_seconds", "")):
            row[key] = mean_std([r.value(key) for r in done])
        if BASELINE in finished and name != BASELINE:
            base = finished[BASELINE]
            row["vs_baseline"] = {key: paired_difference(per_seed(done, key), per_seed(base, key))
                                  for key, _ in metrics}
            row["time_ratio"] = time_ratio(done, base)
        if reference is not None:
            row["vs_reference"] = {key: difference_from(per_seed(done, key), value) for key, value in fixed.items()}
        summary.append(row)
    return summary


def format_seconds(stat: Stat) -> str:
    if stat.mean is None:
        return "—"
    minutes = stat.mean >= 120
    scale, unit = (60, "min") if minutes else (1, "s")
    value = f"{stat.mean / scale:.1f}" if minutes else f"{stat.mean:.0f}"
    if stat.std is not None:
        value += f" ± {stat.std / scale:.1f}" if minutes else f" ± {stat.std:.0f}"
    return f"{value} {unit}"


def budget_lines(settings: GridSettings) -> list[str]:
    b = settings.budget()
    train = "the full training sets" if b["train_limit"] is None else f"at most {b['train_limit']} examples per task"
    dev = "the full dev sets" if b["dev_limit"] is None else f"the first {b['dev_limit']} dev examples per task"
    lines = [f"- epochs: {b['epochs']}; training data: {train}; dev scores on {dev}",
             f"- seeds: {', '.join(map(str, b['seeds']))} (one run per configuration and seed)"]
    if b["extra_args"]:
        lines.append(f"- extra training flags, every run: `{' '.join(b['extra_args'])}`")
    if settings.uses_mlm:
        source = (f"`{b['mlm_dir']}`" if b["mlm_dir"] else
                  f"pretrained by the runner ({b['mlm_steps']} MLM steps, seed {b['seeds'][0]})")
        lines.append(f"- MLM encoder of the mlm rows: {source}")
    return lines


def markdown(settings: GridSettings, results: Sequence[RunResult], summary: list[dict],
             reference: Reference | None = None) -> str:
    metrics = metric_columns(results)
    fixed = {} if reference is None else reference.values(metrics)
    lines = ["# Ablations", "", "Budget, the same for every run:", "", *budget_lines(settings),
             *machine_lines(results), "",
             "Dev scores of each run's best epoch (highest dev mean), as mean ± sample standard deviation "
             "over seeds; the mean is over the tasks, with Pearson r as (r + 1) / 2. Train time is the training "
             "loop of one run, without dev evaluation or prediction writing.", "",
             "| config | flags | runs | " + " | ".join(title for _, title in metrics) + " | train time |",
             "|---|---|---|" + "---|" * len(metrics) + "---|"]
    for row in summary:
        runs = f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        cells = [format_stat(row[key]) for key, _ in metrics]
        mark = " †" if row["machines"] > 1 else ""
        lines.append(f"| {row['config']} | `{GRID[row['config']].describe()}` | {runs} | " + " | ".join(cells)
                     + f" | {format_seconds(row['train_seconds'])}{mark} |")
    if reference is not None:
        cells = [f"{fixed[key]:.3f}" if key in fixed else "—" for key, _ in metrics]
        lines.append(f"| {reference.name} | `--reference` | — | " + " | ".join(cells) + " | — |")
    if any(row["machines"] > 1 for row in summary):
        lines += ["", "† these runs trained on different machines: the ± of their train time measures the "
                  "machines as much as the seeds; the time ratios below pair runs from one machine."]
    compared = [row for row in summary if "vs_baseline" in row]
    if compared:
        lines += ["", f"Paired differences from `{BASELINE}`: for each seed, the configuration's score minus "
                  f"`{BASELINE}`'s with the same seed, averaged over seeds, in points (×100), with a "
                  f"{CONFIDENCE:.0%} Student-t interval over the seeds. An interval that contains 0 is no "
                  "evidence either way. Time: mean per-seed ratio of training time to the baseline's, over the seeds "
                  "whose two runs trained on the same machine.", "",
                  "| config | pairs | " + " | ".join(f"Δ {title}" for _, title in metrics) + " | time × |",
                  "|---|---|" + "---|" * len(metrics) + "---|"]
        for row in compared:
            ratio = "—" if row["time_ratio"] is None else f"{row['time_ratio']:.2f}"
            lines.append(f"| {row['config']} | {row['vs_baseline']['dev_mean'].n} | "
                         + " | ".join(format_difference(row["vs_baseline"][key]) for key, _ in metrics)
                         + f" | {ratio} |")
    if reference is not None:
        held = [(key, title) for key, title in metrics if key in fixed]
        lines += ["", f"Against {reference.name}: each seed's score minus the fixed score, averaged over seeds, "
                  f"in points (×100), with a {CONFIDENCE:.0%} Student-t interval over the seeds. The interval "
                  "holds only this grid's seed noise (the fixed scores come from single runs whose own noise "
                  "is unknown); an interval above 0 means beyond that noise.", "",
                  "| config | runs | " + " | ".join(f"Δ {title}" for _, title in held) + " |",
                  "|---|---|" + "---|" * len(held)]
        for row in summary:
            lines.append(f"| {row['config']} | {row['runs']} | "
                         + " | ".join(format_difference(row["vs_reference"][key]) for key, _ in held) + " |")
    lines += closing_lines([f"{r.config}, seed {r.seed}: {r.error}" for r in results if r.status == "failed"])
    return "\n".join(lines) + "\n"


def plot(path: Path, settings: GridSettings, summary: list[dict], metrics: list[tuple[str, str]],
         reference: Reference | None = None) -> None:
    """One panel per metric: each configuration's paired difference from the baseline with its interval
    (from the reference's fixed scores when no row has a baseline to pair with).

    Differences, not raw scores: bars of raw scores on an axis cut to show a point or two of
    difference make noise look like an effect; an interval crossing the zero line shows it is not one.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on the training machines
    import matplotlib.pyplot as plt

    field, against = "vs_baseline", f"{BASELINE} (same seed)"
    if reference is not None and not any(field in row for row in summary):
        field, against = "vs_reference", reference.name
        metrics = [(key, title) for key, title in metrics if key in summary[0][field]]
    rows = [row for row in summary if field in row]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 0.9 + 0.35 * max(len(rows), 1)),
                             sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (key, title) in zip(axes, metrics):
        for y, row in enumerate(rows):
            d = row[field][key]
            if d.mean is None:
                continue
            if d.low is None:
                ax.plot(100 * d.mean, y, "o", color="grey")
            else:
                ax.errorbar(100 * d.mean, y, xerr=[[100 * (d.mean - d.low)], [100 * (d.high - d.mean)]],
                            fmt="o", color="black" if d.low > 0 or d.high < 0 else "grey", capsize=3)
        ax.axvline(0, color="red", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [row["config"] for row in rows], fontsize=8)
        ax.set_title(f"Δ {title} (points)", fontsize=9)
    axes[0].invert_yaxis()
    b = settings.budget()
    limit = "full data" if b["train_limit"] is None else f"train limit {b['train_limit']}"
    fig.suptitle(f"dev score minus {against}, mean and {CONFIDENCE:.0%} t-interval over "
                 f"{len(b['seeds'])} seed(s); {b['epochs']} epoch(s), {limit}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def write_reports(settings: GridSettings, results: Sequence[RunResult],
                  reference: Reference | None = None) -> dict[str, Path]:
    summary = aggregate(results, settings.configs, reference)
    paths = report_paths(settings.out_dir)
    def plain(value):
        if isinstance(value, (Stat, Difference)):
            return value.as_json()
        return {key: plain(v) for key, v in value.items()} if isinstance(value, dict) else value

    document = {"budget": settings.budget(), "runs": [r.as_json() for r in results],
                "summary": [plain(row) for row in summary]}
    if reference is not None:
        document["reference"] = reference.as_json()
    atomic_write_text(paths["json"], json.dumps(document, indent=2) + "\n")
    atomic_write_text(paths["md"], markdown(settings, results, summary, reference))
    plot(paths["png"], settings, summary, metric_columns(results), reference)
    return paths


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
