"""Columnar snapshots of ended runs: the same frame as the rows give, kept only while it matches them."""

import sqlite3

import numpy as np
import pandas as pd
import pytest

from attnprof import columns
from attnprof.dashboard.data import DataSource
from attnprof.records import Measurement, RunInfo, Status
from attnprof.spec import Case
from attnprof.store import Store, _column_rows


def a_run(run_id="r1"):
    return RunInfo(run_id, "2026-01-01T00:00:00", {"impl_specs": [["softmax", {}]]}, {"torch_version": "x"}, "0.1.0")


def varied(n: int) -> Measurement:
    """Every kind of value a row can hold: options, statuses with and without reasons, NULL numbers and text,
    noisy true, false and unknown."""
    options = (("chunk_size", n % 4 or 8),) if n % 2 else ()
    case = Case(impl="cosformer" if n % 2 else "softmax", seq_len=64 * n, causal=bool(n % 3), options=options)
    if n % 5 == 0:
        return Measurement(case, Status.OOM, f"out of memory at {n}")
    times = [1.0, 1.0, 5.0] if n % 7 == 0 else [float(n), float(n) * 1.01, float(n) * 0.99]
    return Measurement(case, Status.OK, times_ms=times, peak_bytes=1000 * n, peak_source="live_tensors", flops=n * 10**12)


def filled(db, count=12, state="complete") -> Store:
    store = Store.open(db)
    store.add_run(a_run())
    for n in range(1, count + 1):
        store.add_measurement("r1", varied(n), f"t{n}")
    store.set_run_state("r1", state)
    return store


def from_rows(store, run_id="r1"):
    return columns.to_frame(columns.from_rows(_column_rows(store.connection, run_id)))


def snapshot_count(store) -> int:
    return store.connection.execute("SELECT COUNT(*) FROM run_columns").fetchone()[0]


def test_an_ended_run_is_read_from_its_snapshot_which_equals_the_rows(db):
    store = filled(db)
    assert snapshot_count(store) == 1
    frame = store.frame("r1")
    pd.testing.assert_frame_equal(frame, from_rows(store))
    assert list(frame.index) == sorted(frame.index) and len(frame) == 12
    assert frame.loc[frame["seq_len"] == 64 * 3, "options"].item() == {"chunk_size": 3}
    assert frame["noisy"].map(repr).value_counts().to_dict().keys() == {"True", "False", "None"}
    failed = frame.loc[frame["status"] == "oom"]
    assert len(failed) == 2 and all(source is None for source in failed["peak_source"])
    assert frame.loc[frame["status"] == "ok", "reason"].eq("").all()
    store.close()


def test_the_snapshot_is_what_frame_reads(db):
    store = filled(db)
    forged = columns.from_rows(_column_rows(store.connection, "r1"))
    forged["median_ms"] = np.full(12, 123.0)  # same row count and last id: frame must take the snapshot's values
    store.connection.execute("UPDATE run_columns SET snapshot = ?", (columns.encode(forged),))
    assert store.frame("r1")["median_ms"].eq(123.0).all()
    store.close()


def test_rows_added_or_replaced_after_the_snapshot_are_read(db):
    store = filled(db)
    store.add_measurement("r1", varied(40), "later")  # a resumed run adds a row
    assert 64 * 40 in store.frame("r1")["seq_len"].tolist()
    store.set_run_state("r1", "complete")
    replaced = Measurement(varied(40).case, Status.CRASHED, "replaced")  # same case again: the row is replaced
    store.add_measurement("r1", replaced, "later still")
    frame = store.frame("r1")
    assert len(frame) == 13 and frame.loc[frame["seq_len"] == 64 * 40, "status"].item() == "crashed"
    pd.testing.assert_frame_equal(frame, from_rows(store))
    store.close()


def test_a_running_run_has_no_snapshot_and_after_id_reads_only_newer_rows(db):
    store = filled(db, state="running")
    assert snapshot_count(store) == 0
    frame = store.frame("r1")
    newer = store.frame("r1", after_id=frame.index[8])
    pd.testing.assert_frame_equal(newer, frame.iloc[9:])
    assert store.frame("r1", after_id=frame.index[-1]).empty
    store.close()


def test_a_snapshot_of_another_format_is_ignored(db, monkeypatch):
    store = filled(db)
    expected = from_rows(store)
    monkeypatch.setattr(columns, "FORMAT", columns.FORMAT + 1)
    assert columns.decode(store.connection.execute("SELECT snapshot FROM run_columns").fetchone()[0]) is None
    pd.testing.assert_frame_equal(store.frame("r1"), expected)
    store.close()


def test_a_version_2_database_gains_snapshots_of_its_ended_runs(db):
    store = filled(db)
    store.add_run(a_run("r2"))
    store.add_measurement("r2", varied(1), "t")  # still running: no snapshot
    store.close()
    connection = sqlite3.connect(db)
    connection.execute("DROP TABLE run_columns")
    connection.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    connection.commit()
    connection.close()
    store = Store.open(db, create=False)
    assert store.connection.execute("SELECT run_id, row_count FROM run_columns").fetchall() == [("r1", 12)]
    pd.testing.assert_frame_equal(store.frame("r1"), from_rows(store))
    store.close()


@pytest.mark.parametrize("replace", [False, True])
def test_the_dashboard_reads_only_the_rows_a_sweep_added(db, monkeypatch, replace):
    store = filled(db, count=6, state="running")
    source = DataSource(db)
    first = source.frame("r1")
    reads = []
    real_frame = Store.frame
    monkeypatch.setattr(Store, "frame", lambda self, run_id, after_id=None: reads.append(after_id) or real_frame(self, run_id, after_id))
    for n in (7, 8):
        store.add_measurement("r1", varied(1 if replace and n == 8 else n), "later")
    grown = source.frame("r1")
    assert reads == ([first.index[-1], None] if replace else [first.index[-1]])  # a replaced row: everything again
    fresh = DataSource(db).frame("r1")
    pd.testing.assert_frame_equal(grown, fresh)
    assert grown.attrs["version"] == ("r1", len(fresh), int(fresh.index[-1]), "running")
    store.set_run_state("r1", "complete")
    reads.clear()
    ended = source.frame("r1")
    assert reads == [] and ended.attrs["version"][-1] == "complete" and ended is not grown  # the state alone changed
    store.close()


def test_a_run_whose_rows_cannot_be_encoded_still_ends_without_a_snapshot(db, caplog):
    store = filled(db, state="running")
    store.connection.execute("UPDATE measurements SET seq_len = 'not a number' WHERE id = (SELECT MIN(id) FROM measurements)")
    store.connection.commit()
    store.set_run_state("r1", "complete")  # the state is recorded all the same
    assert store.resolve_run("r1").state == "complete" and snapshot_count(store) == 0
    assert "keeps no columnar snapshot" in caplog.text
    store.close()
