"""Scaling and exponent figures: pure functions from prepared frames (views.py) to plotly figures. No I/O.

Every trace carries `meta` saying what it is ("measured", "failed:<status>", "time_ratio", ...), so tests and the
browser can tell traces apart without parsing their names. The scaling view draws its p20-p80 bands and fitted power
laws as layout shapes in the lines' legend groups (a band: type "path"; a fit: type "line", in the legend), not as
traces: at 294 traces plotly.js took 0.41-0.65 s to draw the default view of a 50,000-row run, 0.28-0.33 s with those
192 traces as shapes (same picture; fit details move to the measured points' hover).
"""

from __future__ import annotations

import itertools
import math

import pandas as pd

from attnprof.crossover import NEAR_SPAN
from attnprof.dashboard.plotting import (
    axis_refs,
    build_figure,
    byte_ticks,
    format_value,
    is_present,
    length_ticks,
    line_colours,
    message_figure,
    short_length,
    subplot_grid,
    update_axes,
)
from attnprof.fit import format_length
from attnprof.table import format_bytes
from attnprof.trackers.host_contention import timed_while_busy

FAILURE_MARKERS = {  # status -> (legend name, marker symbol, colour)
    "oom": ("out of memory", "x", "#d62728"),
    "timeout": ("timed out", "hourglass", "#ff7f0e"),
    "crashed": ("crashed", "star", "#9467bd"),
    "error": ("error", "diamond-x", "#8c564b"),
}
REFERENCE_EXPONENTS = ((1.0, "N"), (1.5, "N^1.5"), (2.0, "N^2"))


# --- scaling -------------------------------------------------------------------------------------------------


def scaling_figure(cells: pd.DataFrame, fits: pd.DataFrame, metric, message: str = ""):
    """Metric against length, log-log: one line per `line`, a p20-p80 band, the fitted power law, failed cells.

    cells: views.scaling_cells(views.with_lines(...)) rows; fits: views.fits_for_lines rows; metric: views.Metric.
    """
    if cells.empty:
        return message_figure(message or "No cells match the filters.")
    cols, rows = _ordered(cells["facet_col"]), _ordered(cells["facet_row"])
    titles = [" · ".join(filter(None, (c, r))) for r in rows for c in cols]
    grid = subplot_grid(len(rows), len(cols), titles, shared_xaxes=True, shared_yaxes=True, horizontal_spacing=0.04,
                        vertical_spacing=0.12 if len(rows) > 1 else 0.1)  # fmt: skip
    colours, legend, traces, shapes = line_colours(cells["line"]), set(), [], []
    for r, row in enumerate(rows, 1):
        for c, col in enumerate(cols, 1):
            panel = cells[(cells["facet_row"] == row) & (cells["facet_col"] == col)]
            panel_fits = fits[(fits["facet_row"] == row) & (fits["facet_col"] == col)] if len(fits) else fits
            facet = " · ".join(filter(None, (col, row)))
            refs = axis_refs(r, c, len(cols))
            panel_traces, panel_shapes = _panel_traces(panel, panel_fits, metric, colours, legend, facet)
            traces += [{**trace, **refs} for trace in panel_traces]
            shapes += [{**shape, "xref": refs["xaxis"], "yref": refs["yaxis"]} for shape in panel_shapes]
    measured = any(trace["meta"] == "measured" for trace in traces)
    _scaling_axes(grid, cells, metric, len(rows), message, measured)
    if metric.unit == "bytes":  # every value drawn: points, bands and the failed cells' markers
        update_axes(grid, "yaxis", **byte_ticks(y for trace in traces if trace.get("y") is not None for y in trace["y"]))
    return build_figure(traces, {**grid, "shapes": shapes})


def _ordered(values: pd.Series) -> list:
    return sorted(values.unique(), key=str)


PANEL_COLUMNS = ("line", "seq_len", "value", "low", "high", "noisy", "reason", "status")


def _panel_traces(panel, fits, metric, colours, legend, facet) -> tuple[list[dict], list[dict]]:
    """The traces and shapes of one facet panel. Works on plain tuples (PANEL_COLUMNS), one pass: slicing a pandas
    frame per line cost more than everything else in the view."""
    by_line = dict(zip(fits["line"], fits["fit"], strict=False)) if len(fits) else {}
    rows = sorted(zip(*(panel[c].tolist() for c in PANEL_COLUMNS), strict=True), key=lambda r: (r[0], r[1]))  # by line, then N
    measured_by_line, traces, shapes = {}, [], []
    for line, group in itertools.groupby(rows, key=lambda r: r[0]):
        points = list(group)
        ok = [p for p in points if is_present(p[2])]
        measured_by_line[line] = ok
        colour, fit = colours[line], by_line.get(line) if _is_fit(by_line.get(line)) else None
        band = _band(ok, line, colour) if metric.band else None
        if band is not None:
            shapes.append(band)
        if ok:
            traces.append(_measured(ok, line, colour, metric, line not in legend, fit))
            legend.add(line)
        if fit is not None:
            shapes.append(_fit_line(fit, points, line, colour, facet))
    for status, (name, _, _) in FAILURE_MARKERS.items():
        failed = [p for p in rows if p[7] == status]
        if failed:
            traces.append(_failures(failed, measured_by_line, by_line, status, name not in legend))
            legend.add(name)
    return traces, shapes


def _is_fit(fit) -> bool:
    from attnprof.fit import Fit

    return isinstance(fit, Fit)


def _band(ok, line, colour) -> dict | None:
    """The p20-p80 band as a closed path shape (data coordinates, which shapes take on log axes too), over the
    points whose p20 and p80 are positive numbers (a path cannot skip a NaN as a trace does)."""
    banded = [p for p in ok if is_present(p[3]) and is_present(p[4]) and p[3] > 0 and p[4] > 0]
    if not banded:
        return None
    corners = [(p[1], p[4]) for p in banded] + [(p[1], p[3]) for p in banded][::-1]
    path = "M" + "L".join(f"{x},{y!r}" for x, y in corners) + "Z"
    return {"type": "path", "path": path, "fillcolor": _transparent(colour), "line": {"width": 0}, "layer": "below",
            "legendgroup": line, "showlegend": False, "name": f"{line} p20-p80"}  # fmt: skip


def _measured(ok, line, colour, metric, show_legend, fit=None) -> dict:
    fitted = _fit_text(fit) if fit is not None else ""
    text = [_point_text(line, metric, *p[1:7]) + fitted for p in ok]
    return {"type": "scatter", "x": [p[1] for p in ok], "y": [p[2] for p in ok], "mode": "lines+markers", "name": line,
            "legendgroup": line, "showlegend": show_legend, "line": {"color": colour, "width": 2}, "marker": {"size": 7},
            "hovertext": text, "hovertemplate": "%{hovertext}<extra></extra>", "meta": "measured"}  # fmt: skip


def _point_text(line, metric, n, value, low, high, noisy, reason) -> str:
    text = f"<b>{line}</b><br>N = {format_length(n)}<br>{metric.title}: {format_value(value, metric.unit)}"
    if metric.band and low == low:
        text += f"<br>p20-p80: {format_value(low, metric.unit)} - {format_value(high, metric.unit)}"
    timed = metric.key in ("time", "tflops", "gbps")
    if noisy is True and timed:  # a flag on the timing samples, not on a memory peak
        text += "<br>noisy timing: IQR over 10% of the median"
    if reason and not timed:  # nor the busy machine's note: every point of a peak chart repeated it (a user audit)
        reason = "; ".join(part for part in reason.split("; ") if not timed_while_busy(part))
    return text + (f"<br>note: {reason}" if reason else "")


def _fit_text(fit) -> str:
    interval = f"[{fit.exponent_low:.2f}, {fit.exponent_high:.2f}]" if math.isfinite(fit.exponent_low) else "[no interval]"
    span = f"{format_length(min(fit.lengths_used))}..{format_length(max(fit.lengths_used))}"
    return f"<br>fit: N^{fit.exponent:.2f} {fit.complexity}, 95% interval {interval}, r2 {fit.r2:.4f}, over N = {span}"


def _fit_line(fit, points, line, colour, facet) -> dict:
    """The fitted power law as a line shape in the legend: straight on log-log axes, so its two ends draw it exactly,
    from the first length the fit used to the line's last length (with a subtracted overhead, which bends it, a
    chord through the fitted curve's ends: the overhead is under 75% of every value it was fitted on)."""
    first, last = min(fit.lengths_used), max(p[1] for p in points)
    name = f"{line}{' · ' + facet if facet else ''}: N^{fit.exponent:.2f} {fit.complexity}"
    return {"type": "line", "x0": int(first), "y0": fit.predict(first), "x1": int(last), "y1": fit.predict(last), "name": name,
            "showlegend": True, "legendgroup": line, "line": {"color": colour, "dash": "dash", "width": 1.5}}  # fmt: skip


def _failures(failed, measured_by_line, fits_by_line, status, show_legend) -> dict:
    """Failed cells at their length, at the height their line would have had (the fit, else the last value)."""
    name, symbol, colour = FAILURE_MARKERS[status]
    ys = [_failure_height(measured_by_line, fits_by_line.get(p[0]), p[0], p[1]) for p in failed]
    # the height is a placement, never a measurement: a timed-out cell sat at the fit's 289 ms where it ran past 2 s
    # and not always where its line would be: kept within FAILURE_HEADROOM of the plotted values (a report audit)
    placed = "<br><i>(its height is a placement near its line, within the plotted values: not measured)</i>"
    text = [f"<b>{p[0]}</b><br>N = {format_length(p[1])}<br>{status}: {p[6] or 'no reason recorded'}{placed}" for p in failed]
    return {"type": "scatter", "x": [p[1] for p in failed], "y": ys, "mode": "markers", "name": name, "legendgroup": name,
            "showlegend": show_legend, "marker": {"symbol": symbol, "size": 13, "color": colour, "line": {"width": 2, "color": colour}},
            "hovertext": text, "hovertemplate": "%{hovertext}<extra></extra>", "meta": f"failed:{status}"}  # fmt: skip


FAILURE_HEADROOM = 2.0  # a failure marker sits at most this factor beyond the measured values of its figure


def _failure_height(measured_by_line: dict, fit, line: str, n: int) -> float:
    """Within FAILURE_HEADROOM of the figure's measured values: a two-point fit extrapolated to a crashed cell
    put its marker at 2e12 ms, and the axis then squeezed every measurement into one decade of fifteen."""
    values = [p[2] for points in measured_by_line.values() for p in points]
    height = None
    if _is_fit(fit):
        predicted = fit.predict(n)
        if math.isfinite(predicted) and predicted > 0:
            height = predicted
    if height is None:
        before = [p[2] for p in measured_by_line.get(line, []) if p[1] <= n]  # the line's ok points, sorted by N
        height = float(before[-1]) if before else (float(max(values)) if values else 1.0)
    if values:
        height = min(max(height, min(values) / FAILURE_HEADROOM), max(values) * FAILURE_HEADROOM)
    return float(height)


def _scaling_axes(layout: dict, cells, metric, n_rows: int, message: str, measured: bool) -> None:
    # the unit once: "achieved TFLOP/s" and "FLOPs per call" name theirs already
    y_title = metric.title if metric.unit in metric.title else f"{metric.title} ({metric.unit})"
    update_axes(layout, "xaxis", type="log", **length_ticks(cells["seq_len"]), showgrid=True)
    update_axes(layout, "yaxis", type="log", showgrid=True)
    n_cols = len(cells["facet_col"].unique())
    for col in range(1, n_cols + 1):  # titles on the bottom row's x axes and the first column's y axes
        layout["xaxis" + axis_refs(n_rows, col, n_cols)["xaxis"][1:]]["title"] = {"text": "sequence length N"}
    failed_only = not measured
    if failed_only:  # the markers' heights are placeholders: a peak axis read "100mB" (0.1 byte) beside them, an audit's
        update_axes(layout, "yaxis", showticklabels=False)
        # ok cells without the value: the device has no such source (a CPU run's CUDA peaks), no cell failed (an audit)
        failed = "status" in cells and cells["status"].isin(list(FAILURE_MARKERS)).any()
        why = "failed cells only (hover for why)" if failed else "the source is not available on the device"
        y_title = f"no {metric.title} measured: {why}"
    for row in range(1, n_rows + 1):
        layout["yaxis" + axis_refs(row, 1, n_cols)["yaxis"][1:]]["title"] = {"text": y_title}
    title = f"{metric.title} against sequence length (log-log)" + ("" if failed_only else "; dashed: fitted power law")
    layout.update(title={"text": title + (f"<br><sub>{message}</sub>" if message else "")}, height=max(480, 330 * n_rows + 120),
                  legend={"font": {"size": 11}}, meta="scaling", margin={"t": 90 if message else 70})  # fmt: skip


def _transparent(colour: str, alpha: float = 0.15) -> str:
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


# --- exponents -----------------------------------------------------------------------------------------------


EXPONENT_AXIS_SPAN = 1.5  # the exponent axis reaches at most this far beyond 0..3
CLASS_COLOURS = {"linear": "#2ca02c", "n log n": "#17becf", "n^1.5": "#ff7f0e", "quadratic": "#d62728", "ambiguous": "#7f7f7f"}


def exponent_figure(table: pd.DataFrame):
    """One panel per metric: each configuration's exponent with its 95% interval, coloured by its complexity class.

    table: views.exponent_table rows (rows without an exponent are left out)."""
    fitted = table[table["exponent"].notna()] if len(table) else table
    if fitted.empty:
        return message_figure("No exponents: a fit needs at least two lengths with values.")
    metrics = list(dict.fromkeys(fitted["metric"]))
    configs = list(dict.fromkeys(fitted["config"]))
    grid = subplot_grid(1, len(metrics), metrics, shared_yaxes=True, horizontal_spacing=0.03)
    traces, shown, shapes = [], set(), []
    for col, metric in enumerate(metrics, 1):
        refs = axis_refs(1, col, len(metrics))
        for complexity, rows in fitted[fitted["metric"] == metric].groupby("class", sort=False):
            traces.append({**_exponent_trace(metric, complexity, rows, complexity not in shown), **refs})
            shown.add(complexity)
        # The reference exponents as dotted vertical lines, as plain shapes (add_vline validates: ~11 ms each).
        shapes += [{"type": "line", "x0": value, "x1": value, "xref": refs["xaxis"], "y0": 0, "y1": 1, "yref": f"{refs['yaxis']} domain",
                    "line": {"dash": "dot", "color": "#999"}} for value, _ in REFERENCE_EXPONENTS]  # fmt: skip
    update_axes(grid, "yaxis", categoryorder="array", categoryarray=configs[::-1], automargin=True)
    ticks = [value for value, _ in REFERENCE_EXPONENTS]
    # The range follows the exponents, not their intervals: one wide interval (-1.6 to 5.6) let autorange squeeze
    # the reference ticks into overlapping text. Bars longer than the range run off its edge.
    low, high = min(0.0, fitted["exponent"].min()) - 0.25, max(3.0, fitted["exponent"].max()) + 0.25
    update_axes(grid, "xaxis", title={"text": "exponent"}, tickvals=[0, 0.5, *ticks, 2.5, 3],
                ticktext=["0", "0.5", *(t for _, t in REFERENCE_EXPONENTS), "2.5", "3"],
                range=[max(low, -EXPONENT_AXIS_SPAN), min(high, 3 + EXPONENT_AXIS_SPAN)])  # fmt: skip
    grid.update(height=200 + 30 * len(configs), meta="exponents", legend={"title": {"text": "class"}},
                title={"text": "Scaling exponents with 95% intervals (value ~ N^exponent), coloured by complexity class"})  # fmt: skip
    return build_figure(traces, {**grid, "shapes": shapes})


def _exponent_trace(metric: str, complexity: str, rows: pd.DataFrame, show_legend: bool) -> dict:
    columns = [rows[c].tolist() for c in ("config", "exponent", "low", "high", "runner_up", "r2")]
    high = [h - e if _finite(h) else None for e, h in zip(columns[1], columns[3], strict=False)]
    low = [e - lo if _finite(lo) else None for e, lo in zip(columns[1], columns[2], strict=False)]
    hover = [f"<b>{c}</b><br>{metric}: N^{e:.3f} {_interval(lo, h)}<br>class {complexity}, next {r}<br>r2 {r2}"
             for c, e, lo, h, r, r2 in zip(*columns, strict=False)]  # fmt: skip
    colour = CLASS_COLOURS.get(complexity, "#7f7f7f")
    return {"type": "scatter", "x": columns[1], "y": columns[0], "mode": "markers", "name": complexity, "legendgroup": complexity,
            "showlegend": show_legend, "marker": {"size": 10, "color": colour}, "text": [complexity] * len(rows),
            "error_x": {"type": "data", "array": high, "arrayminus": low, "visible": True, "color": colour},
            "hovertext": hover, "hovertemplate": "%{hovertext}<extra></extra>", "meta": f"exponent:{metric}"}  # fmt: skip


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _interval(low, high) -> str:
    """The 95% interval, or why there is none: a 2-length fit has no degree of freedom left (it read [-inf/inf, -inf/inf])."""
    return f"[{low:.3f}, {high:.3f}]" if _finite(low) and _finite(high) else "(no 95% interval: 2 lengths)"


def crossover_figure(groups: list, metric: str):
    """Impl x impl heatmaps of where fitted curves cross (one per configuration); colour log2 of the length."""
    if not groups:
        return message_figure(f"No crossovers for {metric}: it needs two impls with a fit in the same configuration.")
    more = groups[-1][0] if groups[-1][1] is None else ""
    groups = [group for group in groups if group[1] is not None]
    layout = subplot_grid(1, len(groups), [title for title, _ in groups], horizontal_spacing=0.12)
    size, traces = 0, []
    for i, (_, rows) in enumerate(groups, 1):
        labels, z, text, hover = _crossover_matrix(rows)
        size = max(size, len(labels))
        traces.append({"type": "heatmap", "z": z, "x": labels, "y": labels, "text": text, "texttemplate": "%{text}", "hovertext": hover,
                       "hoverinfo": "text", "coloraxis": "coloraxis", "xgap": 1, "ygap": 1, "meta": "crossovers",
                       **axis_refs(1, i, len(groups))})  # fmt: skip
    ticks = [8, 12, 16, 20, 24, 30]  # colour by log2 N, clipped to 256..1G: crossings far outside are just "far"
    title = (
        f"Crossover lengths ({metric}): where two impls' fitted curves cross (hover says which is cheaper on each side); "
        "* extrapolated; far: too unsure to draw"
    )
    if more:  # the filters choose which configurations are drawn
        title += f"<br>{len(groups)} configurations drawn, {more}: filter (dtype, causal, mode ...) to see them"
    layout.update(title={"text": title}, height=260 + 30 * size, meta="crossovers",
                  coloraxis={"colorscale": "Viridis", "cmin": 8, "cmax": 30, "colorbar": {"title": {"text": "N"}, "tickvals": ticks,
                             "ticktext": [short_length(2**t) for t in ticks]}})  # fmt: skip
    update_axes(layout, "xaxis", tickangle=-35)
    return build_figure(traces, layout)


FAR_CROSSING = (
    f"Not drawn: its 95% interval reaches beyond {NEAR_SPAN}x the measured lengths, an artefact of the fits rather than a "
    "prediction (`fit` leaves it out; --all-crossovers lists it)."
)


def _crossover_matrix(rows: pd.DataFrame):
    labels = sorted(set(rows["impl_a"]) | set(rows["impl_b"]))
    index = {label: i for i, label in enumerate(labels)}
    z = [[None] * len(labels) for _ in labels]
    text = [["" for _ in labels] for _ in labels]
    hover = [[f"{a} vs {a}" for a in labels] for _ in labels]
    columns = [rows[c].tolist() for c in ("impl_a", "impl_b", "length", "kind", "message")]
    columns.append(rows["caveat"].tolist() if "caveat" in rows.columns else [""] * len(rows))
    columns.append(rows["near"].tolist() if "near" in rows.columns else [True] * len(rows))
    for impl_a, impl_b, length, kind, message, caveat, near in zip(*columns, strict=False):
        crossing = kind != "none" and math.isfinite(length)
        if crossing and not near:  # `fit` leaves these out: "927*" stood beside a softmax that timed out at 1024 (a report audit)
            crossing, caveat = False, " ".join(filter(None, (caveat, FAR_CROSSING)))
            cell_text = "far"
        else:
            cell_text = (short_length(length) + ("*" if kind == "extrapolated" else "")) if crossing else "none"
        for a, b in ((impl_a, impl_b), (impl_b, impl_a)):
            z[index[a]][index[b]] = math.log2(length) if crossing else None
            text[index[a]][index[b]] = cell_text
            hover[index[a]][index[b]] = f"<b>{impl_a} vs {impl_b}</b><br>{message}" + (f"<br>{caveat}" if caveat else "")
    return labels, z, text, hover


def frontier_figure(rows: pd.DataFrame, budget_bytes: float):
    """The longest sequence whose fitted peak fits the budget, per configuration, with the 95% interval."""
    if rows.empty:
        return message_figure("No memory frontier: it needs a peak-memory fit (two or more lengths with a peak).")
    finite = rows["length"].replace(math.inf, float("nan"))
    cap = float(finite.max() * 4) if finite.notna().any() else 2.0**40
    x = [n if math.isfinite(n) else cap for n in rows["length"]]
    high = [min(h, cap) - v if math.isfinite(n) else 0 for n, v, h in zip(rows["length"], x, rows["length_high"], strict=False)]
    low = [v - lo if math.isfinite(n) else 0 for n, v, lo in zip(rows["length"], x, rows["length_low"], strict=False)]
    colours = ["#2ca02c" if ok else "#d62728" for ok in rows["consistent"]]
    # the exact length, as `fit` prints it: "550k" (k = 1024) for 563091 read as 550,000 beside fit's listing
    text = [format_length(n) if math.isfinite(n) else short_length(n) for n in rows["length"]]
    bar = {"type": "bar", "x": x, "y": list(rows["config"]), "orientation": "h", "marker": {"color": colours}, "text": text,
           "textposition": "outside", "error_x": {"type": "data", "array": high, "arrayminus": low}, "hovertext": list(rows["message"]),
           "hoverinfo": "text", "meta": "frontier"}  # fmt: skip
    title = (f"Memory frontier at {format_bytes(int(budget_bytes))}: longest N whose fitted peak fits "
             "(red: contradicted by a measured OOM or success)")  # fmt: skip
    return build_figure([bar], {"title": {"text": title}, "xaxis": {"type": "log", "title": {"text": "sequence length N"}},
                                "yaxis": {"automargin": True}, "height": 160 + 30 * len(rows), "meta": "frontier"})  # fmt: skip
