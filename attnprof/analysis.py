"""Scaling analysis of one run: fits per configuration and metric, crossovers, memory frontiers.

Pure over the measurement DataFrame (`api.load_measurements`); `attnprof fit` and the dashboard
both call `analyse`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from attnprof.crossover import crossover_frame
from attnprof.fit_groups import FIT_COLUMNS, fit_frame
from attnprof.frontier import memory_frontier

CONFIG = ["label", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode"]
CELL_KEY = [*CONFIG, "seq_len"]
METRICS = {"time": "time_ms", "peak_bytes": "peak_bytes", "flops": "flops"}


@dataclass
class Analysis:
    fits: pd.DataFrame  # one row per configuration and metric (fit_groups.fit_frame columns)
    crossovers: pd.DataFrame  # one row per pair of impls sharing a configuration and metric
    frontiers: pd.DataFrame  # one row per configuration with a peak_bytes fit
    timing_caveats: str = ""  # when time was fitted: how many timed cells were taken on a busy machine or are noisy
    not_fitted: pd.DataFrame | None = None  # the cells left out of every fit for their status (not_fitted_cells)


def metric_points(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The ok rows with one value per row in the column METRICS[metric] (time: one row per raw sample)."""
    ok = frame[frame["status"] == "ok"]
    if metric == "time":
        ok = ok[ok["times_ms"].map(len) > 0].explode("times_ms").rename(columns={"times_ms": "time_ms"})
        return ok.astype({"time_ms": float})
    return ok[ok[metric].notna()].astype({metric: float})


def analyse(
    frame: pd.DataFrame, metrics=tuple(METRICS), budget_bytes: int | str | None = None, device_bytes: int | None = None
) -> Analysis:
    """Fits, crossovers and memory frontiers of a run's measurements.

    frame: `load_measurements(run, db)` (or a slice of it). metrics: any of "time", "peak_bytes", "flops".
    budget_bytes: the memory budget of the frontiers, in bytes or as `--budget` takes it ("80GiB");
    `run_budget(run, db)` gives the run's device memory; None: no frontiers. device_bytes: the memory of the
    device the run measured on (`run_budget` again): an OOM there bounds a frontier whose budget is within it.
    metrics None: all three.
    """
    from attnprof.errors import UsageError

    metrics = tuple(METRICS) if metrics is None else metrics  # was "'NoneType' object is not iterable"

    if not isinstance(frame, pd.DataFrame):
        raise UsageError(f"analyse takes the DataFrame of load_measurements(run, db), not {type(frame).__name__} {frame!r:.60}")
    unknown = [m for m in ([metrics] if isinstance(metrics, str) else metrics) if m not in METRICS]
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    needed = (*CONFIG, "seq_len", "status", *("times_ms" if m == "time" else METRICS[m] for m in metrics))
    lacking = [c for c in needed if c not in frame.columns]
    if lacking:  # an empty DataFrame() raised KeyError: 'status'
        raise UsageError(f"analyse takes the DataFrame of load_measurements(run, db): this one lacks {', '.join(lacking)}")
    refuse_overlapping_runs(frame, "analyse")
    frame = _samples_as_lists(frame)
    from attnprof.gate_rules import bytes_or_none

    budget_bytes = bytes_or_none(budget_bytes, "budget_bytes")  # the frontier's ValueError, before: [1] was a TypeError
    if isinstance(device_bytes, str):  # a number only, as run_budget gives it
        raise UsageError(f"bad device_bytes {device_bytes!r}: must be a finite number of bytes above 0")
    device_bytes = bytes_or_none(device_bytes, "device_bytes")
    fits = []
    for metric in metrics:
        points = metric_points(frame, metric)
        if not points.empty:
            fitted = fit_frame(points, METRICS[metric], CONFIG)
            fits.append(fitted.assign(metric=metric))
    fits_df = pd.concat(fits, ignore_index=True) if fits else pd.DataFrame(columns=[*CONFIG, "metric", *FIT_COLUMNS, "fit", "error"])
    fits_df.attrs["group_cols"] = tuple(CONFIG)
    crossovers = crossover_frame(fits_df, impl_col="label", config_cols=CONFIG[1:])  # its columns whether or not anything fitted
    caveats = timing_caveats(frame) if "time" in metrics else ""
    frontiers = frontier_table(frame, fits_df, budget_bytes, device_bytes)
    return Analysis(fits_df, with_caveats(crossovers, frame), frontiers, caveats, not_fitted_cells(frame))


def _samples_as_lists(frame: pd.DataFrame) -> pd.DataFrame:
    """An export read back: `pd.read_csv` of `attnprof export --format csv` holds each cell's samples as JSON text and
    an empty reason as NaN (the time fit died casting '[74.77, 74.97, 77.14]' to float, deep inside pandas)."""
    import json

    def samples(value):
        return json.loads(value) if isinstance(value, str) else [] if value is None or value != value else value

    if "times_ms" in frame.columns and frame["times_ms"].map(lambda value: isinstance(value, str)).any():
        frame = frame.assign(times_ms=frame["times_ms"].map(samples))
    if "reason" in frame.columns and frame["reason"].isna().any():
        frame = frame.assign(reason=frame["reason"].fillna(""))
    return frame


NOT_FITTED_COLUMNS = [*CONFIG, "seq_len", "status", "reason"]


def not_fitted_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells a fit leaves out for their status (oom, timeout, skipped, error, crashed; not unsupported, which is
    no length of the impl at all): "hog: all 2 lengths kept (256..512)" did not say that 1k ran out of memory, and a
    frontier extrapolated past it. One row each, in CONFIG and length order."""
    failed = frame[~frame["status"].isin(["ok", "unsupported"])] if len(frame) else frame
    return failed.reindex(columns=NOT_FITTED_COLUMNS).sort_values([*CONFIG, "seq_len"]).reset_index(drop=True)


def with_caveats(crossovers: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """A `caveat` per time crossover drawn from cells timed on a busy machine or noisy, naming them: "combiner-axial is
    cheaper above N = 2267" rested on one busy cosFormer cell (1.02 s, where it runs in 30 ms), said only in a
    sentence about all 95 cells."""
    if crossovers.empty:
        return crossovers.assign(caveat=pd.Series(dtype=object))
    flagged = flagged_lengths(frame)
    caveats = []
    for row in crossovers.to_dict("records"):
        config = tuple(row[c] for c in CONFIG[1:])
        parts = [f"{row[side]} N={', '.join(map(str, flagged[(row[side], *config)]))}"
                 for side in ("impl_a", "impl_b") if row.get("metric") == "time" and (row[side], *config) in flagged]  # fmt: skip
        caveats.append(f"timed on a busy machine or noisy: {'; '.join(parts)}" if parts else "")
    return crossovers.assign(caveat=caveats)


FIT_CAVEAT = ("Their time fits and crossovers may be off; `attnprof show` marks them, and a quiet machine or a longer --rep-ms"
              " measures them again.")  # fmt: skip


def timing_caveats(frame: pd.DataFrame, then: str = FIT_CAVEAT) -> str:
    """'' or one sentence on the timed cells a time fit should not be trusted on: a run timed while another process
    kept one of two cores busy fitted Nystromformer's time exponent as 0.010 (its samples flat at 296-312 ms) and put a
    crossover at 3465 instead of 336, and `fit` said nothing of the notes its rows carried."""
    from attnprof.records import NOISY_IQR_RATIO

    timed, busy, noisy = timed_flags(frame)
    if not len(timed):
        return ""
    parts = []
    if busy.any():
        parts.append(f"{_were(int(busy.sum()))} timed while other processes kept cores busy (times may be inflated)")
    if noisy.any():
        verb = "is" if noisy.sum() == 1 else "are"
        parts.append(f"{int(noisy.sum())} {verb} noisy (interquartile range over {NOISY_IQR_RATIO:.0%} of the median)")
    if not parts:
        return ""
    worst = timed[busy | noisy]
    labels = ", ".join(sorted(set(worst["label"]))[:4]) + (", ..." if worst["label"].nunique() > 4 else "")
    cells = "the 1 timed cell" if len(timed) == 1 else f"{len(timed)} timed cells"
    return f"Of {cells}, {' and '.join(parts)}: {labels}. {then}"


def timed_flags(frame: pd.DataFrame) -> tuple:
    """(the ok rows with timing samples, which of them were timed on a busy machine, which are noisy). Samples:
    load_measurements' frames carry them, the dashboard's only their median."""
    from attnprof.trackers.host_contention import timed_while_busy

    if not len(frame):
        return frame, pd.Series(dtype=bool), pd.Series(dtype=bool)
    has_times = frame["times_ms"].map(len).gt(0) if "times_ms" in frame.columns else frame["median_ms"].notna()
    timed = frame[(frame["status"] == "ok") & has_times]
    if not len(timed):  # an accounting run: nothing timed (and an empty mask would select columns, not rows)
        return timed, pd.Series(dtype=bool), pd.Series(dtype=bool)
    return timed, timed["reason"].map(timed_while_busy).astype(bool), timed["noisy"].fillna(False).astype(bool)


def timing_flags(frame: pd.DataFrame) -> pd.Series:
    """Per row of `frame`: "" or why its time should not be trusted ("busy", "noisy" or "busy, noisy")."""
    timed, busy, noisy = timed_flags(frame)
    flags = pd.Series("", index=frame.index, dtype=object)
    if len(timed):
        flags.loc[timed.index] = [", ".join(w for w, on in (("busy", b), ("noisy", n)) if on) for b, n in zip(busy, noisy, strict=True)]
    return flags


def flagged_lengths(frame: pd.DataFrame) -> dict:
    """(label, *CONFIG[1:]) -> the lengths of that line's timed cells taken on a busy machine or noisy."""
    timed, busy, noisy = timed_flags(frame)
    if not len(timed):
        return {}
    flagged = timed[busy | noisy]
    return {keys: sorted(int(n) for n in group["seq_len"]) for keys, group in flagged.groupby(CONFIG, sort=False)}


def _were(count: int) -> str:
    return f"{count} {'was' if count == 1 else 'were'}"


def refuse_overlapping_runs(frame: pd.DataFrame, doing: str) -> None:
    """Cells of several runs are one set of cells to analyse or judge only when no cell is in two of them: two runs'
    samples of one cell were pooled into one fit (twice the points, as if one run), and a gate judged whichever
    came first. `doing`: the verb of the error ("analyse", "judge")."""
    from attnprof.errors import UsageError

    if "run_id" not in frame.columns or frame["run_id"].nunique() < 2:
        return
    cells = frame[[*CELL_KEY, "run_id"]].drop_duplicates()
    shared = cells[cells.duplicated(CELL_KEY, keep=False)]
    if len(shared):
        first = shared.iloc[0]
        runs = list(dict.fromkeys(shared[(shared[CELL_KEY] == first[CELL_KEY]).all(axis=1)]["run_id"]))
        raise UsageError(
            f"runs {' and '.join(runs[:2])} both measure {first['label']} N={first['seq_len']} (and maybe more): {doing} them one at a time"
        )


def input_bytes_per_token(config) -> float:
    """Bytes per token of what exists before a measured call and is not in its peak: q, k, v, and in fwd_bwd
    grad_out, each batch * heads * head_dim wide. `config`: a mapping with those keys, dtype and mode."""
    from attnprof.impls.base import DTYPE_BYTES

    tensors = 4 if config["mode"] == "fwd_bwd" else 3
    return float(tensors * config["batch"] * config["heads"] * config["head_dim"] * DTYPE_BYTES[config["dtype"]])


def output_bytes_per_token(config) -> float:
    """Bytes per token a measured call's peak holds at least: its output, and in fwd_bwd the gradients of q, k and v
    beside it (each batch * heads * head_dim wide): a frontier's floor under a fitted peak that grows slower."""
    from attnprof.impls.base import DTYPE_BYTES

    tensors = 4 if config["mode"] == "fwd_bwd" else 1
    return float(tensors * config["batch"] * config["heads"] * config["head_dim"] * DTYPE_BYTES[config["dtype"]])


def measured_boundaries(cells: pd.DataFrame) -> dict:
    """The lengths that ran out of memory and the (length, peak) of those that ran, to check a frontier against.
    Accounting runs (device meta) allocate nothing, so they have no OOM to say; their peaks are exact, and count,
    unless a fused kernel's analytic model gave them. The CPU's host-memory guard predicts an OOM from the free
    memory of the moment: a prediction, not a measurement, so it is no boundary."""
    ooms, ran = boundary_cells(cells)
    return {
        "oom_lengths": tuple(ooms["seq_len"]),
        "ok_points": tuple(zip(ran["seq_len"].tolist(), ran["peak_bytes"].tolist(), strict=True)),
    }


def boundary_cells(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(measured OOM rows, ok rows with a measured or exact peak): the rows a frontier is checked against."""
    from attnprof.failures import is_prediction

    ooms = cells[(cells["status"] == "oom") & (cells["device"] != "meta") & ~cells["reason"].map(is_prediction)]
    ran = cells[(cells["status"] == "ok") & cells["peak_bytes"].notna() & (cells["peak_source"] != "model")]
    return ooms, ran


FRONTIER_COLUMNS = [*CONFIG, "budget_bytes", "length", "length_low", "length_high", "kind", "consistent", "message"]


def boundaries_by_config(frame: pd.DataFrame) -> dict:
    """Configuration -> measured_boundaries of its cells, for every configuration at once (the same rules): per
    configuration, filtering the whole run by 8 keys made `fit` quadratic in the run's rows (68.8 of 105 s at 50k
    rows, an audit's profile)."""
    ooms, ran = boundary_cells(frame)
    found: dict = {}
    for key, lengths in ooms.groupby(CONFIG, sort=False)["seq_len"]:
        found.setdefault(key, {"oom_lengths": (), "ok_points": ()})["oom_lengths"] = tuple(lengths.tolist())
    for key, cells in ran.groupby(CONFIG, sort=False)[["seq_len", "peak_bytes"]]:
        points = tuple(zip(cells["seq_len"].tolist(), cells["peak_bytes"].tolist(), strict=True))
        found.setdefault(key, {"oom_lengths": (), "ok_points": ()})["ok_points"] = points
    return found


def frontier_table(
    frame: pd.DataFrame, fits: pd.DataFrame, budget_bytes: int | None, device_bytes: int | None = None, boundaries: dict | None = None
) -> pd.DataFrame:
    """The memory frontier of every configuration with a peak_bytes fit (FRONTIER_COLUMNS), checked against the
    lengths measured (`boundaries`: boundaries_by_config(frame), passed in when already computed)."""
    rows = []
    if budget_bytes is None or fits.empty:
        return pd.DataFrame(rows, columns=FRONTIER_COLUMNS)
    boundaries = boundaries_by_config(frame) if boundaries is None else boundaries
    for row in fits[(fits["metric"] == "peak_bytes") & fits["fit"].notna()].to_dict("records"):
        measured = boundaries.get(tuple(row[key] for key in CONFIG), {})
        inputs, outputs = input_bytes_per_token(row), output_bytes_per_token(row)
        found = memory_frontier(row["fit"], budget_bytes, input_bytes_per_token=inputs, output_bytes_per_token=outputs,
                                device_bytes=device_bytes, **measured)  # fmt: skip
        figures = {name: getattr(found, name) for name in ("length", "length_low", "length_high", "kind", "consistent", "message")}
        rows.append({**{k: row[k] for k in CONFIG}, "budget_bytes": budget_bytes, **figures})
    return pd.DataFrame(rows, columns=FRONTIER_COLUMNS)
