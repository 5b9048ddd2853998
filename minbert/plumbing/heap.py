"""Handing freed heap memory back to the OS during training, when the resident set has grown enough to be worth it."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Callable

# Growth of the resident set, over what it was one update after the last return, that triggers the
# next return: large enough that the pages a return gives back (and the next steps fault in again)
# are not paid for every few updates, small enough to keep the peak near the live memory. A fixed
# update count could not do both: a SMART step allocates several times what a plain one does, and
# its heap grows that much faster per update (results/README.md, "Peak memory of training").
GROWTH_BYTES = 512 * 2**20
# Updates between returns at the least: the steps after a return fault its pages in again.
MIN_UPDATES_BETWEEN = 10
# Where the resident set cannot be read (no /proc): a return every this many updates.
FALLBACK_EVERY = 50


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS; True if glibc did release some.

    Training with packed batches allocates tensors of ever-changing sizes; glibc keeps the freed
    blocks in its heap, where they fragment, and the process's RSS ratchets up epoch after epoch
    though the live tensors stay the same size. malloc_trim(0) gives whole free pages anywhere in
    the heap back, which bounds the RSS without changing how malloc serves allocations (forcing
    mmap for large blocks instead makes every step fault its pages in afresh; results/README.md).
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def resident_bytes() -> int | None:
    """This process's resident set size in bytes, or None where /proc is missing (macOS, Windows)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Decides after each update whether to return the heap's free pages to the OS.

    The yardstick is the resident set one update after the last return (or after the first
    update): the working set of a step, with the step's pages faulted in. Once the resident set
    exceeds it by `growth` bytes, which is freed memory the heap holds on to, and at least
    `min_between` updates have passed, the pages go back. Without a readable resident set, every
    `fallback_every` updates.
    """

    def __init__(self, growth: int = GROWTH_BYTES, min_between: int = MIN_UPDATES_BETWEEN,
                 fallback_every: int = FALLBACK_EVERY, read_resident: Callable[[], int | None] = resident_bytes,
                 release: Callable[[], bool] = release_free_memory) -> None:
        self.growth, self.min_between, self.fallback_every = growth, min_between, fallback_every
        self.read_resident, self.release = read_resident, release
        self.yardstick: int | None = None
        self.since_release = 0
        self.releases = 0

    def after_update(self) -> bool:
        """Call once per update; True when this call returned memory."""
        self.since_release += 1
        resident = self.read_resident()
        if resident is None:
            due = self.since_release >= self.fallback_every
        elif self.yardstick is None:
            self.yardstick = resident
            return False
        else:
            due = self.since_release >= self.min_between and resident > self.yardstick + self.growth
        if due:
            self.release_now()
        return due

    def release_now(self) -> None:
        """Return the free pages now (after dev scoring, say); the yardstick is measured anew."""
        self.release()
        self.releases += 1
        self.since_release, self.yardstick = 0, None
