"""When training hands freed heap memory back: the growth rule with a fake resident set, and the real readings."""

import sys

import pytest

from minbert.plumbing.heap import HeapTrimmer, resident_bytes

MIB = 2**20


def trimmer(readings, **kwargs) -> HeapTrimmer:
    """A HeapTrimmer over scripted resident-set readings that releases nothing real."""
    readings = iter(readings)
    return HeapTrimmer(read_resident=lambda: next(readings), release=lambda: True, **kwargs)


def released_at(heap: HeapTrimmer, updates: int) -> list[int]:
    """The updates (counted from 1) after which the trimmer returned memory."""
    return [update for update in range(1, updates + 1) if heap.after_update()]


def test_returns_memory_once_the_resident_set_outgrows_the_working_set():
    # Yardstick 1000 MiB at update 1; updates 2-4 stay within 256 MiB of it; update 5 is over.
    heap = trimmer([1000 * MIB, 1100 * MIB, 1200 * MIB, 1256 * MIB, 1257 * MIB, 900 * MIB],
                   growth=256 * MIB, min_between=1)
    assert released_at(heap, 6) == [5]
    # Update 6 measures the new yardstick (900 MiB) instead of comparing against the old one.
    assert heap.yardstick == 900 * MIB and heap.releases == 1


def test_keeps_a_minimum_number_of_updates_between_returns():
    # A resident set that grows by 1 GiB every update: over the growth at each chance, yet returned
    # only every 5th update (the update after a return measures the new yardstick).
    heap = trimmer([update * 2**30 for update in range(1, 22)], growth=1, min_between=5)
    assert released_at(heap, 21) == [5, 10, 15, 20]


def test_a_steady_resident_set_is_never_returned():
    assert released_at(trimmer([2000 * MIB] * 500), 500) == []


def test_without_a_resident_set_it_returns_every_fallback_updates():
    assert released_at(trimmer([None] * 120, fallback_every=50), 120) == [50, 100]


def test_release_now_measures_the_yardstick_anew():
    heap = trimmer([1000 * MIB, 3000 * MIB, 3100 * MIB], growth=256 * MIB, min_between=1)
    heap.after_update()
    heap.release_now()
    assert heap.yardstick is None and heap.releases == 1
    heap.after_update()
    assert heap.yardstick == 3000 * MIB
    assert not heap.after_update()  # 3100 is within 256 MiB of the new yardstick


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm is Linux's")
def test_resident_bytes_agrees_with_the_kernels_vmrss():
    # statm counts pages, status counts kB: the two readings of one counter must agree in bytes.
    reading = resident_bytes()
    with open("/proc/self/status") as status:
        vmrss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    assert reading is not None and abs(reading - vmrss) < 8 * MIB
