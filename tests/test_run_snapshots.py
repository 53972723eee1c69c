"""Columnar snapshots of ended runs: the same frame as the rows give, kept only while it matches them."""

import sqlite3

import numpy as np
import pandas as pd
import pytest

from attnprof import columns
from attnprof.dashboard.data import DataSource
from attnprof.records import Measurement, RunInfo, Status
from attnprof.run_lock import measuring
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
    held = measuring(db, "r1")  # as the sweep holds it while it measures: the run reads as running
    held.__enter__()
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
    held.__exit__(None, None, None)
    reads.clear()
    ended = source.frame("r1")
    assert reads == [] and ended.attrs["version"][-1] == "complete" and ended is not grown  # the state alone changed
    store.close()


def test_text_or_null_where_a_number_belongs_reads_as_nan_from_the_rows_and_the_snapshot_alike(db):
    store = filled(db, state="running")
    first, second = store.frame("r1").index[:2]
    store.connection.execute("UPDATE measurements SET seq_len = 'not a number' WHERE id = ?", (int(first),))  # by hand
    store.connection.execute("UPDATE measurements SET batch = NULL WHERE id = ?", (int(second),))
    store.connection.commit()
    rows = from_rows(store)
    assert np.isnan(rows.loc[first, "seq_len"]) and np.isnan(rows.loc[second, "batch"]) and rows["heads"].dtype == np.int64
    store.set_run_state("r1", "complete")
    assert snapshot_count(store) == 1
    pd.testing.assert_frame_equal(store.frame("r1"), rows)
    store.close()


def test_a_snapshot_that_cannot_be_written_or_read_leaves_the_run_to_its_rows(db, monkeypatch, caplog):
    store = filled(db, state="running")
    expected = from_rows(store)

    def failing(_columns):
        raise ValueError("cannot encode")

    with monkeypatch.context() as patch:
        patch.setattr(columns, "encode", failing)
        store.set_run_state("r1", "complete")  # the state is recorded all the same
    assert store.resolve_run("r1").state == "complete" and snapshot_count(store) == 0
    assert "keeps no columnar snapshot (cannot encode)" in caplog.text
    store.set_run_state("r1", "complete")
    store.connection.execute("UPDATE run_columns SET snapshot = x'00112233'")  # damaged on disk
    store.connection.commit()
    pd.testing.assert_frame_equal(store.frame("r1"), expected)
    assert "unreadable columnar snapshot" in caplog.text
    store.close()


def test_the_snapshot_columns_are_the_stored_columns_each_of_one_kind():
    from attnprof.store import CASE_COLUMNS, STAT_COLUMNS, VALUE_COLUMNS

    assert columns.COLUMNS == ("id", "label", *CASE_COLUMNS, *(c for c in VALUE_COLUMNS if c != "times_ms"), *STAT_COLUMNS)
    kinds = (columns.TEXT, columns.INTEGER, columns.FLAG, columns.NUMBER, columns.MAYBE_FLAG)
    assert sorted(name for kind in kinds for name in kind) == sorted(columns.COLUMNS[1:])


def test_a_row_committed_while_the_dashboard_reads_is_read_once(db, monkeypatch):
    store = filled(db, count=6, state="running")
    source = DataSource(db)
    source.frame("r1")
    writer = Store.open(db)  # the sweep, on its own connection
    real_version = Store.row_version
    commits = iter([varied(8)])

    def version_then_a_commit(self, run_id):
        version = real_version(self, run_id)
        row = next(commits, None)
        if row is not None:  # the sweep commits between the dashboard's version query and its read
            writer.add_measurement("r1", row, "meanwhile")
        return version

    monkeypatch.setattr(Store, "row_version", version_then_a_commit)
    writer.add_measurement("r1", varied(7), "later")
    grown = source.frame("r1")  # sees row 7 only, and says so in its version
    assert len(grown) == 7 and grown.attrs["version"][1] == 7
    again = source.frame("r1")  # then row 8, once
    monkeypatch.setattr(Store, "row_version", real_version)
    pd.testing.assert_frame_equal(again, DataSource(db).frame("r1"))
    assert again.index.is_unique and len(again) == 8
    writer.close()
    store.close()


def test_a_reports_source_answers_every_section_from_one_read(tmp_path):
    """A report of a running sweep read it section by section: 6 of 16 cases in its banner, 7 ok in Coverage, 8 in its
    run info (a report audit). SnapshotSource reads the rows and the state once; a DataSource sees the new row."""
    from attnprof.dashboard.data import SnapshotSource

    db = tmp_path / "a.db"
    filled(db, count=4, state="running").close()
    snapshot, live = SnapshotSource(db), DataSource(db)
    before = snapshot.frame("latest")
    assert len(before) == len(live.frame("r1")) == 4 and snapshot.run("r1").state == "interrupted"  # no sweep holds its lock
    store = Store.open(db)
    store.add_measurement("r1", varied(5), "t5")
    store.set_run_state("r1", "complete")
    store.close()
    assert len(live.frame("r1")) == 5 and live.run("r1").state == "complete"
    assert snapshot.frame("r1") is before and snapshot.frame("latest") is before and snapshot.run("r1").state == "interrupted"
