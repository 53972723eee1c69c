"""One flat record per measurement: the shape of `export`, `show --format json|csv` and the DataFrame API."""

from __future__ import annotations

import csv
import json
import textwrap
from collections.abc import Iterable
from typing import TextIO

from attnprof.impls.base import typed_options
from attnprof.records import Measurement, time_stats

EXPORT_KEYS = (
    "run_id", "impl", "label", "options", "seq_len", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode",
    "seed", "status", "reason", "median_ms", "p20_ms", "p80_ms", "iqr_ms", "noisy", "times_ms", "peak_bytes",
    "peak_source", "peak_alloc_bytes", "peak_reserved_bytes", "peak_device_bytes", "peak_rss_bytes", "peak_live_bytes",
    "flops", "flops_source", "min_bytes", "tflops", "gbps", "energy_j", "check_error", "fidelity_error", "wall_s",
)  # fmt: skip


def measurement_record(run_id: str, m: Measurement) -> dict:
    case = m.case
    stats = time_stats(m.times_ms)
    median_s = stats["median_ms"] / 1e3 if stats["median_ms"] else None
    record = {
        "run_id": run_id,
        **case.to_dict(),
        "options": typed_options(dict(case.options)),
        "label": case.label,
        "status": m.status.value,
        "reason": m.reason,
        **stats,
        "times_ms": list(m.times_ms),
        "tflops": m.flops / median_s / 1e12 if m.flops and median_s else None,
        "gbps": m.min_bytes / median_s / 1e9 if m.min_bytes and median_s else None,
    }
    for key in EXPORT_KEYS:
        if key not in record:
            record[key] = getattr(m, key)
    return {key: record[key] for key in EXPORT_KEYS}


def measurements_frame(run_id: str, measurements: list[Measurement]):
    """The export records as a DataFrame, values as stored (a missing number is None): what export writes."""
    import pandas as pd

    return pd.DataFrame([measurement_record(run_id, m) for m in measurements], columns=list(EXPORT_KEYS))


NUMERIC = (
    "peak_bytes", "peak_alloc_bytes", "peak_reserved_bytes", "peak_device_bytes", "peak_rss_bytes", "peak_live_bytes",
    "flops", "min_bytes", "energy_j", "check_error", "fidelity_error", "wall_s",
)  # fmt: skip
DERIVED = ("median_ms", "p20_ms", "p80_ms", "iqr_ms", "tflops", "gbps")


def numeric_frame(frame):
    """The number columns as floats, a missing value as NaN (`export.measurements_frame` has None there, which
    pandas cannot compare): the form every view expects."""
    import pandas as pd

    columns = [c for c in (*NUMERIC, *DERIVED) if c in frame.columns]
    return frame.assign(**{c: pd.to_numeric(frame[c], errors="coerce").astype(float) for c in columns})


def write_records(records: Iterable[dict], output_format: str, stream: TextIO) -> int:
    """Write `records` to a text stream one at a time, as jsonl, csv or one JSON array (what `json.load` and `jq`
    expect of a .json file; the same text as json.dumps(list, indent=1)); returns how many. Memory stays one
    record's: `export` of a 50,000-cell run held 394 MB (jsonl) to 631 MB (json) when it built the text first."""
    writer = csv.DictWriter(stream, fieldnames=list(EXPORT_KEYS)) if output_format == "csv" else None
    if writer:
        writer.writeheader()
    elif output_format == "json":
        stream.write("[")
    count = 0
    for count, record in enumerate(records, start=1):
        if writer:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in record.items()})
        elif output_format == "json":  # one level into the array: each record's lines one space further in
            stream.write(("," if count > 1 else "") + "\n" + textwrap.indent(json.dumps(record, default=str, indent=1), " "))
        else:
            stream.write(json.dumps(record, default=str) + "\n")
    if output_format == "json":
        stream.write("\n]\n" if count else "]\n")
    return count
