"""Export streams its records: the same text as building it whole, no half-written file when it fails."""

import csv
import io
import json

import pytest

from attnprof.export import EXPORT_KEYS, measurement_record, write_records
from attnprof.records import Measurement, Status
from attnprof.spec import Case


def records(count: int) -> list[dict]:
    rows = [Measurement(Case(impl="softmax", seq_len=64 * (i + 1)), Status.OK, "a\nnote" if i else "", times_ms=[1.0, 2.5], peak_bytes=i)
            for i in range(count)]  # fmt: skip
    return [measurement_record("run-1", m) for m in rows]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_streamed_text_is_what_the_whole_list_gives(count):
    wanted = records(count)
    written = {}
    for output_format in ("json", "jsonl", "csv"):
        stream = io.StringIO()
        assert write_records(iter(wanted), output_format, stream) == count
        written[output_format] = stream.getvalue()
    assert written["json"] == json.dumps(wanted, default=str, indent=1) + "\n"
    assert [json.loads(line) for line in written["jsonl"].splitlines()] == json.loads(written["json"])
    rows = list(csv.DictReader(io.StringIO(written["csv"], newline="")))
    assert [row["seq_len"] for row in rows] == [str(r["seq_len"]) for r in wanted] and (not rows or list(rows[0]) == list(EXPORT_KEYS))
    assert [json.loads(row["times_ms"]) for row in rows] == [r["times_ms"] for r in wanted]


def test_a_failure_halfway_leaves_no_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import attnprof.export as export
    from attnprof.cli import cli

    db = one_run_db(tmp_path)
    real = export.measurement_record

    def fails_on_the_third(run_id, m):
        if m.case.seq_len == 66:
            raise OSError(28, "No space left on device")
        return real(run_id, m)

    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(export, "measurement_record", fails_on_the_third)
    result = CliRunner().invoke(cli, ["export", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 2 and "cannot write" in result.output and "No space left on device" in result.output
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("x.db")] == []  # neither the file nor a temporary one
    monkeypatch.undo()
    assert CliRunner().invoke(cli, ["export", "--db", str(db), "--out", str(out)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 3


def one_run_db(tmp_path, rows: int = 3):
    from attnprof.records import RunInfo
    from attnprof.store import Store

    db = tmp_path / "x.db"
    store = Store.open(db)
    store.add_run(RunInfo("20260101-000000-abcd", "2026", {}, {}, "0.1.0", state="running"))
    for i in range(rows):
        store.add_measurement("20260101-000000-abcd", Measurement(Case(impl="softmax", seq_len=64 + i), Status.OK, times_ms=[1.0]), "t")
    store.close()
    return db


def test_out_writes_through_what_is_not_a_regular_file_and_keeps_a_files_permissions(tmp_path):
    """A rename over --out replaced a symlink, a FIFO (its reader got nothing) or, as root, /dev/null with a regular file
    (a review). Those are written through, as `>` would; a regular file keeps its permissions."""
    import os
    import stat
    import threading

    from click.testing import CliRunner

    from attnprof.cli import cli

    db = one_run_db(tmp_path)
    export = lambda out: CliRunner().invoke(cli, ["export", "--db", str(db), "--out", str(out)])  # noqa: E731
    target, link = tmp_path / "target.jsonl", tmp_path / "link.jsonl"
    target.write_text("old\n")
    link.symlink_to(target)
    assert export(link).exit_code == 0 and link.is_symlink() and len(target.read_text().splitlines()) == 3
    fifo, received = tmp_path / "pipe", []
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    assert export(fifo).exit_code == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and len(received[0].splitlines()) == 3
    private = tmp_path / "private.jsonl"
    private.write_text("")
    private.chmod(0o600)
    assert export(private).exit_code == 0 and stat.S_IMODE(private.stat().st_mode) == 0o600 and len(private.read_text().splitlines()) == 3


@pytest.mark.parametrize("value", [True, False, 0, 32, -3, 1e-06, 0.5, float("inf"), "reference", "per-head", "eager"])
def test_an_options_value_comes_back_with_the_type_it_was_run_with(value):
    from attnprof.impls.base import option_text, typed_options

    (typed,) = typed_options({"key": option_text(value)}).values()
    assert typed == value and type(typed) is type(value)


def test_export_and_the_dataframe_give_options_typed_and_the_label_and_stored_text_unchanged(tmp_path):
    """`num_landmarks` came back "32": a script filtering an export on options["num_landmarks"] == 32 matched nothing."""
    import sqlite3

    from click.testing import CliRunner

    from attnprof.api import load_measurements
    from attnprof.cli import cli

    db = tmp_path / "o.db"
    sweep = ["sweep", "--impl", "nystromformer:num_landmarks=8,pinv_iterations=3,pinv_init=per-head", "--lengths", "64", "--heads", "1",
             "--head-dim", "16", "--device", "cpu", "--dtype", "float32", "--causal", "no", "--rep-ms", "5",
             "--warmup-ms", "1", "--db", str(db)]  # fmt: skip
    assert CliRunner().invoke(cli, sweep).exit_code == 0
    wanted = {"num_landmarks": 8, "pinv_iterations": 3, "pinv_init": "per-head"}
    for output_format in ("json", "csv"):
        text = CliRunner().invoke(cli, ["export", "--format", output_format, "--db", str(db)]).output
        record = json.loads(text)[0] if output_format == "json" else next(csv.DictReader(io.StringIO(text, newline="")))
        options = record["options"] if output_format == "json" else json.loads(record["options"])
        assert options == wanted and type(options["num_landmarks"]) is int
        assert record["label"] == "nystromformer[num_landmarks=8,pinv_init=per-head,pinv_iterations=3]"
    frame = load_measurements("latest", db)
    assert frame["options"].tolist() == [wanted] and type(frame["options"][0]["pinv_iterations"]) is int
    with sqlite3.connect(db) as connection:  # the cell's identity (resume, compare) stays the text it was stored as
        (stored,) = connection.execute("SELECT options FROM measurements").fetchone()
    assert json.loads(stored) == {"num_landmarks": "8", "pinv_iterations": "3", "pinv_init": "per-head"}


def test_runs_and_export_from_python_are_what_the_commands_write(tmp_path):
    """A notebook had no function for `runs` or `export` (a baseline file only through the CLI or private helpers)."""
    from click.testing import CliRunner

    import attnprof
    from attnprof.cli import cli

    db = one_run_db(tmp_path)
    listed = attnprof.list_runs(db)
    assert listed.to_dict("records") == [
        {
            "run_id": "20260101-000000-abcd",
            "created_at": "2026",
            "state": "interrupted",
            "cases": 3,
            "planned": None,
            "device": "?",
            "name": "",
        }
    ]
    stream = io.StringIO()
    assert attnprof.export_runs("latest", db, "jsonl", stream=stream) == 3
    assert stream.getvalue() == CliRunner().invoke(cli, ["export", "--db", str(db)]).stdout
    measured = tmp_path / "measured.db"  # a real run: its baseline file, as `export --format baseline` writes it
    attnprof.run_sweep(attnprof.Sweep(impls="softmax", lengths=(1024, 2048), heads=(1,), causal=(False,), accounting=True), measured)
    notes = []
    assert attnprof.export_runs(["latest"], measured, "baseline", tmp_path / "out" / "baseline.jsonl", note=notes.append) == 2
    cli_out = tmp_path / "cli.jsonl"
    assert CliRunner().invoke(cli, ["export", "--db", str(measured), "--format", "baseline", "--out", str(cli_out)]).exit_code == 0
    assert (tmp_path / "out" / "baseline.jsonl").read_text() == cli_out.read_text() and notes == []
    with pytest.raises(attnprof.UsageError, match="unknown export format 'xlsx'; choose from jsonl, json, csv, baseline"):
        attnprof.export_runs("latest", db, "xlsx")
    with pytest.raises(attnprof.UsageError, match="no runs to export"):  # it exported the newest run (an API audit)
        attnprof.export_runs([], db, stream=io.StringIO())
    assert attnprof.export_runs(None, db, stream=io.StringIO()) == 3  # None: latest, as it was (a review)


@pytest.mark.parametrize("output_format", ["csv", "json", "jsonl"])
def test_an_export_of_an_unfinished_run_says_so(tmp_path, output_format):
    """ "wrote 3 records" for an interrupted run of 16 cells: the file looked like a finished sweep (a report audit)."""
    import sqlite3

    from click.testing import CliRunner

    from attnprof.cli import cli

    db = tmp_path / "a.db"
    sweep = ["sweep", "--impl", "softmax", "--lengths", "64,128", "--heads", "2", "--head-dim", "16", "--device", "cpu", "--causal", "no"]
    assert CliRunner().invoke(cli, [*sweep, "--warmup-ms", "1", "--rep-ms", "5", "--db", str(db)]).exit_code == 0
    out = tmp_path / f"out.{output_format}"
    finished = CliRunner().invoke(cli, ["export", "--format", output_format, "--out", str(out), "--db", str(db)])
    assert finished.exit_code == 0 and "note:" not in finished.output, finished.output
    connection = sqlite3.connect(db)
    connection.execute("DELETE FROM measurements WHERE seq_len = 128")
    connection.execute("UPDATE runs SET state = 'interrupted'")
    connection.commit()
    connection.close()
    partial = CliRunner().invoke(cli, ["export", "--format", output_format, "--out", str(out), "--db", str(db)])
    assert partial.exit_code == 0, partial.output
    assert "is interrupted: 1 of 2 cases, the rest with attnprof sweep --resume" in partial.output
    assert "the export holds the cells it has measured" in partial.output


def test_a_baseline_of_noisy_cells_is_not_said_to_come_from_a_slowed_machine():
    """Noisy cells alone were said to make a baseline "compare with a slowed machine" (a README audit): load is one
    cause of a spread, not the only one; busy cells are said so."""
    import pandas as pd

    from attnprof.run_export import _note_slowed_baseline

    busy = "timed while other processes kept 1.0 of 2 cores busy: times may be inflated"
    cells = pd.DataFrame([dict(label="softmax", status="ok", times_ms=[1.0, 2.0], reason="", noisy=True),
                          dict(label="sdpa", status="ok", times_ms=[1.0, 1.0], reason="", noisy=False)])  # fmt: skip
    said = []
    _note_slowed_baseline(cells, said.append)
    assert "1 is noisy" in said[0] and "slowed machine" not in said[0] and "a longer --rep-ms" in said[0], said
    said.clear()
    _note_slowed_baseline(cells.assign(reason=[busy, ""]), said.append)
    assert "compares with a slowed machine" in said[0], said


def test_runs_says_how_much_of_an_unfinished_run_there_is(tmp_path):
    """`attnprof runs` said "1 cases" of an interrupted run of 2 (a robustness audit): its planned count beside it."""
    import sqlite3

    from click.testing import CliRunner
    from small_sweeps import small_sweep

    import attnprof
    from attnprof.cli import cli

    db = tmp_path / "r.db"
    run_id = attnprof.run_sweep(small_sweep("softmax", lengths=(64, 128), causal=(False,)), db)
    assert attnprof.list_runs(db)[["cases", "planned"]].values.tolist() == [[2, 2]]
    connection = sqlite3.connect(db)
    connection.execute("DELETE FROM measurements WHERE seq_len = 128")
    connection.execute("UPDATE runs SET state = 'interrupted'")
    connection.commit()
    connection.close()
    assert attnprof.list_runs(db)[["cases", "planned"]].values.tolist() == [[1, 2]]
    listed = CliRunner().invoke(cli, ["runs", "--db", str(db)]).stdout
    assert f"{run_id}" in listed and "interrupted     1 of 2 cases" in listed, listed
