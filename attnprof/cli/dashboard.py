"""`serve` (the dashboard) and `report` (the static HTML report)."""

from __future__ import annotations

import click

from attnprof.cli.group import cli, db_option


@cli.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (anything but loopback is warned about).")
@click.option("--port", type=click.IntRange(1, 65535), default=8050, show_default=True)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
def serve(db, host, port, open_browser):
    """Serve the interactive dashboard over the database (live while a sweep writes).

    \b
    Example:
      attnprof serve --db reports/attnprof.db --open
    """
    from attnprof.api import default_db
    from attnprof.dashboard.app import serve as serve_app

    serve_app(db or default_db(), host=host, port=port, open_browser=open_browser, say=lambda line: click.echo(line, err=True))


@cli.command()
@click.argument("run", default="latest")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="HTML file to write (default: reports/<run_id>.html).")
@click.option(
    "--png", "png_dir", type=click.Path(file_okay=False), default=None, help="Also write each figure as PNG here (needs attnprof[png])."
)
@click.option(
    "--only",
    multiple=True,
    metavar="AXIS=VALUES",
    help="The slice to show, e.g. dtype=float32 or heads=2,4 (repeatable; default: the first dtype, device, batch, heads, head dim).",
)
@click.option(
    "--budget",
    default=None,
    help="Memory budget of the frontier, e.g. 80GiB (default: the run's device memory; 80 GiB for an accounting run, as `fit`).",
)
@db_option
def report(run, out, png_dir, only, budget, db):
    """Write a self-contained HTML report of a run (plotly.js inline: opens offline).

    RUN: a run id, a unique prefix of one, a run's --name, or `latest` (the default).

    \b
    Example:
      attnprof report latest --out reports/latest.html
      attnprof report latest --only dtype=float32 --only heads=16
    """
    from attnprof.report import write_report

    path, pngs = write_report(run, db, out, png_dir, only, budget)
    click.echo(f"wrote {path}" + (f" and {len(pngs)} PNG files in {png_dir}" if pngs else ""))
