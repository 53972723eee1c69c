"""The dashboard's fits, computed once per data version, metric, configuration and the lengths it ran: every view
(scaling lines, exponents, crossovers, frontiers, Compare) asks here."""

from __future__ import annotations

import threading

import pandas as pd

from attnprof.analysis import CONFIG
from attnprof.dashboard import views


def fits(source, frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Fits of every configuration in `frame` (already filtered). Fitted once per data version, metric, configuration and
    the lengths it ran (ok) in the frame: choosing other impls or facets then costs no new fit. Keyed by the frame's
    lengths, Compare's fit of a configuration over the lengths both runs ran stood in the Exponents tab for the
    lengths the run itself measured (and the other way round)."""
    version = frame.attrs.get("version")
    if version is None or frame.empty:
        return views.fit_metric(frame, metric)
    lock, cache = source.memo(("fits", version, metric), lambda: (threading.Lock(), {}))
    ran = frame.loc[frame["status"] == "ok", [*CONFIG, "seq_len"]]
    lengths = {key: tuple(sorted(n.tolist())) for key, n in ran.groupby(CONFIG, sort=False)["seq_len"]}
    wanted = [(key, lengths.get(key, ())) for key in views.config_keys(frame)]
    with lock:  # a second request (or the warm-up thread) waits for these fits rather than repeating them
        missing = [key for key, used in wanted if (key, used) not in cache]
        if missing:
            subset = frame[pd.MultiIndex.from_frame(frame[CONFIG]).isin(missing)]
            fitted = {tuple(row[c] for c in CONFIG): row for row in views.fit_metric(subset, metric).to_dict("records")}
            for key in missing:  # configurations with no point at all: remember that too
                cache[key, lengths.get(key, ())] = fitted.get(key)
    rows = [cache[wanted_key] for wanted_key in wanted if cache.get(wanted_key) is not None]
    return pd.DataFrame(rows) if rows else views.fit_metric(frame.iloc[0:0], metric)
