"""The grid's data-size axis: its rows and seeds on fractions of the training data, and the baseline pilot
that fixes each fraction's epochs before the grid runs."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from multitask.ablation.grid import BASELINE, GridError, GridSettings, fraction_label, parse_seeds
from multitask.ablation.runner import finished_results, run_grid
from multitask.ablation.single_run import RunResult

# The rows of the low-resource curve: plain fine-tuning and the regularisers that claim to help most
# when data is scarce (the MLM rows ask another question).
BY_SIZE_ROWS = ("baseline", "smart", "adversarial", "bregman", "r3f", "rdrop")
PILOT_EPOCHS = 10
# The pilot's rule: a fraction's budget is the first epoch whose dev mean (averaged over the pilot's
# seeds) is within this many points (×100) of the best epoch's: well under the seed-to-seed spread of
# the dev mean (results/README.md), so later epochs buy nothing a grid of a few seeds could measure.
PLATEAU_POINTS = 0.1

Results = dict[float, list[RunResult]]


def parse_fraction(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:  # also refuses nan
        raise GridError(f"{flag}: {text.strip()!r} is not a fraction in (0, 1]; give e.g. 0.02,0.1,0.3")
    return value


def parse_fractions(text: str) -> list[float]:
    """`0.02,0.1,0.3` → [0.02, 0.1, 0.3], smallest first, each once."""
    parts = [part for part in (p.strip() for p in text.split(",")) if part]
    if not parts:
        raise GridError(f"--train_fraction {text!r}: give one or more fractions in (0, 1], e.g. 0.02,0.1,0.3")
    return sorted({parse_fraction(part, "--train_fraction") for part in parts})


def parse_by_fraction(text: str, flag: str, fractions: Sequence[float]) -> dict[float, int]:
    """`0.02:5,0.1:5,0.3:3` → {0.02: 5, 0.1: 5, 0.3: 3}: a positive count per fraction of --train_fraction."""
    known = {fraction_label(f): f for f in fractions}
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, count = part.partition(":")
        fraction = known.get(fraction_label(parse_fraction(key, flag)))
        if fraction is None:
            raise GridError(f"{flag}: {key.strip()} is not among --train_fraction {','.join(known)}; "
                            "name only fractions the grid runs")
        try:
            values[fraction] = int(count)
        except ValueError:
            values[fraction] = 0
        if values[fraction] < 1:
            raise GridError(f"{flag}: {part!r} needs a count ≥ 1 after the colon, e.g. 0.1:5")
    if not values:
        raise GridError(f"{flag} {text!r}: give fraction:count pairs, e.g. 0.02:5,0.1:5,0.3:3")
    return values


@dataclass
class SizeGrid:
    """The grid at each fraction: `base` holds what every fraction shares (its seeds and epochs are the
    defaults), `seeds` and `epochs` what a fraction sets for itself."""

    base: GridSettings
    fractions: list[float]
    seeds: dict[float, list[int]] = field(default_factory=dict)
    epochs: dict[float, int] = field(default_factory=dict)

    def at(self, fraction: float) -> GridSettings:
        return dataclasses.replace(self.base, train_fraction=fraction, seeds=self.seeds.get(fraction, self.base.seeds),
                                   epochs=self.epochs.get(fraction, self.base.epochs))

    def budget(self) -> dict:
        shared = {key: value for key, value in self.base.budget().items() if key not in ("epochs", "seeds")}
        per_fraction = {fraction_label(f): {"epochs": self.at(f).epochs, "seeds": self.at(f).seeds}
                        for f in self.fractions}
        return {"fractions": self.fractions, "by_fraction": per_fraction, "configs": self.base.configs, **shared}


def size_grid(base: GridSettings, fractions: str, seeds_by_fraction: str | None,
              epochs_by_fraction: str | None) -> SizeGrid:
    """The grid of the runner's flags: seed counts per fraction as for --seeds (5 = 11711, 1, 2, 3, 4)."""
    parsed = parse_fractions(fractions)
    seeds = {} if seeds_by_fraction is None else {
        f: parse_seeds(str(count)) for f, count in parse_by_fraction(seeds_by_fraction, "--seeds_by_fraction",
                                                                     parsed).items()}
    epochs = {} if epochs_by_fraction is None else parse_by_fraction(epochs_by_fraction, "--epochs_by_fraction",
                                                                     parsed)
    # Each fraction's rows train for the pilot's budget and are scored at its end, not at their best epoch.
    return SizeGrid(dataclasses.replace(base, last_epoch_only=True), parsed, seeds, epochs)


def pilot_dir(out_dir: Path) -> Path:
    """results/ablations_by_size → results/ablations_by_size_pilot (its report beside it, as a grid's)."""
    return out_dir.with_name(out_dir.name + "_pilot")


def pilot_grid(grid: SizeGrid, epochs: int) -> SizeGrid:
    """The baseline alone at every fraction for `epochs` epochs, in its own directory; no predictions
    or robustness measures: only the dev curve is wanted."""
    base = dataclasses.replace(grid.base, out_dir=pilot_dir(grid.base.out_dir), configs=[BASELINE], epochs=epochs,
                               skip_predictions=True, robustness=False, last_epoch_only=False)
    return SizeGrid(base, grid.fractions)


def finished_by_size(grid: SizeGrid) -> Results:
    """Every finished run of the grid per fraction; nothing is run (for --report_only)."""
    return {f: finished_results(grid.at(f)) for f in grid.fractions}


def run_by_size(grid: SizeGrid, say: Callable[[str], None], write: Callable[[Results], object]) -> Results:
    """Each fraction's grid in turn, smallest first; the reports are rewritten after every run, so that
    a grid that takes several sessions can be committed as it goes.

    The runs not yet reached hold what earlier invocations finished: a report written midway must
    not lose the records a fresh clone resumes from.
    """
    results = finished_by_size(grid)
    for fraction in grid.fractions:
        settings = grid.at(fraction)
        say(f"fraction {fraction_label(fraction)}: {len(settings.configs)} row(s) × {len(settings.seeds)} seed(s), "
            f"{settings.epochs} epoch(s)")
        earlier = results[fraction]

        def write_so_far(so_far: list[RunResult], fraction: float = fraction, earlier: list[RunResult] = earlier):
            reached = {(r.config, r.seed) for r in so_far}
            write({**results, fraction: so_far + [r for r in earlier if (r.config, r.seed) not in reached]})

        results[fraction] = run_grid(settings, say, after_each=write_so_far)
        write(results)
    return results


# ----------------------------------------------------------------------------------------- the pilot's rule

def mean_curve(runs: Sequence[RunResult]) -> list[float]:
    """The dev mean after each epoch, averaged over the finished runs (seeds) that recorded it."""
    curves = [r.dev_curve for r in runs if r.status == "done" and r.dev_curve]
    if not curves:
        return []
    return [statistics.fmean(curve[epoch] for curve in curves) for epoch in range(min(map(len, curves)))]


def plateau_epoch(curve: Sequence[float], points: float = PLATEAU_POINTS) -> int:
    """The first epoch (from 1) whose value is within `points` (×100) of the curve's best."""
    best = max(curve)
    return next(epoch for epoch, value in enumerate(curve, start=1) if value >= best - points / 100)


def pilot_summary(results: Results) -> dict[str, dict]:
    """Per fraction: the seed-averaged dev curve, its best and plateau epochs, and seconds per epoch."""
    summary = {}
    for fraction, runs in results.items():
        curve = mean_curve(runs)
        if not curve:
            continue
        done = [r for r in runs if r.status == "done" and r.dev_curve and r.train_seconds is not None]
        seconds = statistics.fmean(r.train_seconds / len(r.dev_curve) for r in done) if done else None
        plateau = plateau_epoch(curve)
        summary[fraction_label(fraction)] = {
            "curve": curve, "seeds": len([r for r in runs if r.status == "done"]),
            "best_epoch": curve.index(max(curve)) + 1, "plateau_epoch": plateau,
            # Only the last epoch reaches the plateau: the curve may still be rising beyond the pilot.
            "still_improving": plateau == len(curve) and len(curve) > 1,
            "epoch_seconds": seconds}
    return summary


def epochs_flag(summary: dict[str, dict]) -> str:
    """The --epochs_by_fraction value the pilot's rule gives, e.g. `0.02:8,0.1:5,0.3:3`."""
    return ",".join(f"{label}:{row['plateau_epoch']}" for label, row in summary.items())
