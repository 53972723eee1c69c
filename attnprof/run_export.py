"""Stored runs written out: the library side of `attnprof runs`, `attnprof export` and `show --format json|csv`.

attnprof.list_runs(db="my.db")                                    # a DataFrame, newest run first
attnprof.export_runs(["latest"], db="my.db", output_format="csv", out="results.csv")
attnprof.export_runs(["latest"], db="my.db", output_format="baseline", out="baseline.jsonl")  # `gate --baseline`
"""

from __future__ import annotations

import sys
from pathlib import Path

from attnprof.errors import UsageError, make_folder, path_argument

FORMATS = ("jsonl", "json", "csv", "baseline")
RUN_COLUMNS = ("run_id", "created_at", "state", "cases", "planned", "device", "name")


def list_runs(db=None):
    """The runs in `db`, newest first, as a pandas DataFrame of RUN_COLUMNS (what `attnprof runs` prints; cases: the
    rows it holds, planned: the cases its sweep plans, None where its stored sweep cannot be read; device: the GPU's
    name, or the devices the sweep asked for)."""
    import pandas as pd

    return pd.DataFrame(run_rows(db), columns=list(RUN_COLUMNS))


def run_rows(db=None) -> list[tuple]:
    """list_runs' rows as tuples: `attnprof runs` prints them without importing pandas (0.3 s of its 0.35)."""
    from attnprof.api import default_db
    from attnprof.store import Store

    store = Store.open(db or default_db(), create=False)
    try:
        rows = []
        for run in store.runs():
            count = store.count(run.run_id)
            rows.append(
                (
                    run.run_id,
                    run.created_at,
                    run.state,
                    count,
                    count if run.state == "complete" else _planned(run),
                    run_device(run),
                    run.name,
                )
            )
        return rows
    finally:
        store.close()


def _planned(run) -> int | None:
    """How many cases an unfinished run's sweep plans: `runs` said "6 cases" of an interrupted run of 24 (an audit)."""
    from attnprof.spec import Sweep

    try:
        return len(Sweep.from_dict(run.sweep).cases())
    except (KeyError, TypeError, ValueError):  # a stored definition this version cannot read
        return None


def run_device(run) -> str:
    return run.env.get("gpu_name") or ",".join(run.sweep.get("device", [])) or "?"


def export_runs(runs=("latest",), db=None, output_format: str = "jsonl", out=None, *, stream=None, note=None) -> int:
    """Write one record per case of `runs` (ids, unique prefixes, names or `latest`; several into one file) as jsonl,
    a json array, csv, or the baseline file `gate --baseline` reads, to the file `out` (replaced whole, its folder
    made) or to `stream` (default stdout); returns how many records. note(text): where the baseline's caveats go (a run
    timed on a busy machine, an unfinished run; default stderr)."""
    from attnprof.api import default_db
    from attnprof.store import Store

    if output_format not in FORMATS:
        raise UsageError(f"unknown export format {output_format!r}; choose from {', '.join(FORMATS)}")
    out = None if out is None else path_argument(out, "out")  # out=123 was pathlib's TypeError (an API audit)
    if stream is not None and not callable(getattr(stream, "write", None)):
        raise UsageError(f"bad stream {stream!r}: give a text stream (an open file, io.StringIO, sys.stdout)")
    runs = ("latest",) if runs is None else (runs,) if isinstance(runs, str) else tuple(runs)  # None: latest, as before
    if not runs:  # export_runs([]) wrote the newest run's records, a list meant to be filled that came out empty (an API audit)
        raise UsageError("no runs to export: give run ids, names or 'latest'")
    db = db or default_db()
    store = Store.open(db, create=False)
    try:
        run_ids = list(dict.fromkeys(store.resolve_run(run).run_id for run in runs))  # `latest <its id>` names one run twice
        note = note or (lambda text: print(text, file=sys.stderr))
        if output_format != "baseline":
            count = _stream_records(store, run_ids, output_format, out, stream)
            _note_partial_runs({run_id: store.resolve_run(run_id) for run_id in run_ids}, store, db, note)
            return count
        measured = {run_id: store.measurements(run_id) for run_id in run_ids}
        infos = {run_id: store.resolve_run(run_id) for run_id in run_ids}
    finally:
        store.close()
    return _write_baseline(measured, infos, db, out, stream, note)


def _note_partial_runs(infos, store, db, note) -> None:
    """An export of an interrupted, killed or still running run looked like a finished sweep: the records name no state,
    and "wrote 3 records" said nothing of the 13 cells without a row (a report audit). Said; the file is written."""
    from attnprof.dashboard.runinfo import unfinished_note

    for run_id, info in infos.items():
        if unfinished := unfinished_note(info, store.count(run_id), db):
            note(f"note: run {run_id} is {unfinished}; the export holds the cells it has measured")


def _stream_records(store, run_ids, output_format, out, stream) -> int:
    """Each record written as it is read, to `out` (write_whole) or to the stream: memory stays one record's."""
    from attnprof.export import measurement_record, write_records

    records = (measurement_record(run_id, m) for run_id in run_ids for m in store.iter_measurements(run_id))
    if out is None:
        return write_records(records, output_format, stream or sys.stdout)
    return write_out(out, lambda opened: write_records(records, output_format, opened))


def write_out(out, write):
    """write(stream) into the file `out` (write_whole), its folder made as `report --out` makes it; an OS error is bad input."""
    make_folder(Path(out).parent, repr(str(out)))
    try:
        return write_whole(Path(out), write)
    except OSError as error:
        raise UsageError(f"cannot write {str(out)!r}: {error.strerror}") from None


def write_whole(path, write):
    """write(stream) into `path`, returning what it returns. A regular file (or a new one) is written beside it under a
    name of its own and renamed over it at the end, with its permissions: a failure halfway (a full disk, Ctrl-C) leaves
    the previous file as it was, and two exports to one file cannot interleave. Anything else (/dev/null, /dev/stdout,
    a FIFO, `>(...)`, a symlink) is written through, as the shell's `>` would: a rename would replace it."""
    import contextlib
    import os
    import stat
    import tempfile

    if path.is_symlink() or (path.exists() and not path.is_file()):
        with open(path, "w", newline="") as stream:  # newline="": csv's \r\n as csv writes it
            return write(stream)
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~umask
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=".attnprof-", suffix=".part")  # a short name: any out fits
    try:
        os.chmod(partial, mode)
        with os.fdopen(descriptor, "w", newline="") as stream:
            result = write(stream)
        os.replace(partial, path)
        return result
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def _write_baseline(measured, infos, db, out, stream, note) -> int:
    import pandas as pd

    from attnprof.analysis import refuse_overlapping_runs
    from attnprof.export import measurements_frame
    from attnprof.gating import baseline_records, with_timing_setup

    envs = {run_id: info.env for run_id, info in infos.items()}
    count = sum(len(rows) for rows in measured.values())
    parts = [with_timing_setup(measurements_frame(run_id, rows), envs[run_id]) for run_id, rows in measured.items()]
    frame = pd.concat(parts, ignore_index=True)
    refuse_overlapping_runs(frame, "export the baselines of")  # one cell, two baselines: which would a rule judge?
    text = baseline_records(frame) if count else ""
    _note_slowed_baseline(frame, note)
    _note_unfinished_runs(infos, measured, db, note)
    if out is None:
        (stream or sys.stdout).write(text)
    else:
        write_out(out, lambda opened: opened.write(text))
    return count


def _note_unfinished_runs(infos, measured, db, note) -> None:
    """A baseline of an interrupted run holds some of its cells: a regression rule then calls the others new and judges
    none of them ("wrote 4 records", exit 0, for 4 of 18). Said; the file is written all the same."""
    from attnprof.dashboard.runinfo import unfinished_note

    for run_id, info in infos.items():
        if unfinished := unfinished_note(info, len(measured[run_id]), db):
            note(f"run {run_id} is {unfinished}: a rule judges the cells it lacks as new, not against it")


def _note_slowed_baseline(frame, note) -> None:
    """A baseline timed under load hides a later slowdown: one recorded on a busy machine read 649 ms for a 7 ms
    cell, and a real 3x slowdown then passed at -79.5%. Said; the file is written all the same."""
    from attnprof.analysis import timed_flags, timing_caveats

    if not len(frame):
        return
    # noisy cells alone were said to be "a slowed machine", which sent a user looking for load there was none of (an audit)
    slowed = bool(timed_flags(frame)[1].any())
    then = (
        "A time rule judged against this baseline compares with a slowed machine: export a run timed on a quiet one."
        if slowed
        else "A time rule judged against noisy cells may not tell a change from their spread: export a run timed with a longer"
        " --rep-ms, or on a quieter machine."
    )
    caveat = timing_caveats(frame, then)
    if caveat:
        note(f"note: {caveat}")
