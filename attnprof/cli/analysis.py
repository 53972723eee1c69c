"""`fit` (scaling analysis) and `gate` (the CI gate)."""

from __future__ import annotations

import functools
import json
import sqlite3
import sys

import click

from attnprof.cli.group import cli, db_option, exit_interrupted, output_console
from attnprof.errors import StoreFault, UsageError


@cli.command()
@click.argument("run", default="latest")
@click.option("--format", "output_format", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
@click.option("--metric", default=None, help="Metrics to fit (time, peak_bytes, flops; default: each the run has).")
@click.option(
    "--budget",
    default=None,
    help="Memory budget for the frontier, e.g. 80GiB (default: the device's memory; 80 GiB for an accounting run).",
)
@click.option(
    "--impl",
    "impl_names",
    default=None,
    help="Only these impls or labels (nystromformer[num_landmarks=32]), comma separated (default: every impl in the run).",
)
@click.option(
    "--all-crossovers",
    is_flag=True,
    help="List every crossing pair, also those whose 95% interval reaches beyond 16x the measured lengths.",
)
@db_option
def fit(run, output_format, metric, budget, impl_names, all_crossovers, db):
    """Fit how time, memory and FLOPs scale with length: exponents, classes, crossovers, frontiers.

    RUN: a run id, a unique prefix of one, a run's --name, or `latest` (the default).

    \b
    Example:
      attnprof fit latest --metric time,peak_bytes --budget 80GiB
      attnprof fit latest --impl softmax,cosformer --metric time
    """
    from attnprof.api import default_db, load_measurements, run_budget
    from attnprof.env import DEFAULT_BUDGET
    from attnprof.gate_rules import parse_bytes
    from attnprof.spec import parse_choices

    # an empty --metric or --impl (a CI variable left unset) is bad input, not "all of them"
    metrics = parse_choices("time,peak_bytes,flops" if metric is None else metric, ("time", "peak_bytes", "flops"), "metric")
    db = db or default_db()
    device_bytes = run_budget(run, db)  # the memory the run's OOMs speak for
    budget_bytes = parse_bytes(budget, "budget") if budget else device_bytes or DEFAULT_BUDGET  # as the report and the dashboard
    frame = load_measurements(run, db)
    if impl_names is not None:
        frame = _only_impls(frame, impl_names)
    metrics = _metrics_with_values(frame, metrics, run, asked=metric is not None)
    fitted = _fitted_run(run, db)
    on_gpu = fitted.pop("on_gpu")
    fitted["budget"] = _budget_text(
        budget_bytes, "--budget" if budget else "default" if device_bytes is None else "gpu" if on_gpu else "host"
    )
    _print_analysis(frame, metrics, budget_bytes, output_format, all_crossovers, device_bytes, fitted)


def _budget_text(budget_bytes, source: str) -> str:
    """What the frontiers' budget is, for their heading: a CPU run's is the host's whole RAM, where the sweep refused a
    case predicted past HOST_MEMORY_FRACTION of the RAM available as it ran, so it may have stopped short of them."""
    from attnprof.env import DEFAULT_BUDGET_SAID
    from attnprof.table import format_bytes
    from attnprof.worker import HOST_MEMORY_FRACTION

    if budget_bytes is None:
        return ""
    where = {"--budget": "from --budget", "gpu": "the run's GPU memory", "default": DEFAULT_BUDGET_SAID,
             "host": f"the host's RAM; the sweep refuses a CPU case predicted past {HOST_MEMORY_FRACTION:.0%} of the RAM available"
                     " as it runs, so it may stop short of these"}[source]  # fmt: skip
    return f"budget {format_bytes(budget_bytes)}, {where}"


def _fitted_run(run: str, db) -> dict:
    """Which run the fits are of (`latest` and names resolved: after a resume, `latest` is still the newest created)
    and, for an unfinished one, what it lacks: the fits of an interrupted run of 4 of 18 cells read as the sweep's."""
    from attnprof.dashboard.runinfo import run_name, unfinished_note
    from attnprof.store import Store

    store = Store.open(db, create=False)
    try:
        info = store.resolve_run(run)
        unfinished = unfinished_note(info, store.count(info.run_id), db)
    finally:
        store.close()
    note = f"Run {run_name(info)}" + (f": {unfinished}." if unfinished else ".")
    return {"run": info.run_id, "name": info.name, "state": info.state, "note": note, "on_gpu": bool(info.env.get("gpu_total_bytes"))}


def _metrics_with_values(frame, metrics, run: str, *, asked: bool) -> tuple:
    """The asked metrics the run has values of. An accounting run has no times: `fit --metric time` printed an
    empty table and exit 0; it is bad input when nothing is left, a note on stderr when some is."""
    from attnprof.gate_rules import METRICS

    has = [m for m in ("time", "peak_bytes", "flops") if len(frame) and frame[METRICS[m]].notna().any()]
    kept = tuple(m for m in metrics if m in has)
    lacking = [m for m in metrics if m not in has]
    accounting = " (an accounting run times nothing)" if "time" in lacking and "peak_bytes" in has else ""
    if lacking and not kept:
        raise UsageError(f"run {run!r} has no {', '.join(lacking)} values{accounting}; it has {', '.join(has) or 'no values'}")
    if lacking and asked:
        click.echo(f"no {', '.join(lacking)} values in run {run!r}{accounting}: fitting {', '.join(kept)}", err=True)
    return kept


def _only_impls(frame, impl_names: str):
    """The rows of the named impls (crossovers then pair only them): a name takes every line of that impl, a label
    (`nystromformer[num_landmarks=32]`, commas inside brackets kept, or `nystromformer:num_landmarks=32` as --impl
    takes it) one line; a name the run lacks is bad input."""
    import re

    from attnprof.api import impl_labels

    wanted = [name.strip() for name in re.split(r",(?![^\[]*\])", impl_names) if name.strip()]
    if ":" in impl_names or "[" in impl_names:  # the --impl grammar or labels: options at their defaults are dropped
        try:
            wanted = impl_labels(impl_names)
        except UsageError:  # an impl not registered here (a plugin's stored run): its labels as given
            pass
    present = (set(frame["impl"]) | set(frame["label"])) if len(frame) else set()
    missing = [name for name in wanted if name not in present]
    if not wanted or missing:
        raise UsageError(f"impl {(missing or [impl_names])[0]!r} is not in this run; it has {', '.join(sorted(present)) or 'no rows'}")
    return frame[frame["impl"].isin(wanted) | frame["label"].isin(wanted)]


def _print_analysis(frame, metrics, budget_bytes, output_format, all_crossovers: bool = False, device_bytes=None, run=None) -> None:
    from attnprof.analysis import analyse
    from attnprof.table import fits_display, frame_markdown

    result = analyse(frame, metrics, budget_bytes, device_bytes)
    run = run or {}
    if output_format == "json":
        payload = {
            **{key: run[key] for key in ("run", "name", "state") if key in run},
            "fits": result.fits.drop(columns=["fit"], errors="ignore").to_dict(orient="records"),
            "crossovers": result.crossovers.to_dict(orient="records"),
            "frontiers": result.frontiers.to_dict(orient="records"),
            "timing_caveats": result.timing_caveats,
            "not_fitted": result.not_fitted.to_dict(orient="records"),
        }
        click.echo(json.dumps(_json_safe(payload), default=_json_default, indent=1, allow_nan=False))
        return
    from attnprof.analysis import CONFIG
    from attnprof.crossover_groups import merged_fits

    markdown = output_format == "markdown"
    if run:
        click.echo(run["note"] + ("\n" if markdown else ""))
    click.echo("Scaling fits (log-log least squares over the asymptotic range, 95% interval):")
    shown = fits_display(merged_fits(result.fits, CONFIG[1:]))  # impls with identical curves: one row, "a = b"
    if markdown:
        click.echo("\n" + frame_markdown(shown))  # blank lines around: a table ends at one
    else:
        _print_fits_table(shown)
    if result.timing_caveats:  # beside the fits it concerns, not after the crossovers drawn from them
        click.echo(("\n" if markdown else "") + result.timing_caveats)
    item = "- " if markdown else "  "  # list items in Markdown, so that no line joins the table above
    _print_not_fitted(result.not_fitted, item)
    _print_crossovers(result, all_crossovers, item)
    if len(result.frontiers):
        budget = f" ({run['budget']})" if run.get("budget") else ""
        click.echo(("\n" if markdown else "") + f"Memory frontiers{budget}:" + ("\n" if markdown else ""))
        for _, row in result.frontiers.iterrows():
            click.echo(f"{item}{row['label']} ({'causal' if row['causal'] else 'bidir'} {row['mode']}): {row['message']}")
        if (result.frontiers["kind"] == "extrapolated").any():
            # against the accounting at 128k..12M (B1 H16 D64 bf16): Combiner-Fixed 835k (true 645k), cosFormer 11.6M
            # (10.4M), their ranges holding the truth; Combiner-Logsparse 1.19M with a range of 1.188M..1.195M, where its
            # peak doubles past N = 2^20 (padding to a power of two) and the truth is 1048576
            click.echo(
                ("\n" if markdown else "")
                + "An extrapolated frontier is the fit's estimate, not a measurement: a peak that bends or steps (padding to"
                " a power of two) beyond the measured lengths moves it. `attnprof sweep --accounting` at lengths around it"
                " gives the exact peak of live tensors (about 0.1 s a case to 64k on the CPU, 2 s at 1M-2M;"
                " a GPU allocator adds its rounding)."
            )


def _print_not_fitted(cells, item: str) -> None:
    """One line per configuration with lengths its fits leave out, each length with its status (and the first reason)."""
    if not len(cells):
        return
    from attnprof.analysis import CONFIG
    from attnprof.gate import subject_of

    gap = "\n" if item.startswith("-") else ""  # Markdown: a list apart from the lines around it
    click.echo(f"{gap}Lengths not fitted (no measurement there):{gap}")

    for keys, group in cells.groupby(CONFIG, sort=False):
        first = group.iloc[0]
        lengths = ", ".join(f"N={n} {status}" for n, status in zip(group["seq_len"], group["status"], strict=True))
        why = f" ({first['reason'].splitlines()[0][:160]})" if isinstance(first["reason"], str) and first["reason"] else ""
        click.echo(f"{item}{subject_of(keys)}: {lengths}{why}")  # the whole configuration: bf16 and fp16 lines read alike


def _print_crossovers(result, all_crossovers: bool, item: str) -> None:
    """The pairs that cross; by default only the near ones (crossover.is_near), and a count of the others. Impls
    with identical curves (exact attentions' FLOPs) are one name, "a = b", and their crossings one line each."""
    from attnprof.analysis import CONFIG
    from attnprof.crossover import NEAR_SPAN
    from attnprof.crossover_groups import EQUALS, merged_crossovers

    crossovers = result.crossovers
    found = crossovers[crossovers["kind"] != "none"] if len(crossovers) else crossovers
    shown = found if all_crossovers or not len(found) else found[found["near"]]
    header = f"Crossovers ({len(found)} of {len(crossovers)} pairs cross"
    if len(shown) < len(found):
        header += (
            f"; {len(found) - len(shown)} whose 95% interval reaches beyond {NEAR_SPAN}x the measured lengths are left"
            " out: --all-crossovers lists them"
        )
    lines = merged_crossovers(shown, result.fits, CONFIG[1:])
    if len(lines) < len(shown):
        header += f"; impls with identical curves are named once, as {EQUALS.join(['a', 'b'])}: {len(lines)} line{'s' * (len(lines) != 1)}"
    click.echo(header + "):" + ("\n" if item.startswith("-") else ""))
    for _, row in lines.iterrows():
        caveat = f" [{row['caveat']}]" if isinstance(row.get("caveat"), str) and row["caveat"] else ""
        click.echo(
            f"{item}{row['metric']} {row['impl_a']} vs {row['impl_b']} "
            f"({'causal' if row['causal'] else 'bidir'} {row['mode']}): {row['message']}{caveat}"
        )


def _print_fits_table(display) -> None:
    """The fits as a terminal table, and how each fit chose its lengths as lines below it: the rule is a
    sentence, and as a column it squeezed the others to a word a line at 80 columns ("quadrati c"). A fit that
    kept every length because none was overhead-bound or bending is counted, not listed: on a run of every impl
    in four configurations that was 44 of 88 lines saying the same thing."""
    rules = display.pop("rule") if "rule" in display.columns else None
    _rich_frame(display)
    if rules is None or not len(display):
        return
    from attnprof.fit import kept_every_length

    plain = rules.map(kept_every_length).astype(bool)
    click.echo("Fitted lengths:")
    for config, metric, rule in zip(display["config"][~plain], display["metric"][~plain], rules[~plain], strict=True):
        click.echo(f"  {config} {metric}: {rule}")
    if plain.any():
        others = "the other" if (~plain).any() else "all"
        click.echo(f"  {others} {int(plain.sum())} fits keep every length they have: no fixed overhead over its share, no upward bend")


def _rich_frame(frame) -> None:
    from rich.markup import escape
    from rich.table import Table

    from attnprof.table import is_large, plain_table

    if is_large(len(frame)):  # lines, not a drawn table: rich took 7.6 s for the 14,400 fits of a 50k-cell run
        click.echo(plain_table(list(frame.columns), frame.values.tolist()))
        return
    table = Table()
    for column in frame.columns:
        table.add_column(column, overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(escape(str(cell)) for cell in row))  # labels hold "[option=value]": text, not markup
    output_console().print(table)


def _json_safe(value):
    """NaN and infinities (no fit, no bound, never crosses) as null: JSON has no such numbers, and strict
    parsers (jq, browsers' JSON.parse) reject the NaN and Infinity that json.dumps writes by default."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
@click.option("--baseline", type=click.Path(dir_okay=False), default=None,
              help="Baseline file for max_regression and max_exponent_increase rules.")  # fmt: skip
@click.option("--markdown", type=click.Path(dir_okay=False), default=None, help="Also append the verdicts as Markdown here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the verdicts as JSON here (every configuration judged, for CI tools).")  # fmt: skip
@db_option
def gate(rules, runs, baseline, markdown, json_path, db):
    """Fail CI when a scaling exponent, a ratio, a memory frontier or a baseline regresses.

    Exit status: 0 every rule passes, 1 a rule failed, 2 bad usage or rules file,
    3 a rule could not be judged (cases not ok or not measured, a timing too noisy or taken on a busy
    machine, an unfinished run, nothing in the baseline to compare with),
    4 attnprof itself failed (a bug, with its traceback: not a verdict).

    \b
    Example:
      attnprof gate scenarios/gate.toml
      attnprof gate scenarios/targets.toml --run RUN1 --run RUN2   (judge stored runs: each [[sweep]]'s)
      attnprof gate rules.toml --baseline reports/baseline.jsonl   (regression and slope rules read it)
    """
    import os

    from attnprof.gate import exit_status, other_failures
    from attnprof.gate_output import markdown_report, summary_line, unjudged_record, verdicts_record
    from attnprof.gating import run_gate
    from attnprof.progress import SweepProgress
    from attnprof.runner import SweepInterrupted

    summaries = [path for path in (os.environ.get("GITHUB_STEP_SUMMARY"), markdown) if path]
    for path in summaries:  # a bad path found now, not after minutes of measuring
        _append(path, "")
    db = _gate_db(rules, db)
    unjudged = functools.partial(unjudged_record, rules, baseline=baseline, db=db)
    if json_path:  # replaces an earlier run's verdicts at once, so a gate that stops cannot leave them to be read
        _write_json(json_path, unjudged(None, "the gate has not finished: still measuring, or killed"))
    try:
        with SweepProgress() as progress:
            verdicts, run_ids = run_gate(rules, runs=runs, baseline=baseline, db=db, progress=progress)
    except SweepInterrupted as stop:
        if json_path:  # the status the process exits with, not null: a CI step reads both
            _write_json(json_path, unjudged(128 + stop.signum, f"interrupted after {stop.done} of {stop.total} cases", [stop.run_id]))
        exit_interrupted(stop, db)  # a command to paste
    except (UsageError, StoreFault, sqlite3.Error) as error:  # a damaged database too: the file's fault, not attnprof's
        if json_path:
            _write_json(json_path, unjudged(1 if isinstance(error, StoreFault) else 2, str(error)))
        raise  # one line and exit 2 (or the store's message): the group says them
    except Exception as error:  # noqa: BLE001 - a crash exited 1, which CI reads as "a rule failed"
        import traceback

        if json_path:
            _write_json(json_path, unjudged(4, f"attnprof itself failed: {type(error).__name__}: {error}"))
        traceback.print_exc()
        click.echo("gate: attnprof itself failed (the traceback above; please report it): no verdict, exit 4", err=True)
        sys.exit(4)
    for verdict in verdicts:
        click.echo(f"{verdict.verdict:<7} {verdict.rule.title}: {verdict.message}")
        for line in other_failures(verdict):  # every failing configuration, not only the worst
            click.echo(f"{'':<10}{line}")
    click.echo(f"{summary_line(verdicts)} (run {', '.join(run_ids)})")
    report = markdown_report(verdicts, run_ids)
    for path in summaries:
        _append(path, f"### attnprof gate: {rules}\n\n{report}")
    if json_path:
        _write_json(json_path, verdicts_record(verdicts, rules, run_ids, baseline=baseline, db=db))
    sys.exit(exit_status(verdicts))


def _gate_db(rules: str, db):
    """The database the gate reads and measures into, for the JSON verdicts: without --db they said "db": null, where
    the runs were in the rules file's [sweep] db or the default one (a user audit). A rules file that cannot be read
    keeps --db as given: run_gate says what is wrong with it."""
    from attnprof.gating import gate_db
    from attnprof.scenario import sweep_tables

    try:
        return str(gate_db(sweep_tables(rules, allowed_tables=("sweep", "rule")), db))
    except UsageError:
        return db


def _write_json(path: str, record: dict) -> None:
    from pathlib import Path

    try:
        Path(path).write_text(json.dumps(_json_safe(record), indent=2) + "\n")
    except OSError as error:
        raise UsageError(f"cannot write the JSON verdicts to {path!r}: {error.strerror}") from None


def _append(path: str, text: str) -> None:
    try:
        with open(path, "a") as handle:
            handle.write(text)
    except OSError as error:
        raise UsageError(f"cannot write the Markdown summary to {path!r}: {error.strerror}") from None
