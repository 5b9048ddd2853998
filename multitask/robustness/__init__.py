"""What SMART, R3F and R-Drop promise beyond accuracy, measured on a trained model's dev sets.

Smoothness under a multi-step embedding attack, the dev metric under seeded typos and word
deletions, a model-aware typo attack, and expected calibration error: `measure_checkpoint`.
"""

from multitask.robustness.measure import measure_checkpoint, measure_model, measure_names

__all__ = ["measure_checkpoint", "measure_model", "measure_names"]
