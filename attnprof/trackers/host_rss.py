"""Host memory: the peak resident set size of this process during a call, above its level before.

On Linux the kernel keeps the exact peak itself (VmHWM in /proc/self/status), and writing 5 to /proc/self/clear_refs
resets it to the current RSS (Linux 4.0 on): reset before the call, read after it, nothing is missed. A sampling
thread (psutil's RSS every millisecond) missed most of a short call's peak: Combiner-Fixed's first case at N = 256
read 0.48 MiB against the 3.4 MB its high-water mark said (a memory audit). Where the reset is not allowed (another
OS, a locked-down /proc), the sampler is what there is, labelled so by the worker as before. (ru_maxrss is the same
high-water mark, never reset.)
"""

from __future__ import annotations

import functools

from attnprof.trackers.sampling import PeakSampler

CLEAR_REFS = "/proc/self/clear_refs"
STATUS = "/proc/self/status"


class HighWaterRss:
    """`with HighWaterRss() as r: work()` then `r.peak_above_start`: the kernel's peak RSS over the block."""

    def __init__(self):
        self.start_value: int | None = None
        self.peak_value: int | None = None

    def __enter__(self) -> HighWaterRss:
        _reset_high_water()
        self.start_value = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.peak_value = _status_bytes("VmHWM")

    @property
    def peak_above_start(self) -> int | None:
        if self.start_value is None or self.peak_value is None:
            return None
        return max(0, self.peak_value - self.start_value)


def rss_tracker(interval_s: float = 0.001):
    """HighWaterRss where the kernel lets it be reset, else a PeakSampler of psutil's RSS."""
    if high_water_resettable():
        return HighWaterRss()
    import psutil

    process = psutil.Process()
    return PeakSampler(lambda: process.memory_info().rss, interval_s)


@functools.cache
def high_water_resettable() -> bool:
    try:
        _reset_high_water()
        return _status_bytes("VmHWM") is not None
    except OSError:  # not Linux, or /proc/self/clear_refs not writable here
        return False


def _reset_high_water() -> None:
    with open(CLEAR_REFS, "w") as handle:
        handle.write("5")


def _status_bytes(field: str) -> int | None:
    """A "kB" line of /proc/self/status, in bytes; None when it is not there."""
    with open(STATUS) as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None
