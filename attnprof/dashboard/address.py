"""The page's selection in its address: `?run=<id>&tab=<tab>&filters=<json>&metric=<metric>&a=<id>&b=<id>`, so that a
reload or a bookmark comes back to the same run, tab, ticked filters, scaling metric (a shared link to a memory plot
opened on time: a dashboard audit) and the Compare tab's two runs. A reload went back to the newest run and every filter ticked (a
dashboard audit): a researcher who reloaded after a new sweep started lost the comparison and landed on another run.
Pure: the callbacks write the address (`query`); the page load reads it back (`wanted`)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode, urlsplit

from attnprof.dashboard.views import AXES, METRICS


def query(run_id, tab, filters: dict | None, metric: str | None = None, compare=(None, None)) -> str:
    """The address's query for this selection ('' without a run); `compare`: the Compare tab's baseline and candidate."""
    if not run_id:
        return ""
    ticked = {axis: list(values) for axis, values in (filters or {}).items() if axis in AXES and values is not None}
    fields = {"run": run_id, "tab": tab or "", "filters": json.dumps(ticked, separators=(",", ":"))}
    picked = {key: run for key, run in zip(("a", "b"), compare or (None, None), strict=True) if isinstance(run, str) and run}
    return "?" + urlencode({**fields, **({"metric": metric} if metric in METRICS else {}), **picked})


def wanted(url: str | None) -> dict:
    """{'run', 'tab', 'filters', 'metric', 'a', 'b'} read back from a page address (each key only where the address has a usable
    value): a hand-edited or stale address gives what it can, never an error."""
    fields = parse_qs(urlsplit(url or "").query)
    found = {key: fields[key][0] for key in ("run", "tab", "a", "b") if fields.get(key) and fields[key][0]}
    if fields.get("metric") and fields["metric"][0] in METRICS:
        found["metric"] = fields["metric"][0]
    try:
        filters = json.loads(fields["filters"][0]) if fields.get("filters") else None
    except ValueError:
        filters = None
    if isinstance(filters, dict):
        found["filters"] = {axis: values for axis, values in filters.items() if axis in AXES and isinstance(values, list)}
    return found
