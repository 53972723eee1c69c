"""What each callback answers: the data source read, the views computed, the figures drawn, errors as messages.

callbacks.py only maps component ids to these functions. Each function returns plain values (figures, rows,
strings), so tests call them against a database without a server. A bad database or run becomes a message, never
a traceback: `UsageError` says what is wrong in its own words, anything else is logged and summarised.
"""

from __future__ import annotations

import json
import logging
import math
import time

import pandas as pd

from attnprof.analysis import CONFIG, boundaries_by_config, timing_caveats, timing_flags, with_caveats
from attnprof.dashboard import cell_figures, figures, fit_cache, runinfo, views
from attnprof.env import DEFAULT_BUDGET
from attnprof.errors import UsageError
from attnprof.export import EXPORT_KEYS
from attnprof.table import format_bytes

log = logging.getLogger("attnprof.dashboard")
BUDGET_RANGE = (20, 44)  # the budget slider, log2 bytes: 1 MiB .. 16 TiB
# The warm-up computes the first view, then leaves the 2 cores to the browser until a page has its first view and
# drawn it (plotly.js takes ~1 s to start and ~0.5 s to draw): a warm-up running on meanwhile made a just-started
# server's first render ~0.5 s slower. The other tabs answer cold within their targets anyway.
WARM_UP_WAIT_S = 10.0  # longest wait for a page's first view before warming the rest anyway
WARM_UP_PAUSE_S = 2.0  # then time for that page to draw


def failure_text(error: Exception) -> str:
    if isinstance(error, UsageError):
        return str(error)
    log.exception("dashboard view failed")
    return f"This view could not be drawn ({type(error).__name__}: {error}); the server log has the details."


# --- runs and filters ----------------------------------------------------------------------------------------


def filter_state(source, run_id, current: dict | None, previous: dict | None, previous_run=None) -> tuple[dict, dict]:
    """(axis -> options, axis -> selected values). A new run gets the defaults; the same run (`previous_run`) keeps
    the choices made, and values that appeared since the last refresh (a running sweep's new lengths) join them."""
    nothing = {axis: [] for axis in views.AXES}
    if not run_id:
        return nothing, dict(nothing)
    try:
        frame = source.frame(run_id)
        plan = planned(source, run_id, frame)
    except Exception as error:  # noqa: BLE001  (the views show the message)
        failure_text(error)
        return nothing, dict(nothing)
    options, defaults = source.memo(("axis options", frame.attrs.get("version")), lambda: axis_choices(frame, plan))
    if previous_run != run_id or current is None or previous is None:
        return options, defaults
    selected = {}
    for axis in views.AXES:
        kept = [v for v in current.get(axis) or [] if v in options[axis]]
        new = [v for v in options[axis] if v not in (previous.get(axis) or []) and axis not in views.ONE_BY_DEFAULT]
        selected[axis] = kept + new
    return options, selected


def axis_choices(frame, plan) -> tuple[dict, dict]:
    """(axis -> options, axis -> default values) of the measured and the planned cells: remembered per data
    version, since every page load asks (100 ms at 50,000 rows)."""
    every = pd.concat([frame[list(views.AXES)], plan[list(views.AXES)]]) if len(plan) else frame
    return views.axis_options(every), views.default_filters(every)


def planned(source, run_id, frame) -> pd.DataFrame:
    """The cells the run's sweep asks for (measured or not): filter options and the coverage grid include them,
    so a cell a running or interrupted sweep has not reached yet can be chosen and is seen as missing."""
    return source.memo(("planned", frame.attrs.get("version")), lambda: views.planned_cells(source.run(run_id).sweep))


def usable_metric(source, run_id, current: str, choices=tuple(views.METRICS)) -> str:
    """The current metric if the run has values for it, else the first one it has (accounting runs have no time)."""
    with_values = metrics_with_values(source, run_id)
    usable = [key for key in choices if key in with_values]
    return current if current in usable or not usable else usable[0]


def metrics_with_values(source, run_id) -> set:
    """The metrics (views.METRICS keys) some ok cell of the run has a positive value for; empty for a bad run."""
    try:
        frame = source.frame(run_id)
    except Exception:  # noqa: BLE001  (the views report the problem)
        return set()
    return source.memo(("metrics with values", frame.attrs.get("version")), lambda: _with_values(frame))


def _with_values(frame) -> set:
    """The metrics (views.METRICS keys) some ok cell of the run has a positive value for."""
    ok = frame[frame["status"] == "ok"]
    return {key for key, metric in views.METRICS.items() if ok[metric.column].gt(0).any()}


def _filtered(source, run_id, filters, *, empty_ok: bool = False):
    """(the run's frame, the rows the filters keep). A run without any row yet (a sweep just started) is said as
    such, not as "No cells match the filters" (nothing was filtered out)."""
    frame = source.frame(run_id)
    if frame.empty and not empty_ok:
        run = source.run(run_id)
        if run.state == "running":
            raise UsageError(f"Run {run_id} has no measurement stored yet: its cells appear here as its sweep stores them.")
        raise UsageError(f"Run {run_id} has no measurement stored: {runinfo.unfinished_note(run, 0, source.path) or 'it is empty'}.")
    return frame, views.apply_filters(frame, filters)


# --- fits, cached per configuration --------------------------------------------------------------------------


def warm_up(source, wait_s: float = WARM_UP_WAIT_S, pause_s: float = WARM_UP_PAUSE_S) -> None:
    """Load the newest run and compute what its first page shows (scaling, exponents, and the comparison with the
    run before, with the default filters), so the first visit finds them ready: the scaling view first, the others
    once a page has been given its scaling view and `pause_s` to draw it (or after `wait_s`). Run on a thread by
    create_app; a failure is left for the page to report."""
    try:
        runs = source.runs()
        if not runs:
            return
        run_id = runs[0].info.run_id
        filters = filter_state(source, run_id, None, None)[1]  # exactly what the page starts with
        facets = views.default_facets(source.frame(run_id))
        scaling(source, run_id, filters, usable_metric(source, run_id, "time"), facets)
        if source.first_view_served.wait(wait_s):
            time.sleep(pause_s)
        crossing = usable_metric(source, run_id, "time", views.EXPONENT_METRICS)
        exponents(source, run_id, filters, crossing, default_budget_log2(source, run_id))
        if len(runs) > 1:  # the Compare tab opens on the two newest runs
            from attnprof.dashboard.compare_view import comparison  # it builds on this module

            comparison(source, runs[1].info.run_id, run_id, filters, run_id)
    except Exception:  # noqa: BLE001  (the page shows the problem when it asks)
        log.debug("warm-up failed", exc_info=True)


# --- the views -----------------------------------------------------------------------------------------------


def scaling(source, run_id, filters, metric: str, facets) -> tuple:
    """(figure, note) of the Scaling view."""
    if not run_id:
        return figures.message_figure("No run selected."), ""
    try:
        frame, shown = _filtered(source, run_id, filters)
        key = ("scaling", frame.attrs.get("version"), views.filter_key(filters), metric, tuple(facets or ()))
        return source.memo(key, lambda: _scaling(source, shown, filters, metric, facets or ()))
    except Exception as error:  # noqa: BLE001
        return figures.message_figure(failure_text(error)), failure_text(error)


TIMED_METRICS = ("time", "tflops", "gbps")  # read from the median time: a busy machine's cells mislead them


def _scaling(source, shown, filters, metric, facets) -> tuple:
    notes = (views.unticked_note(shown, filters), views.facets_note(facets), views.scaling_message(shown, metric))
    message = " ".join(filter(None, notes))
    caveat, flagged = "", ""
    if metric in TIMED_METRICS and len(shown):  # said only in the Exponents note, before: a PNG of this view said nothing
        caveat = timing_caveats(shown, "Their points may sit high (TFLOP/s and GB/s low); each point's hover says so.")
        flags = timing_flags(shown)
        flagged = f"{int((flags != '').sum())} timed cells busy or noisy (hover says which)" if caveat else ""
    cells = views.scaling_cells(views.with_lines(shown, facets), metric)
    fitted = views.fits_for_lines(cells, fit_cache.fits(source, shown, metric)) if not shown.empty else pd.DataFrame()
    figure_note = " ".join(filter(None, (message, flagged)))  # the figure's subtitle: one line, the note has the sentence
    return figures.scaling_figure(cells, fitted, views.METRICS[metric], figure_note), " ".join(filter(None, (message, caveat)))


def exponents(source, run_id, filters, crossover_metric: str, budget_log2: float) -> tuple:
    """(table rows, exponent figure, crossover figure, frontier figure, note) of the Exponents view. The parts are
    remembered separately, so moving the budget slider redraws the frontier only."""
    empty = figures.message_figure("No run selected.")
    if not run_id:
        return [], empty, empty, empty, ""
    try:
        frame, shown, base, all_fits = _fitted(source, run_id, filters)
        rows, chart, note = source.memo(("exponent table", *base), lambda: _exponent_table(shown, all_fits))
        note = " ".join(filter(None, (views.unticked_note(shown, filters), note)))  # as Scaling says it
        crossing = _crossovers_of(source, shown, base, all_fits, crossover_metric)
        # the bytes fit's frontier was given; `is None`: a budget of 1 byte (log2 0) drew the default 80 GiB (a review)
        budget = round(2.0 ** float(budget_log2 if budget_log2 is not None else math.log2(DEFAULT_BUDGET)))
        boundaries = source.memo(("boundaries", *base), lambda: boundaries_by_config(shown))
        frontier = views.frontier_rows(shown, all_fits, budget, boundaries, device_memory(source, run_id))
        return rows, chart, crossing, figures.frontier_figure(frontier, budget), note
    except Exception as error:  # noqa: BLE001
        failed = figures.message_figure(failure_text(error))
        return [], failed, failed, failed, failure_text(error)


def crossovers(source, run_id, filters, metric: str):
    """The crossover figure of `metric` alone, from the fits the Exponents view keeps (the report draws every metric's)."""
    _, shown, base, all_fits = _fitted(source, run_id, filters)
    return _crossovers_of(source, shown, base, all_fits, metric)


def _fitted(source, run_id, filters) -> tuple:
    """(frame, shown rows, memo key base, every metric's fits) of the filtered run, the fits remembered."""
    frame, shown = _filtered(source, run_id, filters)
    base = (frame.attrs.get("version"), views.filter_key(filters))
    return frame, shown, base, source.memo(("exponent fits", *base), lambda: _exponent_fits(source, shown))


def _crossovers_of(source, shown, base, all_fits, metric: str):
    return source.memo(("crossovers", *base, metric), lambda: _crossover_figure(shown, all_fits, metric))


def _exponent_fits(source, shown) -> pd.DataFrame:
    parts = [fit_cache.fits(source, shown, m) for m in views.EXPONENT_METRICS]
    return pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else parts[0]


def _exponent_table(shown, all_fits) -> tuple:
    table = views.exponent_table(shown, all_fits)
    timed = "time" if len(shown) and shown["median_ms"].notna().any() else "peak_bytes"
    note = views.scaling_message(shown, timed) if len(shown) else "No cells match the filters."
    then = "Their time exponents and crossovers may be off; the Scaling view's points and the crossovers' hover name them."
    caveat = timing_caveats(shown, then) if len(shown) else ""
    note = " ".join(filter(None, (note, caveat)))  # the report carried no word of them: only each cell's hover did
    return records(table), figures.exponent_figure(table), note


def _crossover_figure(shown, all_fits, metric: str):
    crossing = with_caveats(_crossovers(all_fits[all_fits["metric"] == metric] if len(all_fits) else all_fits), shown)
    return figures.crossover_figure(views.crossover_groups(shown, crossing), metric)


def _crossovers(fits_df: pd.DataFrame) -> pd.DataFrame:
    from attnprof.crossover import crossover_frame

    if fits_df.empty or fits_df["fit"].notna().sum() < 2:
        return pd.DataFrame()
    return crossover_frame(fits_df, impl_col="label", config_cols=CONFIG[1:])


def roofline(source, run_id, filters, tflops, tbps) -> tuple:
    """(figure, note) of the Roofline view; tflops and tbps override the device table when given."""
    from attnprof.dashboard.hardware import ceilings_for, with_overrides

    if not run_id:
        return figures.message_figure("No run selected."), ""
    try:
        frame, shown = _filtered(source, run_id, filters)
        run = source.run(run_id)
        points = views.roofline_points(shown)
        devices = sorted(points["device"].unique()) if len(points) else ["cpu"]
        ceilings = with_overrides(ceilings_for(run.env, devices[0]), _number(tflops), _number(tbps))
        notes = [f"Cells on {', '.join(devices)}; ceilings of the first."] if len(devices) > 1 else []
        for given, what in ((tflops, "compute ceiling (TFLOP/s)"), (tbps, "bandwidth ceiling (TB/s)")):
            if given not in (None, "") and _number(given) is None:  # 0 and -3 were left in the box, the table's roof drawn unsaid
                notes.append(f"The {what} {given!r} is not a positive number: the device table's is drawn.")
        return cell_figures.roofline_figure(points, ceilings), " ".join(notes)
    except Exception as error:  # noqa: BLE001
        return figures.message_figure(failure_text(error)), failure_text(error)


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def coverage(source, run_id, filters) -> tuple:
    """(figure, note) of the Coverage view: measured cells plus the sweep's planned cells not measured yet."""
    if not run_id:
        return figures.message_figure("No run selected."), ""
    try:
        frame, shown = _filtered(source, run_id, filters, empty_ok=True)  # the planned cells, all missing
        grid = views.coverage_grid(shown, views.apply_filters(planned(source, run_id, frame), filters))
        counts = grid["status"].value_counts()
        note = " ".join(filter(None, (views.unticked_note(shown, filters), ", ".join(f"{n} {s}" for s, n in counts.items()))))
        return cell_figures.coverage_figure(grid), note
    except Exception as error:  # noqa: BLE001
        return figures.message_figure(failure_text(error)), failure_text(error)


def run_info(source, run_id) -> tuple:
    """(run rows, environment rows, sweep rows, command) of the Run info view."""
    if not run_id:
        return [], [], [], ""
    try:
        run = source.run(run_id)
        frame = source.frame(run_id)
        statuses = frame["status"].value_counts().to_dict()
        rows = runinfo.info_rows(run, len(frame), statuses)
        command = runinfo.reproduce_command(run, source.path)
        return rows, runinfo.mapping_rows(run.env), runinfo.mapping_rows(run.sweep, skip=("impl_specs",)), command
    except Exception as error:  # noqa: BLE001
        return [{"field": "error", "value": failure_text(error)}], [], [], ""


def device_memory(source, run_id) -> int | None:
    """The run's device memory (its GPU's, the host's for CPU runs); None for accounting runs or no run."""
    from attnprof.env import memory_budget

    try:
        run = source.run(run_id)
    except Exception:  # noqa: BLE001  (no run: the slider keeps its default)
        return None
    return memory_budget(run.env, run.sweep.get("device", []))


def default_budget_log2(source, run_id) -> float:
    """The frontier budget a run starts with: its GPU's memory, the host's for CPU runs, else 80 GiB."""
    # Not rounded to the slider's step: the report and `fit` must find the same frontier for the same run.
    return math.log2(device_memory(source, run_id) or DEFAULT_BUDGET)


def budget_text(budget_log2) -> str:
    return f"budget {format_bytes(round(2.0 ** float(budget_log2)))}" if budget_log2 is not None else ""


# --- the current view as CSV ---------------------------------------------------------------------------------


def view_csv(source, tab: str, run_id, filters, compare_runs=(None, None)) -> tuple[str, str]:
    """(file name, CSV text) of the data behind the current tab."""
    if tab == "compare":
        from attnprof.dashboard.compare_view import compared_cells, left_out  # it builds on this module

        cells, changes = compared_cells(source, *compare_runs, left_out(source, run_id, filters))
        return f"attnprof-compare-{compare_runs[0]}-{compare_runs[1]}.csv", whole_counts(cells.drop(columns=["score"])).to_csv(index=False)
    frame, shown = _filtered(source, run_id, filters, empty_ok=True)
    if tab == "exponents":
        data = views.exponent_table(shown, _exponent_fits(source, shown))
    elif tab == "roofline":
        data = views.roofline_points(shown)[["config", "seq_len", "flops", "min_bytes", "intensity", "median_ms", "tflops", "gbps"]]
    elif tab == "coverage":
        data = views.coverage_grid(shown, views.apply_filters(planned(source, run_id, frame), filters))
    elif tab == "info":  # the whole page: the run, its command, environment and sweep (a section column tells them apart)
        rows, env, sweep, command = run_info(source, run_id)
        sections = {"run": rows, "reproduce": [{"field": "command", "value": command}], "environment": env, "sweep": sweep}
        data = pd.DataFrame([{"section": name, **row} for name, part in sections.items() for row in part])
    else:
        samples = [json.dumps(times) for times in source.samples(run_id, shown)]
        data = shown.assign(times_ms=samples, options=shown["options"].map(json.dumps))
        data = data[[k for k in EXPORT_KEYS if k in data.columns] + [c for c in data.columns if c not in EXPORT_KEYS]]
    return f"attnprof-{tab}-{run_id}.csv", whole_counts(data).to_csv(index=False)


def records(table: pd.DataFrame) -> list[dict]:
    """DataTable rows: NaN and infinities as empty cells, numpy scalars as Python ones."""
    clean = table.astype(object).where(table.notna(), None)
    return [{k: _cell(v) for k, v in row.items()} for row in clean.to_dict("records")]


def _cell(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """Measured floats to 4 significant digits; counts (bytes, FLOPs: floats only because a missing one is NaN) as
    whole numbers, since 3883264 bytes shown as 3883000 reads as a measured value."""
    counts = _count_columns(table)
    whole = {c: table[c].map(lambda v: int(v) if v == v and math.isfinite(v) else v).astype(object) for c in counts}
    floats = [c for c in table.select_dtypes("float").columns if c not in counts]
    rounded = {c: table[c].map(lambda v: float(f"{v:.4g}") if v == v and math.isfinite(v) else v) for c in floats}
    return table.assign(**rounded, **whole)


def whole_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Counts as nullable integers, for a CSV: a missing peak made the column float and every byte count read
    "393216.0"; measured floats keep every digit there."""
    return table.assign(**{c: table[c].round().astype("Int64") for c in _count_columns(table)})


def _count_columns(table: pd.DataFrame) -> list[str]:
    from attnprof.dashboard.plotting import is_count

    return [c for c in table.select_dtypes("float").columns if is_count(c)]
