"""Progress lines for output nobody watches live (a log file): position, recent losses, speed, time left."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

# Often enough that a log never looks stalled, rarely enough that it stays readable.
DEFAULT_INTERVAL = 30.0

# What `ProgressReporter` writes, as `last_progress` finds it again (in a log, after any prefix).
LINE = re.compile(r"(?P<where>(?:epoch \d+/\d+, )?update \d+/\d+): .*; (?P<eta>(?:\w+ )?ETA \S+)\s*$")


def format_duration(seconds: float) -> str:
    """45s, 4m10s, 2h05m: precise enough for a time left, short enough for a log line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_loss(value: float) -> str:
    """3 significant digits, in scientific notation below 1e-3: a small regulariser term never reads 0.0000."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:#.3g}"


class ProgressReporter:
    """Emits at most one line every `interval` seconds about a stretch of `total` units of work.

    A line reads `<where>: <mean of each loss since the last line>; <examples/s since the last
    line>; <eta_of> ETA <time left>`. The time left comes from the units done since this
    reporter was made, so a run resumed part-way is not credited with work an earlier process did.
    A loop makes one when no progress bar is drawn; a bar and these lines are never both shown.
    """

    def __init__(self, total: int, done: int = 0, *, emit: Callable[[str], None] = print,
                 interval: float = DEFAULT_INTERVAL, eta_of: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`done`: units already finished when this process starts; `eta_of` says what the ETA is the end of
        ("epoch", or "" for the whole run)."""
        self.total, self.first_done = total, done
        self.emit, self.interval, self.clock = emit, interval, clock
        self.eta_label = f"{eta_of} ETA" if eta_of else "ETA"
        self.started = self.last_line = clock()
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.examples = 0

    def add(self, examples: int, losses: Mapping[str, float]) -> None:
        """Count one finished step: its examples and its loss terms (name → value)."""
        self.examples += examples
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1

    def advance(self, done: int, where: str | None = None) -> str | None:
        """`done` of `total` units are finished; emit a line (and return it) if one is due.

        `where` places the line in the run (default: `update <done>/<total>`).
        """
        now = self.clock()
        if now - self.last_line < self.interval:
            return None
        where = where if where is not None else f"update {done}/{self.total}"
        losses = ", ".join(f"{name} {format_loss(self.sums[name] / self.counts[name])}" for name in self.sums)
        window = now - self.last_line
        rate = f"{self.examples / window:.1f} examples/s" if window > 0 else "examples/s not measured yet"
        finished = done - self.first_done
        left = (now - self.started) / finished * (self.total - done) if finished > 0 else None
        eta = format_duration(left) if left is not None else "unknown"
        line = f"{where}: {losses or 'no finished step'}; {rate}; {self.eta_label} {eta}"
        self.emit(line)
        self.last_line, self.examples = now, 0
        self.sums, self.counts = {}, {}
        return line


def last_progress(text: str) -> str | None:
    """Position and ETA of the last progress line in a log, e.g. `epoch 1/2, update 400/1850, epoch ETA 9m10s`."""
    for line in reversed(text.splitlines()):
        match = LINE.search(line)
        if match:
            return f"{match['where']}, {match['eta']}"
    return None


def newest_progress(log_path: str | Path, tail: int = 8192) -> str | None:
    """`last_progress` of a log file's end: a long run's whole log need not be read for its newest line."""
    with open(log_path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - tail))
        return last_progress(f.read().decode("utf-8", errors="replace"))


def show_progress() -> bool:
    """tqdm bars only for a person at a terminal: not when piped, logged or under CI.

    Under torchrun only rank 0 draws: every process shares the terminal, and N interleaved bars
    are unreadable.
    """
    return sys.stderr.isatty() and not os.environ.get("CI") and is_main_process()


def is_main_process() -> bool:
    """True unless torchrun started this process with a rank other than 0 (read from RANK, so it
    works before any process group exists, e.g. to set log levels)."""
    return os.environ.get("RANK", "0") == "0"
