"""The database's schema: its tables, creating them, migrating an older file, and WAL mode (store.py uses these).

Schema versions: 1, the first; 2 adds each measurement's timing statistics (median, p20, p80, IQR, noisy,
as `records.time_stats` computes them from the raw samples), written with the row, so that readers of many
rows (the dashboard) need not decode every row's samples: at 50,000 rows that decoding took 0.45 s; 3 adds
`run_columns`, each ended run's rows as one columnar snapshot (`attnprof.columns`), which `frame` reads instead of
the rows while the run's row count and last row id still match it. A migration that changes stored values must
clear that table.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from attnprof.errors import UsageError

SCHEMA_VERSION = 3
APP_ID = "attnprof"
CASE_COLUMNS = ("impl", "options", "seq_len", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode", "seed")
VALUE_COLUMNS = (
    "status", "reason", "times_ms", "peak_bytes", "peak_source", "peak_alloc_bytes", "peak_reserved_bytes",
    "peak_device_bytes", "peak_rss_bytes", "peak_live_bytes", "flops", "flops_source", "min_bytes", "energy_j",
    "check_error", "fidelity_error", "wall_s",
)  # fmt: skip
STAT_COLUMNS = ("median_ms", "p20_ms", "p80_ms", "iqr_ms", "noisy")  # derived from times_ms when the row is written

_RUN_COLUMNS = """
CREATE TABLE IF NOT EXISTS run_columns (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id), row_count INTEGER NOT NULL, last_id INTEGER, snapshot BLOB NOT NULL);
"""
ENDED = ("complete", "interrupted")  # run states after which a run's rows are kept as a columnar snapshot
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, name TEXT, command TEXT, state TEXT NOT NULL,
    sweep_json TEXT NOT NULL, env_json TEXT NOT NULL, tool_version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(run_id), case_key TEXT NOT NULL,
    label TEXT NOT NULL, {", ".join(CASE_COLUMNS)}, {", ".join(VALUE_COLUMNS)}, recorded_at TEXT NOT NULL,
    {", ".join(STAT_COLUMNS)},
    UNIQUE (run_id, case_key));
CREATE INDEX IF NOT EXISTS measurements_run ON measurements (run_id);
{_RUN_COLUMNS}"""


def _add_time_stats(connection: sqlite3.Connection) -> None:
    """Schema 2: the timing statistics columns, filled in from each stored row's samples."""
    from attnprof.store import _stat_values

    for column in STAT_COLUMNS:
        connection.execute(f"ALTER TABLE measurements ADD COLUMN {column}")
    rows = connection.execute("SELECT id, times_ms FROM measurements").fetchall()
    update = f"UPDATE measurements SET {', '.join(f'{c} = ?' for c in STAT_COLUMNS)} WHERE id = ?"
    connection.executemany(update, [(*_stat_values(json.loads(times)), row_id) for row_id, times in rows])


def _add_run_columns(connection: sqlite3.Connection) -> None:
    """Schema 3: the columnar snapshot table, filled in for every ended run."""
    from attnprof.store import _keep_snapshot

    connection.execute(_RUN_COLUMNS)  # one statement: executescript would commit the migration's transaction
    for (run_id,) in connection.execute(f"SELECT run_id FROM runs WHERE state IN ({', '.join('?' * len(ENDED))})", ENDED).fetchall():
        _keep_snapshot(connection, run_id)  # best effort: a run without one is read from its rows


_MIGRATIONS = {2: _add_time_stats, 3: _add_run_columns}  # version -> what brings version - 1 up to it, in one transaction


def tables(connection: sqlite3.Connection) -> set:
    return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def meta(connection: sqlite3.Connection, key: str) -> str | None:
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def create(connection: sqlite3.Connection) -> None:
    """The schema in one write transaction, checked again once the lock is held: processes creating one new
    file at once (four sweeps started together) create it once. executescript would commit between statements,
    and a process seeing the others' half-made tables called the file "not an attnprof database"."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        if not tables(connection):
            for statement in filter(str.strip, _SCHEMA.split(";")):
                connection.execute(statement)
            connection.execute("INSERT INTO meta VALUES ('app', ?), ('schema_version', ?)", (APP_ID, str(SCHEMA_VERSION)))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def schema_version(connection: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; one that is no number (a hand-edited file) is refused, not a ValueError traceback."""
    stored = meta(connection, "schema_version")
    try:
        return int(stored or 0)
    except ValueError:
        raise UsageError(f"{str(path)!r} has schema version {stored!r}, which is no version number this attnprof knows") from None


def migrate(connection: sqlite3.Connection, path: Path) -> None:
    """An older file brought up to SCHEMA_VERSION; a newer one refused."""
    version = schema_version(connection, path)
    if version > SCHEMA_VERSION:
        raise UsageError(f"{str(path)!r} has schema version {version}, newer than this attnprof ({SCHEMA_VERSION}); upgrade attnprof")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        if target not in _MIGRATIONS:
            raise UsageError(f"{str(path)!r} has schema version {version}, which this attnprof cannot migrate")
        # The write lock first, then the version again: two processes opening the same old file (dashboard
        # requests, a sweep) migrate it once; the second finds it done. DDL and all in one transaction.
        connection.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(connection, path) < target:
                _MIGRATIONS[target](connection)
                connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise


def use_wal(connection: sqlite3.Connection) -> None:
    """WAL mode (readers beside the sweep's writes). Switching a new file to it needs a lock SQLite does not wait
    for (no busy handler): a process opening the file while another switches it got "database is locked" at
    once, 5 times in 40 with four processes. So: retried, for up to 30 s (the connections' own timeout)."""
    for attempt in range(200):
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == 199:
                raise
            time.sleep(0.15)
