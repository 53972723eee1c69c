"""Fits per group of a measurement DataFrame (pure): `fit.fit_power_laws` over the configurations, as rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnprof.fit import Fit, fit_power_laws

FIT_COLUMNS = tuple(name for name in Fit.__dataclass_fields__ if name != "metric")


def fit_frame(
    df: pd.DataFrame,
    metric_col: str,
    group_cols,
    *,
    length_col: str = "seq_len",
    min_length=None,
    spread_col: str | None = None,
    count_col: str | None = None,
) -> pd.DataFrame:
    """One row per group: the group's keys, `metric`, the Fit fields, the Fit itself (`fit`) and `error`.
    `spread_col`: each row's relative spread, when the metric column holds medians (fit_power_law's `spreads`);
    `count_col`, with it: how many samples each median is of (fit_power_law's `counts`).

    A group that cannot be fitted keeps its row, with `error` saying why and the fit fields empty.
    """
    group_cols = list(group_cols)
    missing = [c for c in (length_col, metric_col, *group_cols, *(c for c in (spread_col, count_col) if c)) if c not in df.columns]
    if missing:
        raise ValueError(f"fit_frame: column(s) {missing} not in the frame; it has {list(df.columns)}")
    lengths, values = df[length_col].to_numpy(), df[metric_col].to_numpy()
    spreads = None if spread_col is None else df[spread_col].to_numpy()
    counts = None if count_col is None else df[count_col].to_numpy()
    # Row positions per group as numpy arrays: slicing pandas group frames cost more than the fits themselves.
    if group_cols:
        positions = df.groupby(group_cols, dropna=False, sort=True).indices  # {key (tuple when several columns): positions}
        groups = [(keys if isinstance(keys, tuple) else (keys,), index) for keys, index in sorted(positions.items(), key=_group_order)]
    else:
        groups = [((), np.arange(len(df)))]
    series = [(lengths[index], values[index], *(None if x is None else x[index] for x in (spreads, counts))) for _, index in groups]
    fitted = fit_power_laws(series, min_length=min_length, metric=metric_col)  # together: shared overhead searches
    rows = [_fit_row(dict(zip(group_cols, keys, strict=True)), fit, metric_col) for (keys, _), fit in zip(groups, fitted, strict=True)]
    out = pd.DataFrame(rows, columns=[*group_cols, "metric", *FIT_COLUMNS, "fit", "error"])
    out.attrs["group_cols"] = tuple(group_cols)  # crossover_frame reads the configuration columns from here
    return out


def _group_order(item):
    """groupby's own order for the keys of `.indices` (which is a dict in hash order): sorted, NaN last."""
    keys = item[0] if isinstance(item[0], tuple) else (item[0],)
    return tuple((value != value, str(type(value)), value if value == value else 0) for value in keys)


def _fit_row(keys: dict, fit, metric_col: str) -> dict:
    if isinstance(fit, ValueError):
        return {**keys, "metric": metric_col, "fit": None, "error": str(fit)}
    fields = {name: getattr(fit, name) for name in FIT_COLUMNS}  # not asdict: its deep copies were 15% of a fit
    return {**keys, "metric": metric_col, **fields, "fit": fit, "error": None}
