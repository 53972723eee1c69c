"""Host memory: the peak resident set size of this process during a call, above its level before.

psutil's RSS is sampled on a thread (ru_maxrss is a never-decreasing process high-water mark and
cannot be reset between cases, so it is not used).
"""

from __future__ import annotations

from attnprof.trackers.sampling import PeakSampler


def rss_tracker(interval_s: float = 0.001) -> PeakSampler:
    import psutil

    process = psutil.Process()
    return PeakSampler(lambda: process.memory_info().rss, interval_s)
