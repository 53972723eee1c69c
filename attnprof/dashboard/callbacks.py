"""Wiring only: which component ids feed which function of pages.py, and where its answer goes.

The handlers are methods of `Callbacks` (plain functions of plain values), so tests call them without a server;
`register` hands them to Dash. A view's handler answers only while its tab is shown (the others wait: switching
tabs is an input too), so a page with six views computes one at a time.
"""

from __future__ import annotations

import math

from attnprof.dashboard import compare_view, pages, run_picker
from attnprof.dashboard import layout as ids
from attnprof.dashboard.views import AXES, EXPONENT_METRICS, default_facets
from attnprof.env import DEFAULT_BUDGET

REFRESH_OUTPUTS = ((ids.RUN, "options"), (ids.RUN, "value"), (ids.COMPARE_A, "options"), (ids.COMPARE_A, "value"),
                   (ids.COMPARE_B, "options"), (ids.COMPARE_B, "value"), (ids.DB_MESSAGE, "children"), (ids.VERSION, "data"))  # fmt: skip
REPLACE_ADDRESS = """function(search) {
    if (typeof search === "string" && window.location.search !== search) {
        window.history.replaceState(window.history.state, "", search || window.location.pathname);
    }
    return window.dash_clientside.no_update;
}"""
FILTER_OUTPUTS = (
    (ids.FILTER_RUN, "data"),
    (ids.FACETS, "value"),
    (ids.BUDGET, "value"),
    (ids.METRIC, "value"),
    (ids.CROSSOVER_METRIC, "value"),
)


class Callbacks:
    def __init__(self, source):
        self.source = source

    def initial_props(self, wanted: dict | None = None) -> dict:
        """(component id, property) -> value for a page as the refresh and filter callbacks would leave it: served
        with the layout, so the first view is computed in the first round trip instead of the third. wanted: the
        selection in the page's address (address.wanted): its run, tab and filters where they still exist."""
        wanted = wanted or {}
        refreshed = self.refresh(None, wanted.get("run"), wanted.get("a"), wanted.get("b"), None)
        props = dict(zip(REFRESH_OUTPUTS, refreshed, strict=True))
        empty = {axis: [] for axis in AXES}
        budget = math.log2(DEFAULT_BUDGET)
        items, selected, *rest = self.filters(refreshed[1], refreshed[7], None, empty, None, [], budget, "time", "time")
        props.update(zip(FILTER_OUTPUTS, rest, strict=True))
        kept = wanted.get("filters", {}) if refreshed[1] == wanted.get("run") else {}  # another run's filters do not apply
        for axis in AXES:
            offered = [item["value"] for item in items[axis]]
            chosen = [value for value in kept[axis] if value in offered] if axis in kept else selected[axis]
            props[(ids.FILTERS[axis], "options")], props[(ids.FILTERS[axis], "value")] = items[axis], chosen
        if wanted.get("tab") in ids.TAB_NAMES:
            props[(ids.TABS, "value")] = wanted["tab"]
        if "metric" in wanted and refreshed[1] == wanted.get("run"):  # where the run has values for it
            props[(ids.METRIC, "value")] = pages.usable_metric(self.source, refreshed[1], wanted["metric"])
        return props

    def address(self, run_id, tab, filters, metric=None, run_a=None, run_b=None):
        """The page's address query for its selection (address.py)."""
        from attnprof.dashboard.address import query

        return query(run_id, tab, filters, metric, (run_a, run_b))

    def refresh(self, _ticks, run_id, run_a, run_b, version):
        """Runs, newest first, and the database's state; nothing changes while the state is the same."""
        from dash.exceptions import PreventUpdate

        options, message, signature = run_picker.runs_state(self.source)
        if signature == version:
            raise PreventUpdate
        picked = run_picker.pick(options, run_id)
        run_a, run_b = run_picker.compare_picks(options, picked, run_a, run_b)
        return options, picked, options, run_a, options, run_b, message, signature

    def filters(self, run_id, _version, values, options, filtered_run, facets, budget, metric, crossover_metric):
        previous = {axis: [o["value"] for o in options[axis] or []] for axis in AXES}
        new_options, selected = pages.filter_state(self.source, run_id, values, previous, filtered_run)
        if filtered_run != run_id and run_id:
            facets = self._default_facets(run_id)
            budget = pages.default_budget_log2(self.source, run_id)
            metric = pages.usable_metric(self.source, run_id, metric)
            crossover_metric = pages.usable_metric(self.source, run_id, crossover_metric, EXPONENT_METRICS)
        items = {axis: ids.option_items(axis, new_options[axis]) for axis in AXES}
        # A run without rows yet is not remembered as filtered: when its first rows come, it gets its defaults
        # (facets, metric) from them. Picked at 0 cells, a running run kept the facets of an empty frame.
        remembered = run_id if self._has_rows(run_id) else None
        return items, selected, remembered, facets, budget, metric, crossover_metric

    def _has_rows(self, run_id) -> bool:
        try:
            return bool(run_id) and not self.source.frame(run_id).empty
        except Exception:  # noqa: BLE001  (the views report the problem)
            return False

    def _default_facets(self, run_id):
        try:
            return default_facets(self.source.frame(run_id))
        except Exception:  # noqa: BLE001  (the views report the problem)
            return []

    def scaling(self, tab, run_id, filters, metric, facets, _version):
        _only_on(tab, "scaling")
        answer = pages.scaling(self.source, run_id, filters, metric, facets)
        self.source.first_view_served.set()
        return answer

    def exponents(self, tab, run_id, filters, crossover_metric, budget, _version):
        _only_on(tab, "exponents")
        return (*pages.exponents(self.source, run_id, filters, crossover_metric, budget), pages.budget_text(budget))

    def roofline(self, tab, run_id, filters, tflops, tbps, _version):
        _only_on(tab, "roofline")
        return pages.roofline(self.source, run_id, filters, tflops, tbps)

    def coverage(self, tab, run_id, filters, _version):
        _only_on(tab, "coverage")
        return pages.coverage(self.source, run_id, filters)

    def compare(self, tab, run_a, run_b, filters, _version, picked_run=None):
        _only_on(tab, "compare")
        return compare_view.comparison(self.source, run_a, run_b, filters, picked_run)

    def info(self, tab, run_id, _version):
        _only_on(tab, "info")
        return pages.run_info(self.source, run_id)

    def download(self, _clicks, tab, run_id, filters, run_a, run_b):
        from dash import dcc

        try:
            name, text = pages.view_csv(self.source, tab, run_id, filters, (run_a, run_b))
        except Exception as error:  # noqa: BLE001  (a download that fails says why, in the file)
            name, text = "attnprof-error.txt", pages.failure_text(error) + "\n"
        return dcc.send_string(text, name)


def _only_on(tab: str, wanted: str) -> None:
    from dash.exceptions import PreventUpdate

    if tab != wanted:
        raise PreventUpdate


def register(app, callbacks: Callbacks) -> None:
    _register_state(app, callbacks)
    _register_views(app, callbacks)


def _register_state(app, callbacks: Callbacks) -> None:
    """The runs list (on the timer), the filters of the picked run, the download."""
    from dash import Input, Output, State

    run, version = Input(ids.RUN, "value"), Input(ids.VERSION, "data")
    app.callback(
        [Output(*spec) for spec in REFRESH_OUTPUTS],
        Input(ids.INTERVAL, "n_intervals"),
        [State(ids.RUN, "value"), State(ids.COMPARE_A, "value"), State(ids.COMPARE_B, "value"), State(ids.VERSION, "data")],
    )(callbacks.refresh)  # fmt: skip
    app.callback(
        output=[{axis: Output(ids.FILTERS[axis], "options") for axis in AXES}, {axis: Output(ids.FILTERS[axis], "value") for axis in AXES},
                *(Output(*spec) for spec in FILTER_OUTPUTS)],
        inputs=[run, version, {axis: State(ids.FILTERS[axis], "value") for axis in AXES},
                {axis: State(ids.FILTERS[axis], "options") for axis in AXES}, State(ids.FILTER_RUN, "data"), State(ids.FACETS, "value"),
                State(ids.BUDGET, "value"), State(ids.METRIC, "value"), State(ids.CROSSOVER_METRIC, "value")],
        prevent_initial_call=True,  # the page is served with the filters of its first run (initial_props)
    )(callbacks.filters)  # fmt: skip
    app.callback(
        Output(ids.ADDRESS, "data"),
        inputs=[
            run,
            Input(ids.TABS, "value"),
            {axis: Input(ids.FILTERS[axis], "value") for axis in AXES},
            Input(ids.METRIC, "value"),
            Input(ids.COMPARE_A, "value"),
            Input(ids.COMPARE_B, "value"),
        ],
    )(callbacks.address)
    # The address replaced, not pushed: dcc.Location pushed a history entry per filter click, and Back then changed the
    # address but not the page (a review's: 4 Backs to leave the dashboard).
    app.clientside_callback(REPLACE_ADDRESS, Output(ids.ADDRESS_WRITTEN, "data"), Input(ids.ADDRESS, "data"))
    app.callback(
        Output(ids.DOWNLOAD, "data"),
        inputs=[Input(ids.DOWNLOAD_BUTTON, "n_clicks"), State(ids.TABS, "value"), State(ids.RUN, "value"),
                {axis: State(ids.FILTERS[axis], "value") for axis in AXES}, State(ids.COMPARE_A, "value"), State(ids.COMPARE_B, "value")],
        prevent_initial_call=True,
    )(callbacks.download)  # fmt: skip


def _register_views(app, callbacks: Callbacks) -> None:
    """One callback per tab: its figures and tables from the run, the filters and the tab's own controls."""
    from dash import Input, Output, State

    filters = {axis: Input(ids.FILTERS[axis], "value") for axis in AXES}
    version = Input(ids.VERSION, "data")
    tab, run = Input(ids.TABS, "value"), Input(ids.RUN, "value")
    app.callback(
        [Output(ids.SCALING_GRAPH, "figure"), Output(ids.SCALING_NOTE, "children")],
        inputs=[tab, run, filters, Input(ids.METRIC, "value"), Input(ids.FACETS, "value"), version],
    )(callbacks.scaling)
    app.callback(
        [Output(ids.EXPONENT_TABLE, "data"), Output(ids.EXPONENT_GRAPH, "figure"), Output(ids.CROSSOVER_GRAPH, "figure"),
         Output(ids.FRONTIER_GRAPH, "figure"), Output(ids.EXPONENT_NOTE, "children"), Output(ids.BUDGET_TEXT, "children")],
        inputs=[tab, run, filters, Input(ids.CROSSOVER_METRIC, "value"), Input(ids.BUDGET, "value"), version],
    )(callbacks.exponents)  # fmt: skip
    app.callback(
        [Output(ids.ROOFLINE_GRAPH, "figure"), Output(ids.ROOFLINE_NOTE, "children")],
        inputs=[tab, run, filters, Input(ids.PEAK_TFLOPS, "value"), Input(ids.PEAK_TBPS, "value"), version],
    )(callbacks.roofline)
    app.callback([Output(ids.COVERAGE_GRAPH, "figure"), Output(ids.COVERAGE_NOTE, "children")], inputs=[tab, run, filters, version])(
        callbacks.coverage
    )
    app.callback(
        [Output(ids.COMPARE_GRAPH, "figure"), Output(ids.COMPARE_TABLE, "data"), Output(ids.COMPARE_EXPONENTS, "data"),
         Output(ids.COMPARE_NOTE, "children")],
        inputs=[tab, Input(ids.COMPARE_A, "value"), Input(ids.COMPARE_B, "value"), filters, version, State(ids.RUN, "value")],
    )(callbacks.compare)  # fmt: skip
    app.callback(
        [Output(ids.INFO_TABLE, "data"), Output(ids.ENV_TABLE, "data"), Output(ids.SWEEP_TABLE, "data"), Output(ids.COMMAND, "children")],
        inputs=[tab, run, version],
    )(callbacks.info)
