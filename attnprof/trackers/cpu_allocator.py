"""The CPU allocator's peak during one call, above what was allocated before it: torch.profiler's memory events.

The primary memory figure on the CPU, as the caching allocator's is on CUDA. The live-tensor tracker
(accounting.live_bytes_mode) sees only the storages ops return; memory a kernel allocates for itself inside one op
is no tensor of the call, and it missed it. A helper's audit found Nyströmformer's depthwise convolution (oneDNN)
taking two 2 MiB blocks at N = 1024, B1 H2 D64: live tensors read 1.16 MiB where the allocator handed out 4.50 MiB
(4.3x at 4096), which ranked it the leanest approximation when it was the largest; SDPA's CPU flash kernel keeps
per-thread buffers the same way (0.51 live against 1.07 MiB). Every CPU allocation goes through c10's allocator,
which reports it to the profiler (profile_memory): the running sum of those reports is the allocator's growth.

Not a timer: the profiler slows an op-heavy call by about a quarter (Combiner-Mixture fwd-bwd at 1k: 80-86 ->
99-109 ms here), so it runs only in the memory pass, never around a timed call.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

MEMORY_EVENT = "[memory]"  # the profiler's name for an allocator report (nbytes: + allocated, - freed)


class CpuAllocatorTracker:
    """`with CpuAllocatorTracker() as allocator: call()`, then `allocator.peak_bytes`: the most bytes the CPU allocator
    had handed out above the start at any moment, or None when the profiler could not run (another one is active on
    this thread, say): the caller then falls back to the live tensors and says so by its peak_source."""

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
            self.peak_bytes = peak_of(self._profile.profiler.kineto_results.events())
        except Exception:  # noqa: BLE001
            log.debug("the CPU allocator's peak cannot be read", exc_info=True)
            self.peak_bytes = None


def peak_of(events) -> int:
    """The highest running sum of the CPU memory events' sizes, in time order (0 when nothing was allocated). A block
    allocated before the profiler started and freed under it has no event (c10 warns instead), so the sum starts at
    the call's own zero."""
    changes = sorted((event.start_ns(), event.nbytes()) for event in events if event.name() == MEMORY_EVENT and _on_cpu(event))
    current = peak = 0
    for _, nbytes in changes:
        current += nbytes
        peak = max(peak, current)
    return peak


def _on_cpu(event) -> bool:
    return str(event.device_type()).endswith("CPU")
