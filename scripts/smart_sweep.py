"""The SMART sweep over radius ε and weight λ_s: one epoch per point, paired seeds, differences from plain fine-tuning.

    python scripts/smart_sweep.py                     # every point, seeds 11711 and 1 (resumable, also on a fresh clone)
    python scripts/smart_sweep.py --report_only       # the table from the runs finished so far

Each point is `--smart` with its ε and λ_s and the other SMART settings at their defaults (η = 100·ε,
σ = ε), a one-configuration grid of scripts/ablate.py in <out_dir>/<point>/; runs go seed by seed,
so a sweep stopped part-way still compares every point on the first seed. Rerunning skips finished
runs. The table (results/smart_sweep.md and .json) gives each point's scores, its paired difference
from plain fine-tuning with the same seed, and the size of its adversarial term: the epoch mean and
its ratio to the task loss per task. A point is active when that ratio is at least ACTIVE_RATIO on
every task; the rule that picks the default among the active points is in results/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minbert.plumbing.atomic import atomic_write_text  # noqa: E402
from minbert.plumbing.flags import COURSE_SEED, OneLineErrorParser, add_flags  # noqa: E402
from minbert.plumbing.progress import format_loss  # noqa: E402
from multitask.ablation import GridError, GridSettings, RunResult, finished_results, parse_seeds, run_grid  # noqa: E402
from multitask.ablation.grid import report_paths  # noqa: E402
from multitask.ablation.seed_stats import (format_difference, format_stat, mean_std, metric_columns,  # noqa: E402
                                           paired_difference, per_seed, time_ratio)
from multitask.train import TrainSettings  # noqa: E402

# name: (ε, λ_s) as written on the command line, in the order the sweep runs them (the largest
# terms first: they are the candidates for an active default).
POINTS = {f"eps{eps}_lambda{weight}": (eps, weight)
          for eps in ("1e-1", "3e-2", "1e-2", "1e-3") for weight in ("1", "5")}
BASELINE = "baseline"
# A point whose adversarial term's epoch mean is below this share of the task loss on some task
# has, on that task, switched the term off in all but name.
ACTIVE_RATIO = 0.01


def point_settings(out_dir: Path, point: str, seeds: list[int], precision: str) -> GridSettings:
    if point == BASELINE:
        return GridSettings(out_dir=out_dir / BASELINE, configs=[BASELINE], seeds=seeds, epochs=1,
                            skip_predictions=True, precision=precision)
    eps, weight = POINTS[point]
    return GridSettings(out_dir=out_dir / point, configs=["smart"], seeds=seeds, epochs=1, skip_predictions=True,
                        extra_args=["--smart_eps", eps, "--smart_lambda", weight], precision=precision)


def record_runs(settings: GridSettings, runs: list[RunResult]) -> None:
    """Add finished runs to the point's report <out_dir>/<point>.json, which a fresh clone resumes from.

    Records of other seeds already there are kept: two sweeps may run the seeds side by side.
    """
    path = report_paths(settings.out_dir)["json"]
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except FileNotFoundError:
        kept = []
    done = [r.as_json() for r in runs if r.status == "done"]
    replaced = {(r["config"], r["seed"]) for r in done}
    merged = [r for r in kept if (r.get("config"), r.get("seed")) not in replaced] + done
    merged.sort(key=lambda r: (r["config"], str(r["seed"])))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"runs": merged}, indent=2) + "\n")


def term_sizes(runs: list[RunResult], tasks: list[str]) -> dict[str, tuple[float, float]]:
    """Per task: (adversarial term's epoch mean, its ratio to the task loss), each averaged over the runs."""
    sizes = {}
    for task in tasks:
        means = [r.terms[f"loss_{task}_adversarial"] for r in runs if f"loss_{task}_adversarial" in r.terms]
        ratios = [r.terms[f"ratio_{task}_adversarial"] for r in runs if f"ratio_{task}_adversarial" in r.terms]
        if means and ratios:
            sizes[task] = (sum(means) / len(means), sum(ratios) / len(ratios))
    return sizes


def is_active(sizes: dict[str, tuple[float, float]], tasks: list[str]) -> bool:
    return all(task in sizes and sizes[task][1] >= ACTIVE_RATIO for task in tasks)


def markdown(seeds: list[int], rows: dict[str, list[RunResult]]) -> str:
    base = rows[BASELINE]
    metrics = metric_columns([r for runs in rows.values() for r in runs])
    tasks = [key[len("dev_"):] for key, _ in metrics if key != "dev_mean"]
    lines = ["# SMART sweep: radius ε and weight λ_s", "",
             f"One epoch on the full training data, full dev sets, seeds {', '.join(map(str, seeds))}; "
             "`python multitask_classifier.py --option finetune --epochs 1 --skip_predictions`, each point with "
             "`--smart` (the adversarial and the Bregman term), its `--smart_eps` and `--smart_lambda`, η = 100·ε and "
             "σ = ε. Scores: mean ± sample std over the finished seeds. Δ: the point's score minus plain "
             "fine-tuning's with the same seed, averaged over seeds, in points (×100), with a 95% t-interval "
             "once two seeds are in. Time: mean per-seed ratio of training time to plain fine-tuning's, a "
             "measurement only when the runs had the machine to themselves.", "",
             "| point | ε | λ_s | seeds | " + " | ".join(title for _, title in metrics) + " | "
             + " | ".join(f"Δ {title}" for _, title in metrics) + " | time × |",
             "|---|---|---|---|" + "---|" * (2 * len(metrics)) + "---|"]
    for point, runs in rows.items():
        eps, weight = POINTS.get(point, ("—", "—"))
        scores = [format_stat(mean_std([r.value(key) for r in runs])) for key, _ in metrics]
        if point == BASELINE:
            deltas, ratio = ["—"] * len(metrics), "1"
        else:
            deltas = [format_difference(paired_difference(per_seed(runs, key), per_seed(base, key)))
                      for key, _ in metrics]
            mean_ratio = time_ratio(runs, base)
            ratio = "—" if mean_ratio is None else f"{mean_ratio:.2f}"
        seeds_done = ",".join(str(r.seed) for r in runs) or "none yet"
        lines.append(f"| {point} | {eps} | {weight} | {seeds_done} | " + " | ".join(scores) + " | "
                     + " | ".join(deltas) + f" | {ratio} |")
    lines += ["", "## Size of the adversarial term", "",
              "Epoch mean of λ_s·ℓ_s(f(x + δ), f(x)) per task, and in brackets its ratio to the task loss's epoch "
              f"mean (averaged over the finished seeds). Active: at least {ACTIVE_RATIO:.0%} on every task.", "",
              "| point | " + " | ".join(tasks) + " | active |", "|---|" + "---|" * len(tasks) + "---|"]
    for point, runs in rows.items():
        if point == BASELINE or not runs:
            continue
        sizes = term_sizes(runs, tasks)
        cells = [f"{format_loss(sizes[t][0])} ({100 * sizes[t][1]:#.3g}%)" if t in sizes else "—" for t in tasks]
        lines.append(f"| {point} | " + " | ".join(cells) + f" | {'yes' if is_active(sizes, tasks) else 'no'} |")
    lines += ["", f"Written {time.strftime('%Y-%m-%d %H:%M')} by `scripts/smart_sweep.py`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default=f"{COURSE_SEED},1",
                   help="comma list of seeds, run in this order ('1,' is the single seed 1: a lone number N "
                        f"is a count, the course's seed {COURSE_SEED} then 1..N-1)")
    p.add_argument("--points", default=",".join(POINTS), help=f"comma list from {','.join(POINTS)}")
    p.add_argument("--out_dir", type=Path, default=Path("results/smart_sweep_runs"),
                   help="run directories, one per point, and beside each its report <point>.json (kept in git: a "
                        "fresh clone skips the runs it records)")
    p.add_argument("--report", type=Path, default=Path("results/smart_sweep"),
                   help="the table goes to REPORT.md and REPORT.json")
    add_flags(p, TrainSettings, only=("precision",))
    p.add_argument("--report_only", action="store_true", help="run nothing: the table from the finished runs")
    args = p.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except GridError as err:
        p.error(str(err))
    points = [name.strip() for name in args.points.split(",") if name.strip()]
    unknown = [name for name in points if name not in POINTS]
    if unknown or not points:
        p.error(f"--points: unknown point(s) {unknown or args.points!r}; choose from {','.join(POINTS)}")

    names = [BASELINE, *points]
    if not args.report_only:
        for seed in seeds:
            for name in names:
                settings = point_settings(args.out_dir, name, [seed], args.precision)
                record_runs(settings, run_grid(settings, say=lambda line, name=name: print(f"{name}: {line}",
                                                                                           flush=True)))
    rows = {name: finished_results(point_settings(args.out_dir, name, seeds, args.precision)) for name in names}
    for name, runs in rows.items():
        record_runs(point_settings(args.out_dir, name, seeds, args.precision), runs)
    atomic_write_text(args.report.with_suffix(".md"), markdown(seeds, rows))
    points_json = {name: {"flags": point_settings(args.out_dir, name, seeds, args.precision).extra_args,
                          "runs": [r.as_json() for r in runs]} for name, runs in rows.items()}
    atomic_write_text(args.report.with_suffix(".json"),
                      json.dumps({"seeds": seeds, "points": points_json}, indent=2) + "\n")
    print(f"wrote {args.report.with_suffix('.md')} ({sum(map(len, rows.values()))} finished runs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
