"""The page: component ids (constants, used by callbacks.py and the browser tests) and the static layout.

The layout holds no data; callbacks fill every option and figure, so building it touches nothing.
"""

from __future__ import annotations

import inspect

from attnprof.dashboard.views import AXES, FACET_AXES, METRICS
from attnprof.fit import format_length

INTERVAL = "refresh-interval"
VERSION = "data-version"  # the database's state; a change refreshes the views
FILTER_RUN = "filter-run"  # the run the filter choices belong to
DB_MESSAGE = "db-message"
RUN = "run-picker"
ADDRESS, ADDRESS_WRITTEN = "address", "address-written"  # the query the page's URL keeps the selection in (address.py)
DOWNLOAD_BUTTON = "download-button"
DOWNLOAD = "download"
FILTERS = {axis: f"filter-{axis.replace('_', '-')}" for axis in AXES}
METRIC = "metric"
FACETS = "facets"
TABS = "tabs"
SCALING_GRAPH, SCALING_NOTE = "scaling-graph", "scaling-note"
EXPONENT_TABLE, EXPONENT_GRAPH, EXPONENT_NOTE = "exponent-table", "exponent-graph", "exponent-note"
CROSSOVER_METRIC, CROSSOVER_GRAPH = "crossover-metric", "crossover-graph"
BUDGET, BUDGET_TEXT, FRONTIER_GRAPH = "budget", "budget-text", "frontier-graph"
ROOFLINE_GRAPH, ROOFLINE_NOTE, PEAK_TFLOPS, PEAK_TBPS = "roofline-graph", "roofline-note", "peak-tflops", "peak-tbps"
COVERAGE_GRAPH, COVERAGE_NOTE = "coverage-graph", "coverage-note"
COMPARE_A, COMPARE_B, COMPARE_GRAPH, COMPARE_TABLE, COMPARE_EXPONENTS, COMPARE_NOTE = (
    "compare-a", "compare-b", "compare-graph", "compare-table", "compare-exponents", "compare-note")  # fmt: skip
INFO_TABLE, ENV_TABLE, SWEEP_TABLE, COMMAND = "info-table", "env-table", "sweep-table", "command"
TAB_NAMES = {
    "scaling": "Scaling",
    "exponents": "Exponents",
    "roofline": "Roofline",
    "coverage": "Coverage",
    "compare": "Compare",
    "info": "Run info",
}

AXIS_TITLES = {"label": "impl", "seq_len": "length", "dtype": "dtype", "device": "device", "causal": "causal", "mode": "mode",
               "batch": "batch", "heads": "heads", "head_dim": "head dim"}  # fmt: skip
NOTE_STYLE = {"color": "#8a4b00", "margin": "6px 0", "minHeight": "1em"}
GRAPH_CONFIG = {"displaylogo": False}


def option_items(axis: str, values: list) -> list[dict]:
    """Checklist options for an axis: lengths as 1k, causal as causal/bidir, the rest as they are."""
    if axis == "seq_len":
        return [{"label": format_length(v), "value": v} for v in values]
    if axis == "causal":
        return [{"label": "causal" if v else "bidir", "value": v} for v in values]
    return [{"label": str(v), "value": v} for v in values]


def build(refresh_ms: int = 2000):
    """The whole page; `refresh_ms` is how often it looks for new runs and rows (a sweep in progress)."""
    from dash import dcc, html

    return html.Div(
        [
            dcc.Store(id=ADDRESS),
            dcc.Store(id=ADDRESS_WRITTEN),
            dcc.Interval(id=INTERVAL, interval=refresh_ms),
            dcc.Store(id=VERSION),
            dcc.Store(id=FILTER_RUN),
            dcc.Download(id=DOWNLOAD),
            _header(),
            html.Div(id=DB_MESSAGE, style={"color": "#b00020", "fontWeight": "bold", "margin": "8px 0"}),
            html.Div([_sidebar(), html.Div(_tabs(), style={"flex": "1", "minWidth": "0"})], style={"display": "flex", "gap": "16px"}),
        ],
        style={"fontFamily": "system-ui, sans-serif", "margin": "12px 18px", "fontSize": "14px"},
    )


def prefill(page, props: dict):
    """Set initial property values, (component id, property) -> value, on the components of `page`."""
    for component in page._traverse():
        for (component_id, prop), value in props.items():
            if getattr(component, "id", None) == component_id:
                setattr(component, prop, value)
    return page


def _header():
    from dash import dcc, html

    return html.Div(
        [
            html.H2("attnprof", style={"margin": "0 16px 0 0"}),
            html.Span("run", style={"marginRight": "6px"}),
            dcc.Dropdown(id=RUN, options=[], value=None, clearable=False, placeholder="no runs yet", style={"width": "640px"}),
            html.Button("Download CSV of this view", id=DOWNLOAD_BUTTON, style={"marginLeft": "16px"}),
        ],
        style={"display": "flex", "alignItems": "center"},
    )


def _sidebar():
    from dash import dcc, html

    blocks = [html.H4("Filters", style={"margin": "4px 0"})]
    for axis in AXES:
        blocks += [html.Div(AXIS_TITLES[axis], style={"fontWeight": "bold", "marginTop": "8px"}),
                   dcc.Checklist(id=FILTERS[axis], options=[], value=[], inline=axis != "label", inputStyle={"marginRight": "3px"},
                                 labelStyle={"marginRight": "8px"})]  # fmt: skip
    blocks += [
        html.H4("Metric", style={"margin": "14px 0 4px"}),
        dcc.RadioItems(
            id=METRIC,
            options=[{"label": m.title, "value": key} for key, m in METRICS.items()],
            value="time",
            inputStyle={"marginRight": "4px"},
        ),  # fmt: skip
        html.H4("Facet by", style={"margin": "14px 0 4px"}),
        dcc.Checklist(
            id=FACETS, options=list(FACET_AXES), value=[], inline=True, inputStyle={"marginRight": "3px"}, labelStyle={"marginRight": "8px"}
        ),
    ]
    return html.Div(blocks, style={"width": "260px", "flex": "none", "borderRight": "1px solid #ddd", "paddingRight": "12px"})


def _tabs():
    from dash import dcc

    content = {
        "scaling": _scaling,
        "exponents": _exponents,
        "roofline": _roofline,
        "coverage": _coverage,
        "compare": _compare,
        "info": _info,
    }
    return dcc.Tabs(id=TABS, value="scaling", children=[dcc.Tab(label=TAB_NAMES[k], value=k, children=content[k]()) for k in TAB_NAMES])


def _note(component_id: str):
    from dash import html

    return html.Div(id=component_id, style=NOTE_STYLE)


def _graph(component_id: str):
    from dash import dcc

    return dcc.Graph(id=component_id, config=GRAPH_CONFIG)


def _table(component_id: str, columns: list[str], page_size: int = 15):
    from dash import dash_table

    return dash_table.DataTable(
        id=component_id, columns=[_column(c) for c in columns], data=[], page_size=page_size, sort_action="native",
        style_cell={"fontFamily": "system-ui, sans-serif", "fontSize": "13px", "textAlign": "left", "maxWidth": "300px",
                    "whiteSpace": "normal", "height": "auto"},
        style_header={"fontWeight": "bold"},
        style_table={"overflowX": "auto"},
    )  # fmt: skip


def _column(name: str) -> dict:
    """Byte and FLOP counts with thousands separators (4,294,967,296 reads at a glance, 4294967296 does not), still
    numbers, so a column sorts by value."""
    from attnprof.dashboard.plotting import is_count

    if not is_count(name):
        return {"name": name, "id": name}
    from dash.dash_table.Format import Format

    return {"name": name, "id": name, "type": "numeric", "format": Format().group(True)}


def _scaling():
    return [_note(SCALING_NOTE), _graph(SCALING_GRAPH)]


def _exponents():
    from dash import dcc, html

    from attnprof.dashboard.views import EXPONENT_COLUMNS, EXPONENT_METRICS

    return [
        _note(EXPONENT_NOTE),
        _graph(EXPONENT_GRAPH),
        _table(EXPONENT_TABLE, EXPONENT_COLUMNS, page_size=10),
        html.Div(
            ["crossovers of ", dcc.RadioItems(id=CROSSOVER_METRIC, options=list(EXPONENT_METRICS), value="time", inline=True)],
            style={"display": "flex", "gap": "8px", "marginTop": "12px"},
        ),  # fmt: skip
        _graph(CROSSOVER_GRAPH),
        html.Div([html.Span("memory budget", style={"marginRight": "8px"}), html.Span(id=BUDGET_TEXT)], style={"marginTop": "12px"}),
        dcc.Slider(
            id=BUDGET,
            min=20,
            max=44,
            step=0.25,
            value=36.32,
            marks={20: "1 MiB", 30: "1 GiB", 34: "16 GiB", 36.32: "80 GiB", 40: "1 TiB", 44: "16 TiB"},
            updatemode="mouseup",
            # Dash 4's box showed log2 bytes ("34.557"): typing 80 asked for 2^80, clamped to 16 TiB (Dash 2-3 have no box)
            **({"allow_direct_input": False} if "allow_direct_input" in inspect.signature(dcc.Slider).parameters else {}),
        ),  # fmt: skip
        _graph(FRONTIER_GRAPH),
    ]


def _roofline():
    from dash import dcc, html

    inputs = [
        html.Span("compute ceiling (TFLOP/s)"),
        dcc.Input(id=PEAK_TFLOPS, type="number", min=0, debounce=True, placeholder="default", style={"width": "150px"}),
        html.Span("bandwidth ceiling (TB/s)"),
        dcc.Input(id=PEAK_TBPS, type="number", min=0, debounce=True, placeholder="default", style={"width": "150px"}),
    ]
    return [html.Div(inputs, style={"display": "flex", "gap": "8px", "alignItems": "center", "marginTop": "8px"}), _note(ROOFLINE_NOTE),
            _graph(ROOFLINE_GRAPH)]  # fmt: skip


def _coverage():
    return [_note(COVERAGE_NOTE), _graph(COVERAGE_GRAPH)]


def _compare():
    from dash import dcc, html

    from attnprof.dashboard.compare import CELL_COLUMNS, EXPONENT_COLUMNS

    pickers = [
        html.Span("baseline"),
        dcc.Dropdown(id=COMPARE_A, options=[], value=None, clearable=False, style={"width": "420px"}),
        html.Span("candidate"),
        dcc.Dropdown(id=COMPARE_B, options=[], value=None, clearable=False, style={"width": "420px"}),
    ]
    return [
        html.Div(pickers, style={"display": "flex", "gap": "8px", "alignItems": "center", "marginTop": "8px"}),
        _note(COMPARE_NOTE),
        _graph(COMPARE_GRAPH),
        html.H4("Cells, regressions first (ratios: candidate / baseline)"),
        _table(COMPARE_TABLE, CELL_COLUMNS),
        html.H4("Exponent changes, largest increase first"),
        _table(COMPARE_EXPONENTS, EXPONENT_COLUMNS),
    ]


def _info():
    from dash import html

    return [
        html.H4("Run"),
        _table(INFO_TABLE, ["field", "value"], page_size=20),
        html.H4("Reproduce"),
        html.Pre(id=COMMAND, style={"background": "#f4f4f4", "padding": "8px", "whiteSpace": "pre-wrap"}),
        html.H4("Environment"),
        _table(ENV_TABLE, ["field", "value"], page_size=30),
        html.H4("Sweep"),
        _table(SWEEP_TABLE, ["field", "value"], page_size=30),
    ]
