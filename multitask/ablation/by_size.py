"""The reports of the data-size axis: <out_dir>.json/.md/.png of the grid, and of the baseline pilot before it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from minbert.plumbing.atomic import atomic_write_text
from multitask.ablation.grid import BASELINE, GRID, GridError, fraction_label, report_paths
from multitask.ablation.seed_stats import (CONFIDENCE, NO_SPREAD_NOTE, Difference, Stat, closing_lines,
                                           format_difference, format_stat, machine_lines, mean_std, metric_columns,
                                           paired_difference, per_seed, save_figure)
from multitask.ablation.single_run import RunResult, robustness_limits
from multitask.ablation.sizes import PLATEAU_POINTS, Results, SizeGrid, epochs_flag, pilot_dir, pilot_summary
from multitask.robustness.noise import NOISE_KINDS

# What measure_checkpoint returns besides measures: how many examples the attack ran on.
COUNT_PREFIXES = ("attack_examples_",)


@dataclass(frozen=True)
class FullData:
    """The full-data grid read from its own report (fraction 1 of the curve): not rerun, its own budget."""

    source: Path
    budget: dict
    runs: list[RunResult]


def load_full_data(path: Path, configs: Sequence[str]) -> FullData:
    """The finished runs of `configs` in an existing grid report such as results/ablations.json."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        records, budget = document["runs"], document["budget"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise GridError(f"--full_data {path}: not a readable grid report ({error}); give the JSON report of a "
                        "full-data grid, e.g. results/ablations.json") from None
    known = {item.name for item in fields(RunResult)} - {"reused"}
    runs = [RunResult(**{key: value for key, value in record.items() if key in known}, reused=True)
            for record in records if record.get("status") == "done" and record.get("config") in configs]
    return FullData(Path(path), budget, runs)


# ----------------------------------------------------------------------------------------------- summaries

# A noise column scores the perturbed text, so it moves with the clean score too; what the noise
# itself cost a run is its drop from clean_<task> on the same examples: drop_<noise column>.
DROP_PREFIX = "drop_"


def noise_task(measure: str) -> str | None:
    """The task of a noise column ('typo5_sst' -> 'sst'); None for every other measure."""
    level, _, task = measure.rpartition("_")
    kind = level.rstrip("0123456789")
    return task if kind in NOISE_KINDS and level != kind else None


def robustness_measures(runs: Sequence[RunResult]) -> list[str]:
    """The robustness measures the runs carry, in the order measure_checkpoint gave them, counts left
    out; after a task's last noise column, its drops (when the runs carry clean_<task>)."""
    names = [name for name in dict.fromkeys(key for r in runs for key in r.robustness)
             if not name.startswith(COUNT_PREFIXES)]
    ordered = []
    for i, name in enumerate(names):
        ordered.append(name)
        task = noise_task(name)
        last_of_task = i + 1 == len(names) or noise_task(names[i + 1]) != task
        if task is not None and last_of_task and f"clean_{task}" in names:
            ordered += [DROP_PREFIX + other for other in names if noise_task(other) == task]
    return ordered


def run_measure(run: RunResult, measure: str) -> float | None:
    """One run's value of a measure: as recorded, or for a drop, clean minus noisy (None if either is missing)."""
    if not measure.startswith(DROP_PREFIX):
        return run.robustness.get(measure)
    noisy = measure[len(DROP_PREFIX):]
    clean, perturbed = run.robustness.get(f"clean_{noise_task(noisy)}"), run.robustness.get(noisy)
    return None if clean is None or perturbed is None else clean - perturbed


def measure_per_seed(runs: Sequence[RunResult], measure: str) -> dict[int, float]:
    values = {r.seed: run_measure(r, measure) for r in runs}
    return {seed: value for seed, value in values.items() if value is not None}


def fraction_rows(runs: Sequence[RunResult], configs: Sequence[str], metrics: Sequence[tuple[str, str]],
                  measures: Sequence[str]) -> list[dict]:
    """Per configuration at one fraction: counts, a Stat per dev metric and robustness measure, and
    beside the baseline the paired Difference of each (the columns are the whole grid's, so that every
    fraction has them, finished or not)."""
    finished = {name: [r for r in runs if r.config == name and r.status == "done"] for name in configs}
    base = finished.get(BASELINE, [])
    rows = []
    for name in configs:
        done = finished[name]
        row = {"config": name, "runs": len(done), "failed": sum(r.config == name for r in runs) - len(done)}
        row.update({key: mean_std([r.value(key) for r in done]) for key, _ in metrics})
        row["robustness"] = {m: mean_std([run_measure(r, m) for r in done]) for m in measures}
        if name != BASELINE and base:
            row["vs_baseline"] = {key: paired_difference(per_seed(done, key), per_seed(base, key))
                                  for key, _ in metrics}
            row["robustness_vs_baseline"] = {m: paired_difference(measure_per_seed(done, m), measure_per_seed(base, m))
                                             for m in measures}
        rows.append(row)
    return rows


def points(results: Results, full: FullData | None) -> Results:
    """The curve's points: the grid's fractions, and fraction 1 from the full-data report when given."""
    return {**results, 1.0: full.runs} if full is not None else dict(results)


def plain(value):
    if isinstance(value, (Stat, Difference)):
        return value.as_json()
    return {key: plain(v) for key, v in value.items()} if isinstance(value, dict) else value


# ----------------------------------------------------------------------------------------------- the text

def is_share(measure: str) -> bool:
    """Accuracies, attack success rates and calibration errors are shares (shown in points); the
    smoothness divergences are not, and are shown as they are."""
    return not measure.startswith("smooth_")


def format_measure(measure: str, stat: Stat) -> str:
    if is_share(measure) or stat.mean is None:
        return format_stat(stat)
    return f"{stat.mean:.3g}" + ("" if stat.std is None else f" ± {stat.std:.2g}")


def format_measure_difference(measure: str, d: Difference) -> str:
    # Shares in points, as the score columns; divergences as they are.
    return format_difference(d) if is_share(measure) else format_difference(d, scale=1, spec="+.3g")


def budget_table(grid: SizeGrid, results: Results, full: FullData | None) -> list[str]:
    lines = ["| fraction | epochs | seeds | runs finished |", "|---|---|---|---|"]
    for f in grid.fractions:
        settings = grid.at(f)
        done = sum(r.status == "done" for r in results.get(f, []))
        lines.append(f"| {fraction_label(f)} | {settings.epochs} | {', '.join(map(str, settings.seeds))} | "
                     f"{done} of {len(settings.configs) * len(settings.seeds)} |")
    if full is not None:
        lines.append(f"| 1 (`{full.source}`, not rerun) | {full.budget.get('epochs')} | "
                     f"{', '.join(map(str, full.budget.get('seeds', [])))} | {len(full.runs)} |")
    return lines


def score_tables(summary: dict[str, list[dict]], metrics: list[tuple[str, str]]) -> list[str]:
    lines = ["| fraction | config | runs | " + " | ".join(title for _, title in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for label, rows in summary.items():
        for row in rows:
            runs = f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
            lines.append(f"| {label} | {row['config']} | {runs} | "
                         + " | ".join(format_stat(row[key]) for key, _ in metrics) + " |")
    lines += ["", f"Paired differences from `{BASELINE}` at the same fraction: per seed the row's score minus "
              f"`{BASELINE}`'s with that seed (the same training rows), averaged over seeds, in points (×100), "
              f"with a {CONFIDENCE:.0%} Student-t interval over the seeds; an interval containing 0 is no evidence "
              f"either way. {NO_SPREAD_NOTE}", "",
              "| fraction | config | pairs | " + " | ".join(f"Δ {title}" for _, title in metrics) + " |",
              "|---|---|---|" + "---|" * len(metrics)]
    for label, rows in summary.items():
        for row in rows:
            if "vs_baseline" in row:
                lines.append(f"| {label} | {row['config']} | {row['vs_baseline']['dev_mean'].n} | "
                             + " | ".join(format_difference(row["vs_baseline"][key]) for key, _ in metrics) + " |")
    return lines


def robustness_tables(summary: dict[str, list[dict]], dev_limit: int | None) -> list[str]:
    lines = []
    for label, rows in summary.items():
        measures = list(next((row["robustness"] for row in rows), {}))
        others = [row for row in rows if "robustness_vs_baseline" in row]
        # A fraction the grid has not reached, or one read from a report without measures.
        if not any(stat.n for row in rows for stat in row["robustness"].values()):
            continue
        base = next((row for row in rows if row["config"] == BASELINE), None)
        lines += ["", f"Fraction {label}:", "",
                  f"| measure | {BASELINE} | " + " | ".join(f"Δ {row['config']}" for row in others) + " |",
                  "|---|---|" + "---|" * len(others)]
        for m in measures:
            cells = [format_measure_difference(m, row["robustness_vs_baseline"][m]) for row in others]
            value = "—" if base is None else format_measure(m, base["robustness"][m])
            lines.append(f"| {m} | {value} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    limits = robustness_limits(dev_limit)
    return ["", "## Robustness", "",
            "`multitask.robustness.measure_checkpoint` on each run's kept checkpoint (fp32, the run's seed: the same "
            f"perturbations for every row at a seed), on {limits['dev_limit']} examples of each dev set (the "
            f"smoothness ascent on {limits['smooth_limit']} of them): a sample fixed by id, the same for every "
            f"run. `clean_*` is the dev metric on those examples unperturbed; `{DROP_PREFIX}*` is, per run, `clean_*` "
            "minus the noisy column's score: what the noise cost (a negative difference from "
            f"`{BASELINE}` is a row the noise hurts less). `{BASELINE}`: mean ± std over seeds, "
            "as measured; the other columns: the paired difference from it with a "
            f"{CONFIDENCE:.0%} t-interval, in points (×100) for the accuracies, STS r, attack success and "
            f"calibration error, as they are for the smoothness divergences (`smooth_*`). {NO_SPREAD_NOTE}", *lines]


def pilot_line(grid: SizeGrid) -> str:
    """The epochs each fraction trained for, and where they depart from what the pilot beside the grid gave."""
    used = {fraction_label(f): grid.at(f).epochs for f in grid.fractions}
    flag = f"`--epochs_by_fraction {','.join(f'{label}:{epochs}' for label, epochs in used.items())}`"
    path = report_paths(pilot_dir(grid.base.out_dir))["json"]
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        suggested, pilot = document["epochs_by_fraction"], document["pilot"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return f"- epochs per fraction: {flag}, set by hand (no pilot report at `{path}`)"
    line = (f"- epochs per fraction: {flag}; the pilot's rule (`{path}`: {BASELINE} alone, the first epoch within "
            f"{PLATEAU_POINTS} points of its best dev mean) gave `{suggested}`")
    by_hand = [label for label, epochs in used.items() if (pilot.get(label) or {}).get("plateau_epoch") != epochs]
    return line + (f"; set by hand at {', '.join(by_hand)}" if by_hand else "")


def markdown(grid: SizeGrid, results: Results, summary: dict[str, list[dict]], full: FullData | None) -> str:
    runs = [r for rs in points(results, full).values() for r in rs]
    metrics = metric_columns(runs)
    b = grid.base
    dev = "the full dev sets" if b.dev_limit is None else f"the first {b.dev_limit} dev examples per task"
    when = ("after its last epoch (every row at a fraction trains for the same budget and is scored once, at its "
            "end)" if b.last_epoch_only else "of its best epoch (highest dev mean)")
    lines = ["# Ablations by training-set size", "",
             "Every run trained on a fraction of each task's training file: a subset drawn by the run's seed, so "
             f"at one seed every row trains on the same examples. Dev scores on {dev}, {when}; STS as (r + 1) / 2 in "
             "the mean; mean ± sample standard deviation over seeds.",
             "", *budget_table(grid, results, full), "", pilot_line(grid),
             f"- rows: {', '.join(f'{name} (`{GRID[name].describe()}`)' for name in b.configs)}"]
    if b.train_limit is not None:
        lines.append(f"- at most {b.train_limit} examples per task of each subset (--train_limit)")
    if b.extra_args:
        lines.append(f"- extra training flags, every run: `{' '.join(b.extra_args)}`")
    if full is not None:
        lines.append(f"- fraction 1 is the full-data grid of `{full.source}` with its own budget (above): read, "
                     "not rerun; its differences pair its own seeds")
    # Where this grid's runs trained (the full-data runs' machines are in their own report).
    lines += [*machine_lines([r for rs in results.values() for r in rs]), "", *score_tables(summary, metrics),
              *robustness_tables(summary, b.dev_limit)]
    failed = [r for rs in results.values() for r in rs if r.status == "failed"]
    lines += closing_lines([f"{r.config}, seed {r.seed}, {r.run_dir}: {r.error}" for r in failed])
    return "\n".join(lines) + "\n"


def plot(path: Path, summary: dict[str, list[dict]], metrics: list[tuple[str, str]], configs: Sequence[str]) -> None:
    """One panel per metric: each row's paired difference from the baseline against the training fraction
    (log axis), points joined per row, the t-interval as a band where there are two or more seeds."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on the training machines
    import matplotlib.pyplot as plt

    fractions = [float(label) for label in summary]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), sharey=True, squeeze=False)
    for ax, (key, title) in zip(axes[0], metrics):
        for index, name in enumerate(c for c in configs if c != BASELINE):
            found = [(f, row["vs_baseline"][key]) for f, rows in zip(fractions, summary.values()) for row in rows
                     if row["config"] == name and "vs_baseline" in row and row["vs_baseline"][key].mean is not None]
            if not found:
                continue
            color = f"C{index}"
            ax.plot([f for f, _ in found], [100 * d.mean for _, d in found], "o-", color=color, label=name)
            band = [(f, d) for f, d in found if d.low is not None]
            if band:
                ax.fill_between([f for f, _ in band], [100 * d.low for _, d in band], [100 * d.high for _, d in band],
                                color=color, alpha=0.15, linewidth=0)
        ax.axhline(0, color="red", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [fraction_label(f) for f in fractions], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("fraction of the training data", fontsize=8)
        ax.set_title(f"Δ {title} (points)", fontsize=9)
    if axes[0][0].get_legend_handles_labels()[0]:  # none before a row other than baseline has finished
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"dev score minus {BASELINE} (same seed, same rows), mean and {CONFIDENCE:.0%} t-interval over "
                 "seeds", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def write_reports(grid: SizeGrid, results: Results, full: FullData | None = None) -> dict[str, Path]:
    """<out_dir>.json (budget, every run with its signature and machine, summaries), .md and .png."""
    configs = grid.base.configs
    every = [r for rs in points(results, full).values() for r in rs]
    metrics, measures = metric_columns(every), robustness_measures(every)
    summary = {fraction_label(f): fraction_rows(runs, configs, metrics, measures)
               for f, runs in sorted(points(results, full).items())}
    paths = report_paths(grid.base.out_dir)
    document = {"budget": grid.budget(), "runs": [r.as_json() for f in grid.fractions for r in results.get(f, [])],
                "summary": {label: [plain(row) for row in rows] for label, rows in summary.items()}}
    if full is not None:
        document["full_data"] = {"source": str(full.source), "budget": full.budget,
                                 "runs": [r.as_json() for r in full.runs]}
    atomic_write_text(paths["json"], json.dumps(document, indent=2) + "\n")
    atomic_write_text(paths["md"], markdown(grid, results, summary, full))
    plot(paths["png"], summary, metrics, configs)
    return paths


# ----------------------------------------------------------------------------------------------- the pilot

def pilot_markdown(pilot: SizeGrid, summary: dict[str, dict]) -> str:
    epochs = pilot.base.epochs
    lines = ["# Budget pilot for the ablations by training-set size", "",
             f"`{BASELINE}` alone at each fraction for {epochs} epochs, seeds "
             f"{', '.join(map(str, pilot.base.seeds))}; dev mean (STS as (r + 1) / 2) after each epoch, averaged "
             f"over the seeds. Rule: a fraction's budget is the first epoch within {PLATEAU_POINTS} points of its "
             "best epoch. The pilot's learning rate decays over all its epochs, a shorter run's over fewer: the "
             "rule reads where plain fine-tuning stops improving, not the exact score of a shorter run.", "",
             "| fraction | runs | " + " | ".join(str(e) for e in range(1, epochs + 1))
             + " | best epoch | budget (rule) | s per epoch | one run at the budget |",
             "|---|---|" + "---|" * epochs + "---|---|---|---|"]
    for label, row in summary.items():
        curve = [f"{value:.4f}" for value in row["curve"]] + ["—"] * (epochs - len(row["curve"]))
        seconds = row["epoch_seconds"]
        per_epoch = "—" if seconds is None else f"{seconds:.0f}"
        run = "—" if seconds is None else f"{seconds * row['plateau_epoch'] / 60:.1f} min"
        mark = " (still improving: a longer pilot may move it)" if row["still_improving"] else ""
        lines.append(f"| {label} | {row['seeds']} | " + " | ".join(curve)
                     + f" | {row['best_epoch']} | {row['plateau_epoch']}{mark} | {per_epoch} | {run} |")
    if summary:
        lines += ["", f"The grid's budget from this rule: `--epochs_by_fraction {epochs_flag(summary)}`.",
                  "Time per epoch is the baseline's training loop on this pilot's machine; a regularised row costs "
                  "its own multiple of it (the time column of a grid's report)."]
    lines += ["", f"Written {time.strftime('%Y-%m-%d %H:%M')} by `scripts/ablate.py --pilot`."]
    return "\n".join(lines) + "\n"


def pilot_plot(path: Path, summary: dict[str, dict]) -> None:
    """The dev-mean curve per fraction, its budget epoch marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for index, (label, row) in enumerate(summary.items()):
        epochs = range(1, len(row["curve"]) + 1)
        ax.plot(epochs, row["curve"], "o-", color=f"C{index}", markersize=3, label=f"fraction {label}")
        ax.plot(row["plateau_epoch"], row["curve"][row["plateau_epoch"] - 1], "s", color=f"C{index}", markersize=8,
                fillstyle="none")
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("dev mean", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title(f"{BASELINE} pilot: dev mean per epoch\nsquares: the budget (first epoch within {PLATEAU_POINTS} "
                 "points of the best)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def write_pilot_reports(pilot: SizeGrid, results: Results) -> dict[str, Path]:
    summary = pilot_summary({f: results.get(f, []) for f in pilot.fractions})
    paths = report_paths(pilot.base.out_dir)
    document = {"budget": pilot.budget(), "rule": f"first epoch within {PLATEAU_POINTS} points of the best",
                "runs": [r.as_json() for f in pilot.fractions for r in results.get(f, [])],
                "pilot": summary, "epochs_by_fraction": epochs_flag(summary)}
    atomic_write_text(paths["json"], json.dumps(document, indent=2) + "\n")
    atomic_write_text(paths["md"], pilot_markdown(pilot, summary))
    pilot_plot(paths["png"], summary)
    return paths
