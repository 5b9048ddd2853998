"""The robustness measures as a readable table: one row per task, one column per measure."""

from __future__ import annotations

import math

from multitask.robustness.measure import CLASSIFIED_TASKS, MEASURED_TASKS, NOISE_PERCENTS, eps_name
from multitask.robustness.noise import NOISE_KINDS
from multitask.robustness.smoothness import EPS_GRID

# (column heading, measure name with {task} for the task, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    *((f"ℓ_s ε={eps_name(e)}", f"smooth_{{task}}_eps{eps_name(e)}", ".2e") for e in EPS_GRID),
    ("clean", "clean_{task}", ".4f"),
    *((f"{kind} {p}%", f"{kind}{p}_{{task}}", ".4f") for kind in NOISE_KINDS for p in NOISE_PERCENTS),
    ("attack acc", "attack_acc_{task}", ".4f"),
    ("attack success", "attack_success_{task}", ".4f"),
    ("attacked", "attack_examples_{task}", ".0f"),
    ("ECE", "ece_{task}", ".4f"),
)


def format_value(value: float | None, spec: str) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    return format(value, spec)


def format_table(measures: dict[str, float]) -> str:
    """A Markdown table of `measure_model`'s result; a measure a task does not have shows as —."""
    tasks = [t for t in MEASURED_TASKS if f"smooth_{t}_eps{eps_name(EPS_GRID[0])}" in measures]
    lines = ["| task | " + " | ".join(heading for heading, _, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for task in tasks:
        cells = [format_value(measures.get(name.format(task=task)), spec) for _, name, spec in COLUMNS]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def legend(tasks: list[str]) -> str:
    """What the columns mean, printed under the table."""
    attacked = [t for t in tasks if t in CLASSIFIED_TASKS]
    text = ("ℓ_s: mean SMART divergence under a 5-step ℓ∞ attack on the input embeddings (lower: smoother); "
            "clean: the dev metric (accuracy, STS Pearson r) on the measured examples; typo/delete p%: the same "
            "with p% of words misspelt or deleted")
    if attacked:
        text += ("; attack: accuracy after ≤ 2 typos on the words the model leans on most, and the share "
                 "of right answers flipped; ECE: expected calibration error, 15 bins")
    return text
