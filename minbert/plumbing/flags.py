"""Command-line flags: argparse types that refuse a bad value in one line, and flags generated from dataclasses."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import Field, field, fields
from typing import Any, TypeVar

T = TypeVar("T")

# numpy seeds its generator with an unsigned 32-bit integer; torch and Python accept these too.
MAX_SEED = 2**32 - 1


# The course starter's default seed: every default run, and the first run of every grid, uses it.
COURSE_SEED = 11711


class FlagError(ValueError):
    """The command line asks for something impossible or contradictory; the message names the flag."""


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


# ------------------------------------------------------------------------- flags generated from dataclasses

def flag(default: Any, help: str, *, type: Callable[[str], Any] | None = None, choices: Sequence[str] | None = None,
         name: str | None = None, negated: bool = False, convert: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field that is also a command-line flag: the one place its default and help are written.

    - `name`: the flag, when it is not `--<field name>` (the namespace then holds the flag's value
      under the flag's own name, e.g. `no_pair_swap`);
    - `negated`: a switch that turns the field off (`--no_pair_swap` sets `swap_pairs` to False);
    - `convert`: turns the flag's value into the field's (e.g. "sst,para" into a tuple); argparse
      keeps the value as typed, so what a run saves of its flags reads as they were given.
    A boolean field defaulting to False is a switch (`store_true`).
    """
    return field(default=default, metadata={"help": help, "type": type, "choices": choices, "name": name,
                                            "negated": negated, "convert": convert})


def is_flag(item: Field) -> bool:
    return "help" in item.metadata


def flag_name(item: Field) -> str:
    return item.metadata["name"] or f"--{item.name}"


def flag_dest(item: Field) -> str:
    return flag_name(item)[2:]


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings: type,
              only: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> None:
    """Add a flag for each `flag(...)` field of the dataclass `settings`, in field order.

    `only`/`exclude` pick fields by name, e.g. to put two of them in a mutually exclusive group.
    """
    for item in fields(settings):
        if not is_flag(item) or (only is not None and item.name not in only) or item.name in exclude:
            continue
        meta = item.metadata
        if meta["negated"] or item.default is False:  # a switch: it sets the field, or clears a negated one
            parser.add_argument(flag_name(item), action="store_true", help=meta["help"])
        else:
            parser.add_argument(flag_name(item), default=item.default, type=meta["type"], choices=meta["choices"],
                                help=meta["help"])


def from_flags(settings: type[T], namespace: argparse.Namespace) -> T:
    """The dataclass `settings` built from parsed flags (fields that are no flags keep their defaults)."""
    values = {}
    for item in fields(settings):
        if not is_flag(item):
            continue
        value = getattr(namespace, flag_dest(item))
        if item.metadata["negated"]:
            value = not value
        elif item.metadata["convert"] is not None and value is not None:
            try:
                value = item.metadata["convert"](value)
            except ValueError as err:
                raise FlagError(f"{flag_name(item)}: {err}") from None
        values[item.name] = value
    return settings(**values)
