"""The host heap policy of CPU cases: strict while memory is measured, retained while time is.

glibc serves every block above its mmap threshold (128 KiB at first, raised dynamically up to 32 MiB)
with a fresh mmap and unmaps it on free. A CPU attention call allocates tens to hundreds of MB of
temporaries, so with the default policy every repetition page-faults all of them in again: at
N=8192 that was 30-50% of Combiner-Mixture's and Combiner-Fixed's CPU time and ~2% of SDPA's, a cost
that depends on how an impl's temporaries happen to be sized rather than on its algorithm. On a GPU
the caching allocator removes it, and CPU training setups remove it with jemalloc or tcmalloc.

- strict (the worker's default, and during the memory pass): every block above 128 KiB is mmapped
  and returned on free, so the sampled host RSS follows the live tensors instead of whatever the
  heap happens to hold.
- retained (during the timing pass): no mmap, no trimming; one untimed call grows the heap to the
  case's working set and the timed repetitions reuse it, as a caching allocator would. The heap is
  trimmed back when timing ends, before the next case.
On a C library other than glibc (no `mallopt`), both are no-ops and the run's environment says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)
STRICT_THRESHOLD = 128 * 1024  # glibc's initial mmap threshold
GLIBC_MMAP_MAX = 65536  # glibc's default cap on the number of mmapped blocks
NO_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)


@functools.cache
def _glibc():
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not all(hasattr(libc, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
        return None
    return libc


def policy() -> str:
    """How the timing pass treats the host heap, for the run's environment record."""
    return "glibc: strict during the memory pass, retained during timing" if _glibc() else "C library default (no mallopt)"


def strict() -> None:
    """Every block above 128 KiB from mmap and back to the OS on free; give back what the heap holds."""
    libc = _glibc()
    if libc is None:
        return
    libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
    libc.mallopt(M_MMAP_THRESHOLD, STRICT_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, STRICT_THRESHOLD)
    libc.malloc_trim(0)


@contextlib.contextmanager
def retained():
    """Inside: freed blocks stay in the heap for the next repetition. On exit: strict again."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM)
    try:
        yield
    finally:
        strict()
