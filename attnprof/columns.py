"""A run's measurements as typed columns (numpy arrays), and the compact snapshot of them the store keeps.

Readers of many rows (the dashboard) want columns, and SQLite gives rows: turning 50,000 rows of 30 columns into
Python values costs about 0.25 s before pandas sees them, however the query is written (measured: per-column
queries, `group_concat` and `json_group_array` were all slower). So when a run ends the store also keeps its
columns as one snapshot blob, which decodes in a few tens of milliseconds; `Store.frame` uses it while it still
matches the run's rows and reads the rows otherwise.

The snapshot is an `.npz` archive read with `allow_pickle=False`: numbers as float64/int64 arrays, each text
column as int32 codes into an array of its distinct values (code -1 = NULL). Nothing in it is executed, so a
database from elsewhere is as safe to open as before.
"""

from __future__ import annotations

import io
import json

import numpy as np

from attnprof.errors import UsageError
from attnprof.impls.base import typed_options

TEXT = ("label", "impl", "options", "dtype", "device", "mode", "status", "reason", "peak_source", "flops_source")
INTEGER = ("seq_len", "batch", "heads", "head_dim", "seed")  # always present (case columns)
FLAG = ("causal",)
NUMBER = (
    "peak_bytes", "peak_alloc_bytes", "peak_reserved_bytes", "peak_device_bytes", "peak_rss_bytes", "peak_live_bytes",
    "flops", "min_bytes", "energy_j", "check_error", "fidelity_error", "wall_s", "median_ms", "p20_ms", "p80_ms", "iqr_ms",
)  # fmt: skip  # float64, NaN where the database has NULL
MAYBE_FLAG = ("noisy",)  # True, False or None
COLUMNS = (
    "id", "label", "impl", "options", "seq_len", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode", "seed",
    "status", "reason", "peak_bytes", "peak_source", "peak_alloc_bytes", "peak_reserved_bytes", "peak_device_bytes",
    "peak_rss_bytes", "peak_live_bytes", "flops", "flops_source", "min_bytes", "energy_j", "check_error", "fidelity_error",
    "wall_s", "median_ms", "p20_ms", "p80_ms", "iqr_ms", "noisy",
)  # fmt: skip  # the stored columns but the raw samples, in the table's order; "id" becomes the frame's index
FORMAT = 1  # bumped when the snapshot layout changes: older snapshots are then ignored (rows read instead) until
# their run ends again, so a bump wants a schema migration that rebuilds them (store._add_run_columns does)


def from_rows(rows: list[tuple]) -> dict[str, np.ndarray]:
    """SELECT-ed rows (values in COLUMNS order) -> typed columns: text as object arrays (None for NULL), numbers
    as float64 (NaN for NULL), integers as int64, flags as bool, maybe-flags as float64 (1, 0, NaN)."""
    values = list(zip(*rows, strict=True)) if rows else [()] * len(COLUMNS)
    columns = {}
    for name, column in zip(COLUMNS, values, strict=True):
        if name in TEXT:
            columns[name] = np.array(column, dtype=object)
        elif name in FLAG:
            columns[name] = np.array(column, dtype=bool)
        else:
            columns[name] = _numbers(column, float if name in (*NUMBER, *MAYBE_FLAG) else np.int64)  # NULL -> NaN
    return columns


def _numbers(column: tuple, dtype) -> np.ndarray:
    """A number column; where a value is NULL in an integer column, or text (a row written by hand or by another
    tool), the column becomes float64 with NaN there, as pandas' own readers would have it."""
    try:
        return np.array(column, dtype=dtype)
    except (TypeError, ValueError):
        import pandas as pd

        return pd.to_numeric(pd.Series(column, dtype=object), errors="coerce").to_numpy(dtype=float)


def encode(columns: dict[str, np.ndarray]) -> bytes:
    """The snapshot blob of typed columns (from_rows' form)."""
    import pandas as pd

    arrays = {"format": np.array(FORMAT)}
    for name, column in columns.items():
        if name in TEXT:
            codes, distinct = pd.factorize(column, use_na_sentinel=True)  # hashing: ~2 ms a column at 50,000 rows
            arrays[f"{name}.codes"] = codes.astype(np.int32)
            arrays[f"{name}.values"] = np.array(distinct, dtype=str)  # fixed-width unicode: no pickle needed
        else:
            arrays[name] = column
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def decode(blob: bytes) -> dict[str, np.ndarray] | None:
    """Typed columns from a snapshot blob; None when the blob has another format or lacks a column."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        if "format" not in archive.files or int(archive["format"]) != FORMAT:
            return None
        columns = {}
        for name in COLUMNS:
            if name in TEXT:
                if f"{name}.codes" not in archive.files:
                    return None
                distinct = np.append(archive[f"{name}.values"].astype(object), None)  # code -1 takes the last: None
                columns[name] = distinct.take(archive[f"{name}.codes"])
            elif name in archive.files:
                columns[name] = archive[name]
            else:
                return None
    return columns


def decode_stored(text, what: str):
    """JSON text read from the database; a damaged record is bad input naming it (one line, exit 2), not a traceback."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as error:
        raise UsageError(f"the database is damaged: {what} is not valid JSON ({error})") from None


def to_frame(columns: dict[str, np.ndarray]):
    """Typed columns -> the pandas DataFrame `Store.frame` returns: indexed by row id, `options` decoded to dicts
    of typed values (impls.base.typed_options; one dict per distinct options text, shared by its rows: treat them as
    read-only), `noisy` as True, False or None."""
    import pandas as pd

    data = dict(columns)
    index = pd.Index(data.pop("id"), name="id")
    codes, distinct = pd.factorize(data["options"])
    decoded = [typed_options(decode_stored(text, f"the options {text!r}")) for text in distinct]
    decoded = np.array([*decoded, None], dtype=object)  # -1 (NULL): None
    data["options"] = decoded.take(codes)
    noisy = data["noisy"]  # Python bools, not numpy's: views test `noisy is True`
    data["noisy"] = np.array([None, False, True], dtype=object).take(np.where(np.isnan(noisy), 0, np.where(noisy == 1, 2, 1)))
    # Text as object columns whatever pandas infers (3.x would pick "str" unless a column is all NULL), so that
    # frames read at different times, or from the rows and from a snapshot, concatenate without changing dtype.
    series = {name: pd.Series(data[name], index=index, dtype=object if name in TEXT else None, copy=False) for name in COLUMNS[1:]}
    return pd.DataFrame(series, index=index, copy=False)
