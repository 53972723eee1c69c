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


def test_the_compare_tabs_runs_are_kept_in_the_address(tmp_path):
    """A reload of the Compare tab went back to its default runs: the address kept the run, tab, filters and metric only."""
    back = wanted("http://h/" + query("r1", "compare", {}, None, ("r0", "r1")))
    assert (back["a"], back["b"], back["tab"]) == ("r0", "r1", "compare")
    assert "a" not in wanted("http://h/" + query("r1", "compare", {}, None, (None, "r1")))
    path = tmp_path / "three.db"
    seeding.seed_two_runs(path)
    newest = seeding.write_run(path, seeding.run_info("20260103-000000-third", "2026-01-03T00:00:00+00:00"), seeding.run_cells(True))
    props = Callbacks(DataSource(path)).initial_props({"run": newest, "tab": "compare", "a": newest, "b": seeding.BASE})
    assert (props[(ids.COMPARE_A, "value")], props[(ids.COMPARE_B, "value")]) == (newest, seeding.BASE)
    gone = Callbacks(DataSource(path)).initial_props({"run": newest, "a": "no-such-run", "b": seeding.BASE})
    assert (gone[(ids.COMPARE_A, "value")], gone[(ids.COMPARE_B, "value")]) == (seeding.CANDIDATE, seeding.BASE)  # the default for a
