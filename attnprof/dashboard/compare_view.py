"""The Compare view: a candidate run against a baseline, cell by cell and exponent by exponent.

The sidebar's filters belong to the run picked above it, so Compare leaves out only what was unticked there
(`views.unticked`), in both runs, and says so in its note.
"""

from __future__ import annotations

import pandas as pd

from attnprof.dashboard import cell_figures, compare, figures, fit_cache, pages, views
from attnprof.fit import format_length


def comparison(source, run_a, run_b, filters, picked_run=None) -> tuple:
    """(figure, cell rows, exponent rows, note): run_b (candidate) against run_a (baseline), regressions first. The
    sidebar's filters belong to `picked_run` (the run picker's): only what was unticked there is left out here."""
    if not run_a or not run_b:
        return figures.message_figure("Pick two runs to compare."), [], [], "Pick two runs to compare."
    try:
        dropped = left_out(source, picked_run, filters)
        versions = (source.frame(run_a).attrs.get("version"), source.frame(run_b).attrs.get("version"))
        key = ("compare", *versions, views.filter_key(dropped))
        return source.memo(key, lambda: _comparison(source, run_a, run_b, dropped))
    except Exception as error:  # noqa: BLE001
        return figures.message_figure(pages.failure_text(error)), [], [], pages.failure_text(error)


def left_out(source, picked_run, filters) -> dict:
    """What the sidebar leaves out on purpose (views.unticked), read against the picked run's options."""
    if not picked_run:
        return {}
    frame = source.frame(picked_run)
    options, defaults = source.memo(
        ("axis options", frame.attrs.get("version")), lambda: pages.axis_choices(frame, pages.planned(source, picked_run, frame))
    )
    return views.unticked(options, defaults, filters)


def _comparison(source, run_a, run_b, dropped: dict) -> tuple:
    cells, changes = compared_cells(source, run_a, run_b, dropped)
    worse = int((cells["score"] > 1.05).sum()) if len(cells) else 0
    note = f"{len(cells)} shared cells; {worse} at least 5% slower or larger, or failing now."
    note = " ".join(filter(None, (note, compare.caveat_note(cells))))
    note += " The two runs are the same run." if run_a == run_b else ""
    note += _unfinished(source, run_a, "baseline") + _unfinished(source, run_b, "candidate")
    if dropped:
        unticked = "; ".join(f"{axis} {', '.join(map(_value_text(axis), values))}" for axis, values in dropped.items())
        note += f" Left out, as unticked in the sidebar: {unticked}."
    table = cells.drop(columns=["score"]).assign(seq_len=cells["seq_len"].map(format_length))
    rows, changed = pages.records(pages.rounded(table)), pages.records(pages.rounded(changes))
    return cell_figures.compare_figure(cells, (run_a, run_b)), rows, changed, note


def _unfinished(source, run_id: str, role: str) -> str:
    """' The candidate is interrupted: 4 of 18 cases, the rest with ...' (as `attnprof compare` says it), or ''."""
    from attnprof.dashboard.runinfo import unfinished_note

    unfinished = unfinished_note(source.run(run_id), len(source.frame(run_id)), source.path)
    return f" The {role} is {unfinished}." if unfinished else ""


def _value_text(axis: str):
    return lambda value: format_length(value) if axis == "seq_len" else views.axis_text(axis, value).split("=")[-1]


def compared_cells(source, run_a, run_b, dropped: dict):
    """(cells, exponent changes) of the two runs without the `dropped` values (axis -> values)."""
    shown_a = views.drop_values(source.frame(run_a), dropped)
    shown_b = views.drop_values(source.frame(run_b), dropped)
    cells = compare.compare_cells(shown_a, shown_b)
    fitted_a, fitted_b = compare.shared_configurations(shown_a, shown_b)
    metrics = ("time", "peak_bytes")
    fits_a = pd.concat([fit_cache.fits(source, fitted_a, m) for m in metrics], ignore_index=True)
    fits_b = pd.concat([fit_cache.fits(source, fitted_b, m) for m in metrics], ignore_index=True)
    return cells, compare.exponent_changes(pd.concat([shown_a, shown_b]), fits_a, fits_b)
