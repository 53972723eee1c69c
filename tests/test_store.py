"""The SQLite store: schema version, refusals, one transaction per measurement, runs."""

import contextlib
import sqlite3

import pytest

from attnprof.api import run_sweep
from attnprof.errors import UsageError
from attnprof.records import Measurement, RunInfo, Status
from attnprof.spec import Case, Sweep
from attnprof.store import SCHEMA_VERSION, Store


def a_run(run_id="r1", created="2026-01-01T00:00:00", name=""):
    return RunInfo(run_id, created, {"impl_specs": [["softmax", {}]]}, {"torch_version": "x"}, "0.1.0", name)


def test_round_trip_and_wal(db):
    store = Store.open(db)
    store.add_run(a_run())
    m = Measurement(
        Case(impl="softmax", seq_len=64, options=(("k", 1),)),
        Status.OK,
        times_ms=[1.0, 2.0, 3.0],
        peak_bytes=10,
        peak_source="live_tensors",
    )
    store.add_measurement("r1", m, "now")
    assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    reader = Store.open(db, create=False)
    [back] = reader.measurements("r1")
    assert back == m and back.median_ms == 2.0 and back.peak_alloc_bytes is None


def test_a_count_past_64_bits_is_stored(db):
    """Softmax's FLOPs at N = 2^26, H16 D64 are 2^64: an OverflowError ended the accounting sweep there, and each
    resume. Such a count is kept as a float (the columns read numbers as float64 anyway)."""
    from attnprof.dashboard.data import run_frame

    store = Store.open(db)
    store.add_run(a_run())
    store.add_measurement("r1", Measurement(Case(impl="softmax", seq_len=1 << 26), Status.OK, flops=2**64, min_bytes=2**70), "now")
    [back] = store.measurements("r1")
    assert back.flops == pytest.approx(2.0**64) and back.min_bytes == pytest.approx(2.0**70)
    assert run_frame("r1", store.frame("r1"))["flops"].iloc[0] == pytest.approx(2.0**64)
    store.close()


def test_resolve_run_latest_prefix_unknown(db):
    store = Store.open(db)
    store.add_run(a_run("20260101-aaaa", "2026-01-01T00:00:00"))
    store.add_run(a_run("20260102-bbbb", "2026-01-02T00:00:00"))
    assert store.resolve_run("latest").run_id == "20260102-bbbb"
    assert store.resolve_run("20260101").run_id == "20260101-aaaa"
    with pytest.raises(UsageError, match="unknown run 'zzz'"):
        store.resolve_run("zzz")
    store.add_run(a_run("20260103-cccc", "2026-01-03T00:00:00", name="nightly"))
    store.add_run(a_run("20260104-dddd", "2026-01-04T00:00:00", name="nightly"))
    assert store.resolve_run("nightly").run_id == "20260104-dddd"  # a name: its newest run
    with pytest.raises(UsageError, match=r"run prefix '2026' is ambiguous: it matches 4 runs \(20260104-dddd, 20260103-cccc, 2026010"):
        store.resolve_run("2026")


def test_newer_schema_is_refused_and_older_unknown_is_refused(db):
    Store.open(db).close()
    connection = sqlite3.connect(db)
    connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    connection.commit()
    connection.close()
    with pytest.raises(UsageError, match="newer than this attnprof"):
        Store.open(db)
    connection = sqlite3.connect(db)
    connection.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    connection.commit()
    connection.close()
    with pytest.raises(UsageError, match="cannot migrate"):
        Store.open(db)


def test_every_measurement_is_committed_on_its_own(db):
    store = Store.open(db)
    store.add_run(a_run())
    other = sqlite3.connect(db)  # a second connection sees each row as soon as add_measurement returns
    for n in (64, 128, 256):
        store.add_measurement("r1", Measurement(Case(impl="softmax", seq_len=n), Status.OOM, reason="x"), "now")
        assert other.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == {64: 1, 128: 2, 256: 3}[n]
    other.close()
    store.close()


def test_a_version_1_database_gains_the_stored_timing_statistics(db):
    """Schema 2 stores each row's median, p20, p80, IQR and noise flag; a version-1 file is migrated in place."""
    from attnprof.records import time_stats
    from attnprof.store import STAT_COLUMNS

    store = Store.open(db)
    store.add_run(a_run())
    samples = {64: [1.0, 2.0, 3.0, 10.0], 128: [], 256: [5.0]}
    for n, times in samples.items():
        store.add_measurement("r1", Measurement(Case(impl="softmax", seq_len=n), Status.OK if times else Status.OOM, times_ms=times), "now")
    store.close()
    connection = sqlite3.connect(db)  # back to what schema 1 stored
    for column in STAT_COLUMNS:
        connection.execute(f"ALTER TABLE measurements DROP COLUMN {column}")
    connection.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    connection.commit()
    connection.close()
    store = Store.open(db, create=False)
    assert store._meta("schema_version") == str(SCHEMA_VERSION)
    frame = store.frame("r1")
    store.close()
    for row in frame.itertuples():
        expected = time_stats(samples[row.seq_len])
        for column in STAT_COLUMNS:
            got = getattr(row, column)
            assert (got is None or got != got) if expected[column] is None else got == pytest.approx(expected[column]), (
                row.seq_len,
                column,
            )
    assert frame["noisy"].tolist() == [True, None, False]


def test_samples_reads_only_the_asked_rows_in_batches(db, monkeypatch):
    monkeypatch.setattr("attnprof.store.SAMPLE_BATCH", 2)  # 5 ids -> 3 queries
    store = Store.open(db)
    store.add_run(a_run())
    for n in range(1, 8):
        store.add_measurement("r1", Measurement(Case(impl="softmax", seq_len=64 * n), Status.OK, times_ms=[float(n)]), "now")
    frame = store.frame("r1")
    asked = frame.index[[0, 2, 3, 5, 6]]
    assert store.samples("r1", asked) == {i: [float(frame.loc[i, "seq_len"] // 64)] for i in asked}
    assert store.samples("other-run", asked) == {}
    store.close()


def test_a_database_on_a_read_only_mount_is_read(db, tmp_path):
    """A WAL database's readers need its -shm file; on a read-only medium (a mounted CI artifact) SQLite cannot
    create it and every reader said "not an attnprof database". Needs a real read-only mount (root here)."""

    store = Store.open(db)
    store.add_run(a_run())
    store.add_measurement("r1", Measurement(Case(impl="softmax", seq_len=64), Status.OK, times_ms=[1.0]), "now")
    store.close()
    with read_only_mount(tmp_path, {"results.db": db}) as mount:
        reader = Store.open(mount / "results.db", create=False)
        [back] = reader.measurements(reader.resolve_run("latest").run_id)
        reader.close()
        assert back.times_ms == [1.0]
        with pytest.raises(UsageError, match="not writable"):
            Store.open(mount / "results.db")  # a writer is still refused, with the reason
        with pytest.raises(UsageError, match="not writable: resuming adds"):  # was sqlite3's 'attempt to write a readonly database'
            run_sweep(Sweep(), mount / "results.db", resume="latest")


@contextlib.contextmanager
def read_only_mount(tmp_path, files: dict):
    """A real read-only medium (a tmpfs remounted ro; root here) holding `files` (name -> source path)."""
    import shutil
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    try:
        for name, source in files.items():
            shutil.copy(source, mount / name)
        assert subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True).returncode == 0
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)  # lazy: a reader left open must not keep it


def test_a_killed_sweeps_rows_in_its_wal_are_read_on_a_read_only_mount(db, tmp_path):
    """A killed sweep's committed rows live in its -wal until a checkpoint. Archived without its -shm and read from a
    read-only medium (immutable=1, which ignores the -wal), the file read "no runs in it yet": now both are read in a
    temporary copy, one per process (the dashboard opens the database on every request), removed at exit."""
    import glob
    import subprocess
    import sys
    import tempfile

    writer = f"""
import os
from attnprof.records import Measurement, RunInfo, Status
from attnprof.spec import Case
from attnprof.store import Store
store = Store.open({str(db)!r})
store.add_run(RunInfo("r1", "2026-01-01T00:00:00", {{}}, {{}}, "0.1.0", state="running"))
for n in (64, 128, 256):
    store.add_measurement("r1", Measurement(Case(impl="softmax", seq_len=n), Status.OK, times_ms=[n / 64]), "now")
os._exit(0)  # as a SIGKILL leaves it: no close, no checkpoint
"""
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=120)
    assert (tmp_path / "test.db-wal").stat().st_size > 0
    with read_only_mount(tmp_path, {"results.db": db, "results.db-wal": tmp_path / "test.db-wal"}) as mount:  # not the -shm
        copies = lambda: set(glob.glob(f"{tempfile.gettempdir()}/attnprof-read-only-*"))  # noqa: E731
        before = copies()
        for _ in range(3):  # one copy, kept while the files stay the same
            reader = Store.open(mount / "results.db", create=False)
            assert reader.read_only and [run.run_id for run in reader.runs()] == ["r1"]
            assert [m.times_ms for m in reader.measurements("r1")] == [[1.0], [2.0], [4.0]]
            reader.close()
        assert len(copies() - before) == 1
        runs = [sys.executable, "-m", "attnprof", "runs", "--db", str(mount / "results.db")]  # another process: copy gone at exit
        listed = subprocess.run(runs, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0 and "r1" in listed.stdout and "3 cases" in listed.stdout, listed.stderr
        assert len(copies() - before) == 1


def test_a_reader_leaves_a_rollback_journal_file_as_it_is(db):
    """`attnprof runs` switched a file in rollback-journal mode (a copy VACUUMed by another tool) to WAL, rewriting it."""
    import hashlib

    store = Store.open(db)
    store.add_run(a_run())
    store.close()
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    reader = Store.open(db, create=False)
    assert [run.run_id for run in reader.runs()] == ["r1"]
    reader.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    writer = Store.open(db)  # a sweep still takes WAL, for the readers beside its writes
    assert writer.connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    writer.close()


def _as_a_user_file_modes_bind(command: list[str]) -> list[str]:
    """`command` run so that file modes apply: root ignores them (CAP_DAC_OVERRIDE), so root drops that capability."""
    import os
    import shutil

    if os.geteuid() != 0:
        return command
    if not shutil.which("setpriv"):
        pytest.skip("root ignores file modes, and setpriv (util-linux), which drops that, is not installed")
    return ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override", *command]


def test_resuming_a_file_this_user_may_only_read_is_one_line(db):
    """Mode 444: SQLite opens the file read-only, and the resume's first write ended in sqlite3's 'attempt to write a
    readonly database' traceback (a new sweep there was refused in one line)."""
    import subprocess
    import sys

    from attnprof.api import _new_run, resolve_sweep

    run = _new_run(resolve_sweep(Sweep(impls=("softmax",), lengths=(256,), accounting=True)), "attnprof sweep")
    store = Store.open(db)
    store.add_run(run)  # this machine's environment, nothing measured yet
    store.set_run_state(run.run_id, "interrupted")
    store.close()
    db.chmod(0o444)
    resumed = subprocess.run(
        _as_a_user_file_modes_bind([sys.executable, "-m", "attnprof", "sweep", "--resume", run.run_id, "--db", str(db)]),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = resumed.stderr.strip().splitlines()
    assert resumed.returncode == 2 and len(lines) == 1 and "Traceback" not in resumed.stderr, resumed.stderr
    assert f"database path {str(db)!r} is not writable" in lines[0] and "resuming adds the missing rows" in lines[0]
    db.chmod(0o644)
    db.parent.chmod(0o555)  # the file may be written, its folder (where SQLite keeps its journal) not
    try:
        command = [sys.executable, "-m", "attnprof", "sweep", "--accounting", "--impl", "softmax", "--lengths", "256", "--db", str(db)]
        new = subprocess.run(_as_a_user_file_modes_bind(command), capture_output=True, text=True, timeout=300)
    finally:
        db.parent.chmod(0o755)
    assert (
        new.returncode == 2
        and new.stderr.strip() == f"Error: database path {str(db)!r} is not writable (its folder, where SQLite keeps its journal)"
    )


def test_a_damaged_or_foreign_database_is_one_line_naming_it(db, tmp_path):
    """Found only once read: a page overwritten (sqlite3's 'database disk image is malformed'), a column dropped, a
    schema version that is no number. Each was a traceback, exit 1, from every command."""
    import shutil
    import subprocess
    import sys

    store = Store.open(db)
    store.add_run(a_run())
    for n in range(1, 300):  # enough rows for the measurements to fill pages of their own
        store.add_measurement("r1", Measurement(Case(impl="softmax", seq_len=64 * n), Status.OK, times_ms=[1.0] * 50), "now")
    store.close()
    damaged = {name: tmp_path / f"{name}.db" for name in ("page", "column", "version")}
    for path in damaged.values():
        shutil.copy(db, path)
    with open(damaged["page"], "r+b") as file:
        file.seek(4096 * 5)
        file.write(b"\x5a" * 4096 * 4)
    with sqlite3.connect(damaged["column"]) as connection:
        connection.execute("ALTER TABLE measurements DROP COLUMN peak_live_bytes")
    with sqlite3.connect(damaged["version"]) as connection:
        connection.execute("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'")
    said = {"page": "malformed", "column": "no such column: peak_live_bytes", "version": "has schema version 'abc'"}
    for name, path in damaged.items():
        for command in ("show", "fit", "export"):
            result = subprocess.run(
                [sys.executable, "-m", "attnprof", command, "--db", str(path)], capture_output=True, text=True, timeout=120
            )
            lines, shown = result.stderr.strip().splitlines(), (name, command, result.stderr)
            assert result.returncode == 2 and len(lines) == 1 and said[name] in lines[0] and repr(str(path)) in lines[0], shown
        rules = tmp_path / "rules.toml"  # the gate too: it caught every exception as its own crash (exit 4, a traceback)
        rules.write_text('[[rule]]\nimpl = "softmax"\nmetric = "peak_bytes"\nmax_exponent = 2.5\n')
        gate = [sys.executable, "-m", "attnprof", "gate", str(rules), "--run", "r1", "--db", str(path)]
        result = subprocess.run(gate, capture_output=True, text=True, timeout=120)
        lines, shown = result.stderr.strip().splitlines(), (name, "gate", result.stderr)
        assert result.returncode == 2 and len(lines) == 1 and said[name] in lines[0] and repr(str(path)) in lines[0], shown


def _open_after(path, barrier, results):
    barrier.wait()
    try:
        Store.open(path).close()
        results.put("ok")
    except Exception as error:  # noqa: BLE001 - the test reports what each process met
        results.put(f"{type(error).__name__}: {error}")


def test_processes_creating_one_new_database_at_once_all_get_it(tmp_path):
    """Four sweeps started together on a new file: one of them was told the file is "not an attnprof database"
    (the others' half-made tables, or a WAL switch that does not wait for the lock); 34 of 40 trials in an audit."""
    import multiprocessing

    context = multiprocessing.get_context("fork")  # the store starts no threads; spawn would re-import torch 4 times
    for trial in range(8):
        path = tmp_path / f"new{trial}.db"
        barrier, results = context.Barrier(4), context.Queue()
        processes = [context.Process(target=_open_after, args=(path, barrier, results)) for _ in range(4)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join()
        assert outcomes == ["ok"] * 4, (trial, outcomes)


def test_a_full_disk_is_said_as_such_and_the_database_is_kept(db, tmp_path):
    """A full disk read "'x.db' is not an attnprof database (disk I/O error)", exit 2, from every command, for a file
    SQLite found sound once room was made (a robustness audit): a user may delete it. Needs a real small mount."""
    import shutil
    import subprocess

    from click.testing import CliRunner

    from attnprof.cli import cli

    store = Store.open(db)
    store.add_run(a_run())
    store.add_measurement("r1", Measurement(Case(impl="softmax", seq_len=64), Status.OK, times_ms=[1.0]), "now")
    store.close()
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    try:
        shutil.copy(db, mount / "kept.db")
        subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'fill'}", "bs=1k"], capture_output=True)  # until the disk is full
        for command in (["runs"], ["show", "latest"], ["sweep", "--impl", "softmax", "--lengths", "64", "--device", "cpu"]):
            result = CliRunner().invoke(cli, [*command, "--db", str(mount / "kept.db")])
            assert result.exit_code == 1 and "not an attnprof database" not in result.output, (command, result.output)
            assert f"cannot write the database '{mount / 'kept.db'}': " in result.output, result.output
            assert "(a full disk, or a file size limit?); it was not changed" in result.output, result.output
        created = CliRunner().invoke(
            cli, ["sweep", "--impl", "softmax", "--lengths", "64", "--device", "cpu", "--db", str(mount / "new.db")]
        )
        assert created.exit_code == 1 and "it was not created" in created.output, created.output
        assert not (mount / "new.db").exists()  # a 0-byte new.db was left behind
        (mount / "fill").unlink()
        kept = Store.open(mount / "kept.db", create=False)
        assert [m.times_ms for m in kept.measurements("r1")] == [[1.0]]
        kept.close()
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)


def test_a_file_size_limit_when_creating_a_database_is_the_disks_fault(tmp_path):
    """Under `ulimit -f`, SQLite's failed write surfaced as "not an attnprof database (cannot rollback - no transaction
    is active)", exit 2, and a 0-byte file stayed."""
    import resource
    import subprocess
    import sys

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, 40 * 1024))

    command = [sys.executable, "-m", "attnprof", "sweep", "--impl", "softmax", "--lengths", "64", "--device", "cpu", "--db", "new.db"]
    result = subprocess.run(command, cwd=tmp_path, preexec_fn=limited, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Error: cannot write the database 'new.db': disk I/O error" in result.stderr, result.stderr
    assert "(a full disk, or a file size limit?); it was not created" in result.stderr and not (tmp_path / "new.db").exists()
