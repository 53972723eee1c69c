"""Reading results back: `runs`, `show`, `export`, `list`."""

from __future__ import annotations

import shlex

import click

from attnprof.cli.group import cli, db_option, print_summary


@cli.command()
@db_option
def runs(db):
    """List the runs in the database, newest first.

    \b
    Example:
      attnprof runs --db reports/attnprof.db
    """
    from attnprof.api import default_db
    from attnprof.run_export import run_rows

    db = db or default_db()
    listed = run_rows(db)
    if not listed:
        click.echo(f"no runs in {str(db)!r} yet: attnprof sweep --db {shlex.quote(str(db))} makes one", err=True)
    else:
        click.echo(f"{'run':<20}  {'created':<25}  {'state':<11} {'cases':>11}  device  name")
    for run_id, created_at, state, cases, planned, device, name in listed:
        of = f" of {planned}" if planned is not None and planned > cases else ""  # an unfinished run: how much of it
        click.echo(f"{run_id}  {created_at}  {state:<11} {cases:>5}{of} cases  {device}  {name}")


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
    from attnprof.run_export import export_runs

    count = export_runs(runs, db, output_format, out, note=lambda text: click.echo(text, err=True))
    if out is not None:
        click.echo(f"wrote {count} records to {out}")


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
        if impl.description:  # a plugin's may be left out: a blank line read as a missing row (a plugin author's audit)
            click.echo(f"{'':<20} {impl.description}")
        click.echo(f"{'':<20} {_checked_as(impl)}")


def _checked_as(impl) -> str:
    """What the checks hold it to (checks.py, spot_check.py), and where a plugin comes from."""
    from attnprof import impls
    from attnprof.spot_check import REFERENCE_BUDGET

    if not impl.exact and impl.has_row_reference:  # cosFormer, Combiner, Nyströmformer: said as check 1 alone (a user audit)
        checked = "approximation: checked against its own reference at N <= 256, and on sampled rows and gradients at every length"
    elif not impl.exact:
        checked = "approximation: checked against its own reference at N <= 256; finite outputs at every length"
    elif impl.reference is None:
        checked = "exact: checked against softmax at N <= 256, and on sampled rows and gradients at every length"
    else:
        checked = f"exact, own reference: checked against it at N <= 256, and where heads x N^2 <= {REFERENCE_BUDGET:,} at the length"
    module = impls.module_of(impl)
    return checked + ("" if module.startswith("attnprof.") else f"; plugin from {module}")
