"""The grid's report: every configuration's scores over seeds, paired differences from the baseline, as Markdown and a plot."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from minbert.plumbing.atomic import atomic_write_text
from multitask.ablation.grid import BASELINE, GRID, GridSettings, report_paths
from multitask.ablation.single_run import RunResult
from multitask.ablation.seed_stats import (CONFIDENCE, NO_SPREAD_NOTE, Difference, Stat, closing_lines, difference_from,
                                           format_difference, format_stat, machine_lines, mean_std, metric_columns,
                                           paired_difference, per_seed, save_figure, time_ratio)
from multitask.evaluate import overall
from multitask.tasks import TASKS


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
                  f"whose two runs trained on the same machine. {NO_SPREAD_NOTE}", "",
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
                  f"is unknown); an interval above 0 means beyond that noise. {NO_SPREAD_NOTE}", "",
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
