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

    cells, exponents = compare_runs(baseline, candidate, db or default_db())
    note = cells.attrs["note"]
    cells = cells.drop(columns=["score"])
    if output_format == "json":
        payload = {"note": note, "cells": _records(cells), "exponents": _records(exponents)}
        click.echo(json.dumps(payload, indent=1, allow_nan=False, default=str))
        return
    shown_cells, shown_exponents = (cells, exponents) if show_all else (cells.head(SHOWN), exponents.head(SHOWN))
    left = len(cells) - len(shown_cells) + len(exponents) - len(shown_exponents)
    click.echo(note + (f" The worst {SHOWN} of each are shown; --all lists {left} more." if left else ""))
    _print(shown_cells, "Cells, worst first", output_format)
    _print(shown_exponents, "Exponents, the largest changes first", output_format)


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
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(column, justify="right" if frame[column].dtype.kind in "fi" else "left")
    for row in shown.itertuples(index=False):
        table.add_row(*map(escape, row))  # labels hold "[option=value]": text, not markup (it printed option lines bare)
    output_console().print(table)


def _cell(column: str, value) -> str:
    if isinstance(value, float):
        if value != value:
            return ""
        return f"{value:,.0f}" if column.endswith("_bytes") else f"{value:.4g}"  # whole bytes, grouped
    return str(value)
