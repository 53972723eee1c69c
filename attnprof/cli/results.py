"""Reading results back: `runs`, `show`, `export`, `list`."""

from __future__ import annotations

import shlex

import click

from attnprof.cli.group import cli, db_option, print_summary
from attnprof.errors import UsageError, make_folder


@cli.command()
@db_option
def runs(db):
    """List the runs in the database, newest first.

    \b
    Example:
      attnprof runs --db reports/attnprof.db
    """
    from attnprof.api import default_db
    from attnprof.store import Store

    store = Store.open(db or default_db(), create=False)
    try:
        runs = store.runs()
        if not runs:
            click.echo(f"no runs in {str(store.path)!r} yet: attnprof sweep --db {shlex.quote(str(store.path))} makes one", err=True)
        else:
            click.echo(f"{'run':<20}  {'created':<25}  {'state':<11} {'cases':>11}  device  name")
        for run in runs:
            device = run.env.get("gpu_name") or ",".join(run.sweep.get("device", [])) or "?"
            click.echo(f"{run.run_id}  {run.created_at}  {run.state:<11} {store.count(run.run_id):>5} cases  {device}  {run.name}")
    finally:
        store.close()


@cli.command()
@click.argument("run", default="latest")
@click.option("--format", "output_format", type=click.Choice(["table", "markdown", "json", "csv"]), default="table", show_default=True)
@db_option
def show(run, output_format, db):
    """Print a run's summary: impl x length, median time and peak memory, or the status.

    RUN: a run id, a unique prefix of one, a run's --name, or `latest` (the default).

    \b
    Example:
      attnprof show latest --format markdown
    """
    from attnprof.api import default_db

    db = db or default_db()
    if output_format in ("json", "csv"):
        return _echo_records((run,), db, output_format, None)
    print_summary(db, run, output_format)


@cli.command()
@click.argument("runs", nargs=-1)
@click.option("--format", "output_format", type=click.Choice(["jsonl", "json", "csv", "baseline"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write to this file instead of stdout.")
@db_option
def export(runs, output_format, out, db):
    """Write one record per case (jsonl, a json array, csv, or the small baseline file `gate --baseline` reads).

    RUNS: run ids, unique prefixes of them, runs' --name, or `latest` (the default); several go into one file
    (a rules file with two [[sweep]] tables measures two runs, and their baseline is one file).

    \b
    Example:
      attnprof export latest --format csv --out results.csv
      attnprof export latest --format baseline --out reports/baseline.jsonl
    """
    from attnprof.api import default_db

    _echo_records(runs or ("latest",), db or default_db(), output_format, out)


def _echo_records(runs, db, output_format, out) -> None:
    from attnprof.store import Store

    store = Store.open(db, create=False)
    try:
        run_ids = list(dict.fromkeys(store.resolve_run(run).run_id for run in runs))  # `latest <its id>` names one run twice
        if output_format != "baseline":
            return _stream_records(store, run_ids, output_format, out)
        measured = {run_id: store.measurements(run_id) for run_id in run_ids}
        infos = {run_id: store.resolve_run(run_id) for run_id in run_ids}
    finally:
        store.close()
    _echo_baseline(measured, infos, db, out)


def _stream_records(store, run_ids, output_format, out) -> None:
    """Each record written as it is read, to `out` (write_whole) or to stdout."""
    import sys

    from attnprof.export import measurement_record, write_records

    records = (measurement_record(run_id, m) for run_id in run_ids for m in store.iter_measurements(run_id))
    if out is None:
        write_records(records, output_format, sys.stdout)
        return
    count = _write_out(out, lambda stream: write_records(records, output_format, stream))
    click.echo(f"wrote {count} records to {out}")


def _write_out(out, write):
    """write(stream) into the --out file (write_whole), its folder made as `report --out` makes it; an OS error is bad input."""
    from pathlib import Path

    make_folder(Path(out).parent, repr(out))
    try:
        return write_whole(Path(out), write)
    except OSError as error:
        raise UsageError(f"cannot write {out!r}: {error.strerror}") from None


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


def _echo_baseline(measured, infos, db, out) -> None:
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
    _warn_of_slowed_baseline(frame)
    _warn_of_unfinished_runs(infos, measured, db)
    if out is None:
        click.echo(text, nl=False)
        return
    _write_out(out, lambda stream: stream.write(text))
    click.echo(f"wrote {count} records to {out}")


def _warn_of_unfinished_runs(infos, measured, db) -> None:
    """A baseline of an interrupted run holds some of its cells: a regression rule then calls the others new and judges
    none of them ("wrote 4 records", exit 0, for 4 of 18). Said on stderr; the file is written all the same."""
    from attnprof.dashboard.runinfo import unfinished_note

    for run_id, info in infos.items():
        if unfinished := unfinished_note(info, len(measured[run_id]), db):
            click.echo(f"run {run_id} is {unfinished}: a rule judges the cells it lacks as new, not against it", err=True)


def _warn_of_slowed_baseline(frame) -> None:
    """A baseline timed under load hides a later slowdown: one recorded on a busy machine read 649 ms for a 7 ms
    cell, and a real 3x slowdown then passed at -79.5%. Said on stderr; the file is written all the same."""
    from attnprof.analysis import timing_caveats

    then = "A time rule judged against this baseline compares with a slowed machine: export a run timed on a quiet one."
    caveat = timing_caveats(frame, then) if len(frame) else ""
    if caveat:
        click.echo(f"note: {caveat}", err=True)


@cli.command(name="list")
def list_impls():
    """List the registered implementations, what each supports and its options (auto: chosen per case).

    \b
    Example:
      attnprof list
    """
    from attnprof import impls

    for impl in impls.all_impls():
        # None is every option's "chosen per case" default (a block size near sqrt(N), a chunk by device)
        options = ", ".join(f"{k}={'auto' if v is None else repr(v)}" for k, v in impl.options.items()) or "-"
        click.echo(f"{impl.name:<20} {impl.family:<9} {impl.supports_summary()}")
        click.echo(f"{'':<20} options: {options}")
        click.echo(f"{'':<20} {impl.description}")
        click.echo(f"{'':<20} {_checked_as(impl)}")


def _checked_as(impl) -> str:
    """What the checks hold it to (checks.py, spot_check.py), and where a plugin comes from."""
    from attnprof import impls
    from attnprof.spot_check import REFERENCE_BUDGET

    if not impl.exact:
        checked = "approximation: checked against its own reference at N <= 256; finite outputs at every length"
    elif impl.reference is None:
        checked = "exact: checked against softmax at N <= 256, and on sampled rows and gradients at every length"
    else:
        checked = f"exact, own reference: checked against it at N <= 256, and where heads x N^2 <= {REFERENCE_BUDGET:,} at the length"
    module = impls.module_of(impl)
    return checked + ("" if module.startswith("attnprof.") else f"; plugin from {module}")
