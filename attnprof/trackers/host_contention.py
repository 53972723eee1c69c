"""Other processes' use of the host's CPUs while a block runs: how many cores they kept busy.

CPU timings on a shared machine are inflated by whatever else runs there, uniformly: the samples' spread stays
small, so the noise flag misses it (an audit's SDPA cases read 8 ms, 7.5x its own loop, with `noisy` False).
This says it. The system's busy time (all CPUs, psutil.cpu_times) over the block, less this process's own CPU
time (all its threads), over the wall time, is the number of cores other processes took.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

NOTE_CORES = 0.5  # other processes at half a core or more: the timing row says so
NOTE_START = "timed while other processes kept"  # how such a row's reason begins (the gate looks for it)


def timed_while_busy(reason) -> bool:
    """Whether a row's reason is (or begins with) this note: the one test the gate, `fit`, `show` and the report
    share."""
    return isinstance(reason, str) and reason.startswith(NOTE_START)


@dataclass
class Contention:
    other_cores: float = 0.0  # mean number of cores other processes kept busy during the block
    cores: int = 1

    def note(self) -> str:
        """'' below NOTE_CORES; else the sentence a timing row carries."""
        if self.other_cores < NOTE_CORES:
            return ""
        return f"{NOTE_START} {self.other_cores:.1f} of {self.cores} cores busy: times may be inflated"


@contextlib.contextmanager
def host_contention():
    """Inside: the block; after it, the Contention it ran under."""
    import psutil

    process, found = psutil.Process(), Contention(cores=psutil.cpu_count() or 1)
    busy_before, own_before, started = _busy_s(psutil.cpu_times()), _own_s(process), time.perf_counter()
    yield found
    wall = time.perf_counter() - started
    others = _busy_s(psutil.cpu_times()) - busy_before - (_own_s(process) - own_before)
    found.other_cores = max(0.0, others / wall) if wall > 0 else 0.0


def _busy_s(times) -> float:
    """CPU seconds spent on anything but idling (iowait counts as idle: nothing ran)."""
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)  # guest time is in user


def _own_s(process) -> float:
    times = process.cpu_times()
    return times.user + times.system
