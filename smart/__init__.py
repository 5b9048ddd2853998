"""SMART and R3F regularised fine-tuning for any model seen as a function of its input embeddings."""

from smart.adversarial import smoothness_loss
from smart.divergences import KINDS, divergence, squared_error, symmetric_kl, symmetric_kl_binary
from smart.r3f import r3f_loss
from smart.weight_average import WeightAverage, bregman_loss

__all__ = [
    "KINDS",
    "WeightAverage",
    "bregman_loss",
    "divergence",
    "r3f_loss",
    "smoothness_loss",
    "squared_error",
    "symmetric_kl",
    "symmetric_kl_binary",
]
