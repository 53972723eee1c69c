"""The `attnprof` command line: each command parses, calls one library function, prints.

Bad input (attnprof.errors.UsageError, or click's own usage errors) becomes one line on stderr and
exit status 2. Heavy imports live inside the commands so that `attnprof --help` is instant.
"""

from __future__ import annotations

import json
import sys

import click

from attnprof.errors import UsageError

SWEEP_OPTION_NAMES = (
    "impl",
    "lengths",
    "batch",
    "heads",
    "head_dim",
    "dtype",
    "device",
    "causal",
    "mode",
    "warmup_ms",
    "rep_ms",
    "timeout",
    "seed",
    "name",
    "accounting",
)


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


def _db_option(function):
    return click.option(
        "--db", type=click.Path(dir_okay=False), default=None, help="Database file (default: $ATTNPROF_DB or reports/attnprof.db)."
    )(function)


@cli.command()
@click.argument("scenario", required=False, type=click.Path(dir_okay=False))
@click.option("--impl", help="Comma-separated impls, `all`, with options as name:key=value.")
@click.option("--lengths", help="1k..64k (powers of two), 1k..8k:x4, 1k..4k:+1k, 512,1k,3000.")
@click.option("--batch", help="Batch sizes, comma separated.")
@click.option("--heads", help="Head counts, comma separated.")
@click.option("--head-dim", "head_dim", help="Head dims, comma separated.")
@click.option("--dtype", help="float32, float16, bfloat16 (comma separated).")
@click.option("--device", help="cpu, cuda, cuda:N (default: cuda if available, else cpu).")
@click.option("--causal", help="no, yes or both (default both).")
@click.option("--mode", help="fwd, fwd-bwd (comma separated; default fwd).")
@click.option("--warmup-ms", "warmup_ms", type=float, help="Warm-up time budget per case (default 25).")
@click.option("--rep-ms", "rep_ms", type=float, help="Timing budget per case (default 100).")
@click.option("--timeout", type=float, help="Seconds a case may take before its worker is killed (default 300).")
@click.option("--seed", type=int, help="Seed of the inputs (default 0).")
@click.option("--name", help="A name for the run.")
@click.option("--accounting", is_flag=True, default=None, help="Exact FLOPs and live bytes on the meta device; no timing.")
@_db_option
@click.option("--resume", is_flag=False, flag_value="latest", default=None, help="Measure the missing cases of RUN (default: latest).")
@click.option("--dry-run", is_flag=True, help="List the cases and refusals; measure nothing.")
@click.pass_context
def sweep(ctx, scenario, db, resume, dry_run, **options):
    """Measure every impl over a grid of lengths and shapes; every cell gets a row.

    \b
    Example:
      attnprof sweep --impl softmax,sdpa --lengths 1k..64k --causal both
      attnprof sweep scenarios/quick.toml --device cpu
      attnprof sweep --resume latest
    """
    from attnprof.scenario import scenario_options, sweep_from_options

    file_options = scenario_options(scenario) if scenario else {}
    given = {k: v for k, v in options.items() if v is not None}
    if resume is not None and (given or scenario):
        raise UsageError(
            f"--resume takes the sweep from run {resume!r}; drop {', '.join(['--' + k.replace('_', '-') for k in given] or [scenario])}"
        )
    db = db or file_options.get("db")
    spec = sweep_from_options({**file_options, **given})
    if dry_run:
        return _print_plan(spec)
    _run_and_report(spec, db, resume)


def _print_plan(spec) -> None:
    from attnprof.api import plan

    cases = plan(spec)
    for case, reasons in cases:
        click.echo(f"{case.describe()}" + (f"  -> unsupported: {'; '.join(reasons)}" if reasons else ""))
    refused = sum(1 for _, reasons in cases if reasons)
    click.echo(f"{len(cases)} cases, {refused} refused, {len(cases) - refused} to measure")


def _run_and_report(spec, db, resume) -> None:
    from attnprof.api import default_db, run_sweep
    from attnprof.progress import SweepProgress
    from attnprof.runner import SweepInterrupted

    db = db or default_db()
    command = "attnprof " + " ".join(sys.argv[1:])
    try:
        with SweepProgress() as progress:
            run_id = run_sweep(spec, db, resume=resume, progress=progress, command=command)
    except SweepInterrupted as stop:
        _exit_interrupted(stop, db)
    _print_summary(db, run_id, "table")


def _exit_interrupted(stop, db) -> None:
    click.echo(f"Interrupted: {stop.done} of {stop.total} cases saved in run {stop.run_id}.", err=True)
    click.echo(f"Resume with: attnprof sweep --resume {stop.run_id} --db {db}", err=True)
    sys.exit(130)


def _print_summary(db, run_id: str, output_format: str) -> None:
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
        Console().print(rich_table(measurements, title=f"run {run.run_id}  (median time / peak memory)"))
    for line in reasons_list(measurements):
        click.echo(f"  {line}")
    click.echo(f"run {run.run_id}: {len(measurements)} cases in {db}")


@cli.command()
@_db_option
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
        for run in store.runs():
            device = run.env.get("gpu_name") or ",".join(run.sweep.get("device", [])) or "?"
            click.echo(f"{run.run_id}  {run.created_at}  {run.state:<11} {store.count(run.run_id):>5} cases  {device}  {run.name}")
    finally:
        store.close()


@cli.command()
@click.argument("run", default="latest")
@click.option("--format", "output_format", type=click.Choice(["table", "markdown", "json", "csv"]), default="table", show_default=True)
@_db_option
def show(run, output_format, db):
    """Print a run's summary: impl x length, median time and peak memory, or the status.

    \b
    Example:
      attnprof show latest --format markdown
    """
    from attnprof.api import default_db

    db = db or default_db()
    if output_format in ("json", "csv"):
        return _echo_records(run, db, "jsonl" if output_format == "json" else "csv", None)
    _print_summary(db, run, output_format)


@cli.command()
@click.argument("run", default="latest")
@click.option("--format", "output_format", type=click.Choice(["jsonl", "csv", "baseline"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write to this file instead of stdout.")
@_db_option
def export(run, output_format, out, db):
    """Write one record per case (jsonl, csv, or the small baseline file `gate --baseline` reads).

    \b
    Example:
      attnprof export latest --format csv --out results.csv
      attnprof export latest --format baseline --out reports/baseline.jsonl
    """
    from attnprof.api import default_db

    _echo_records(run, db or default_db(), output_format, out)


def _echo_records(run, db, output_format, out) -> None:
    from pathlib import Path

    from attnprof.export import measurement_record, to_csv, to_jsonl
    from attnprof.store import Store

    store = Store.open(db, create=False)
    try:
        info = store.resolve_run(run)
        store_measurements = store.measurements(info.run_id)
        records = [measurement_record(info.run_id, m) for m in store_measurements]
    finally:
        store.close()
    if output_format == "baseline":
        from attnprof.export import measurements_frame
        from attnprof.gating import baseline_records

        text = baseline_records(measurements_frame(info.run_id, store_measurements)) if records else ""
    else:
        text = to_jsonl(records) if output_format == "jsonl" else to_csv(records)
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        Path(out).write_text(text)
    except OSError as error:
        raise UsageError(f"cannot write {out!r}: {error.strerror}") from None
    click.echo(f"wrote {len(records)} records to {out}")


@cli.command(name="list")
def list_impls():
    """List the registered implementations, what each supports and its options.

    \b
    Example:
      attnprof list
    """
    from attnprof import impls

    for impl in impls.all_impls():
        options = ", ".join(f"{k}={v!r}" for k, v in impl.options.items()) or "-"
        click.echo(f"{impl.name:<20} {impl.family:<9} {impl.supports_summary()}")
        click.echo(f"{'':<20} options: {options}")
        click.echo(f"{'':<20} {impl.description}")


@cli.command()
@click.argument("run", default="latest")
@click.option("--format", "output_format", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.option("--metric", default="time,peak_bytes,flops", show_default=True, help="Metrics to fit (time, peak_bytes, flops).")
@click.option("--budget", default=None, help="Memory budget for the frontier, e.g. 80GiB (default: the device's memory).")
@_db_option
def fit(run, output_format, metric, budget, db):
    """Fit how time, memory and FLOPs scale with length: exponents, classes, crossovers, frontiers.

    \b
    Example:
      attnprof fit latest --metric time,peak_bytes --budget 80GiB
    """
    from attnprof.api import default_db, load_measurements, run_budget
    from attnprof.gate_rules import parse_bytes
    from attnprof.spec import parse_choices

    metrics = parse_choices(metric, ("time", "peak_bytes", "flops"), "metric")
    db = db or default_db()
    budget_bytes = parse_bytes(budget, "budget") if budget else run_budget(run, db)
    frame = load_measurements(run, db)
    _print_analysis(frame, metrics, budget_bytes, output_format)


def _print_analysis(frame, metrics, budget_bytes, output_format) -> None:
    from attnprof.analysis import analyse
    from attnprof.table import fits_display, frame_markdown

    result = analyse(frame, metrics, budget_bytes)
    if output_format == "json":
        payload = {
            "fits": result.fits.drop(columns=["fit"], errors="ignore").to_dict(orient="records"),
            "crossovers": result.crossovers.to_dict(orient="records"),
            "frontiers": result.frontiers.to_dict(orient="records"),
        }
        click.echo(json.dumps(payload, default=_json_default, indent=1))
        return
    click.echo("Scaling fits (log-log least squares over the asymptotic range, 95% interval):")
    if output_format == "markdown":
        click.echo(frame_markdown(fits_display(result.fits)), nl=False)
    else:
        _rich_frame(fits_display(result.fits))
    found = result.crossovers[result.crossovers["kind"] != "none"] if len(result.crossovers) else result.crossovers
    click.echo(f"Crossovers ({len(found)} of {len(result.crossovers)} pairs cross):")
    for _, row in found.iterrows():
        click.echo(
            f"  {row['metric']} {row['impl_a']} vs {row['impl_b']} "
            f"({'causal' if row['causal'] else 'bidir'} {row['mode']}): {row['message']}"
        )
    if len(result.frontiers):
        click.echo("Memory frontiers:")
        for _, row in result.frontiers.iterrows():
            click.echo(f"  {row['label']} ({'causal' if row['causal'] else 'bidir'} {row['mode']}): {row['message']}")


def _rich_frame(frame) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in frame.columns:
        table.add_column(column, overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*map(str, row))
    Console().print(table)


def _json_default(value):
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)


@cli.command()
@click.argument("rules", type=click.Path(dir_okay=False))
@click.option("--run", "runs", multiple=True, help="Judge this run (id or `latest`; repeatable) instead of measuring the rules' sweeps.")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None, help="Baseline file for max_regression rules.")
@click.option("--markdown", type=click.Path(dir_okay=False), default=None, help="Also write the verdicts as Markdown here.")
@_db_option
def gate(rules, runs, baseline, markdown, db):
    """Fail CI when a scaling exponent, a ratio, a memory frontier or a baseline regresses.

    Exit status: 0 every rule passes, 1 a rule failed, 2 bad usage or rules file,
    3 the measurement failed (cases not ok, so a rule could not be judged).

    \b
    Example:
      attnprof gate scenarios/gate.toml
      attnprof gate scenarios/targets.toml --run latest --baseline reports/baseline.jsonl
    """
    import os

    from attnprof.gate import exit_status, markdown_report, summary_line
    from attnprof.gating import run_gate
    from attnprof.progress import SweepProgress
    from attnprof.runner import SweepInterrupted

    try:
        with SweepProgress() as progress:
            verdicts, run_ids = run_gate(rules, runs=runs, baseline=baseline, db=db, progress=progress)
    except SweepInterrupted as stop:
        _exit_interrupted(stop, db or "the rules' database")
    for verdict in verdicts:
        click.echo(f"{verdict.verdict:<7} {verdict.rule.title}: {verdict.message}")
    click.echo(f"{summary_line(verdicts)} (run {', '.join(run_ids)})")
    report = markdown_report(verdicts)
    for path in filter(None, (os.environ.get("GITHUB_STEP_SUMMARY"), markdown)):
        try:
            with open(path, "a") as handle:
                handle.write(f"### attnprof gate: {rules}\n\n{report}")
        except OSError as error:
            raise UsageError(f"cannot write the Markdown summary to {path!r}: {error.strerror}") from None
    sys.exit(exit_status(verdicts))


@cli.command()
@_db_option
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
@_db_option
def report(run, out, png_dir, db):
    """Write a self-contained HTML report of a run (plotly.js inline: opens offline).

    \b
    Example:
      attnprof report latest --out reports/latest.html
    """
    from attnprof.report import write_report

    path, pngs = write_report(run, db, out, png_dir)
    click.echo(f"wrote {path}" + (f" and {len(pngs)} PNG files in {png_dir}" if pngs else ""))


def main():
    cli(prog_name="attnprof")


if __name__ == "__main__":
    main()
