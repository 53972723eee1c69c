"""The callbacks as plain functions against real SQLite files: runs, filters, each view, live refresh, messages."""

import csv
import io
import json
from dataclasses import replace

import pandas as pd
import pytest
import seeding
from dash.exceptions import PreventUpdate

from attnprof.dashboard.app import create_app
from attnprof.dashboard.views import AXES
from attnprof.records import Measurement, Status
from attnprof.run_lock import measuring
from attnprof.spec import Case
from attnprof.store import Store


def handlers(db):
    return create_app(db, warm=False).attnprof


def first_page(cb):
    """What the page does on load: refresh, then the filters of the picked run. Returns (refresh, filters) outputs."""
    refreshed = cb.refresh(None, None, None, None, None)
    empty = {axis: [] for axis in AXES}
    return refreshed, cb.filters(refreshed[1], refreshed[7], None, empty, None, [], 36.0, "time", "time")


def test_runs_newest_first_and_compare_defaults(two_runs_db):
    cb = handlers(two_runs_db)
    options, run, _, run_a, _, run_b, message, version = cb.refresh(None, None, None, None, None)
    assert [o["value"] for o in options] == [seeding.CANDIDATE, seeding.BASE] and message == ""
    assert run == seeding.CANDIDATE and (run_a, run_b) == (seeding.BASE, seeding.CANDIDATE)
    assert "36 cells" in options[0]["label"] and "complete" in options[0]["label"]
    with pytest.raises(PreventUpdate):  # nothing changed: nothing is sent
        cb.refresh(5, run, run_a, run_b, version)


def test_filters_start_from_the_defaults_of_the_run(two_runs_db):
    _, (options, selected, filtered_run, facets, budget, metric, crossover_metric) = first_page(handlers(two_runs_db))
    assert [o["label"] for o in options["seq_len"]] == ["256", "512", "1k", "2k", "4k", "8k"]
    assert [o["label"] for o in options["causal"]] == ["bidir", "causal"]
    assert selected["label"] == ["nystromformer[num_landmarks=32]", "sdpa", "softmax"] and filtered_run == seeding.CANDIDATE
    assert facets == ["causal"] and metric == "time" == crossover_metric and 20 < budget < 50


def test_scaling_answers_metric_and_impl_filter_changes(two_runs_db):
    cb = handlers(two_runs_db)
    (_, run, *_), (_, selected, _, facets, *_) = first_page(cb)
    time_figure, note = cb.scaling("scaling", run, selected, "time", facets, "v")
    memory_figure, _ = cb.scaling("scaling", run, selected, "peak_bytes", facets, "v")
    measured = lambda fig: {(t.name, t.xaxis): list(t.y) for t in fig.data if t.meta == "measured"}
    assert note == "" and measured(time_figure).keys() == measured(memory_figure).keys()
    assert measured(time_figure) != measured(memory_figure)
    only_sdpa, _ = cb.scaling("scaling", run, {**selected, "label": ["sdpa"]}, "time", facets, "v")
    assert {t.name for t in only_sdpa.data if t.meta == "measured"} == {"sdpa"}
    everything, note = cb.scaling("scaling", run, {**selected, "label": []}, "time", facets, "v")  # every impl unticked
    assert note == "Nothing ticked under impl: every value is shown."  # else it looks as if the filter were ignored
    assert {t.name for t in everything.data if t.meta == "measured"} == set(selected["label"])
    unticked = {**selected, "label": []}  # the other views said nothing of it
    assert cb.exponents("exponents", run, unticked, "time", 36.0, "v")[4].startswith("Nothing ticked under impl: every value is shown.")
    assert cb.coverage("coverage", run, unticked, "v")[1].startswith("Nothing ticked under impl: every value is shown. ")
    with pytest.raises(PreventUpdate):  # another tab is shown: this view waits
        cb.scaling("coverage", run, selected, "time", facets, "v")


def test_exponents_roofline_coverage_info_views(two_runs_db):
    cb = handlers(two_runs_db)
    (_, run, *_), (_, selected, _, _, budget, *_) = first_page(cb)
    rows, chart, crossings, frontier, note, budget_text = cb.exponents("exponents", run, selected, "time", budget, "v")
    softmax_time = [r for r in rows if r["config"] == "softmax causal" and r["metric"] == "time"][0]
    assert softmax_time["exponent"] == pytest.approx(2.0, abs=0.01) and softmax_time["class"] == "quadratic"
    assert chart.data and crossings.layout.meta == "crossovers" and frontier.layout.meta == "frontier" and budget_text.startswith("budget ")
    roof, _ = cb.roofline("roofline", run, selected, None, None, "v")
    assert "rough estimate" in roof.layout.title.text
    custom, _ = cb.roofline("roofline", run, selected, 50, 1.5, "v")
    assert "50 TFLOP/s, 1.5 TB/s" in [t.name for t in custom.data if str(t.meta).startswith("roof")][0]
    refused, note = cb.roofline("roofline", run, selected, 0, -3, "v")  # drawn from the table, and said: it was silent
    assert "rough estimate" in refused.layout.title.text and "The compute ceiling (TFLOP/s) 0 is not a positive number" in note
    assert "The bandwidth ceiling (TB/s) -3 is not a positive number: the device table's is drawn." in note
    grid, counts = cb.coverage("coverage", run, selected, "v")
    assert "26 ok" in counts and "6 unsupported" in counts and "1 oom" in counts
    info, env, sweep, command = cb.info("info", seeding.BASE, "v")
    # rebuilt from the resolved sweep, not the command as typed: the devices and dtypes pinned, and the database named
    assert command.startswith("attnprof sweep --impl softmax,sdpa,nystromformer:num_landmarks=32 --lengths") and " --db " in command
    assert "--dtype float32 --device cpu" in command and {"field": "cpu", "value": "Test CPU"} in env
    assert cb.info("info", seeding.CANDIDATE, "v")[3].startswith("attnprof sweep --impl softmax,sdpa,nystromformer:num_landmarks=32")
    from attnprof.dashboard.runinfo import mapping_rows  # a byte count in binary units, beside the count: it read 25276502016

    rows = mapping_rows({"host_memory_bytes": 25276502016, "gpu_total_bytes": None, "cpu_threads": 2})
    assert [row["value"] for row in rows] == ["23.5 GiB (25,276,502,016 bytes)", "-", "2"]


def test_compare_shows_the_ratios_of_two_runs_regressions_first(two_runs_db):
    cb = handlers(two_runs_db)
    (_, _, _, run_a, _, run_b, *_), (_, selected, *_) = first_page(cb)
    figure, cells, changes, note = cb.compare("compare", run_a, run_b, selected, "v")
    assert cells[0]["change"] == "regressed: ok -> oom" and cells[0]["config"] == "softmax bidir"
    assert cells[1]["time_ratio"] == pytest.approx(1.6) and cells[1]["config"].startswith("sdpa")
    assert "shared cells" in note and changes[0]["metric"] == "time" and changes[0]["delta"] > 0
    assert {t.meta for t in figure.data} == {"time_ratio", "peak_ratio", "status_change"}
    seeded = {m.peak_bytes for m in seeding.run_cells()}
    shown = {c[column] for c in cells for column in ("peak_a_bytes", "peak_b_bytes") if c[column] is not None}
    assert shown and shown <= seeded  # to the byte: rounded to 4 digits, 393216 read 393200


def test_download_gives_the_current_view_as_csv(two_runs_db):
    cb = handlers(two_runs_db)
    (_, run, _, run_a, _, run_b, *_), (_, selected, *_) = first_page(cb)
    scaling = cb.download(1, "scaling", run, {**selected, "label": ["sdpa"]}, run_a, run_b)
    frame = pd.read_csv(io.StringIO(scaling["content"]))
    assert scaling["filename"] == f"attnprof-scaling-{run}.csv" and set(frame["label"]) == {"sdpa"} and "median_ms" in frame
    stored = {
        (m.case.seq_len, m.case.causal, m.case.mode): m.times_ms
        for m in Store.open(two_runs_db).measurements(run)
        if m.case.label == "sdpa"
    }
    for row in frame.itertuples():  # the raw samples, read for the shown rows only, are the stored ones
        assert json.loads(row.times_ms) == stored[(row.seq_len, bool(row.causal), row.mode)]
    compared = pd.read_csv(io.StringIO(cb.download(1, "compare", run, selected, run_a, run_b)["content"]))
    assert "time_ratio" in compared and len(compared) == 36
    text = cb.download(1, "compare", run, selected, run_a, run_b)["content"]
    peaks = [row["peak_a_bytes"] for row in csv.DictReader(io.StringIO(text))]
    assert "" in peaks and all(p.isdigit() for p in peaks if p), peaks[:5]  # a missing peak made them "393216.0"
    roofline = pd.read_csv(io.StringIO(cb.download(1, "roofline", run, selected, run_a, run_b)["content"]))
    assert roofline["tflops"].gt(0).all() and not roofline["tflops"].eq(roofline["tflops"].round()).all()  # a rate, not a count
    for tab, column in (("exponents", "exponent"), ("roofline", "intensity"), ("coverage", "status"), ("info", "field")):
        assert column in pd.read_csv(io.StringIO(cb.download(1, tab, run, selected, run_a, run_b)["content"])), tab
    info = pd.read_csv(io.StringIO(cb.download(1, "info", run, selected, run_a, run_b)["content"]))
    assert set(info["section"]) == {"run", "reproduce", "environment", "sweep"}  # the whole page (it had env and sweep)
    assert info[info["section"] == "reproduce"]["value"].iloc[0] == cb.info("info", run, "v")[3]


@pytest.mark.parametrize("kind", ["missing", "empty file", "corrupt", "foreign", "no runs"])
def test_bad_databases_give_a_message_and_empty_views(tmp_path, kind):
    path = tmp_path / "bad.db"
    if kind == "empty file":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(b"this is not sqlite" * 100)
    elif kind == "foreign":
        import sqlite3

        sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()
    elif kind == "no runs":
        Store.open(path).close()
    cb = handlers(path)
    options, run, *_, message, _ = cb.refresh(None, None, None, None, None)
    expected = {"missing": "no database at", "empty file": "not an attnprof database", "corrupt": "not an attnprof database",
                "foreign": "not an attnprof database", "no runs": "No runs in"}[kind]  # fmt: skip
    assert options == [] and run is None and expected in message
    figure, _ = cb.scaling("scaling", None, {}, "time", [], "v")
    assert figure.layout.meta == "message"


def test_all_failed_and_one_length_runs_explain_themselves(tmp_path):
    db = tmp_path / "odd.db"
    failed, one = seeding.seed_all_failed(db), seeding.seed_one_length(db)
    cb = handlers(db)
    figure, note = cb.scaling("scaling", failed, {}, "time", [], "v")
    assert "Every cell in view failed (2 oom)" in note and [t.meta for t in figure.data] == ["failed:oom"]
    placed = "(its height is a placement near its line, within the plotted values: not measured)</i>"
    assert all(text.endswith(placed) for text in figure.data[0].hovertext)
    figure, note = cb.scaling("scaling", one, {}, "time", [], "v")
    assert "Only one length" in note and not [s for s in figure.layout.shapes if s.type == "line"]  # no fit line
    rows, chart, crossings, frontier, note, _ = cb.exponents("exponents", one, {}, "time", 30, "v")
    assert chart.layout.meta == "message" and all(r["note"] for r in rows)


def test_a_running_sweep_shows_up_live(tmp_path):
    db = tmp_path / "live.db"
    info = seeding.run_info("20260105-000000-live", "2026-01-05T00:00:00+00:00", state="running")
    seeding.write_run(db, info, [seeding.cell("softmax", 256, time_ms=1.0, peak=2**20)])
    cb = handlers(db)
    with measuring(db, info.run_id):  # as a sweep holds it while it measures
        (options, run, *_, version), (filter_options, selected, filtered_run, *_) = first_page(cb)
        assert run == info.run_id and "1 cells" in options[0]["label"] and "running" in options[0]["label"]
    # its process gone (SIGKILL: nothing recorded the end), the run reads as interrupted, not running forever
    assert "interrupted" in first_page(cb)[0][0][0]["label"]
    assert selected["seq_len"] == list(seeding.LENGTHS) and len(selected["label"]) == 3  # the sweep's plan, not only what ran
    grid, counts = cb.coverage("coverage", run, selected, "v")
    assert counts == "35 missing, 1 ok"  # the sweep plans 36 cells; 35 have no row yet
    store = Store.open(db)
    store.add_measurement(info.run_id, seeding.cell("softmax", 512, time_ms=4.0, peak=2**22), "later")
    store.add_measurement(info.run_id, seeding.cell("sdpa", 512, status=Status.OOM, reason=seeding.OOM_REASON), "later")
    store.close()
    refreshed = cb.refresh(1, run, None, None, version)
    assert refreshed[7] != version and "3 cells" in refreshed[0][0]["label"]
    figure, _ = cb.scaling("scaling", run, selected, "time", [], "v")
    assert [list(t.x) for t in figure.data if t.meta == "measured"] == [[256, 512]] and any(t.meta == "failed:oom" for t in figure.data)
    assert cb.coverage("coverage", run, selected, "v")[1] == "33 missing, 2 ok, 1 oom"


def test_a_run_picked_before_its_first_row_says_so_and_gets_its_facets_when_rows_come(tmp_path):
    """Picked at 0 cells, a running run read "No cells match the filters" (nothing was filtered), and its facets,
    computed from the empty frame, were never recomputed: bidir and causal lines shared one panel."""
    db = tmp_path / "empty.db"
    info = seeding.run_info("20260105-000000-zero", "2026-01-05T00:00:00+00:00", state="running")
    seeding.write_run(db, info, [])
    cb = handlers(db)
    with measuring(db, info.run_id):  # as a sweep holds it while it measures
        (_, run, *_, version), (filter_options, selected, filtered_run, facets, *_) = first_page(cb)
        assert run == info.run_id and filtered_run is None and facets == []
        figure, note = cb.scaling("scaling", run, selected, "time", facets, "v")
        assert note == f"Run {run} has no measurement stored yet: its cells appear here as its sweep stores them."
        assert figure.layout.meta == "message" and cb.coverage("coverage", run, selected, "v")[1] == "36 missing"  # the plan is there
    stopped = cb.scaling("scaling", run, selected, "time", facets, "v2")[1]  # its sweep gone: resume it
    assert stopped.startswith(f"Run {run} has no measurement stored: interrupted: 0 of 36 cases, the rest with attnprof sweep --resume")
    store = Store.open(db)
    for causal in (False, True):
        store.add_measurement(run, seeding.cell("softmax", 256, causal, time_ms=1.0, peak=2**20), "later")
    store.close()
    refreshed = cb.refresh(1, run, None, None, version)
    after = cb.filters(run, refreshed[7], selected, filter_options, filtered_run, facets, 30.0, "time", "time")
    assert after[2] == run and after[3] == ["causal"]  # remembered now, and faceted as a finished run would be


def test_values_outside_the_plan_join_the_filters_as_they_appear(tmp_path):
    db = tmp_path / "unplanned.db"
    info = seeding.run_info(
        "20260106-000000-api", "2026-01-06T00:00:00+00:00", sweep={"impls": ["softmax"]}, state="running"
    )  # no readable plan
    seeding.write_run(db, info, [seeding.cell("softmax", 256, time_ms=1.0, peak=2**20)])
    cb = handlers(db)
    (_, run, *_, version), (filter_options, selected, filtered_run, *_) = first_page(cb)
    assert selected["seq_len"] == [256] and selected["label"] == ["softmax"]
    seeding.write_run(db, seeding.run_info("20260107-000000-next", "2026-01-07T00:00:00+00:00"), [])
    store = Store.open(db)
    store.add_measurement(info.run_id, seeding.cell("sdpa", 512, time_ms=1.0, peak=2**20), "later")
    store.close()
    refreshed = cb.refresh(1, run, None, None, version)
    assert refreshed[1] == run and [o["value"] for o in refreshed[0]] == ["20260107-000000-next", run]  # the choice is kept
    filters = cb.filters(run, refreshed[7], {**selected, "label": []}, filter_options, filtered_run, [], 30.0, "time", "time")
    assert filters[1]["seq_len"] == [256, 512] and filters[1]["label"] == ["sdpa"]  # unticked stays unticked; new values join


def test_the_warm_up_computes_the_first_view_then_waits_for_a_page_to_be_served(two_runs_db):
    import threading
    import time

    from attnprof.dashboard.pages import warm_up

    cb = handlers(two_runs_db)
    kinds = lambda: {key[0] for key in list(cb.source._memo)}  # noqa: E731
    thread = threading.Thread(target=warm_up, args=(cb.source, 30.0, 0.0), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while "scaling" not in kinds() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert "scaling" in kinds() and not {"exponent fits", "compare"} & kinds() and thread.is_alive()  # waiting
    refreshed, filters = first_page(cb)
    cb.scaling("scaling", refreshed[1], filters[1], "time", filters[3], "v")  # a page gets its first view
    thread.join(30)
    assert not thread.is_alive() and {"scaling", "exponent fits", "compare"} <= kinds()


def test_compare_leaves_out_only_what_the_sidebar_unticked(tmp_path):
    """The sidebar's filters are the picked run's. Compare applied its selection to both compared runs: what they had
    beyond it (lengths, or every cell when the picked run's default dtype was another) vanished without a note, and
    a run compared with itself "shared no cell". Now only what was unticked there is left out, and the note says so."""
    db = tmp_path / "three.db"
    seeding.seed_two_runs(db)  # float32, 256..8k
    picked = [
        Measurement(Case(impl="softmax", seq_len=n, dtype=dtype, heads=seeding.HEADS), Status.OK, times_ms=[1.0], peak_bytes=n)
        for n in (1024, 2048)
        for dtype in ("bfloat16", "float32")
    ]
    sweep = {**seeding.sweep_dict((1024, 2048), (False,)), "dtype": ["bfloat16", "float32"]}
    seeding.write_run(db, seeding.run_info("20260105-000000-pick", "2026-01-05T00:00:00+00:00", sweep), picked)
    cb = handlers(db)
    (_, run, *_), (_, selected, *_) = first_page(cb)
    assert run == "20260105-000000-pick" and selected["dtype"] == ["bfloat16"] and selected["seq_len"] == [1024, 2048]
    unfiltered = cb.compare("compare", seeding.BASE, seeding.CANDIDATE, {axis: [] for axis in AXES}, "v", None)[1]
    _, cells, _, note = cb.compare("compare", seeding.BASE, seeding.CANDIDATE, selected, "v", run)
    assert len(cells) == len(unfiltered) == 36 and {"256", "8k"} <= {c["seq_len"] for c in cells} and "Left out" not in note
    _, itself, _, note = cb.compare("compare", seeding.BASE, seeding.BASE, selected, "v", run)
    assert len(itself) == 36 and note.startswith("36 shared cells") and "same run" in note
    _, cells, _, note = cb.compare("compare", seeding.BASE, seeding.CANDIDATE, {**selected, "seq_len": [1024]}, "v", run)
    assert "2k" not in {c["seq_len"] for c in cells} and {"256", "8k"} <= {c["seq_len"] for c in cells}
    assert note.endswith("Left out, as unticked in the sidebar: seq_len 2k.")
    compared = pd.read_csv(
        io.StringIO(cb.download(1, "compare", run, {**selected, "seq_len": [1024]}, seeding.BASE, seeding.CANDIDATE)["content"])
    )
    assert len(compared) == len(cells) and 2048 not in set(compared["seq_len"])  # the CSV is the view


def test_a_comparison_and_the_exponents_tab_never_share_a_fit_of_other_lengths(two_runs_db):
    """Fits were cached per configuration under the frame's lengths: Compare fits the base run's softmax bidir over the
    lengths the candidate also ran (256..1k: it ran out of memory at 2k), and the Exponents tab of the base run, opened
    next, showed that fit where the base run measured 256..2k; opened first, its fit stood in Compare's place."""

    def softmax_lengths(rows):
        return {r["lengths"] for r in rows if r["config"] == "softmax bidir" and r["metric"] == "time"}

    cb = handlers(two_runs_db)
    (_, _, _, run_a, _, run_b, *_), (_, selected, *_) = first_page(cb)
    everything = {axis: [] for axis in AXES}
    changes = cb.compare("compare", run_a, run_b, everything, "v")[2]
    assert {(c["lengths_a"], c["lengths_b"]) for c in changes if c["config"] == "softmax bidir"} == {("256..1k", "256..1k")}
    assert softmax_lengths(cb.exponents("exponents", run_a, everything, "time", 36.0, "v")[0]) == {"256..2k"}
    cb = handlers(two_runs_db)  # the other order
    assert softmax_lengths(cb.exponents("exponents", run_a, everything, "time", 36.0, "v")[0]) == {"256..2k"}
    changes = cb.compare("compare", run_a, run_b, everything, "v")[2]
    assert {(c["lengths_a"], c["lengths_b"]) for c in changes if c["config"] == "softmax bidir"} == {("256..1k", "256..1k")}


def test_views_of_cells_timed_on_a_busy_machine_say_so(tmp_path):
    """An audit compared two runs of unchanged code, one timed beside other work: Compare said "8 at least 5% slower"
    ("time x19 (slower)") with no word of the load, the Scaling view and its PNG said nothing, and the Exponents note
    sent the reader to crossover hover text that did not say it either."""
    busy = "timed while other processes kept 1.0 of 2 cores busy: times may be inflated"
    db = tmp_path / "busy.db"
    seeding.write_run(db, seeding.run_info(seeding.BASE, "2026-01-01T00:00:00+00:00"), seeding.run_cells())
    loaded = [replace(m, reason=busy) if m.case.impl == "sdpa" and m.status == Status.OK else m for m in seeding.run_cells(candidate=True)]
    seeding.write_run(db, seeding.run_info(seeding.CANDIDATE, "2026-01-02T00:00:00+00:00"), loaded)
    cb = handlers(db)
    (_, run, _, run_a, _, run_b, *_), (_, selected, _, facets, budget, *_) = first_page(cb)
    _, cells, _, note = cb.compare("compare", run_a, run_b, selected, "v")
    sdpa = [c for c in cells if c["config"].startswith("sdpa") and c["status_b"] == "ok"]
    assert sdpa and all(c["caveat"] == "busy in the candidate" for c in sdpa)
    assert not [c for c in cells if c["caveat"] and not c["config"].startswith("sdpa")]
    assert f"Of the shared cells, {len(sdpa)} were timed on a busy machine or are noisy in one run or both (the caveat column)" in note
    figure, note = cb.scaling("scaling", run, selected, "time", facets, "v")
    assert "were timed while other processes kept cores busy" in note
    assert "timed cells busy or noisy (hover says which)" in figure.layout.title.text  # a PNG of the view has no note
    assert "busy" not in cb.scaling("scaling", run, selected, "peak_bytes", facets, "v")[1]  # memory is not timed
    _, _, crossings, _, note, _ = cb.exponents("exponents", run, selected, "time", budget, "v")
    hovers = [text for trace in crossings.data for row in trace.hovertext for text in row if "sdpa vs" in text or "vs sdpa" in text]
    assert "crossovers' hover name them" in note and any("timed on a busy machine or noisy: sdpa N=" in text for text in hovers), hovers
    from click.testing import CliRunner

    from attnprof.cli import cli

    said = CliRunner().invoke(cli, ["compare", seeding.BASE, seeding.CANDIDATE, "--db", str(db), "--format", "json"])
    payload = json.loads(said.output)
    assert said.exit_code == 0 and f". Of the shared cells, {len(sdpa)} were timed on a busy machine or are noisy" in payload["note"]
    assert {c["caveat"] for c in payload["cells"] if c["config"].startswith("sdpa") and c["status_b"] == "ok"} == {"busy in the candidate"}


def test_the_budget_slider_takes_no_typed_value(two_runs_db):
    """Dash 4 shows a box beside a slider: it held log2 bytes ("34.557"), and typing 80 (GiB, a reader would think)
    asked for 2^80 bytes, clamped to 16 TiB."""
    from attnprof.dashboard import layout

    found = [c for c in layout.build(60_000)._traverse() if getattr(c, "id", None) == layout.BUDGET]
    assert len(found) == 1 and found[0].allow_direct_input is False


def test_compare_says_an_unfinished_run_as_the_compare_command_does(tmp_path):
    """The Compare note read as a whole comparison when the candidate was an interrupted run (a consistency audit)."""
    from attnprof.store import Store

    db = tmp_path / "two.db"
    seeding.seed_two_runs(db)
    store = Store.open(db, create=False)
    store.set_run_state(seeding.CANDIDATE, "interrupted")
    store.close()
    cb = handlers(db)
    (_, _, _, run_a, _, run_b, *_), (_, selected, *_) = first_page(cb)
    note = cb.compare("compare", run_a, run_b, selected, "v")[3]
    assert "The candidate is interrupted: " in note and f"attnprof sweep --resume {seeding.CANDIDATE}" in note, note
    assert "The baseline is" not in note


def test_compare_opens_on_the_run_picked_against_the_one_before_it(tmp_path):
    """The Compare tab showed the two newest runs whatever run the page was opened on (its address's run)."""
    path = tmp_path / "three.db"
    seeding.seed_two_runs(path)
    newest = seeding.write_run(path, seeding.run_info("20260103-000000-third", "2026-01-03T00:00:00+00:00"), seeding.run_cells(True))
    cb = handlers(path)
    _, run, _, run_a, _, run_b, *_ = cb.refresh(None, seeding.CANDIDATE, None, None, None)
    assert run == seeding.CANDIDATE and (run_a, run_b) == (seeding.BASE, seeding.CANDIDATE)
    _, run, _, run_a, _, run_b, *_ = cb.refresh(None, None, None, None, None)  # no address: the newest against the one before
    assert run == newest and (run_a, run_b) == (seeding.CANDIDATE, newest)
    _, _, _, run_a, _, run_b, *_ = cb.refresh(None, seeding.BASE, None, None, None)  # the oldest: against the one after it
    assert (run_a, run_b) == (seeding.BASE, seeding.CANDIDATE)
    _, _, _, run_a, _, run_b, *_ = cb.refresh(None, seeding.BASE, newest, seeding.BASE, None)  # choices made are kept
    assert (run_a, run_b) == (newest, seeding.BASE)
