"""Figure functions on constructed frames (no database, no server): traces, axes, markers, hover text."""

import math

import pandas as pd
import pytest
import seeding

from attnprof.dashboard import cell_figures, figures, views
from attnprof.dashboard.hardware import Ceilings, ceilings_for, with_overrides


def scaling(frame, metric="time", facets=("causal",), filters=None):
    shown = views.apply_filters(frame, filters)
    cells = views.scaling_cells(views.with_lines(shown, facets), metric)
    fits = views.fits_for_lines(cells, views.fit_metric(shown, metric))
    return figures.scaling_figure(cells, fits, views.METRICS[metric], views.scaling_message(shown, metric))


def of_kind(figure, kind):
    return [trace for trace in figure.data if trace.meta == kind]


def bands(figure):
    """The scaling view's p20-p80 bands: closed path shapes."""
    return [shape for shape in figure.layout.shapes if shape.type == "path"]


def fit_lines(figure):
    """The scaling view's fitted power laws: line shapes shown in the legend."""
    return [shape for shape in figure.layout.shapes if shape.type == "line" and shape.showlegend]


def test_scaling_lines_per_label_and_facet_with_bands_and_fits(base_frame):
    figure = scaling(base_frame)
    measured = of_kind(figure, "measured")
    # bidir: 3 impls; causal: softmax and sdpa (nystromformer refuses causal: no line, coverage shows it)
    assert sorted(t.name for t in measured) == sorted(["nystromformer[num_landmarks=32]", "sdpa", "softmax", "sdpa", "softmax"])
    assert len(bands(figure)) == len(measured)  # p20-p80 band under every timed line
    assert {b.legendgroup for b in bands(figure)} == {t.name for t in measured} and all(b.layer == "below" for b in bands(figure))
    fit_names = {f.name for f in fit_lines(figure)}
    assert "softmax · bidir: N^2.00 quadratic" in fit_names
    assert "nystromformer[num_landmarks=32] · bidir: N^1.00 linear" in fit_names
    assert [a.text for a in figure.layout.annotations] == ["bidir", "causal"]  # one panel per causal setting


def test_scaling_axes_are_log_log_with_length_ticks(base_frame):
    figure = scaling(base_frame)
    x_axes = [figure.layout[name] for name in ("xaxis", "xaxis2")]
    y_axes = [figure.layout[name] for name in ("yaxis", "yaxis2")]
    assert all(axis.type == "log" for axis in x_axes + y_axes)
    assert list(x_axes[0].tickvals) == list(seeding.LENGTHS) and list(x_axes[0].ticktext)[-1] == "8k"
    assert figure.layout.xaxis.title.text == "sequence length N" and "median time" in figure.layout.yaxis.title.text


def test_failed_cells_are_distinct_markers_with_their_reasons(base_frame):
    figure = scaling(base_frame)
    failed = {t.meta: t for t in figure.data if str(t.meta).startswith("failed:")}
    assert set(failed) == {"failed:oom", "failed:timeout", "failed:crashed"}  # skipped and unsupported are not drawn
    symbols = {t.marker.symbol for t in failed.values()}
    assert len(symbols) == 3 and "x" in symbols
    assert seeding.OOM_REASON in failed["failed:oom"].hovertext[0] and "N = 4k" in failed["failed:oom"].hovertext[0]
    assert seeding.TIMEOUT_REASON in failed["failed:timeout"].hovertext[0]
    assert seeding.CRASH_REASON in failed["failed:crashed"].hovertext[0]
    assert {t.name for t in failed.values()} == {"out of memory", "timed out", "crashed"}


def test_a_failed_cell_sits_where_its_fitted_line_would_be(base_frame):
    figure = scaling(base_frame, facets=())
    oom = of_kind(figure, "failed:oom")[0]
    assert oom.x[0] == 4096
    assert oom.y[0] == pytest.approx(1e-5 * 4096**2, rel=0.02)  # softmax's fitted N^2 curve at 4k


def test_fit_lines_follow_their_fit_and_bands_span_p20_to_p80(base_frame):
    shown = views.apply_filters(base_frame, None)
    cells = views.scaling_cells(views.with_lines(shown, ("causal",)), "time")
    fits = views.fits_for_lines(cells, views.fit_metric(shown, "time"))
    figure = figures.scaling_figure(cells, fits, views.METRICS["time"])
    fit = fits[(fits["line"] == "softmax") & (fits["facet_col"] == "bidir")]["fit"].item()
    [line] = [f for f in fit_lines(figure) if f.name.startswith("softmax · bidir")]
    assert (line.x0, line.x1) == (min(fit.lengths_used), max(seeding.LENGTHS)) and (line.xref, line.yref) == ("x", "y")
    assert (line.y0, line.y1) == (pytest.approx(fit.predict(line.x0)), pytest.approx(fit.predict(line.x1)))
    [band] = [b for b in bands(figure) if b.legendgroup == "softmax" and b.xref == "x"]
    corners = [tuple(float(v) for v in corner.split(",")) for corner in band.path.strip("MZ").split("L")]
    ok = cells[(cells["line"] == "softmax") & (cells["facet_col"] == "bidir") & cells["value"].notna()].sort_values("seq_len")
    expected = list(zip(ok["seq_len"], ok["high"], strict=True)) + list(zip(ok["seq_len"], ok["low"], strict=True))[::-1]
    assert corners == [(float(n), pytest.approx(v)) for n, v in expected]
    softmax = [t for t in of_kind(figure, "measured") if t.name == "softmax" and t.xaxis == "x"][0]
    assert all(f"fit: N^{fit.exponent:.2f} quadratic, 95% interval" in text for text in softmax.hovertext)  # fit details on hover
    assert all(text.endswith(f"over N = 256..{figures.format_length(max(fit.lengths_used))}") for text in softmax.hovertext)


def test_metric_switch_changes_values_and_units(base_frame):
    memory = scaling(base_frame, metric="peak_bytes")
    assert not bands(memory)  # only time has quantiles
    softmax = [t for t in of_kind(memory, "measured") if t.name == "softmax"][0]
    assert list(softmax.y[:2]) == [64 * 256**2, 64 * 512**2]  # 4 bytes x 4 heads x 4 N^2
    assert "peak memory" in memory.layout.yaxis.title.text
    # ticks at powers of two in binary units, as the tables and hovers: SI ticks put a 40.0 GiB peak at "43G" (a report audit)
    ticks = dict(zip(memory.layout.yaxis.tickvals, memory.layout.yaxis.ticktext, strict=True))
    assert ticks[2.0**20] == "1 MiB" and all(math.log2(v).is_integer() for v in ticks)
    assert min(ticks) <= min(softmax.y) and max(ticks) >= max(softmax.y)
    rss = scaling(base_frame, metric="peak_rss_bytes")
    assert of_kind(rss, "measured")[0].y[0] != softmax.y[0]


def test_impl_filter_and_two_facets(base_frame):
    figure = scaling(base_frame, facets=("causal", "mode"), filters={"label": ["sdpa"]})
    assert {t.name for t in of_kind(figure, "measured")} == {"sdpa"}
    assert [t.meta for t in figure.data if str(t.meta).startswith("failed")] == ["failed:timeout"]
    # a third facet ticked was dropped without a word; its axis tells the lines apart and the note says so
    assert views.facets_note(("causal", "mode")) == "" and views.facets_note(("causal", "mode", "dtype")) == (
        "Two facets at most: dtype told apart in the line names instead."
    )


def test_messages_for_empty_all_failed_and_one_length(base_frame):
    assert figures.scaling_figure(base_frame.iloc[0:0], pd.DataFrame(), views.METRICS["time"]).layout.meta == "message"
    failed = base_frame[base_frame["status"] != "ok"]
    assert "Every cell in view failed" in views.scaling_message(failed, "time")
    one = base_frame[base_frame["seq_len"] == 1024]
    assert "Only one length" in views.scaling_message(one, "time")
    figure = scaling(one)
    assert not fit_lines(figure) and of_kind(figure, "measured") and "Only one length" in figure.layout.title.text


def test_exponent_chart_has_intervals_and_classes(base_frame):
    fits = pd.concat([views.fit_metric(base_frame, m) for m in views.EXPONENT_METRICS], ignore_index=True)
    table = views.exponent_table(base_frame, fits)
    figure = figures.exponent_figure(table)
    assert {t.meta for t in figure.data} == {"exponent:time", "exponent:peak_bytes", "exponent:flops"}
    quadratic = [t for t in figure.data if t.meta == "exponent:time" and t.name == "quadratic"][0]
    softmax = list(quadratic.y).index("softmax bidir")
    assert quadratic.x[softmax] == pytest.approx(2.0, abs=0.01) and quadratic.marker.color == figures.CLASS_COLOURS["quadratic"]
    assert quadratic.error_x.array[softmax] is not None and "class quadratic" in quadratic.hovertext[softmax]
    linear = [t for t in figure.data if t.meta == "exponent:time" and t.name == "linear"][0]
    assert list(linear.y) == ["nystromformer[num_landmarks=32] bidir"]
    assert [a.text for a in figure.layout.annotations][:3] == ["time", "peak_bytes", "flops"]  # a panel per metric
    assert tuple(figure.layout.xaxis.range) == (-0.25, 3.25)  # the exponents, all within 0..3, and a margin
    wide = table.assign(low=table["exponent"] - 4.0, high=table["exponent"] + 4.0)  # intervals of a 2-point time fit
    assert tuple(figures.exponent_figure(wide).layout.xaxis.range) == (-0.25, 3.25)  # not stretched to -4..6
    assert f"N^{quadratic.x[softmax]:.3f} [" in quadratic.hovertext[softmax]
    none = table.assign(low=float("nan"), high=float("nan"))  # a 2-length fit: no interval
    hovers = [h for t in figures.exponent_figure(none).data for h in t.hovertext]
    assert all("(no 95% interval: 2 lengths)" in h and "inf" not in h for h in hovers)


def test_crossover_matrix_and_frontier(base_frame):
    from attnprof.crossover import crossover_frame

    fits = views.fit_metric(base_frame, "time")
    crossings = crossover_frame(fits, impl_col="label", config_cols=views.CONFIG[1:])
    groups = views.crossover_groups(base_frame, crossings)
    figure = figures.crossover_figure(groups, "time")
    bidir = figure.data[0]
    assert list(bidir.x) == ["nystromformer[num_landmarks=32]", "sdpa", "softmax"] and list(bidir.y) == list(bidir.x)
    i, j = 0, 2  # nystromformer (linear) against softmax (quadratic) cross where 1e-3 N = 1e-5 N^2: N = 100
    assert bidir.text[i][j] == bidir.text[j][i] and "cheaper" in bidir.hovertext[i][j]
    assert len(figure.data) == 2 and "more" not in figure.layout.title.text  # bidir and causal: both drawn
    few = figures.crossover_figure(views.crossover_groups(base_frame, crossings, limit=1), "time")
    assert len(few.data) == 1 and "1 configurations drawn, 1 more: filter" in few.layout.title.text  # it was left out silently
    peak = views.fit_metric(base_frame, "peak_bytes").assign(metric="peak_bytes")
    frontier = views.frontier_rows(base_frame, peak, 2**32)
    softmax = frontier[frontier["config"] == "softmax bidir"].iloc[0]
    assert softmax["length"] == pytest.approx(8192, rel=0.01) and not softmax["consistent"]  # 8k predicted, OOM measured at 4k
    on_device = views.frontier_rows(base_frame, peak, 2**32, device_bytes=2**32).set_index("config").loc["softmax bidir"]
    assert on_device["length"] == 2048 and on_device["consistent"] and "N = 4k ran out of memory" in on_device["message"]
    bars = figures.frontier_figure(frontier, 2**32)
    assert bars.layout.xaxis.type == "log" and len(bars.data[0].y) == len(frontier)
    shown = dict(zip(bars.data[0].y, bars.data[0].text, strict=True))
    assert shown["softmax bidir"] == str(round(softmax["length"]))  # fit's exact length, not "7.98k" with k = 1024


def test_roofline_places_cells_under_the_ceilings(base_frame):
    points = views.roofline_points(base_frame)
    ceilings = Ceilings("test GPU", {"float32": 100.0}, 2.0, True)
    figure = cell_figures.roofline_figure(points, ceilings)
    roof = of_kind(figure, "roof:float32")[0]
    assert max(roof.y) == 100.0 and roof.x[1] == pytest.approx(50.0)  # ridge at 100 TFLOP/s / 2 TB/s
    cells = of_kind(figure, "cells")
    assert sum(len(t.x) for t in cells) == int((base_frame["status"] == "ok").sum())
    softmax = [t for t in cells if t.name == "softmax bidir"][0]
    assert softmax.x[0] == pytest.approx(256 / 4)  # 4 H N^2 D FLOPs over 16 H N D bytes: N / 4 FLOP per byte
    assert "of the roof" in softmax.hovertext[0] and figure.layout.xaxis.type == "log" == figure.layout.yaxis.type
    assert cell_figures.roofline_figure(points.iloc[0:0], ceilings).layout.meta == "message"


@pytest.mark.parametrize(
    "gpu, tflops, tbps",
    [
        ("NVIDIA H100 80GB HBM3", 989, 3.35),
        ("NVIDIA H200", 989, 4.8),
        ("NVIDIA A100-SXM4-80GB", 312, 2.0),
        ("NVIDIA H100 PCIe", 756, 2.0),
        ("NVIDIA L40", 181, 0.864),
        ("NVIDIA L4", 121, 0.3),
    ],  # an L40 read as an L4 ("L4" in "L40"), known: no override asked
)
def test_known_gpus_have_their_datasheet_ceilings(gpu, tflops, tbps):
    found = ceilings_for({"gpu_name": gpu}, "cuda")
    assert found.known and found.tflops["bfloat16"] == tflops and found.tbps == tbps


def test_unknown_devices_get_a_labelled_default_and_overrides_win():
    cpu = ceilings_for({"cpu_threads": 8, "cpu": "Some CPU"}, "cpu")
    # an AVX-512 core's bound: at the AVX2 one (0.1 a thread) sdpa's measured 0.267 TFLOP/s at 2 threads sat above the roof
    assert not cpu.known and "rough" in cpu.device and cpu.tflops["float32"] == pytest.approx(1.6)
    assert ceilings_for({"cpu_threads": 2}, "cpu").tflops["float32"] >= 0.267
    assert "not in the table" in ceilings_for({"gpu_name": "Mystery GPU"}, "cuda").device
    custom = with_overrides(cpu, 2.5, 0.1)
    assert custom.tflops == {"float32": 2.5, "bfloat16": 2.5, "float16": 2.5} and custom.tbps == 0.1 and "overridden" in custom.device


def test_coverage_colours_every_cell_by_status_and_shows_missing(base_frame):
    planned = views.planned_cells(seeding.sweep_dict(lengths=(*seeding.LENGTHS, 16384)))
    grid = views.coverage_grid(base_frame, planned)
    figure = cell_figures.coverage_figure(grid)
    heatmap = figure.data[0]
    assert list(heatmap.x) == ["256", "512", "1k", "2k", "4k", "8k", "16k"]
    assert len(heatmap.y) == 6  # 3 impls x 2 causal settings
    row = list(heatmap.y).index("softmax bidir")
    assert list(heatmap.text[row]) == ["ok", "ok", "ok", "ok", "oom", "skipped", "missing"]
    assert seeding.OOM_REASON in heatmap.hovertext[row][4]
    nystrom = list(heatmap.y).index("nystromformer[num_landmarks=32] causal")
    assert set(heatmap.text[nystrom]) == {"unsupported", "missing"} and seeding.UNSUPPORTED_REASON in heatmap.hovertext[nystrom][0]
    assert {t.name for t in of_kind(figure, "legend")} == {"ok", "unsupported", "skipped", "oom", "timeout", "crashed", "missing"}


def test_compare_ratios_put_regressions_first(base_frame, candidate_frame):
    from attnprof.dashboard.compare import compare_cells, exponent_changes

    cells = compare_cells(base_frame, candidate_frame)
    assert (
        cells.iloc[0]["change"] == "regressed: ok -> oom"
        and cells.iloc[0]["config"] == "softmax bidir"
        and cells.iloc[0]["seq_len"] == 2048
    )
    slower = cells[(cells["config"] == "sdpa bidir") & (cells["seq_len"] == 4096)].iloc[0]
    assert slower["time_ratio"] == pytest.approx(1.6) and slower["peak_ratio"] == pytest.approx(1.0)
    assert slower["change"] == "time x1.6 (slower)"
    from attnprof.dashboard.compare import _change

    # a 170x speed-up read "x0.0059 worst"; each metric now says which way it moved
    assert _change("ok", "ok", 0.0059, 1.0) == "time x0.0059 (faster)"
    assert _change("ok", "ok", 1.01, 1.3) == "memory x1.3 (more)" and _change("ok", "ok", 1.01, 0.99) == "same (within 2%)"
    assert cells.iloc[-1]["change"].startswith("fixed: crashed")  # nystromformer 2k runs again: last
    figure = cell_figures.compare_figure(cells, ("a", "b"))
    assert {t.meta for t in figure.data} == {"time_ratio", "peak_ratio", "status_change"} and figure.layout.yaxis.type == "log"
    # cells with no ratio (a status changed) were left off the plot: markers above the ratios now, what changed in their hover
    changed = {t.name: t for t in figure.data if t.meta == "status_change"}
    highest = max(y for t in figure.data if t.meta != "status_change" for y in t.y)
    assert {"failing now (no ratio: placed above)", "working now (no ratio: placed above)"} <= set(changed)
    failing = changed["failing now (no ratio: placed above)"]
    assert min(failing.y) > highest and "regressed: ok -> oom" in failing.hovertext[list(failing.x).index(2048)]
    # many configurations: the ones that changed most are drawn (a 1,000-line figure took the browser 2.1 s to leave)
    many = pd.concat([cells.assign(config=cells["config"] + f" #{i}", score=cells["score"] / (i + 1)) for i in range(30)])
    drawn = cell_figures.compare_figure(many, ("a", "b"))
    names = {t.name.rsplit(" ", 1)[0].removesuffix(" peak") for t in drawn.data if t.meta != "status_change"}
    assert len(names) == cell_figures.COMPARE_LINES and any("#0" in n for n in names) and not any("#29" in n for n in names)
    assert f"({cell_figures.COMPARE_LINES} of {many['config'].nunique()} configurations, those that changed most" in drawn.layout.title.text
    fits_a = pd.concat([views.fit_metric(base_frame, m) for m in ("time", "peak_bytes")])
    fits_b = pd.concat([views.fit_metric(candidate_frame, m) for m in ("time", "peak_bytes")])
    changes = exponent_changes(base_frame, fits_a, fits_b)
    assert changes.iloc[0]["config"].startswith("sdpa") and changes.iloc[0]["delta"] > 0.1
    # each exponent says what lengths it was fitted over: softmax ran out of memory a length earlier in the candidate
    softmax = changes[(changes["config"] == "softmax bidir") & (changes["metric"] == "time")].iloc[0]
    assert (softmax["lengths_a"], softmax["lengths_b"]) == ("256..2k", "256..1k")


def test_a_band_leaves_out_points_without_quantiles(base_frame):
    frame = base_frame.copy()
    softmax = frame.index[(frame["impl"] == "softmax") & (frame["status"] == "ok") & ~frame["causal"].astype(bool)]
    frame.loc[softmax[0], "p20_ms"] = float("nan")  # one cell without its quantiles
    [band] = [b for b in bands(scaling(frame)) if b.legendgroup == "softmax" and b.xref == "x"]
    lengths = {float(corner.split(",")[0]) for corner in band.path.strip("MZ").split("L")}
    assert "nan" not in band.path and float(frame.loc[softmax[0], "seq_len"]) not in lengths and len(lengths) >= 2


def test_a_failure_marker_stays_near_the_measured_values():
    """A two-point fit extrapolated to a crashed cell put its marker at 2e12 ms: the axis spanned 15 decades."""
    from attnprof.fit import fit_power_law

    steep = fit_power_law([256, 512], [1.0, 100.0])  # N^6.6
    measured = {"a": [("a", 256, 1.0), ("a", 512, 100.0)]}
    assert steep.predict(8192) > 1e9
    assert figures._failure_height(measured, steep, "a", 8192) == pytest.approx(100.0 * figures.FAILURE_HEADROOM)
    assert figures._failure_height(measured, steep, "a", 300) == pytest.approx(steep.predict(300))  # in range: on the line


def test_the_noisy_flag_is_told_on_timing_points_only():
    time, memory = views.METRICS["time"], views.METRICS["peak_bytes"]
    assert "noisy timing" in figures._point_text("a", time, 1024, 2.0, 1.5, 2.5, True, "")
    assert "noisy" not in figures._point_text("a", memory, 1024, 2.0**20, float("nan"), float("nan"), True, "")  # a peak is exact
    # nor the busy machine's note, which every point of a peak chart repeated (a user audit); other notes stay
    busy = "timed while other processes kept 1.4 of 2 cores busy: times may be inflated"
    assert busy in figures._point_text("a", time, 1024, 2.0, 1.5, 2.5, False, busy)
    assert "note" not in figures._point_text("a", memory, 1024, 2.0**20, float("nan"), float("nan"), False, busy)
    kept = figures._point_text("a", memory, 1024, 2.0**20, float("nan"), float("nan"), False, f"{busy}; sampled rows unchecked")
    assert kept.endswith("<br>note: sampled rows unchecked")


def test_a_length_label_is_whole_below_a_million():
    """A crossover at N = 1258 read "1.23k" in the report's heatmap (k = 1024 there), which a reader takes for 1230."""
    from attnprof.dashboard.plotting import short_length

    assert [short_length(n) for n in (1258, 4096, 393216, 3 * 2**20, 40_580_000)] == ["1258", "4k", "384k", "3M", "38.7M"]
    assert short_length(float("inf")) == "unbounded"
    assert (short_length(3 * 2**30), short_length(1.02e22)) == ("3G", "1.02e+22")  # not "9.47e+12G" (a report audit)


def test_a_crossover_fit_leaves_out_as_too_unsure_is_not_drawn_as_a_length():
    """The report's matrix showed "927*" (softmax cheaper above N = 927, 95% 0..inf) beside a softmax that timed out at
    1024, where `fit` left the pair out as reaching beyond 16x the measured lengths (a report audit)."""
    rows = pd.DataFrame([
        dict(impl_a="sdpa", impl_b="softmax", length=927.0, kind="extrapolated", message="extrapolated: softmax ...", near=False),
        dict(impl_a="sdpa", impl_b="cosformer", length=3000.0, kind="extrapolated", message="extrapolated: sdpa ...", near=True),
    ])  # fmt: skip
    labels, z, text, hover = figures._crossover_matrix(rows)
    sdpa, softmax, cosformer = (labels.index(name) for name in ("sdpa", "softmax", "cosformer"))
    assert text[sdpa][softmax] == text[softmax][sdpa] == "far" and z[sdpa][softmax] is None
    assert "Not drawn: its 95% interval reaches beyond 16x the measured lengths" in hover[sdpa][softmax]
    assert text[sdpa][cosformer] == "3000*" and z[sdpa][cosformer] is not None


def test_a_view_of_failed_cells_only_shows_no_value_scale(base_frame):
    """Every cell failed: the markers' heights are placeholders, and the report's peak axis read "100mB" (0.1 byte) and
    "1 B" beside them, the title promising a fitted power law (a dashboard audit)."""
    failed = base_frame[base_frame["status"] != "ok"]
    assert len(failed) and not failed["status"].eq("ok").any()
    for metric in ("time", "peak_bytes"):
        figure = scaling(failed, metric, facets=())
        assert of_kind(figure, "failed:oom") and figure.layout.yaxis.showticklabels is False
        assert "failed cells only" in figure.layout.yaxis.title.text and "fitted power law" not in figure.layout.title.text
    assert scaling(base_frame, facets=()).layout.yaxis.showticklabels is not False  # values measured: the scale as before
    # ok cells without the source (a CPU run's CUDA reserved peak): no cell failed, as the title said (a dashboard audit)
    unmeasured = base_frame[base_frame["status"] == "ok"].assign(peak_reserved_bytes=float("nan"))
    title = scaling(unmeasured, "peak_reserved_bytes", facets=()).layout.yaxis.title.text
    assert title.endswith("measured: the source is not available on the device") and "failed" not in title, title
