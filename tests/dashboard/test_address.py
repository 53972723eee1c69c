"""The selection kept in the page's address (address.py) and restored by the page load (Callbacks.initial_props)."""

import seeding

from attnprof.dashboard import layout as ids
from attnprof.dashboard.address import query, wanted
from attnprof.dashboard.callbacks import Callbacks
from attnprof.dashboard.data import DataSource


def test_an_address_reads_back_the_selection_it_was_written_from():
    filters = {"label": ["sdpa"], "seq_len": [256, 512], "causal": [False], "dtype": None}
    back = wanted("http://127.0.0.1:8050/" + query("r1", "exponents", filters))
    assert back == {"run": "r1", "tab": "exponents", "filters": {"label": ["sdpa"], "seq_len": [256, 512], "causal": [False]}}
    assert query(None, "scaling", filters) == ""
    assert wanted(None) == {} and wanted("http://h/?run=r2&filters=%7Bbroken") == {"run": "r2"}
    assert wanted("http://h/?filters=%5B1%5D") == {}  # not an object: ignored
    # the scaling metric too: a shared link to a memory plot opened on time (a dashboard audit); an unknown one is dropped
    assert wanted("http://h/" + query("r1", "scaling", filters, "peak_bytes"))["metric"] == "peak_bytes"
    assert "metric" not in wanted("http://h/" + query("r1", "scaling", filters, "nonsense"))
    assert "metric" not in wanted("http://h/?run=r1&metric=nonsense")


def test_the_page_load_restores_what_still_exists(two_runs_db):
    callbacks = Callbacks(DataSource(two_runs_db))
    props = callbacks.initial_props({"run": seeding.BASE, "tab": "coverage", "filters": {"label": ["sdpa", "gone"], "seq_len": [512]}})
    assert props[(ids.RUN, "value")] == seeding.BASE and props[(ids.TABS, "value")] == "coverage"
    assert props[(ids.FILTERS["label"], "value")] == ["sdpa"] and props[(ids.FILTERS["seq_len"], "value")] == [512]
    default = callbacks.initial_props()
    assert props[(ids.FILTERS["causal"], "value")] == default[(ids.FILTERS["causal"], "value")]  # not in the address: the default
    assert (ids.METRIC, "value") not in props or props[(ids.METRIC, "value")] == default[(ids.METRIC, "value")]
    memory = callbacks.initial_props({"run": seeding.BASE, "metric": "peak_bytes"})
    assert memory[(ids.METRIC, "value")] == "peak_bytes" != default[(ids.METRIC, "value")]
    stale = callbacks.initial_props({"run": "no-such-run", "tab": "nonsense", "filters": {"label": ["sdpa"]}})
    assert stale[(ids.RUN, "value")] == seeding.CANDIDATE and (ids.TABS, "value") not in stale  # the newest run, its defaults
    assert stale[(ids.FILTERS["label"], "value")] == default[(ids.FILTERS["label"], "value")]
