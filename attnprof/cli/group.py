"""The `attnprof` click group and what every command shares: bad input as one line and exit 2, --db."""

from __future__ import annotations

import sys

import click

from attnprof.errors import UsageError


class BadInput(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class AttnprofGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as error:
            raise BadInput(str(error)) from None
        except click.UsageError as error:
            raise BadInput(" ".join(error.format_message().split())) from None


@click.group(cls=AttnprofGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="attnprof")
def cli():
    """Memory and throughput profiler for attention implementations.

    \b
    Example:
      attnprof sweep --impl softmax,sdpa --lengths 256..2k --device cpu
    """


def db_option(function):
    return click.option(
        "--db", type=click.Path(dir_okay=False), default=None, help="Database file (default: $ATTNPROF_DB or reports/attnprof.db)."
    )(function)


def exit_interrupted(stop, db) -> None:
    click.echo(f"Interrupted: {stop.done} of {stop.total} cases saved in run {stop.run_id}.", err=True)
    click.echo(f"Resume with: attnprof sweep --resume {stop.run_id} --db {db}", err=True)
    sys.exit(130)


def print_summary(db, run_id: str, output_format: str) -> None:
    from rich.console import Console

    from attnprof.store import Store
    from attnprof.table import markdown_table, reasons_list, rich_table

    store = Store.open(db, create=False)
    try:
        run = store.resolve_run(run_id)
        measurements = store.measurements(run.run_id)
    finally:
        store.close()
    if output_format == "markdown":
        click.echo(markdown_table(measurements), nl=False)
    else:
        what = "peak memory" if run.sweep.get("accounting") else "median time / peak memory"  # accounting runs are not timed
        Console().print(rich_table(measurements, title=f"run {run.run_id}  ({what})"))
    for line in reasons_list(measurements):
        click.echo(f"  {line}")
    click.echo(f"run {run.run_id}: {len(measurements)} cases in {db}")
