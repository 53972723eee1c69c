"""The CPU allocator's peak during one call, above what was allocated before it: torch.profiler's memory events.

The primary memory figure on the CPU, as the caching allocator's is on CUDA. The live-tensor tracker
(accounting.live_bytes_mode) sees only the storages ops return; memory a kernel allocates for itself inside one op
is no tensor of the call, and it missed it. A helper's audit found Nyströmformer's depthwise convolution (oneDNN)
taking two 2 MiB blocks at N = 1024, B1 H2 D64: live tensors read 1.16 MiB where the allocator handed out 4.50 MiB
(4.3x at 4096), which ranked it the leanest approximation when it was the largest; SDPA's CPU flash kernel keeps
per-thread buffers the same way (0.51 live against 1.07 MiB). Every CPU allocation goes through c10's allocator,
which reports it to the profiler (profile_memory): the running sum of those reports, over the blocks allocated
under the call, is the allocator's growth.

Not a timer: the profiler slows an op-heavy call by about a quarter (Combiner-Mixture fwd-bwd at 1k: 80-86 ->
99-109 ms here), so it runs only in the memory pass, never around a timed call.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class CpuAllocatorTracker:
    """`with CpuAllocatorTracker() as allocator: call()`, then `allocator.peak_bytes`: the most bytes the CPU allocator
    had handed out above the start at any moment, or None when the profiler could not run (it raised on start or
    stop): the caller then falls back to the live tensors and says so by its peak_source. The worker is a process of
    its own, so no user's profiler runs beside this one (a profiler inside another stops the outer one)."""

    def __init__(self):
        self.peak_bytes: int | None = None
        self._profile = None

    def __enter__(self) -> CpuAllocatorTracker:
        # Kineto prints two lines on every start and stop unless told otherwise; read when it first starts.
        os.environ.setdefault("KINETO_LOG_LEVEL", "99")
        from torch.profiler import ProfilerActivity, profile

        try:
            self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profile.__enter__()
        except Exception:  # noqa: BLE001  (the live tensors remain; the peak_source says which was used)
            log.debug("the CPU allocator's peak cannot be read", exc_info=True)
            self._profile = None
        return self

    def __exit__(self, *exc) -> None:
        if self._profile is None:
            return
        try:
            self._profile.__exit__(*exc)
            self.peak_bytes = peak_of(allocations(self._profile.profiler.kineto_results.experimental_event_tree()))
        except Exception:  # noqa: BLE001
            log.debug("the CPU allocator's peak cannot be read", exc_info=True)
            self.peak_bytes = None


def allocations(roots) -> list[tuple[int, int, int]]:
    """(time ns, address, bytes: + allocated, - freed) of every CPU allocator report in the profiler's event tree."""
    found, pending = [], list(roots)
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        fields = event.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and str(fields.device) == "cpu":
            found.append((event.start_time_ns, fields.ptr, fields.alloc_size))
    return found


def peak_of(changes) -> int:
    """The most bytes allocated at once, counting only the blocks allocated within: a free of a block allocated
    before the profiler started (c10 remembers the sizes it saw under an earlier profiled call, so it reports one
    freed here) would lower the count below the call's own zero, and a 2 MiB allocation after freeing an earlier
    4 MiB block read a peak of 0."""
    live: dict[int, int] = {}
    current = peak = 0
    for _, address, nbytes in sorted(changes):
        if nbytes > 0:
            live[address] = live.get(address, 0) + nbytes
            current += nbytes
            peak = max(peak, current)
        elif address in live:
            current -= live.pop(address)
    return peak
