"""Command-line value checks: argparse types that refuse a bad value with one line naming what is accepted."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

# numpy seeds its generator with an unsigned 32-bit integer; torch and Python accept these too.
MAX_SEED = 2**32 - 1


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: error: ...`, exit code 2), without the usage text.

    The scripts here have dozens of flags: the usage block would bury the one line that matters.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except None and False: a switch that is off, or a default the help
    text already explains ("default: every task"), would read as noise."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type for an integer in [low, high] (no upper bound when high is None)."""
    accepted = f"an integer ≥ {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {value}")
        return value

    parse.__name__ = accepted  # argparse names the type in some of its own messages
    return parse


def number(low: float, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse type for a finite float in the interval from low to high (open ends as asked)."""
    left, right = ("(" if low_open else "["), (")" if high_open else "]")
    accepted = (f"a number {'>' if low_open else '≥'} {low:g}" if high is None
                else f"a number in {left}{low:g}, {high:g}{right}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None
        inside = (math.isfinite(value) and (value > low if low_open else value >= low)
                  and (high is None or (value < high if high_open else value <= high)))
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text}")
        return value

    parse.__name__ = accepted
    return parse


positive_int = integer(1)
non_negative_int = integer(0)
seed = integer(0, MAX_SEED)
positive = number(0.0, low_open=True)
non_negative = number(0.0)
probability = number(0.0, 1.0, high_open=True)  # a dropout rate or a momentum: 1 would stop learning
