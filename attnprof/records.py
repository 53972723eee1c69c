"""The records that flow from a worker to the store: Measurement, RunInfo, Status.

Raw samples are kept (`times_ms`); median, quantiles and the noise flag are derived here and never
stored twice. Memory fields end in `_bytes`; a source that was not available is None, never 0.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, fields
from enum import Enum

from attnprof.spec import Case


class Status(str, Enum):
    OK = "ok"
    UNSUPPORTED = "unsupported"  # the impl refuses the combination (reason says why)
    OOM = "oom"  # ran out of memory (or was predicted to, on the host: reason says which)
    TIMEOUT = "timeout"  # the case ran past --timeout; the worker was killed
    CRASHED = "crashed"  # the worker process died (segfault, abort, killed)
    ERROR = "error"  # the impl raised, or failed its check against the reference
    SKIPPED = "skipped"  # not run: a smaller length of the same configuration ran out of memory or time

    def __str__(self) -> str:
        return self.value


FINAL_FAILURES = (Status.OOM, Status.TIMEOUT)  # larger lengths of the same configuration are skipped after these


def join_notes(*parts: str) -> str:
    """A row's reason from its parts, "; " between them, empty parts left out."""
    return "; ".join(filter(None, parts))


NOISY_IQR_RATIO = 0.10  # a case whose IQR exceeds 10% of its median is flagged as noisy


@dataclass
class Measurement:
    case: Case
    status: Status
    reason: str = ""
    times_ms: list[float] = field(default_factory=list)
    peak_bytes: int | None = None  # the primary memory figure for the device (see peak_source)
    peak_source: str | None = None  # "allocator" (CUDA; CPU too), "live_tensors" (CPU without a profiler), "accounting"/"model" (meta)
    peak_alloc_bytes: int | None = None  # allocator peak above the inputs: CUDA's caching allocator, or the CPU's (profiler)
    peak_reserved_bytes: int | None = None  # CUDA allocator reserved peak above the reserve before the call
    peak_device_bytes: int | None = None  # NVML device memory peak above the level before the call (sampled)
    peak_rss_bytes: int | None = None  # host RSS peak above the level before the call (sampled)
    peak_live_bytes: int | None = None  # exact peak of live tensor bytes (dispatch-mode tracker)
    flops: int | None = None
    flops_source: str | None = None  # "formula" (impl's own) or "counted" (FlopCounterMode)
    min_bytes: int | None = None  # bytes the call must move at least (for GB/s and the roofline)
    energy_j: float | None = None  # NVML energy per call, CUDA only
    check_error: float | None = None  # relative error against the impl's own reference (small size)
    fidelity_error: float | None = None  # relative error against exact softmax attention (small size)
    wall_s: float | None = None  # time the worker spent on the whole case, all passes included

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["case"] = self.case.to_dict()
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        data = dict(data)
        data["case"] = Case.from_dict(data["case"])
        data["status"] = Status(data["status"])
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def quantile(samples: list[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default), without importing numpy."""
    if not samples:
        return None
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_stats(samples: list[float]) -> dict:
    """median, p20, p80, IQR and the noise flag of raw samples (None when there are none)."""
    if not samples:
        return {"median_ms": None, "p20_ms": None, "p80_ms": None, "iqr_ms": None, "noisy": None}
    median = statistics.median(samples)
    iqr = quantile(samples, 0.75) - quantile(samples, 0.25)
    return {
        "median_ms": median,
        "p20_ms": quantile(samples, 0.2),
        "p80_ms": quantile(samples, 0.8),
        "iqr_ms": iqr,
        "noisy": bool(median > 0 and iqr / median > NOISY_IQR_RATIO),
    }


@dataclass
class RunInfo:
    run_id: str
    created_at: str
    sweep: dict
    env: dict
    tool_version: str
    name: str = ""
    command: str = ""
    state: str = "running"  # running, complete, interrupted

    def to_dict(self) -> dict:
        return asdict(self)
