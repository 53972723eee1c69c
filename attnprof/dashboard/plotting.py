"""Plotly building blocks for the dashboard's figures: plain-dict figures without validation, cached subplot
grids, colours, value and length formatting. No I/O, no knowledge of a view."""

from __future__ import annotations

import copy
import functools
import math

from attnprof.fit import format_length
from attnprof.table import format_bytes, format_ms

PALETTE = (
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#17becf",
    "#bcbd22",
    "#e377c2",
    "#7f7f7f",
    "#1b9e77",
    "#7570b3",
    "#e7298a",
    "#66a61e",
    "#a6761d",
    "#386cb0",
    "#f0027f",
    "#4daf4a",
    "#984ea3",
    "#666666",
    "#a65628",
    "#0f5e9c",
    "#b15928",
)  # fmt: skip  (no pure red or orange: those mark failures)


def build_figure(traces: list[dict], layout):
    """A go.Figure of trace dicts, unvalidated, over a layout (a go.Layout, a figure's, or a dict in plotly.js's own
    form: a title as {"text": ...}) with the plotly_white template attached as a plain dict. Validation costs about
    1 ms per trace and a template about 12 ms each time one is set, most of a callback's time for a view with
    hundreds of lines; the trace dicts and layouts are written in this package, with known keys."""
    import plotly.graph_objects as go

    layout = getattr(layout, "layout", layout)
    plain = layout.to_plotly_json() if hasattr(layout, "to_plotly_json") else dict(layout)
    return go.Figure(data=traces, layout={**plain, "template": _template()}, _validate=False)


@functools.cache
def _template() -> dict:
    import plotly.io as pio

    return pio.templates["plotly_white"].to_plotly_json()


def axis_refs(row: int, col: int, n_cols: int) -> dict:
    """The xaxis/yaxis names make_subplots gives the panel at (row, col), 1-based."""
    index = (row - 1) * n_cols + col
    suffix = "" if index == 1 else str(index)
    return {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}


def subplot_grid(n_rows: int, n_cols: int, titles=(), **options) -> dict:
    """make_subplots' layout (axes domains and anchors, matching axes, title annotations) as a plain dict, a fresh
    copy each call. make_subplots and plotly's validated update_* took ~40 ms per figure, a third of a cold view;
    the layout of a grid shape is computed once. `options`: make_subplots' spacing and sharing keywords."""
    return copy.deepcopy(_grid(n_rows, n_cols, tuple(titles), tuple(sorted(options.items()))))


@functools.lru_cache(maxsize=64)
def _grid(n_rows: int, n_cols: int, titles: tuple, options: tuple) -> dict:
    from plotly.subplots import make_subplots

    layout = make_subplots(n_rows, n_cols, subplot_titles=titles or None, **dict(options)).layout.to_plotly_json()
    layout.pop("template", None)  # build_figure attaches its own; no need to copy plotly's default each call
    return layout


def update_axes(layout: dict, axis: str, **props) -> None:
    """Set props on every axis of one kind ("xaxis" or "yaxis": xaxis, xaxis2, ...) of a plain layout dict."""
    for key, value in layout.items():
        if key == axis or (key.startswith(axis) and key[len(axis) :].isdigit()):
            value.update(props)


def message_figure(text: str, height: int = 320):
    """An empty figure that says why it is empty."""
    note = {"text": text, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper", "showarrow": False, "font": {"size": 15}}
    return build_figure(
        [], {"annotations": [note], "xaxis": {"visible": False}, "yaxis": {"visible": False}, "height": height, "meta": "message"}
    )


def line_colours(names) -> dict:
    """A colour per line name, stable for a given set of names (sorted), so facets and views agree."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


def format_value(value: float, unit: str) -> str:
    if value is None or value != value:
        return "-"
    if unit == "ms":
        return format_ms(value)
    if unit == "bytes":
        return format_bytes(int(value))
    return f"{value:.4g} {unit}"


def is_count(column: str) -> bool:
    """Byte and FLOP counts (whole numbers; floats only where one is missing): not `tflops`, a rate."""
    return column.endswith("_bytes") or column == "flops"


def short_length(n: float) -> str:
    """A length for labels: 1258, 4k, 38.7M (k = 1024 and M = 2^20, as in the length grammar); inf as "unbounded".
    Below 2^20 a length that is no multiple of 1024 stays whole: a crossover at 1258 read "1.23k", taken for 1230."""
    if not math.isfinite(n):
        return "unbounded"
    if n < 2**20:
        return format_length(n)
    if n >= 2**40:  # "9.47e+12G" for N = 1.02e+22
        return f"{n:.3g}"
    for unit, size in (("G", 2**30), ("M", 2**20), ("k", 1024)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return format_length(n)


BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
MAX_BYTE_TICKS = 8


def byte_ticks(values) -> dict:
    """A log axis of bytes ticked at powers of two, in binary units (512 MiB, 1 GiB, 4 GiB), over the span of `values`:
    plotly's SI ticks put a 40.0 GiB peak at "43G", beside tables and hovers in binary units, and mixed "10GB" with
    "5G" (a report audit). {} when there is nothing to tick."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]
    if not finite:
        return {}
    low, high = math.floor(math.log2(min(finite))), math.ceil(math.log2(max(finite)))
    step = max(1, math.ceil((high - low) / MAX_BYTE_TICKS))
    powers = range(low - low % step - step, high + 2 * step, step)  # one step beyond each end: the axis pads its range
    return {"tickvals": [2.0**p for p in powers], "ticktext": [binary_size(p) for p in powers]}


def binary_size(power: int) -> str:
    """2^power bytes as a label: "512 B", "64 MiB", "1 GiB"."""
    unit = min(max(power, 0) // 10, len(BINARY_UNITS) - 1)
    return f"{2.0 ** (power - 10 * unit):g} {BINARY_UNITS[unit]}"


def length_ticks(lengths) -> dict:
    values = sorted({int(n) for n in lengths})
    return {"tickvals": values, "ticktext": [format_length(n) for n in values]}


def is_present(value) -> bool:
    return value is not None and value == value  # not None, not NaN
