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
- retained (during the timing pass): no mmap, no trimming; untimed calls grow the heap to the case's
  working set (`prime`) and the timed repetitions reuse it, as a caching allocator would. The heap is
  trimmed back when timing ends, before the next case.

One untimed call is not always enough: the heap fragments, and a Combiner-Mixture call at N=8192 still
faulted in 50-250 MB on its second and third calls (and ran 470-760 ms against a settled 420-460), which
put its two slowest of three timed repetitions 0.45x-0.68x of SDPA in different runs. So `prime` calls
until a call faults in less than SETTLED_FAULT_BYTES of new pages, within the timing budget.

With a working set of gigabytes the budget allows one such call, and the heap kept growing for two or three more:
at N=4096 softmax and sdpa-math (2.0-2.3 GiB a call) faulted 0.8-4 GiB in their first timed repetitions, which
ran 2.4-2.8 s against a settled 0.75-0.95 s, so two of three made the median (the default CPU sweep's 4k column
read 2.7x slow, and fitted softmax's exponent at 2.4). So `reserve` first faults in one block of twice the call's
measured peak and frees it: the calls then find their memory resident, fragmented or not (5 calls of each: no
page faulted in after it). It costs one write of that block, about what the unsettled calls cost.
On a C library other than glibc (no `mallopt`), both are no-ops and the run's environment says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import time

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)
STRICT_THRESHOLD = 128 * 1024  # glibc's initial mmap threshold
GLIBC_MMAP_MAX = 65536  # glibc's default cap on the number of mmapped blocks
# mallopt's "never trim". Its largest int, 2**31 - 1, let glibc give back a freed top of the heap over 2 GiB whenever
# the layout put one there: sdpa-math at N = 4096 (2.3 GiB a call) was trimmed after its second retained call in 2 of 6
# processes (0 of 6 with -1), and a process where it happened every call timed 2.1-2.4 s a call against 1.0-1.2 s.
NO_TRIM = -1
SETTLED_FAULT_BYTES = 1 << 20  # a call faulting in less than this found its working set in the heap
MAX_PRIME_CALLS = 10
RESERVE_FACTOR = 2.0  # fragmentation grew the heap to about twice the call's peak (softmax at N=4096); 1.25x was not enough
RESERVE_SHARE = 0.5  # of the available host memory, at most


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
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]  # 64-bit pointers
    return libc


def policy() -> str:
    """How the timing pass treats the host heap, for the run's environment record."""
    if _glibc() is None:
        return "C library default (no mallopt)"
    return (
        f"glibc: strict during the memory pass, retained during timing ({RESERVE_FACTOR:g}x the call's peak faulted in first; "
        f"primed until a call faults in < {SETTLED_FAULT_BYTES >> 20} MiB)"
    )


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


@contextlib.contextmanager
def returned(interval_s: float = 0.001):
    """Inside (the memory pass): freed heap pages go back to the OS within `interval_s`, so the sampled RSS follows
    the live tensors. glibc serves a large block from a free chunk of the heap before it mmaps one, and a timing
    pass leaves the heap full of them: a free is then kept resident and the next block faults in elsewhere. A
    sweep's softmax read 1036 MiB of RSS for 524 MiB of live tensors at N=2048 after a larger case, and Combiner-
    Fixed read 0 for 16 MiB. malloc_trim(0) hands back the free pages of every arena; it runs at the start and on a
    thread until the end."""
    import threading

    libc = _glibc()
    if libc is None:
        yield
        return
    libc.malloc_trim(0)
    stop = threading.Event()

    def trim_until_stopped():
        while not stop.wait(interval_s):
            libc.malloc_trim(0)

    thread = threading.Thread(target=trim_until_stopped, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def reserve(peak_bytes: int) -> int:
    """Inside `retained`: fault in a heap block of RESERVE_FACTOR x the call's peak (at most RESERVE_SHARE of the
    free memory) and free it, so that the calls find resident memory however the heap fragments. Returns the
    bytes reserved (0 without glibc, or when malloc refuses)."""
    libc = _glibc()
    if libc is None or peak_bytes <= 0:
        return 0
    import psutil

    size = int(min(RESERVE_FACTOR * peak_bytes, RESERVE_SHARE * psutil.virtual_memory().available))
    block = libc.malloc(size)
    if not block:
        return 0
    ctypes.memset(block, 0, size)  # written, so every page is faulted in now
    libc.free(block)  # back to the heap, which `retained` keeps: resident for the calls
    return size


def prime(call, budget_ms: float) -> int:
    """Untimed calls of `call` (inside `retained`) until one faults in less than SETTLED_FAULT_BYTES of new
    pages, while they have taken less than `budget_ms` in all (at least one call, at most MAX_PRIME_CALLS).
    Returns how many calls it made. Without page-fault counts (no `resource` module) it makes one call."""
    try:
        import resource
    except ImportError:  # not a Unix: no fault counts to watch
        call()
        return 1
    page = resource.getpagesize()
    started, calls = time.perf_counter(), 0
    while True:
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        call()
        calls += 1
        faulted = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) * page
        spent_ms = (time.perf_counter() - started) * 1e3
        if faulted < SETTLED_FAULT_BYTES or spent_ms >= budget_ms or calls >= MAX_PRIME_CALLS:
            return calls
