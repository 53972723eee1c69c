"""What each view shows, computed from a run's frame (export columns): filters, lines, fits, tables. Pure.

A "line" is one configuration (`analysis.CONFIG`: label and shape, dtype, device, causal, mode) over lengths; it is
named by its label plus whichever of its axes vary in the view and are not already a facet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from attnprof.analysis import CONFIG
from attnprof.fit import format_length
from attnprof.fit_groups import fit_frame

AXES = ("label", "seq_len", "dtype", "device", "causal", "mode", "batch", "heads", "head_dim")  # the filters, in order
ONE_BY_DEFAULT = ("dtype", "device", "batch", "heads", "head_dim")  # several values would multiply the lines
FACET_AXES = ("mode", "causal", "dtype")
FAILED = ("oom", "timeout", "crashed", "error")  # drawn where they happened on the scaling plot


@dataclass(frozen=True)
class Metric:
    key: str
    column: str  # the frame column plotted
    title: str
    unit: str  # "ms", "bytes", "TFLOP/s", "GB/s", "FLOP"
    band: tuple = ()  # (low column, high column) drawn as a band


METRICS = {
    m.key: m
    for m in (
        Metric("time", "median_ms", "median time", "ms", ("p20_ms", "p80_ms")),
        Metric("peak_bytes", "peak_bytes", "peak memory (primary source)", "bytes"),
        Metric("peak_alloc_bytes", "peak_alloc_bytes", "allocator peak", "bytes"),
        Metric("peak_reserved_bytes", "peak_reserved_bytes", "CUDA allocator reserved peak", "bytes"),
        Metric("peak_device_bytes", "peak_device_bytes", "NVML device peak (sampled)", "bytes"),
        Metric("peak_rss_bytes", "peak_rss_bytes", "host RSS peak (sampled)", "bytes"),
        Metric("peak_live_bytes", "peak_live_bytes", "live tensor bytes (exact)", "bytes"),
        Metric("tflops", "tflops", "achieved TFLOP/s", "TFLOP/s"),
        Metric("gbps", "gbps", "achieved GB/s", "GB/s"),
        Metric("flops", "flops", "FLOPs per call", "FLOP"),
    )
}
EXPONENT_METRICS = ("time", "peak_bytes", "flops")


# --- filters -------------------------------------------------------------------------------------------------


def axis_options(frame: pd.DataFrame) -> dict:
    """axis -> its distinct values in the run, sorted (plain Python values, as the checklists need)."""
    return {axis: sorted(_plain(v) for v in frame[axis].dropna().unique()) for axis in AXES}


def default_filters(frame: pd.DataFrame) -> dict:
    options = axis_options(frame)
    return {axis: values[:1] if axis in ONE_BY_DEFAULT else list(values) for axis, values in options.items()}


def apply_filters(frame: pd.DataFrame, filters: dict | None) -> pd.DataFrame:
    """Rows whose value on every axis is among the selected ones; an axis with nothing selected is not filtered."""
    mask = pd.Series(True, index=frame.index)
    for axis, values in (filters or {}).items():
        if values:
            mask &= frame[axis].isin(values)
    return frame[mask]


def unticked(options: dict, defaults: dict, filters: dict | None) -> dict:
    """axis -> the values of the picked run left out on purpose: on the axes whose selection differs from that run's
    defaults, its options not selected. Compare applies these to both runs; the selection itself (made among the
    picked run's values) left out whatever another run has beyond them: its 512 row, or its float16 cells when the
    picked run's default dtype was bfloat16, so that a run compared with itself "shared no cell"."""
    left = {}
    for axis in AXES:
        selected = list((filters or {}).get(axis) or [])
        if not selected or sorted(map(str, selected)) == sorted(map(str, defaults.get(axis) or [])):
            continue
        if out := [value for value in options.get(axis) or [] if value not in selected]:
            left[axis] = out
    return left


def drop_values(frame: pd.DataFrame, left_out: dict) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for axis, values in left_out.items():
        mask &= ~frame[axis].isin(values)
    return frame[mask]


def filter_key(filters: dict | None) -> tuple:
    """A hashable form of the filters, for memo keys."""
    return tuple((axis, tuple(sorted(map(str, (filters or {}).get(axis) or ())))) for axis in AXES)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


# --- lines and facets ----------------------------------------------------------------------------------------


def axis_text(axis: str, value) -> str:
    if axis == "causal":
        return "causal" if value else "bidir"
    return f"{axis}={value}" if axis in ("batch", "heads", "head_dim") else str(value)


def varying(frame: pd.DataFrame, axes) -> list[str]:
    return [axis for axis in axes if frame[axis].nunique(dropna=False) > 1]


def name_column(frame: pd.DataFrame, axes, with_label: bool = True) -> pd.Series:
    """`label` (optionally) followed by the values of `axes`, one string per row."""
    parts = [frame["label"].astype(str)] if with_label else []
    parts += [frame[axis].map(lambda v, a=axis: axis_text(a, v)) for axis in axes]
    if not parts:
        return pd.Series("", index=frame.index)
    names = parts[0]
    for part in parts[1:]:
        names = names + " " + part
    return names.str.strip()


def facets_note(facets) -> str:
    """'' for up to two facets; a third ticked one was dropped without a word (its values tell the lines apart)."""
    ticked = [f for f in facets or () if f in FACET_AXES]
    return f"Two facets at most: {', '.join(ticked[2:])} told apart in the line names instead." if len(ticked) > 2 else ""


def with_lines(frame: pd.DataFrame, facets=()) -> pd.DataFrame:
    """frame plus `line` (label and the varying non-facet axes), `facet_col` and `facet_row` (facet values)."""
    facets = [f for f in facets if f in FACET_AXES][:2]
    out = frame.copy()
    out["line"] = name_column(frame, [a for a in varying(frame, CONFIG[1:]) if a not in facets])
    out["facet_col"] = name_column(frame, facets[:1], with_label=False)
    out["facet_row"] = name_column(frame, facets[1:], with_label=False)
    return out


def default_facets(frame: pd.DataFrame) -> list[str]:
    return varying(frame, FACET_AXES)[:2]


# --- fits ----------------------------------------------------------------------------------------------------


def fit_metric(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One fit row per configuration (fit_groups.fit_frame columns, `metric` = the dashboard's metric key).

    Time is fitted on each cell's stored median with its stored spread (iqr_ms / 2 median_ms), not on the raw
    samples as `attnprof fit` does: the fit takes the median per length and that same spread either way, so with
    one cell per length (a run's usual shape) exponents and crossovers are the same, and the dashboard need not
    decode every row's samples. Without the spreads every median read as exact, and where `fit` said two impls
    were level at a length the dashboard put a crossing there (436 against 449). Each cell's sample count (`samples`)
    goes with its spread, as the raw samples' count does in `fit`. `n_samples` counts cells."""
    column = METRICS[metric].column  # time: median_ms
    points = _value_points(frame, column)
    if points.empty:
        return pd.DataFrame(columns=[*CONFIG, "metric", "exponent", "fit", "error"])
    if column != "median_ms":
        return fit_frame(points, column, CONFIG).assign(metric=metric)
    points = points.assign(spread=(points["iqr_ms"] / (2 * points["median_ms"])).fillna(0.0))
    counted = "samples" if "samples" in points.columns else None  # a frame of another source may lack it: counts unknown
    return fit_frame(points, column, CONFIG, spread_col="spread", count_col=counted).assign(metric=metric)


def _value_points(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    ok = frame[(frame["status"] == "ok") & frame[column].notna()]
    return ok[ok[column] > 0].astype({column: float})


def config_keys(frame: pd.DataFrame) -> list[tuple]:
    unique = frame[CONFIG].drop_duplicates()
    return list(zip(*(unique[c].tolist() for c in CONFIG), strict=False))


def fits_for_lines(cells: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """The fits of the configurations in `cells` (a with_lines frame), with their line and facet names."""
    names = cells[[*CONFIG, "line", "facet_col", "facet_row"]].drop_duplicates(subset=CONFIG)
    return fits.merge(names, on=CONFIG, how="inner")


# --- the scaling view ----------------------------------------------------------------------------------------


def scaling_cells(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """with_lines rows plus `value`, `low`, `high` (NaN where not ok or not positive) for the plot."""
    spec = METRICS[metric]
    ok = frame["status"] == "ok"
    value = frame[spec.column].where(ok & (frame[spec.column] > 0))
    low = frame[spec.band[0]].where(ok) if spec.band else float("nan")
    high = frame[spec.band[1]].where(ok) if spec.band else float("nan")
    return frame.assign(value=value.astype(float), low=low, high=high)


def unticked_note(frame: pd.DataFrame, filters: dict | None) -> str:
    """An axis with nothing ticked is not filtered (apply_filters): say so, or unticking every impl looks ignored."""
    axes = [axis for axis, values in (filters or {}).items() if not values and axis in frame and frame[axis].notna().any()]
    names = ["impl" if axis == "label" else axis for axis in axes]
    return f"Nothing ticked under {', '.join(names)}: every value is shown." if names else ""


def scaling_message(frame: pd.DataFrame, metric: str) -> str:
    """Why the plot is empty or has no fit, in one sentence; "" when it is fine."""
    if frame.empty:
        return "No cells match the filters."
    if not (frame["status"] == "ok").any():
        counts = frame["status"].value_counts()
        return "Every cell in view failed (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + "); see Coverage for the reasons."
    if not frame.loc[frame["status"] == "ok", METRICS[metric].column].gt(0).any():
        if metric in ("time", "tflops", "gbps") and (frame["device"] == "meta").all():
            what = METRICS[metric].title
            return f"No {what}: this is an accounting run (meta device), nothing in it is timed; pick a memory metric or FLOPs."
        return f"No cell in view has a value for {METRICS[metric].title} (this source was not available on the device)."
    lengths = sorted(frame.loc[frame["status"] == "ok", "seq_len"].unique())
    if len(lengths) == 1:
        return f"Only one length measured (N = {format_length(lengths[0])}): a scaling law needs at least two, so no fit is drawn."
    return ""


# --- the exponents view --------------------------------------------------------------------------------------


def named_configs(frame: pd.DataFrame, table: pd.DataFrame) -> pd.Series:
    """Names for the configurations in `table` (which has the CONFIG columns), by the axes that vary in `frame`."""
    return name_column(table, varying(frame, CONFIG[1:]))


def exponent_table(frame: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """The fits as display rows: configuration, metric, exponent with its 95% interval, class, r2, range, error."""
    if fits.empty:
        return pd.DataFrame(columns=EXPONENT_COLUMNS)
    rows = fits.assign(config=named_configs(frame, fits)).sort_values(["metric", "config"], key=_metric_order)
    return pd.DataFrame([_exponent_row(row) for row in rows.to_dict("records")], columns=EXPONENT_COLUMNS)


EXPONENT_COLUMNS = ["config", "metric", "exponent", "low", "high", "class", "runner_up", "r2", "lengths", "range_rule", "note"]


def _metric_order(column: pd.Series) -> pd.Series:
    order = {m: i for i, m in enumerate(METRICS)}
    return column.map(order) if column.name == "metric" else column


def _exponent_row(row) -> dict:
    if row["fit"] is None or (isinstance(row["fit"], float) and math.isnan(row["fit"])):
        return {"config": row["config"], "metric": row["metric"], "note": row["error"]}
    return {
        "config": row["config"], "metric": row["metric"], "exponent": round(row["exponent"], 3),
        "low": _finite(row["exponent_low"]), "high": _finite(row["exponent_high"]),
        "class": row["complexity"], "runner_up": f"{row['runner_up']} (dAIC {row['margin']:.1f})", "r2": round(row["r2"], 4),
        "lengths": f"{format_length(min(row['lengths_used']))}..{format_length(max(row['lengths_used']))}",
        "range_rule": row["range_rule"], "note": "; ".join(row["notes"]),
    }  # fmt: skip


def _finite(value: float):
    return round(float(value), 3) if math.isfinite(value) else None


CROSSOVER_PANELS = 4  # configurations drawn side by side in the crossover view


def crossover_groups(frame: pd.DataFrame, crossovers: pd.DataFrame, limit: int = CROSSOVER_PANELS) -> list[tuple[str, pd.DataFrame]]:
    """(configuration name without the impl, its crossover rows) for the first `limit` configurations; with more,
    a last (name, None) says how many more there are (the figure says so: they were left out without a word)."""
    if crossovers.empty:
        return []
    axes = varying(frame, CONFIG[1:])
    groups = crossovers.groupby(CONFIG[1:], sort=True, dropna=False)
    named = [
        (" ".join(axis_text(a, dict(zip(CONFIG[1:], key, strict=True))[a]) for a in axes) or "all cells", rows) for key, rows in groups
    ]
    return named[:limit] + ([(f"{len(named) - limit} more", None)] if len(named) > limit else [])


def frontier_rows(
    frame: pd.DataFrame, fits: pd.DataFrame, budget_bytes: float, boundaries: dict | None = None, device_bytes: float | None = None
) -> pd.DataFrame:
    """The memory frontier of every configuration with a peak_bytes fit, at `budget_bytes`, checked against the
    lengths measured (`boundaries`: analysis.boundaries_by_config(frame), passed in when already computed; `device_bytes`: the
    run's device memory, within which its OOMs bound a frontier)."""
    from attnprof.analysis import frontier_table

    table = frontier_table(frame, fits, budget_bytes, device_bytes, boundaries).drop(columns="budget_bytes")
    if table.empty:
        return table.assign(config=pd.Series(dtype=object))
    return table.assign(config=named_configs(frame, table))


# --- roofline and coverage -----------------------------------------------------------------------------------


def roofline_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Ok cells with work, bytes and time: `intensity` (FLOP per byte) and `tflops`, named by configuration."""
    ok = frame[(frame["status"] == "ok") & (frame["flops"] > 0) & (frame["min_bytes"] > 0) & (frame["tflops"] > 0)]
    return ok.assign(intensity=ok["flops"] / ok["min_bytes"], config=named_configs(frame, ok) if len(ok) else [])


def coverage_grid(frame: pd.DataFrame, planned: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (configuration, length) that was measured or planned: `config`, `seq_len`, `status`, `reason`.

    Planned cells without a row are `missing` (a sweep still running, or interrupted)."""
    cells = frame[[*CONFIG, "seq_len", "status", "reason"]]
    if planned is not None and len(planned):
        cells = planned[[*CONFIG, "seq_len"]].merge(cells, on=[*CONFIG, "seq_len"], how="outer")
        cells = cells.fillna({"status": "missing", "reason": "planned by the sweep, no measurement stored (yet)"})
    both = pd.concat([frame[CONFIG], cells[CONFIG]]) if len(cells) else frame[CONFIG]
    cells = cells.assign(config=name_column(cells, varying(both, CONFIG[1:])))
    return cells.drop_duplicates(subset=["config", "seq_len"], keep="first").sort_values(["config", "seq_len"])


def planned_cells(sweep: dict) -> pd.DataFrame:
    """The cells a run's sweep definition asks for (empty when the definition cannot be read back)."""
    from attnprof.spec import Sweep

    try:
        cases = Sweep.from_dict(sweep).cases()
    except (KeyError, TypeError, ValueError):
        return pd.DataFrame(columns=[*CONFIG, "seq_len"])
    return pd.DataFrame([{**{k: getattr(c, k) for k in CONFIG[1:]}, "label": c.label, "seq_len": c.seq_len} for c in cases])
