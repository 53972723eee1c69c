"""The run pickers: the header's runs list, newest first, with the database's state for the live refresh, and the
Compare tab's two runs."""

from __future__ import annotations

import json

from attnprof.dashboard.pages import failure_text


def runs_state(source) -> tuple[list[dict], str, str]:
    """(run picker options newest first, message, signature of the database's state for the live refresh)."""
    try:
        runs = source.runs()
    except Exception as error:  # noqa: BLE001  (any failure becomes the page's message)
        return [], failure_text(error), f"error:{error}"
    if not runs:
        return [], f"No runs in {str(source.path)!r} yet: start one with `attnprof sweep --db {source.path}`.", "empty"
    options = [{"label": run_label(r), "value": r.info.run_id} for r in runs]
    signature = json.dumps([[r.info.run_id, r.info.state, r.count] for r in runs])
    return options, "", signature


def run_label(summary) -> str:
    info = summary.info
    device = info.env.get("gpu_name") or ",".join(info.sweep.get("device", [])) or "?"
    name = f" {info.name}" if info.name else ""
    return f"{info.run_id}{name} · {info.state} · {summary.count} cells · {device}"


def pick(options: list[dict], current, position: int = 0):
    """Keep the current choice while it exists; otherwise the option at `position` (0: newest run)."""
    values = [o["value"] for o in options]
    if current in values:
        return current
    return values[min(position, len(values) - 1)] if values else None


def compare_picks(options: list[dict], picked, run_a, run_b) -> tuple:
    """(baseline, candidate) of the Compare tab: the choices made while they exist; else the run picked in the header
    against the run before it (the one after it, where the picked run is the oldest). The two newest runs were shown
    whatever run the page was opened on."""
    values = [o["value"] for o in options]
    at = values.index(picked) if picked in values else 0
    older, newer = (at + 1, at) if at + 1 < len(values) else (at, max(at - 1, 0))
    return pick(options, run_a, older), pick(options, run_b, newer)
