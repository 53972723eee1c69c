"""`attnprof compare`: a candidate run against a baseline, cell by cell and exponent by exponent."""

from __future__ import annotations

import click

from attnprof.cli.group import cli, db_option, output_console

SHOWN = 20  # rows of each table without --all: the worst changes come first


@cli.command()
@click.argument("baseline")
@click.argument("candidate", default="latest")
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help=f"Every shared cell and configuration (default: the worst {SHOWN} of each; --format json always lists every one).",
)
@click.option("--format", "output_format", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@db_option
def compare(baseline, candidate, show_all, output_format, db):
    """Compare CANDIDATE (default: latest) with BASELINE: per cell the time and memory ratios (candidate over
    baseline, above 1 is worse) and status changes, worst first; per configuration the fitted exponents of both
    and whether their 95% intervals are disjoint. The dashboard's Compare tab shows the same.

    \b
    Example:
      attnprof compare 20261101-120000-ab12 latest
      attnprof compare before after --format markdown --all
    """
    import json

    from attnprof.api import compare_runs, default_db
    from attnprof.dashboard.compare import caveat_note

    cells, exponents = compare_runs(baseline, candidate, db or default_db())
    worse = int((cells["score"] > 1.05).sum())  # as the dashboard's Compare note counts them
    cells = cells.drop(columns=["score"])
    runs = _runs_note(baseline, candidate, db or default_db(), len(cells))
    note = f"{len(cells)} shared cells; {worse} at least 5% slower or larger, or failing now"
    changed = int(exponents["significant"].sum()) if len(exponents) else 0
    note += f"; {len(exponents)} exponents compared, {changed} changed beyond their 95% intervals."
    if not len(cells):  # empty tables and exit 0 said nothing of why
        note += " The two runs share no cell (configuration, length and seed): compare runs of the same sweep."
    note = " ".join(filter(None, (runs, note, caveat_note(cells))))
    if output_format == "json":
        payload = {"note": note, "cells": _records(cells), "exponents": _records(exponents)}
        click.echo(json.dumps(payload, indent=1, allow_nan=False, default=str))
        return
    shown_cells, shown_exponents = (cells, exponents) if show_all else (cells.head(SHOWN), exponents.head(SHOWN))
    left = len(cells) - len(shown_cells) + len(exponents) - len(shown_exponents)
    click.echo(note + (f" The worst {SHOWN} of each are shown; --all lists {left} more." if left else ""))
    _print(shown_cells, "Cells, worst first", output_format)
    _print(shown_exponents, "Exponents, the largest changes first", output_format)


def _runs_note(baseline: str, candidate: str, db, shared: int) -> str:
    """Which two runs were compared (`latest` and names resolved: after a resume, `latest` is still the newest
    created), an unfinished one's state, and how many cells only one of them has: an interrupted candidate of 4 of
    18 cells read as a whole comparison."""
    from attnprof.dashboard.runinfo import run_name, unfinished_note
    from attnprof.store import Store

    store = Store.open(db, create=False)
    try:
        runs = [store.resolve_run(run) for run in (baseline, candidate)]
        counts = [store.count(run.run_id) for run in runs]
    finally:
        store.close()
    if runs[0].run_id == runs[1].run_id:
        return f"Run {run_name(runs[0])} against itself: the two are the same run."
    note = f"Candidate run {run_name(runs[1])} against baseline run {run_name(runs[0])}."
    for role, run, count in zip(("baseline", "candidate"), runs, counts, strict=True):
        if unfinished := unfinished_note(run, count, db):
            note += f" The {role} is {unfinished}."
    only = [count - shared for count in counts]
    if any(only):
        note += f" Not compared: {only[0]} cells only the baseline has, {only[1]} only the candidate."
    return note


def _records(frame) -> list[dict]:
    import math

    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731  strict JSON
    return [{key: clean(value) for key, value in row.items()} for row in frame.to_dict(orient="records")]


def _print(frame, title: str, output_format: str) -> None:
    import pandas as pd

    from attnprof.table import frame_markdown

    shown = pd.DataFrame({column: [_cell(column, value) for value in frame[column]] for column in frame.columns}, columns=frame.columns)
    if output_format == "markdown":  # as the table reads: blanks for missing values, whole bytes (it printed nan, 17 digits)
        click.echo(f"\n{title}:\n\n{frame_markdown(shown) if len(shown) else '(none)'}")
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(column, justify="right" if frame[column].dtype.kind in "fi" else "left")
    for row in shown.itertuples(index=False):
        table.add_row(*row)
    output_console().print(table)


def _cell(column: str, value) -> str:
    if isinstance(value, float):
        if value != value:
            return ""
        return f"{value:,.0f}" if column.endswith("_bytes") else f"{value:.4g}"  # whole bytes, grouped
    return str(value)
