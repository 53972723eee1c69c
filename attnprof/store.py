"""The only module that touches the database: one SQLite file in WAL mode.

Each Measurement is committed in its own transaction the moment it arrives, so a killed sweep loses
at most the case in flight, and readers (the dashboard, `attnprof show`) see rows while a sweep
writes. The file carries its schema version; an older schema is migrated, a newer one refused.

The schema, its creation and migrations are store_schema.py's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from attnprof import columns
from attnprof import store_schema as schema
from attnprof.columns import decode_stored
from attnprof.errors import UsageError, path_argument
from attnprof.records import Measurement, RunInfo, Status, time_stats
from attnprof.run_lock import is_measured
from attnprof.spec import Case
from attnprof.store_open import close_quietly, disk_fault, disk_refusal, prepare_parent, refusal, unwritable
from attnprof.store_schema import APP_ID, CASE_COLUMNS, ENDED, SCHEMA_VERSION, STAT_COLUMNS, VALUE_COLUMNS  # noqa: F401 (re-exported)

RETRY_PENDING = "retry_pending"  # the env key of a --retry resume not yet complete: resuming the run retries them still
log = logging.getLogger("attnprof.store")
SAMPLE_BATCH = 900  # ids per query in Store.samples: under SQLite's historical limit of 999 parameters


class Store:
    """An attnprof database. `Store.open(path)` creates it; `Store.open(path, create=False)` only reads."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self.connection = connection
        self.path = path
        self.read_only = False  # opened by _open_read_only: a file or medium this process cannot write

    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> Store:
        path = path_argument(path, "database path")  # db=5 was a TypeError from pathlib
        try:
            str(path).encode("utf-8")  # runs store their command line, this path in it, as UTF-8 text
        except UnicodeEncodeError:
            raise UsageError(f"database path {str(path)!r} is not valid UTF-8: give it a UTF-8 name") from None
        if not create and not path.exists():
            raise UsageError(f"no database at {str(path)!r} (run a sweep first, or pass --db)")
        if path.is_dir():  # SQLite's own word for it was "unable to open database file"
            raise UsageError(f"database path {str(path)!r} is a directory: give a file in it, e.g. {str(path / 'attnprof.db')!r}")
        if path.exists() and not path.is_file():  # /dev/null read "not an attnprof database (cannot rollback - no transaction is active)"
            raise UsageError(f"database path {str(path)!r} is not a regular file: give a file, e.g. attnprof.db")
        if create:
            prepare_parent(path)
        connection, existed = None, path.exists()
        try:
            connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
            store = cls(connection, path)
            store._initialise(create)
        except (sqlite3.DatabaseError, UsageError) as error:
            if isinstance(error, sqlite3.OperationalError) and not create and unwritable(path):
                close_quietly(connection)
                return cls._open_read_only(path)
            if disk_fault(error):
                raise disk_refusal(connection, path, error, existed) from None
            raise refusal(connection, path, error) from None
        return store

    @classmethod
    def _open_read_only(cls, path: Path) -> Store:
        """A database on a read-only medium (a mounted CI artifact, a shared archive). A WAL database's readers
        need its -shm file, which cannot be created there, so SQLite refused it as 'unable to open database file';
        immutable=1 reads the file as it is (nobody can be writing to it), but not its -wal: that is read in a copy."""
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size:
            return cls._open_copy(path, wal)
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        store = cls(sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False), path)
        store.read_only = True
        try:
            tables = {row[0] for row in store.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables or store._meta("app") != APP_ID:
                raise UsageError(
                    f"{str(path)!r} is not an attnprof database (read-only; it has tables {', '.join(sorted(tables)) or 'none'})"
                )
            if schema.schema_version(store.connection, path) != SCHEMA_VERSION:
                raise UsageError(
                    f"{str(path)!r} is read-only and has schema version {store._meta('schema_version')}: copy it somewhere writable"
                )
        except (sqlite3.DatabaseError, UsageError) as error:
            raise refusal(store.connection, path, error) from None
        return store

    @classmethod
    def _open_copy(cls, path: Path, wal: Path) -> Store:
        """A read-only database with a write-ahead log, read in a temporary copy of both (store_copies): the rows a
        killed sweep committed live in its -wal until a checkpoint, and immutable=1 reads the file alone. A killed
        sweep's file, archived without its -shm, read "no runs in it yet" (an audit's; plain SQLite read 29 rows)."""
        from attnprof.store_copies import readable_copy

        connection = None
        try:
            connection = sqlite3.connect(readable_copy(path, wal), timeout=30, check_same_thread=False)
            store = cls(connection, path)
            store.read_only = True
            store._initialise(create=False)  # an older schema is brought up to date in the copy
        except OSError as error:
            close_quietly(connection)
            raise UsageError(f"cannot read {str(path)!r}: it is read-only, and copying it with its -wal failed ({error})") from None
        except (sqlite3.DatabaseError, UsageError) as error:
            raise refusal(connection, path, error) from None
        return store

    def _initialise(self, create: bool) -> None:
        if not schema.tables(self.connection):
            if not create:
                raise UsageError(f"{str(self.path)!r} is not an attnprof database (it is empty)")
            schema.create(self.connection)
        tables = schema.tables(self.connection)
        if "meta" not in tables or self._meta("app") != APP_ID:
            raise UsageError(f"{str(self.path)!r} is not an attnprof database (it has tables {', '.join(sorted(tables))})")
        schema.migrate(self.connection, self.path)
        if create:  # a reader leaves the journal as it is: `runs` rewrote a rollback-journal file (an audit's)
            schema.use_wal(self.connection)

    def _meta(self, key: str) -> str | None:
        return schema.meta(self.connection, key)

    def close(self) -> None:
        self.connection.close()

    @contextlib.contextmanager
    def consistent(self):
        """Several reads that see one state of the database (a read transaction: in WAL mode a sweep may commit
        meanwhile, unseen). Without it a row committed between two queries is seen by the second only."""
        self.connection.execute("BEGIN")
        try:
            yield self
        finally:
            self.connection.execute("COMMIT")

    # runs

    def add_run(self, run: RunInfo) -> None:
        with self.connection:
            self.connection.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.created_at,
                    run.name,
                    run.command,
                    run.state,
                    json.dumps(run.sweep),
                    json.dumps(run.env),
                    run.tool_version,
                ),
            )

    def set_run_state(self, run_id: str, state: str) -> None:
        """Record a run's state; an ended run also gets its columnar snapshot (50,000 rows: ~1 s, once)."""
        with self.connection:
            self.connection.execute("UPDATE runs SET state = ? WHERE run_id = ?", (state, run_id))
        if state in ENDED:
            try:
                with self.connection:
                    _keep_snapshot(self.connection, run_id)
            except sqlite3.Error as error:  # locked past the timeout, disk full: the run is recorded all the same
                log.warning("run %s keeps no columnar snapshot (%s); it is read from its rows", run_id, error)

    def set_pending_retry(self, run_id: str, statuses: tuple[str, ...]) -> None:
        """Record in the run's env the statuses a --retry resume measures again (RETRY_PENDING), () once it is done: a
        retry killed with SIGKILL could record nothing, and the resume it then advised, without --retry, called the
        run complete with the rows it had not reached still crashed (a robustness audit)."""
        with self.connection:
            (env_json,) = self.connection.execute("SELECT env_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            env = {key: value for key, value in json.loads(env_json).items() if key != RETRY_PENDING}
            env.update({RETRY_PENDING: list(statuses)} if statuses else {})
            self.connection.execute("UPDATE runs SET env_json = ? WHERE run_id = ?", (json.dumps(env), run_id))

    def runs(self) -> list[RunInfo]:
        return self._runs_where()

    def _runs_where(self, where: str = "", parameters: tuple = (), limit: int | None = None) -> list[RunInfo]:
        """Runs newest first, decoded (and their liveness checked) only for the rows the query keeps."""
        rows = self.connection.execute(
            "SELECT run_id, created_at, name, command, state, sweep_json, env_json, tool_version FROM runs "
            f"{where} ORDER BY created_at DESC, rowid DESC" + (f" LIMIT {int(limit)}" if limit else ""),
            parameters,
        ).fetchall()
        return [self._as_seen_now(_run_from_row(row)) for row in rows]

    def _as_seen_now(self, run: RunInfo) -> RunInfo:
        """A run stored as running whose measuring process is gone (SIGKILL, a lost machine: nothing could record
        its end) is interrupted, resumable: it read as "running" until resumed."""
        if run.state == "running" and is_measured(self.path, run.run_id) is False:
            return replace(run, state="interrupted")
        return run

    def resolve_run(self, run: str | None) -> RunInfo:
        """A run id, a unique prefix of one, a run's name (`--name`; the newest run of that name), or
        `latest` (also None)."""
        if run is not None and not isinstance(run, str):  # compare_runs(frame_a, frame_b): "truth value ... ambiguous"
            raise UsageError(f"bad run: a run is named by its id or name (text), not a {type(run).__name__}")
        if run is not None and not str(run).strip():  # `show ""` (an unset variable) showed the latest run
            raise UsageError("bad run '': an empty run id (an unset variable?); give a run id, a name or latest")
        # `latest` and an exact id read one row: every run decoded per call cost 75 ms at 4000 runs, on each of the
        # dashboard's callbacks (an audit's figure)
        first = self._runs_where(limit=1) if run in (None, "latest") else self._runs_where("WHERE run_id = ?", (str(run),))
        if first:
            return first[0]
        runs = self.runs()
        if not runs:
            raise UsageError(f"no runs in {str(self.path)!r}")
        named = [r for r in runs if r.name and r.name == run][:1]  # runs are newest first
        matches = [r for r in runs if r.run_id == run] or named or [r for r in runs if r.run_id.startswith(str(run))]
        if len(matches) > 1:
            shown = ", ".join(r.run_id for r in matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise UsageError(f"run prefix {run!r} is ambiguous: it matches {len(matches)} runs ({shown}); give more of the id")
        if not matches:
            known = ", ".join(r.run_id for r in runs[:5])
            raise UsageError(f"unknown run {run!r} in {str(self.path)!r}; recent runs: {known}")
        return matches[0]

    # measurements

    def add_measurement(self, run_id: str, m: Measurement, recorded_at: str) -> None:
        case = m.case
        case_values = [getattr(case, c) if c != "options" else json.dumps(dict(case.options)) for c in CASE_COLUMNS]
        values = [_sqlite_number(getattr(m, c)) for c in VALUE_COLUMNS]
        values[0] = m.status.value
        values[2] = json.dumps(m.times_ms)
        columns = ("run_id", "case_key", "label", *CASE_COLUMNS, *VALUE_COLUMNS, "recorded_at", *STAT_COLUMNS)
        placeholders = ", ".join("?" for _ in columns)
        with self.connection:  # one transaction per measurement: committed the moment it is taken
            self.connection.execute(
                f"INSERT OR REPLACE INTO measurements ({', '.join(columns)}) VALUES ({placeholders})",
                (run_id, case.key, case.label, *case_values, *values, recorded_at, *_stat_values(m.times_ms)),
            )

    def measurements(self, run_id: str) -> list[Measurement]:
        return list(self.iter_measurements(run_id))

    def iter_measurements(self, run_id: str) -> Iterator[Measurement]:
        """A run's measurements in insertion order, read one at a time (export streams them: the whole list of a
        50,000-cell run took 394 MB on the way to a 58 MB file)."""
        columns = ", ".join((*CASE_COLUMNS, *VALUE_COLUMNS))
        rows = self.connection.execute(f"SELECT {columns} FROM measurements WHERE run_id = ? ORDER BY id", (run_id,))
        return (_measurement_from_row(row) for row in rows)

    def frame(self, run_id: str, after_id: int | None = None):
        """A run's stored columns but the raw samples, as a pandas DataFrame indexed by row id, in insertion order
        (`columns.to_frame`: options decoded, numbers as floats with NaN for missing); with `after_id`, only the
        rows added after that id. The dashboard's read path: an ended run comes from its snapshot while that
        matches the rows (50,000 rows: 0.45-0.6 s from the rows, 35-55 ms from the snapshot); `samples`
        gives the raw samples of the rows that need them."""
        if after_id is None:
            snapshot = self._snapshot(run_id)
            if snapshot is not None:
                return columns.to_frame(snapshot)
        return columns.to_frame(columns.from_rows(_column_rows(self.connection, run_id, after_id)))

    def _snapshot(self, run_id: str):
        row = self.connection.execute("SELECT row_count, last_id, snapshot FROM run_columns WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or tuple(row[:2]) != self.row_version(run_id):
            return None  # rows were added or replaced since (a resumed run): read them
        try:
            return columns.decode(row[2])
        except Exception as error:  # noqa: BLE001  (a damaged snapshot only costs speed: the rows are read instead)
            log.warning("run %s: unreadable columnar snapshot (%s); reading its rows", run_id, error)
            return None

    def sample_counts(self, run_id: str, after_id: int | None = None) -> dict[int, int]:
        """{row id: how many timing samples it holds} (`frame`'s rows, `after_id` as there), counted by SQLite without
        reading the samples into Python: 60 ms for 50,000 rows, where a crossover needs to know a spread of 3 from one
        of 30 (crossover.FEW_SAMPLES_FACTOR)."""
        query = "SELECT id, COALESCE(json_array_length(times_ms), 0) FROM measurements WHERE run_id = ? AND id > ?"
        try:
            return dict(self.connection.execute(query, (run_id, -1 if after_id is None else int(after_id))).fetchall())
        except sqlite3.OperationalError:  # an SQLite built without JSON: counts unknown, spreads taken as they are
            return {}

    def row_version(self, run_id: str) -> tuple[int, int | None]:
        """(row count, last row id) of a run: changes whenever a row is added or replaced."""
        return tuple(self.connection.execute("SELECT COUNT(*), MAX(id) FROM measurements WHERE run_id = ?", (run_id,)).fetchone())

    def samples(self, run_id: str, row_ids) -> dict[int, list[float]]:
        """Raw timing samples (ms) of the given rows of a run (ids as `frame` indexes them)."""
        wanted = sorted({int(i) for i in row_ids})
        found = {}
        for start in range(0, len(wanted), SAMPLE_BATCH):  # only the asked rows' text is read, in batches of ids
            batch = wanted[start : start + SAMPLE_BATCH]
            query = f"SELECT id, times_ms FROM measurements WHERE run_id = ? AND id IN ({', '.join('?' * len(batch))})"
            rows = self.connection.execute(query, (run_id, *batch))
            found.update((row_id, decode_stored(text, f"the samples of row {row_id}")) for row_id, text in rows)
        return found

    def measured_keys(self, run_id: str, retry: tuple[str, ...] = ()) -> set[str]:
        """Keys of the cases with a row to keep. A case whose worker never started has a row saying "resume the run once
        fixed": a resume measures it again, its new row replacing that one (a resume said "nothing left to measure").
        So are the rows of a status in `retry` (`--retry`), and with them the skipped ones, which follow from them."""
        from attnprof.failures import never_started

        again = set(retry) | ({"skipped"} if retry else set())
        rows = self.connection.execute("SELECT case_key, status, reason FROM measurements WHERE run_id = ?", (run_id,))
        return {key for key, status, reason in rows if not never_started(status, reason) and status not in again}

    def count(self, run_id: str) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM measurements WHERE run_id = ?", (run_id,)).fetchone()[0]


def _column_rows(connection: sqlite3.Connection, run_id: str, after_id: int | None = None) -> list[tuple]:
    query = f"SELECT {', '.join(columns.COLUMNS)} FROM measurements WHERE run_id = ? AND id > ? ORDER BY id"
    return connection.execute(query, (run_id, -1 if after_id is None else int(after_id))).fetchall()


def _keep_snapshot(connection: sqlite3.Connection, run_id: str) -> None:
    """Store the run's rows as one columnar snapshot, tagged with the row count and last id it was made from.
    Best effort: the snapshot only speeds up reading, so a failure to encode leaves the run without one, read from
    its rows, with a warning."""
    rows = _column_rows(connection, run_id)
    try:
        snapshot = columns.encode(columns.from_rows(rows))
    except (TypeError, ValueError, OverflowError) as error:
        log.warning("run %s keeps no columnar snapshot (%s); it is read from its rows", run_id, error)
        return
    version = (len(rows), rows[-1][0] if rows else None)  # (row count, last id): what frame checks it against
    connection.execute("INSERT OR REPLACE INTO run_columns VALUES (?, ?, ?, ?)", (run_id, *version, snapshot))


SQLITE_INTEGER_MAX = 2**63 - 1


def _sqlite_number(value):
    """An integer past SQLite's 64 bits as a float (stored REAL; the columns read numbers as float64 anyway): softmax's
    FLOPs at N = 2^26, H16 D64 are 2^64, and the store's OverflowError ended an accounting sweep and each resume."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SQLITE_INTEGER_MAX:
        return float(value)
    return value


def _stat_values(times_ms: list[float]) -> tuple:
    stats = time_stats(times_ms)
    return tuple(stats[c] for c in STAT_COLUMNS)


def _run_from_row(row) -> RunInfo:
    run_id, created_at, name, command, state, sweep_json, env_json, tool_version = row
    sweep, env = decode_stored(sweep_json, f"the sweep of run {run_id}"), decode_stored(env_json, f"the environment of run {run_id}")
    return RunInfo(run_id, created_at, sweep, env, tool_version, name or "", command or "", state)


def _measurement_from_row(row) -> Measurement:
    case_data = dict(zip(CASE_COLUMNS, row[: len(CASE_COLUMNS)], strict=False))
    case_data["options"] = decode_stored(case_data["options"], f"the options of a {case_data['impl']} row")
    case_data["causal"] = bool(case_data["causal"])
    values = dict(zip(VALUE_COLUMNS, row[len(CASE_COLUMNS) :], strict=False))
    values["status"] = Status(values["status"])
    values["times_ms"] = decode_stored(values["times_ms"], f"the samples of a {case_data['impl']} row")
    return Measurement(case=Case.from_dict(case_data), **values)
