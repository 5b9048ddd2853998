"""Statistics over seeds: mean ± std, paired differences from a baseline with t-intervals, and their text."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import scipy.stats

from multitask.ablation.single_run import RunResult
from multitask.tasks import TASKS

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
    initialisation), which is most of the seed-to-seed spread; the interval is None below 2 pairs and
    where every pair differs by the same amount (`no_spread`).
    """

    mean: float | None
    low: float | None
    high: float | None
    n: int

    @property
    def no_spread(self) -> bool:
        return self.n >= 2 and self.low is None

    def as_json(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "confidence": CONFIDENCE}


# Written where an interval would go when every seed gave the same difference, and what it means.
NO_SPREAD = "[no spread]"
NO_SPREAD_NOTE = (f"`{NO_SPREAD}`: every seed gave the same difference, so there is no interval; a few seeds "
                  "agreeing to the last example is no evidence by itself.")


def paired_difference(values: dict[int, float], baseline: dict[int, float]) -> Difference:
    """`values` − `baseline` over the seeds both have, with a two-sided Student-t interval."""
    differences = [values[seed] - baseline[seed] for seed in sorted(values.keys() & baseline.keys())]
    if not differences:
        return Difference(None, None, None, 0)
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return Difference(mean, None, None, 1)
    spread = statistics.stdev(differences)
    if spread == 0:
        # Every seed moved by the same amount: with accuracies on a few hundred examples that is a
        # coincidence of a few seeds, not certainty, so no interval (a zero-width one would read as one).
        return Difference(mean, None, None, len(differences))
    low, high = scipy.stats.t.interval(CONFIDENCE, len(differences) - 1, loc=mean,
                                       scale=spread / math.sqrt(len(differences)))
    return Difference(mean, float(low), float(high), len(differences))


def difference_from(values: dict[int, float], reference: float) -> Difference:
    """`values` − one fixed score (a single run of something else), with a t-interval over these seeds.

    The interval holds only this row's seed noise: the reference's own noise is unknown.
    """
    return paired_difference(values, dict.fromkeys(values, reference))


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
    """Mean over the shared seeds of training time / the baseline's, from the pairs trained on one machine.

    A grid resumed on other hardware has seeds whose runs trained on two machines; their time
    ratio measures the machines, not the method. None without a pair.
    """
    theirs = {r.seed: r for r in baseline if r.train_seconds}
    ratios = [r.train_seconds / theirs[r.seed].train_seconds for r in runs
              if r.train_seconds is not None and r.seed in theirs and r.machine == theirs[r.seed].machine]
    return statistics.fmean(ratios) if ratios else None


def format_difference(difference: Difference, scale: float = 100, spec: str = "+.1f") -> str:
    """In points (×100) by default: `+1.2 [−0.4, +2.8]`, `+1.2 [no spread]`, or `+1.2` with one pair, `—`
    with none; `scale` and `spec` for values shown otherwise."""
    if difference.mean is None:
        return "—"
    text = f"{scale * difference.mean:{spec}}"
    if difference.no_spread:
        return f"{text} {NO_SPREAD}"
    if difference.low is None:
        return text
    return f"{text} [{scale * difference.low:{spec}}, {scale * difference.high:{spec}}]"


def format_stat(stat: Stat, digits: int = 3) -> str:
    if stat.mean is None:
        return "—"
    text = f"{stat.mean:.{digits}f}"
    return text if stat.std is None else f"{text} ± {stat.std:.{digits}f}"


def machine_lines(results: Sequence[RunResult]) -> list[str]:
    """Where the finished runs trained, with their run count and total wall time per machine."""
    by_machine: dict[str, list[RunResult]] = {}
    for r in results:
        if r.status == "done":
            by_machine.setdefault(r.machine or "not recorded", []).append(r)
    parts = [f"{machine}: {len(runs)} run{'s' * (len(runs) != 1)}, "
             f"{sum(r.wall_seconds or 0 for r in runs) / 3600:.1f} h" for machine, runs in by_machine.items()]
    lines = [f"- trained on {'; '.join(parts)} (wall time: training, dev scoring and predictions)"] if parts else []
    codes = sorted({r.code for r in results if r.status == "done" and r.code})
    if codes:
        lines.append(f"- code: {', '.join(f'`{code}`' for code in codes)}")
    return lines


def closing_lines(failed_runs: Sequence[str]) -> list[str]:
    """The end of a grid report: the failed runs (one line each, already formatted), the Quora caveat, the author."""
    lines = []
    if failed_runs:
        lines += ["", "Failed runs (the same command retries them; finished runs are not run again):", ""]
        lines += [f"- {line}" for line in failed_runs]
    lines += ["", "The default encoder, all-MiniLM-L6-v2, was contrastively trained on data that includes Quora "
              "duplicate pairs: Quora scores are optimistic in absolute terms, comparisons between rows stay fair.",
              "", f"Written {time.strftime('%Y-%m-%d %H:%M')} by `scripts/ablate.py`."]
    return lines


def save_figure(fig, path) -> None:
    """Write a matplotlib figure as PNG through a temporary file, then close it."""
    import matplotlib.pyplot as plt

    from minbert.plumbing.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
