"""Per-cell figures: the roofline, the coverage grid, the comparison of two runs. Pure, like figures.py."""

from __future__ import annotations

import itertools
import math

import pandas as pd

from attnprof.dashboard.plotting import build_figure, is_present, length_ticks, line_colours, message_figure
from attnprof.fit import format_length

STATUS_COLOURS = {  # the coverage grid's colours, in legend order
    "ok": "#2ca02c",
    "unsupported": "#c7c7c7",
    "skipped": "#e5e5e5",
    "oom": "#d62728",
    "timeout": "#ff7f0e",
    "crashed": "#9467bd",
    "error": "#8c564b",
    "missing": "#ffffff",
}


# --- roofline ------------------------------------------------------------------------------------------------


def roofline_figure(points: pd.DataFrame, ceilings):
    """Achieved TFLOP/s against arithmetic intensity, under the device's compute and bandwidth roofs.

    points: views.roofline_points rows; ceilings: hardware.Ceilings."""
    import plotly.graph_objects as go

    if points.empty:
        return message_figure("No cell in view has both a time and a FLOP and byte count (accounting runs are not timed).")
    dtypes = sorted(points["dtype"].unique())
    ridge = max(ceilings.tflops.get(d, max(ceilings.tflops.values())) for d in dtypes) / ceilings.tbps
    x_low, x_high = min(points["intensity"].min(), ridge) / 4, max(points["intensity"].max(), ridge) * 4
    traces = [_roof(dtype, ceilings, x_low, x_high, dash) for dtype, dash in zip(dtypes, ("solid", "dot", "dash"), strict=False)]
    colours = line_colours(points["config"])
    traces += [_roofline_points(config, rows, ceilings, colours[config]) for config, rows in points.groupby("config", sort=True)]
    rough = "rough default ceilings, not the device's datasheet: the dashboard takes the real peak TFLOP/s and TB/s"
    known = "" if ceilings.known else f"<br><sub>{rough}</sub>"
    layout = go.Layout(title=f"Roofline on {ceilings.device}{known}", height=560, meta="roofline",
                       xaxis={"type": "log", "title": "arithmetic intensity (FLOP per byte moved, at least)"},
                       yaxis={"type": "log", "title": "achieved TFLOP/s"})  # fmt: skip
    return build_figure(traces, layout)


def _roof(dtype: str, ceilings, x_low: float, x_high: float, dash: str) -> dict:
    peak = ceilings.tflops.get(dtype, max(ceilings.tflops.values()))
    ridge = peak / ceilings.tbps  # FLOP/byte where the bandwidth roof (TB/s x FLOP/B = TFLOP/s) meets the compute roof
    x = [x_low, ridge, x_high] if x_low < ridge < x_high else [x_low, x_high]
    y = [min(peak, ceilings.tbps * v) for v in x]
    name = f"roof {dtype}: {peak:g} TFLOP/s, {ceilings.tbps:g} TB/s"
    return {"type": "scatter", "x": x, "y": y, "mode": "lines", "name": name, "meta": f"roof:{dtype}",
            "line": {"color": "#444", "width": 2, "dash": dash},
            "hovertemplate": f"{name}<br>ridge at {ridge:.3g} FLOP/B<extra></extra>"}  # fmt: skip


def _roofline_points(config: str, rows: pd.DataFrame, ceilings, colour: str) -> dict:
    hover = []
    columns = [rows[c].tolist() for c in ("dtype", "seq_len", "intensity", "tflops")]
    for dtype, n, intensity, tflops in zip(*columns, strict=False):
        peak = ceilings.tflops.get(dtype, max(ceilings.tflops.values()))
        roof = min(peak, ceilings.tbps * intensity)
        bound = "memory-bound" if ceilings.tbps * intensity < peak else "compute-bound"
        hover.append(f"<b>{config}</b><br>N = {format_length(n)}<br>{intensity:.3g} FLOP/B, {tflops:.4g} TFLOP/s"
                     f"<br>{tflops / roof:.1%} of the roof ({bound})")  # fmt: skip
    return {"type": "scatter", "x": columns[2], "y": columns[3], "mode": "markers", "name": config, "marker": {"color": colour, "size": 9},
            "hovertext": hover, "hovertemplate": "%{hovertext}<extra></extra>", "meta": "cells"}  # fmt: skip


# --- coverage ------------------------------------------------------------------------------------------------


def coverage_figure(grid: pd.DataFrame):
    """Configuration x length, coloured by status; planned cells with no row show as `missing`.

    grid: views.coverage_grid rows (config, seq_len, status, reason)."""
    import plotly.graph_objects as go

    if grid.empty:
        return message_figure("No cells match the filters.")
    configs = list(dict.fromkeys(grid["config"]))
    lengths = sorted(grid["seq_len"].unique())
    codes = {status: i for i, status in enumerate(STATUS_COLOURS)}
    z = [[None] * len(lengths) for _ in configs]
    text = [[""] * len(lengths) for _ in configs]
    hover = [[f"{c}<br>N = {format_length(n)}: not in the sweep" for n in lengths] for c in configs]
    rows, cols = {c: i for i, c in enumerate(configs)}, {n: j for j, n in enumerate(lengths)}
    for config, n, status, reason in zip(*(grid[c].tolist() for c in ("config", "seq_len", "status", "reason")), strict=False):
        i, j = rows[config], cols[n]
        z[i][j], text[i][j] = codes.get(status, codes["error"]), status
        hover[i][j] = f"<b>{config}</b><br>N = {format_length(n)}<br>{status}" + (f": {reason}" if reason else "")
    heatmap = {"type": "heatmap", "z": z, "x": [format_length(n) for n in lengths], "y": configs, "text": text, "texttemplate": "%{text}",
               "hovertext": hover, "hoverinfo": "text", "colorscale": _discrete_scale(), "zmin": -0.5, "zmax": len(codes) - 0.5,
               "showscale": False, "xgap": 2, "ygap": 2, "meta": "coverage"}  # fmt: skip
    layout = go.Layout(title="Coverage: every cell of the sweep and what happened to it", meta="coverage",
                       height=170 + 26 * len(configs), xaxis={"title": "sequence length N", "type": "category"},
                       yaxis={"autorange": "reversed", "automargin": True}, plot_bgcolor="#fafafa")  # fmt: skip
    # A heatmap has no legend of its categories: one swatch per status present.
    return build_figure([heatmap] + [_legend_swatch(status) for status in STATUS_COLOURS if status in set(grid["status"])], layout)


def _discrete_scale() -> list:
    colours = list(STATUS_COLOURS.values())
    scale = []
    for i, colour in enumerate(colours):
        scale += [[i / len(colours), colour], [(i + 1) / len(colours), colour]]
    return scale


def _legend_swatch(status: str) -> dict:
    return {"type": "scatter", "x": [None], "y": [None], "mode": "markers", "name": status, "meta": "legend",
            "marker": {"symbol": "square", "size": 12, "color": STATUS_COLOURS[status], "line": {"width": 1, "color": "#888"}}}  # fmt: skip


# --- compare -------------------------------------------------------------------------------------------------


COMPARE_LINES = 20  # configurations drawn: the browser took 2.1 s to leave a Compare tab of 1,000 lines


def compare_figure(cells: pd.DataFrame, names: tuple[str, str]):
    """Candidate / baseline ratio of time (solid) and peak memory (dashed) per configuration against length; of the
    COMPARE_LINES configurations that changed most (by `score`) when there are more (the table lists every cell)."""
    if cells.empty:
        return message_figure("The two runs share no cell (same impl, shape, dtype, device, causality, mode, length and seed).")
    configs = cells["config"].unique()
    shown_note = ""
    if len(configs) > COMPARE_LINES:
        worst = cells.groupby("config", sort=False)["score"].max().sort_values(ascending=False, kind="stable").index[:COMPARE_LINES]
        cells = cells[cells["config"].isin(worst)]
        shown_note = f" ({COMPARE_LINES} of {len(configs)} configurations, those that changed most; the table lists all)"
    traces = []
    colours = line_colours(cells["config"])
    # Plain tuples grouped by configuration: slicing the frame twice per configuration was most of this figure's time.
    caveats = cells["caveat"].tolist() if "caveat" in cells.columns else [""] * len(cells)
    columns = [cells[c].tolist() for c in ("config", "seq_len", "time_ratio", "peak_ratio")]
    rows = sorted(zip(*columns, caveats, strict=True), key=lambda r: r[:2])
    for config, group in itertools.groupby(rows, key=lambda r: r[0]):
        points = list(group)
        for index, column, dash, what in ((2, "time_ratio", "solid", "time"), (3, "peak_ratio", "dash", "peak memory")):
            valid = [(p[1], p[index], p[4] if column == "time_ratio" else "") for p in points if is_present(p[index])]
            if valid:
                traces.append(_ratio_trace(config, valid, column, dash, what, colours[config]))
    traces += _status_change_traces(cells, traces)
    parity = {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 1, "y1": 1, "line": {"color": "#999", "dash": "dot"}}
    layout = {"title": {"text": f"{names[1]} / {names[0]}: above 1 is slower or larger (solid: time, dashed: peak memory){shown_note}"},
              "xaxis": {"type": "log", "title": {"text": "sequence length N"}, **length_ticks(cells["seq_len"])},
              "yaxis": {"type": "log", "title": {"text": "ratio candidate / baseline"}}, "height": 480, "meta": "compare",
              "shapes": [parity]}  # fmt: skip
    return build_figure(traces, layout)


def _ratio_trace(config: str, points: list[tuple], column: str, dash: str, what: str, colour: str) -> dict:
    x, y = [n for n, _, _ in points], [r for _, r, _ in points]
    hover = [f"<b>{config}</b><br>N = {format_length(n)}<br>{what} x{r:.3g}" + (f"<br>timed {c}" if c else "") for n, r, c in points]
    return {"type": "scatter", "x": x, "y": y, "mode": "lines+markers", "name": f"{config} {what}", "line": {"dash": dash, "color": colour},
            "hovertext": hover, "hovertemplate": "%{hovertext}<extra></extra>", "meta": column}  # fmt: skip


def _status_change_traces(cells: pd.DataFrame, ratio_traces: list[dict]) -> list[dict]:
    """Cells whose status changed have no ratio: they were left off the plot, where a line read "x0.37, faster" beside
    its own 2k cell timing out now. Drawn as markers above the highest ratio (their height means nothing; the hover
    says what changed), failing now and working now apart."""
    changed = cells[cells["status_a"] != cells["status_b"]]
    if changed.empty:
        return []
    ratios = [y for trace in ratio_traces for y in trace["y"]]
    top = max([1.0, *ratios]) * 1.5
    traces = []
    for name, rows, symbol, colour in (("failing now", changed[changed["status_a"] == "ok"], "x", "#d62728"),
                                       ("working now", changed[changed["status_b"] == "ok"], "circle-open", "#2ca02c"),
                                       ("other status change", changed[(changed["status_a"] != "ok") & (changed["status_b"] != "ok")],
                                        "diamond-open", "#7f7f7f")):  # fmt: skip
        if rows.empty:
            continue
        hover = [f"<b>{config}</b><br>N = {format_length(n)}<br>{change}" for config, n, change in
                 zip(rows["config"], rows["seq_len"], rows["change"], strict=True)]  # fmt: skip
        traces.append({"type": "scatter", "x": rows["seq_len"].tolist(), "y": [top] * len(rows), "mode": "markers", "meta": "status_change",
                       "name": f"{name} (no ratio: placed above)", "marker": {"symbol": symbol, "size": 11, "color": colour},
                       "hovertext": hover, "hovertemplate": "%{hovertext}<extra></extra>"})  # fmt: skip
    return traces


def finite_or_none(value):
    """For tables: NaN and infinities become empty cells."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
