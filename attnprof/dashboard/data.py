"""The dashboard's side of the database: the runs, one run's measurements as a frame, and a small memo.

The database is opened for each request and closed after it: a database that appears later (a sweep starts) or
grows (a sweep writes, WAL lets us read meanwhile) is seen at the next refresh, and no sqlite connection is shared
between the server's threads. A run's frame is cached until its rows (count, last id) or its state change; a run
that only gained rows (a sweep writing) is extended by those rows, read in the same read transaction as its version.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from attnprof.export import EXPORT_KEYS, numeric_frame
from attnprof.records import RunInfo

MEMO_SIZE = 256  # fits, analyses and figures of recent filter choices; each entry is small


@dataclass(frozen=True)
class RunSummary:
    info: RunInfo
    count: int  # measurements stored so far


def run_frame(run_id: str, stored, counts: dict | None = None):
    """`Store.frame` rows -> the export columns (`export.EXPORT_KEYS`), throughput derived column-wise.

    Same values as `export.measurements_frame`, except that a missing number is NaN rather than None and
    `times_ms` is absent (the statistics come stored; `DataSource.samples` reads the samples where needed), its
    length `samples` instead (`Store.sample_counts`, by row id; 0 where not given). The index is the stored row id.
    """
    import numpy as np

    frame = numeric_frame(stored.copy())
    frame.insert(0, "run_id", run_id)
    median_s = frame["median_ms"] / 1e3
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["tflops"] = np.where((frame["flops"] > 0) & (median_s > 0), frame["flops"] / median_s / 1e12, np.nan)
        frame["gbps"] = np.where((frame["min_bytes"] > 0) & (median_s > 0), frame["min_bytes"] / median_s / 1e9, np.nan)
    import pandas as pd

    frame["samples"] = pd.Series(counts or {}, dtype=float).reindex(frame.index).fillna(0).astype(int)
    return frame[[*(key for key in EXPORT_KEYS if key != "times_ms"), "samples"]]


def _grown(store, cached: tuple, version: tuple):
    """The cached frame (a new object) plus the rows stored since, when rows were only added (a sweep writing:
    a refresh then reads its new rows, not all 50,000); None when a row was replaced or removed (read it all)."""
    import pandas as pd

    (_, count_before, last_before, _), before = cached
    run_id, count, last, _ = version
    if count == count_before and last == last_before:
        return before.copy(deep=False)  # only the run's state changed
    if last_before is None or count < count_before:
        return None
    added = store.frame(run_id, after_id=last_before)
    if len(added) != count - count_before:
        return None
    return pd.concat([before, run_frame(run_id, added, store.sample_counts(run_id, after_id=last_before))])  # len(added) >= 1 here


class DataSource:
    """Reads one database path for the app. Raises `UsageError` (missing, empty, corrupt, foreign file)."""

    def __init__(self, db: str | Path):
        self.path = Path(db)
        self._frames: dict[str, tuple] = {}
        self._memo: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # guards the two caches
        self._loading = threading.Lock()  # one frame load at a time: two requests for a run wait for one read
        self.first_view_served = threading.Event()  # set when a page's scaling view has been answered (warm-up waits)

    @contextmanager
    def _store(self):
        from attnprof.store import Store

        store = Store.open(self.path, create=False)
        try:
            yield store
        finally:
            store.close()

    def runs(self) -> list[RunSummary]:
        """Every run, newest first, with its row count."""
        with self._store() as store:
            return [RunSummary(info, store.count(info.run_id)) for info in store.runs()]

    def run(self, run_id: str) -> RunInfo:
        with self._store() as store:
            return store.resolve_run(run_id)

    def frame(self, run_id: str):
        """The run's measurements (export columns); `frame.attrs["version"]` names this state of the data."""
        # One read transaction: a row committed between the version query and the read would otherwise be in
        # the frame but not in its version, and read again (twice in the frame) at the next refresh.
        with self._loading, self._store() as store, store.consistent():
            info = store.resolve_run(run_id)
            version = (info.run_id, *store.row_version(info.run_id), info.state)
            cached = self._frames.get(info.run_id)
            if cached and cached[0] == version:
                return cached[1]
            frame = _grown(store, cached, version) if cached else None
            if frame is None:
                frame = run_frame(info.run_id, store.frame(info.run_id), store.sample_counts(info.run_id))
            frame.attrs["version"] = version
            with self._lock:
                self._frames[info.run_id] = (version, frame)
        return frame

    def samples(self, run_id: str, rows) -> list[list[float]]:
        """The raw timing samples of `rows` (a slice of this run's frame), in their order."""
        with self._store() as store:
            found = store.samples(run_id, rows.index)
        return [found.get(int(i), []) for i in rows.index]

    def memo(self, key, compute):
        """compute(), remembered under key (which must name the data version it depends on)."""
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        value = compute()
        with self._lock:
            self._memo[key] = value
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return value


class SnapshotSource(DataSource):
    """A DataSource that reads each run once, its rows and its state in one read transaction, and answers from that
    read after: a static report of a running sweep read it section by section, and said 6 of 16 cases in its banner,
    7 ok in Coverage and 8 in its run info (a report audit)."""

    def __init__(self, db: str | Path):
        super().__init__(db)
        self._read: dict[str, tuple] = {}  # the name asked (id, prefix, `latest`) -> (RunInfo, frame)

    def run(self, run_id: str) -> RunInfo:
        return self._snapshot(run_id)[0]

    def frame(self, run_id: str):
        return self._snapshot(run_id)[1]

    def _snapshot(self, run_id: str) -> tuple:
        if run_id not in self._read:
            with self._store() as store, store.consistent():
                info = store.resolve_run(run_id)
                frame = run_frame(info.run_id, store.frame(info.run_id), store.sample_counts(info.run_id))
                frame.attrs["version"] = (info.run_id, *store.row_version(info.run_id), info.state)
            self._read[run_id] = self._read[info.run_id] = (info, frame)
        return self._read[run_id]
