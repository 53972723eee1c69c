"""The one timing primitive: raw per-repetition samples of a zero-argument call.

Method (triton.testing.do_bench's recipe):
1. Run the call once and synchronise (first-call costs: kernel selection, allocator growth); skipped
   when the caller says the call has just run (the memory pass is that first call).
2. On CUDA, estimate the time of one call from 5 calls (events around the batch; L2 flushed before each),
   then warm up for `warmup_ms` worth of calls and queue `rep_ms` worth of repetitions.
3. On the CPU every call is timed as it ends, so no estimate is needed: warm up until `warmup_ms` has
   passed (a call that has just run counts), then repeat until the samples add up to `rep_ms`. A count
   taken from the memory pass's duration fell short: the trackers slow that pass 1.3-6x, so cases got a
   sixth of their budget and a fast case as few as 3 repetitions.
   Both take at least `min_reps` (3: a median and quantiles for a call slower than the budget) and at
   most `max_reps` repetitions.
4. On CUDA every repetition is bracketed by its own pair of CUDA events, and a 256 MB buffer is
   zeroed before each one so that no repetition reads q, k, v from a warm L2 cache; the flush is
   outside the events. On the CPU every repetition is timed with time.perf_counter.
The samples are returned raw; median and quantiles are derived later (records.time_stats).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any current GPU's L2 (H100: 50 MB)


def bench(call: Callable[[], None], device: str, warmup_ms: float = 25.0, rep_ms: float = 100.0, min_reps: int = 3,
          max_reps: int = 1000, warm_ms: float | None = None) -> list[float]:  # fmt: skip
    """Milliseconds per repetition of `call` on `device` ("cpu" or "cuda[:N]").

    warm_ms: the call has just run once and took this long (CPU only): no cold call, no estimate call.
    """
    if device.startswith("cuda"):
        return _bench_cuda(call, device, warmup_ms, rep_ms, min_reps, max_reps)
    return _bench_cpu(call, warmup_ms, rep_ms, min_reps, max_reps, warm_ms)


def _counts(estimate_ms: float, warmup_ms: float, rep_ms: float, min_reps: int, max_reps: int) -> tuple[int, int]:
    estimate_ms = max(estimate_ms, 1e-6)
    warmup = max(1, int(warmup_ms / estimate_ms))
    reps = min(max_reps, max(min_reps, int(rep_ms / estimate_ms)))
    return warmup, reps


def _bench_cpu(call, warmup_ms, rep_ms, min_reps, max_reps, warm_ms) -> list[float]:
    warmed_ms = warm_ms or 0.0
    if warm_ms is None:
        call()  # the cold call
        start = time.perf_counter()
        call()  # with the first call, the warm-up when one call already exceeds the budget
        warmed_ms = (time.perf_counter() - start) * 1e3
    warm_until = time.perf_counter() + max(0.0, warmup_ms - warmed_ms) / 1e3
    while time.perf_counter() < warm_until:
        call()
    samples, spent_ms = [], 0.0
    while len(samples) < min_reps or (spent_ms < rep_ms and len(samples) < max_reps):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
        spent_ms += samples[-1]
    return samples


def _bench_cuda(call, device, warmup_ms, rep_ms, min_reps, max_reps) -> list[float]:
    import torch

    with torch.cuda.device(device):
        flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
        call()
        torch.cuda.synchronize()
        estimate_ms = _estimate_cuda(call, flush)
        warmup, reps = _counts(estimate_ms, warmup_ms, rep_ms, min_reps, max_reps)
        for _ in range(warmup):
            call()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends, strict=False):
            flush.zero_()
            start.record()
            call()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in zip(starts, ends, strict=False)]


def _estimate_cuda(call, flush) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 5


ENERGY_WINDOW_MS = 300.0  # NVML's energy counter moves in steps of tens of ms: a window of several


def energy_per_call(call, device: str, read_mj, call_ms: float, window_ms: float = ENERGY_WINDOW_MS) -> float | None:
    """Joules per call: back-to-back calls for about `window_ms` between two readings of the device's energy
    counter (`read_mj`, millijoules). The timing pass's own window held its warm-up, its estimate calls and an L2
    flush before every repetition, all charged to the repetitions alone (a reviewer's estimate, not a measurement:
    1.3-1.5x too much for short kernels). A call longer than the window runs once."""
    import torch

    calls = max(1, math.ceil(window_ms / max(call_ms, 1e-3)))
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        before = read_mj()
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
        after = read_mj()
    if before is None or after is None:
        return None
    return (after - before) / 1e3 / calls
