"""A background thread that samples a gauge and keeps its peak; the base of the sampled trackers.

Sampled peaks can miss a spike shorter than the interval, so every sampled source also reads the
gauge right before and right after the call, and the outputs are labelled as sampled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class PeakSampler:
    """`with PeakSampler(read) as s: work()` then `s.peak_above_start` (None when `read` is unavailable)."""

    def __init__(self, read: Callable[[], int | None], interval_s: float = 0.001):
        self._read = read
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_value: int | None = None
        self.peak_value: int | None = None

    def __enter__(self) -> PeakSampler:
        self.start_value = self._read()
        self.peak_value = self.start_value
        if self.start_value is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._take()

    def _take(self) -> None:
        value = self._read()
        if value is not None and (self.peak_value is None or value > self.peak_value):
            self.peak_value = value

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._take()

    @property
    def peak_above_start(self) -> int | None:
        if self.start_value is None or self.peak_value is None:
            return None
        return max(0, self.peak_value - self.start_value)
