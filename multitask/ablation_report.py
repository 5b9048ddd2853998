"""Summaries of an ablation grid: mean ± std over seeds, written as JSON, a Markdown table and a bar chart."""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from minbert.atomic import atomic_path, atomic_write_text
from multitask.ablation import GRID, GridSettings, RunResult

# (result field, column title); STS is Pearson r, the mean maps it to (r + 1) / 2 as training does.
METRICS = (("dev_sst", "SST acc"), ("dev_para", "Quora acc"), ("dev_sts", "STS r"), ("dev_mean", "mean"))


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


def aggregate(results: Sequence[RunResult], configs: Sequence[str]) -> list[dict]:
    """Per configuration, in grid order: finished and failed run counts and a Stat per metric."""
    summary = []
    for name in configs:
        mine = [r for r in results if r.config == name]
        done = [r for r in mine if r.status == "done"]
        row = {"config": name, "runs": len(done), "failed": len(mine) - len(done)}
        for key, _ in (*METRICS, ("train_seconds", "")):
            row[key] = mean_std([getattr(r, key) for r in done])
        summary.append(row)
    return summary


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
    lines = ["# Ablations", "", "Budget, the same for every run:", "", *budget_lines(settings), "",
             "Dev scores of each run's best epoch (highest dev mean), as mean ± sample standard deviation "
             "over seeds; the mean is (SST acc + Quora acc + (STS r + 1) / 2) / 3. Train time is the training "
             "loop of one run, without dev evaluation or prediction writing.", "",
             "| config | flags | runs | " + " | ".join(title for _, title in METRICS) + " | train time |",
             "|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for row in summary:
        runs = f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        cells = [format_stat(row[key]) for key, _ in METRICS]
        lines.append(f"| {row['config']} | `{GRID[row['config']].describe()}` | {runs} | " + " | ".join(cells)
                     + f" | {format_seconds(row['train_seconds'])} |")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines += ["", "Failed runs (the same command retries them; finished runs are not run again):", ""]
        lines += [f"- {r.config}, seed {r.seed}: {r.error}" for r in failed]
    lines += ["", "The default encoder, all-MiniLM-L6-v2, was contrastively trained on data that includes Quora "
              "duplicate pairs: Quora scores are optimistic in absolute terms, comparisons between rows stay fair.",
              "", f"Written {time.strftime('%Y-%m-%d %H:%M')} by `scripts/ablate.py`."]
    return "\n".join(lines) + "\n"


def plot(path: Path, settings: GridSettings, summary: list[dict]) -> None:
    """One panel per metric, a bar per configuration with its std as error bar."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on the training machines
    import matplotlib.pyplot as plt

    names = [row["config"] for row in summary]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.8))
    colours = plt.get_cmap("tab10").colors
    for ax, (key, title) in zip(axes, METRICS):
        stats = [row[key] for row in summary]
        heights = [math.nan if s.mean is None else s.mean for s in stats]
        errors = [0.0 if s.std is None else s.std for s in stats]
        ax.bar(range(len(names)), heights, yerr=errors, capsize=3, color=colours[: len(names)])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        finite = [(h - e, h + e) for h, e in zip(heights, errors) if not math.isnan(h)]
        if finite:
            # Configurations differ by a point or two: a zero-based axis would hide exactly that.
            low, high = min(lo for lo, _ in finite), max(hi for _, hi in finite)
            margin = max(0.01, 0.25 * (high - low))
            ax.set_ylim(low - margin, high + margin)
    b = settings.budget()
    limit = "full data" if b["train_limit"] is None else f"train limit {b['train_limit']}"
    fig.suptitle(f"dev scores, mean ± std over {len(b['seeds'])} seed(s); {b['epochs']} epoch(s), {limit} "
                 "(axes do not start at 0)", fontsize=9)
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
    document = {"budget": settings.budget(), "runs": [r.as_json() for r in results],
                "summary": [{key: value.as_json() if isinstance(value, Stat) else value for key, value in row.items()}
                            for row in summary]}
    atomic_write_text(paths["json"], json.dumps(document, indent=2) + "\n")
    atomic_write_text(paths["md"], markdown(settings, results, summary))
    plot(paths["png"], settings, summary)
    return paths
