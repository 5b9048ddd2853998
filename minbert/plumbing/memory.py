"""Returning freed heap memory to the operating system (glibc), so peak RSS tracks live tensors."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


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
