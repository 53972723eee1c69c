"""`attnprof sweep`: measure a grid of cases into the database."""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace

import click

from attnprof.cli.group import cli, db_option, exit_interrupted, print_summary
from attnprof.errors import UsageError


@cli.command()
@click.argument("scenario", required=False, type=click.Path(dir_okay=False))
@click.option("--impl", help="Comma-separated impls, `all`, with options as name:key=value,key=value (default: all).")
@click.option(
    "--lengths",
    help="1k..64k (doubling from the start), 1k..8k:x4, 1k..4k:+1k, 512,1k,3000 (default: 1k..64k on GPU and with --accounting,"
    " 256..4k on CPU).",
)
@click.option("--batch", help="Batch sizes, comma separated (default 1).")
@click.option("--heads", help="Head counts, comma separated (default 16).")
@click.option("--head-dim", "head_dim", help="Head dims, comma separated (default 64).")
@click.option(
    "--dtype", help="float32, float16, bfloat16 (comma separated; default: bfloat16 on a GPU and with --accounting, float32 on the CPU)."
)
@click.option("--device", help="cpu, cuda, cuda:N (default: cuda if available, else cpu).")
@click.option("--causal", help="no, yes or both (default both).")
@click.option("--mode", help="fwd, fwd-bwd (comma separated; default fwd).")
@click.option("--warmup-ms", "warmup_ms", type=float, help="Warm-up time budget per case (default 25).")
@click.option("--rep-ms", "rep_ms", type=float, help="Timing budget per case (default 100).")
@click.option(
    "--timeout",
    type=float,
    help="Seconds a case may take, its correctness checks and untimed calls included, before its worker is killed; the"
    " configuration's longer lengths are then skipped (default 300). With --resume: for the cases it measures, e.g. with"
    " --retry timeout at a longer limit.",
)
@click.option("--seed", type=int, help="Seed of the inputs (default 0).")
@click.option("--name", help="A name for the run.")
@click.option(
    "--accounting",
    is_flag=True,
    default=None,
    help="Exact FLOPs and live bytes of the GPU plan, counted on the meta device (no GPU needed); no timing.",
)
@db_option
@click.option(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[RUN]",
    help="Measure the missing cases of RUN (default: latest).",
)
@click.option(
    "--retry",
    help="With --resume: measure again the run's cells of these statuses (crashed, timeout, oom, error; comma separated) "
    "and the lengths skipped after them, each new row replacing the old one.",
)
@click.option(
    "--dry-run", is_flag=True, help="List the cases and refusals (with --resume: the run's cases without a row); measure nothing."
)
@click.pass_context
def sweep(ctx, scenario, db, resume, retry, dry_run, **options):
    """Measure every impl over a grid of lengths and shapes; every cell gets a row.

    \b
    Example:
      attnprof sweep --impl softmax,sdpa --lengths 1k..64k --causal both
      attnprof sweep scenarios/quick.toml --device cpu
      attnprof sweep scenarios/gate.toml   (each [[sweep]] of a rules file: one run each)
      attnprof sweep --resume latest
      attnprof sweep --resume latest --retry crashed,timeout
    """
    from attnprof.scenario import scenario_sweeps, sweep_from_options

    if retry is not None and resume is None:
        raise UsageError(f"--retry {retry} goes with --resume RUN: it measures again the cells of a stored run")
    retry = () if retry is None else retry  # "" stays: refused as a bad value
    tables = scenario_sweeps(scenario) if scenario else [{}]
    given = {k: v for k, v in options.items() if v is not None}
    # a resume may take another --timeout: a case that timed out at the run's limit is retried at a longer one
    timeout = given.pop("timeout", None) if resume is not None else None
    if resume is not None and (given or scenario):
        raise UsageError(
            f"--resume takes the sweep from run {resume!r} (all but --timeout); drop "
            f"{', '.join(['--' + k.replace('_', '-') for k in given] or [scenario])}"
        )
    specs = [(db or table.get("db"), sweep_from_options({**table, **given})) for table in tables]  # every table checked first
    untimed = [key for key in ("warmup_ms", "rep_ms") if key in given]
    if any(spec.accounting for _, spec in specs) and untimed:  # a flag typed on purpose that would change nothing: say so
        raise UsageError(f"--{untimed[0].replace('_', '-')} has no effect with --accounting: an accounting run times nothing")
    run_ids = []
    for index, (sweep_db, spec) in enumerate(specs, 1):
        if len(specs) > 1:
            click.echo(f"[[sweep]] {index} of {len(specs)} in {scenario}:", err=True)
            if spec.name:  # one name for two runs: `export NAME` took the newest alone
                spec = replace(spec, name=f"{spec.name}-{index}")
        if dry_run:
            _print_plan(spec, sweep_db, resume, retry)
        else:
            run_ids.append(_run_and_report(spec, sweep_db, resume, retry, timeout))
    if len(run_ids) > 1:
        where = f" --db {shlex.quote(str(specs[0][0]))}" if specs[0][0] else ""
        export = f"attnprof export {' '.join(run_ids)} --format baseline --out FILE{where}"
        click.echo(f"their baseline for `attnprof gate --baseline`: {export}", err=True)


def _print_plan(spec, db, resume, retry) -> None:
    from attnprof.api import plan

    cases = plan(spec, db, resume=resume, retry=retry)
    for case, reasons in cases:
        said = "; ".join(reasons)  # a refuse hook that raised reads "error: ...", a skip "skipped: ...", as their rows will
        kind = "" if said.startswith(("error: ", "skipped: ")) else "unsupported: "
        click.echo(f"{case.describe()}" + (f"  -> {kind}{said}" if reasons else ""))
    skipped = sum(1 for _, reasons in cases if reasons and reasons[0].startswith("skipped: "))
    refused = sum(1 for _, reasons in cases if reasons) - skipped
    skips = f", {skipped} skipped" if skipped else ""
    click.echo(f"{len(cases)} case{'s' * (len(cases) != 1)}, {refused} refused{skips}, {len(cases) - refused - skipped} to measure")


def _run_and_report(spec, db, resume, retry, timeout=None) -> str:
    from attnprof.api import default_db, run_sweep
    from attnprof.progress import SweepProgress
    from attnprof.runner import SweepInterrupted

    db = db or default_db()
    command = shlex.join(["attnprof", *sys.argv[1:]])  # pasted into a shell by the Reproduce views: quoted
    try:
        with SweepProgress() as progress:
            run_id = run_sweep(spec, db, resume=resume, retry=retry, progress=progress, command=command, timeout=timeout)
    except SweepInterrupted as stop:
        exit_interrupted(stop, db)
    if resume is not None and progress.total == 0:
        what = f" and none of status {retry}" if retry else ""
        click.echo(f"run {run_id} already has a row for every case{what}: nothing left to measure", err=True)
    print_summary(db, run_id, "table")
    return run_id
