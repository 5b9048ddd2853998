"""Summaries of an ablation grid: mean ± std over seeds, paired differences from the baseline; JSON, Markdown, chart."""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import scipy.stats

from minbert.atomic import atomic_path, atomic_write_text
from multitask.ablation import GRID, GridSettings, RunResult
from multitask.tasks import TASKS

BASELINE = "baseline"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of one metric over seeds (std is None for a single run)."""

    mean: float | None
    std: float | None
    n: int

    def as_json(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def mean_std(values: Sequence[float | None]) -> Stat:
    present = [float(v) for v in values if v is not None]
    if not present:
        return Stat(None, None, 0)
    # Sample std (n - 1): the seeds are a sample of what the method does, not all of it.
    std = statistics.stdev(present) if len(present) > 1 else None
    return Stat(statistics.fmean(present), std, len(present))


@dataclass(frozen=True)
class Difference:
    """Mean over seeds of (configuration − baseline), each seed paired with itself, and its t-interval.

    Pairing removes what a seed does to every configuration alike (its data order, its head
    initialisation), which is most of the seed-to-seed spread; the interval is None below 2 pairs.
    """

    mean: float | None
    low: float | None
    high: float | None
    n: int

    def as_json(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "confidence": CONFIDENCE}


def paired_difference(values: dict[int, float], baseline: dict[int, float]) -> Difference:
    """`values` − `baseline` over the seeds both have, with a two-sided Student-t interval."""
    differences = [values[seed] - baseline[seed] for seed in sorted(values.keys() & baseline.keys())]
    if not differences:
        return Difference(None, None, None, 0)
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return Difference(mean, None, None, 1)
    spread = statistics.stdev(differences)
    if spread == 0:  # every seed moved by the same amount (scipy wants a positive scale)
        return Difference(mean, mean, mean, len(differences))
    low, high = scipy.stats.t.interval(CONFIDENCE, len(differences) - 1, loc=mean,
                                       scale=spread / math.sqrt(len(differences)))
    return Difference(mean, float(low), float(high), len(differences))


def metric_columns(results: Sequence[RunResult]) -> list[tuple[str, str]]:
    """(RunResult.value key, column title) per task the runs were scored on, in registry order, then the mean.

    Pearson r columns say r; the mean maps r to (r + 1) / 2 as training does.
    """
    scored = {task for r in results for task in r.dev}
    columns = [(f"dev_{name}", f"{task.label} {'r' if task.metric == 'pearson' else 'acc'}")
               for name, task in TASKS.items() if name in scored]
    return [*columns, ("dev_mean", "mean")]


def per_seed(runs: Sequence[RunResult], key: str) -> dict[int, float]:
    return {r.seed: float(r.value(key)) for r in runs if r.value(key) is not None}


def time_ratio(runs: Sequence[RunResult], baseline: Sequence[RunResult]) -> float | None:
    """Mean over the shared seeds of training time / the baseline's (None without a shared seed)."""
    mine, theirs = per_seed(runs, "train_seconds"), per_seed(baseline, "train_seconds")
    ratios = [mine[seed] / theirs[seed] for seed in mine.keys() & theirs.keys() if theirs[seed] > 0]
    return statistics.fmean(ratios) if ratios else None


def aggregate(results: Sequence[RunResult], configs: Sequence[str]) -> list[dict]:
    """Per configuration, in grid order: run counts, a Stat per metric and, beside the baseline, the paired
    Difference per metric and the mean per-seed ratio of training time."""
    finished = {name: [r for r in results if r.config == name and r.status == "done"] for name in configs}
    metrics = metric_columns(results)
    summary = []
    for name in configs:
        done = finished[name]
        row = {"config": name, "runs": len(done), "failed": sum(r.config == name for r in results) - len(done)}
        for key, _ in (*metrics, ("train_seconds", "")):
            row[key] = mean_std([r.value(key) for r in done])
        if BASELINE in finished and name != BASELINE:
            base = finished[BASELINE]
            row["vs_baseline"] = {key: paired_difference(per_seed(done, key), per_seed(base, key))
                                  for key, _ in metrics}
            row["time_ratio"] = time_ratio(done, base)
        summary.append(row)
    return summary


def format_difference(difference: Difference) -> str:
    """In points (×100): `+1.2 [−0.4, +2.8]`, or `+1.2` with one pair, `—` with none."""
    if difference.mean is None:
        return "—"
    text = f"{100 * difference.mean:+.1f}"
    return text if difference.low is None else f"{text} [{100 * difference.low:+.1f}, {100 * difference.high:+.1f}]"


def format_stat(stat: Stat, digits: int = 3) -> str:
    if stat.mean is None:
        return "—"
    text = f"{stat.mean:.{digits}f}"
    return text if stat.std is None else f"{text} ± {stat.std:.{digits}f}"


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


def markdown(settings: GridSettings, results: Sequence[RunResult], summary: list[dict]) -> str:
    metrics = metric_columns(results)
    lines = ["# Ablations", "", "Budget, the same for every run:", "", *budget_lines(settings), "",
             "Dev scores of each run's best epoch (highest dev mean), as mean ± sample standard deviation "
             "over seeds; the mean is over the tasks, with Pearson r as (r + 1) / 2. Train time is the training "
             "loop of one run, without dev evaluation or prediction writing.", "",
             "| config | flags | runs | " + " | ".join(title for _, title in metrics) + " | train time |",
             "|---|---|---|" + "---|" * len(metrics) + "---|"]
    for row in summary:
        runs = f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        cells = [format_stat(row[key]) for key, _ in metrics]
        lines.append(f"| {row['config']} | `{GRID[row['config']].describe()}` | {runs} | " + " | ".join(cells)
                     + f" | {format_seconds(row['train_seconds'])} |")
    compared = [row for row in summary if "vs_baseline" in row]
    if compared:
        lines += ["", f"Paired differences from `{BASELINE}`: for each seed, the configuration's score minus "
                  f"`{BASELINE}`'s with the same seed, averaged over seeds, in points (×100), with a "
                  f"{CONFIDENCE:.0%} Student-t interval over the seeds. An interval that contains 0 is no "
                  "evidence either way. Time: mean per-seed ratio of training time to the baseline's.", "",
                  "| config | pairs | " + " | ".join(f"Δ {title}" for _, title in metrics) + " | time × |",
                  "|---|---|" + "---|" * len(metrics) + "---|"]
        for row in compared:
            ratio = "—" if row["time_ratio"] is None else f"{row['time_ratio']:.2f}"
            lines.append(f"| {row['config']} | {row['vs_baseline']['dev_mean'].n} | "
                         + " | ".join(format_difference(row["vs_baseline"][key]) for key, _ in metrics)
                         + f" | {ratio} |")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines += ["", "Failed runs (the same command retries them; finished runs are not run again):", ""]
        lines += [f"- {r.config}, seed {r.seed}: {r.error}" for r in failed]
    lines += ["", "The default encoder, all-MiniLM-L6-v2, was contrastively trained on data that includes Quora "
              "duplicate pairs: Quora scores are optimistic in absolute terms, comparisons between rows stay fair.",
              "", f"Written {time.strftime('%Y-%m-%d %H:%M')} by `scripts/ablate.py`."]
    return "\n".join(lines) + "\n"


def plot(path: Path, settings: GridSettings, summary: list[dict], metrics: list[tuple[str, str]]) -> None:
    """One panel per metric: each configuration's paired difference from the baseline with its interval.

    Differences, not raw scores: bars of raw scores on an axis cut to show a point or two of
    difference make noise look like an effect; an interval crossing the zero line shows it is not one.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on the training machines
    import matplotlib.pyplot as plt

    rows = [row for row in summary if "vs_baseline" in row]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 0.9 + 0.35 * max(len(rows), 1)),
                             sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (key, title) in zip(axes, metrics):
        for y, row in enumerate(rows):
            d = row["vs_baseline"][key]
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
    fig.suptitle(f"dev score minus {BASELINE} (same seed), mean and {CONFIDENCE:.0%} t-interval over "
                 f"{len(b['seeds'])} seed(s); {b['epochs']} epoch(s), {limit}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def report_paths(out_dir: Path) -> dict[str, Path]:
    """results/ablations/ → results/ablations.json, .md and .png beside the run directories."""
    out_dir = Path(out_dir)
    return {ext: out_dir.parent / f"{out_dir.name}.{ext}" for ext in ("json", "md", "png")}


def write_reports(settings: GridSettings, results: Sequence[RunResult]) -> dict[str, Path]:
    summary = aggregate(results, settings.configs)
    paths = report_paths(settings.out_dir)
    def plain(value):
        if isinstance(value, (Stat, Difference)):
            return value.as_json()
        return {key: plain(v) for key, v in value.items()} if isinstance(value, dict) else value

    document = {"budget": settings.budget(), "runs": [r.as_json() for r in results],
                "summary": [plain(row) for row in summary]}
    atomic_write_text(paths["json"], json.dumps(document, indent=2) + "\n")
    atomic_write_text(paths["md"], markdown(settings, results, summary))
    plot(paths["png"], settings, summary, metric_columns(results))
    return paths
