"""The Run info view: environment, sweep definition, and the command that reproduces the run. Pure."""

from __future__ import annotations

import os
import shlex

from attnprof.fit import format_length
from attnprof.records import RunInfo

SWEEP_FLAGS = (("batch", "--batch"), ("heads", "--heads"), ("head_dim", "--head-dim"), ("dtype", "--dtype"), ("device", "--device"))


def run_name(run: RunInfo) -> str:
    """'<id> (<name>)', or the id of a run without a name: how the notes of fit and compare name a run."""
    return f"{run.run_id} ({run.name})" if run.name else run.run_id


def absolute(db) -> str:
    """The database's path as a command to be run elsewhere needs it: `report --db rep/a.db`, run from /tmp, wrote a
    path relative to the reporter's folder into the report's commands (a report audit)."""
    from pathlib import Path

    return str(Path(db).absolute())


def unfinished_note(run: RunInfo, measured: int, db) -> str:
    """'' for a complete run; else how much of it there is and the command that measures the rest."""
    if run.state == "complete":
        return ""
    from attnprof.spec import Sweep

    try:
        of_planned = f" of {len(Sweep.from_dict(run.sweep).cases())}"
    except (KeyError, TypeError, ValueError):  # a stored definition this version cannot read: the count alone
        of_planned = ""
    state = "interrupted" if run.state == "interrupted" else f"{run.state} (still measuring, or its process was killed)"
    from attnprof.resuming import pending_retry

    resume = resume_command(run.run_id, db, run.env.get("plugins") or (), ",".join(pending_retry(run)), run.env.get("plugin_path") or ())
    return f"{state}: {measured}{of_planned} cases, the rest with {resume}"


def resume_command(run_id: str, db, plugins=(), retry: str = "", plugin_path=()) -> str:
    """The command that measures the rest of run `run_id`, with the plugin modules its impls came from: without them
    the resume is refused ("resume it with ATTNPROF_PLUGINS=..."), which the command printed at a stop left out."""
    command = shlex.join(["attnprof", "sweep", "--resume", run_id, *(["--retry", retry] if retry else []), "--db", absolute(db)])
    return plugin_prefix(plugins, plugin_path) + command


def plugin_prefix(plugins, plugin_path=()) -> str:
    """'PYTHONPATH=... ATTNPROF_PLUGINS=... ' a printed command of a plugin run needs (env.plugin_folders), or ''."""
    if not plugins:
        return ""
    folders = f"PYTHONPATH={shlex.quote(os.pathsep.join(plugin_path))} " if plugin_path else ""
    return f"{folders}ATTNPROF_PLUGINS={shlex.quote(','.join(plugins))} "


def reproduce_command(run: RunInfo, db=None) -> str:
    """The command that measures the run's sweep again: rebuilt from its resolved definition, so that the devices,
    dtypes and lengths it ran with are pinned, with the database it is in (`db`). The command line as typed left them
    to the machine's defaults: a CPU run's "reproduction" measured cuda and bfloat16 on a GPU machine, into
    reports/attnprof.db (a dashboard audit's). Older runs, whose definition lacks them, show the command stored. With
    the plugin modules its impls came from, which the command line alone did not name."""
    resolved = bool(run.sweep.get("device") and run.sweep.get("dtype"))
    command = rebuilt_command(run.sweep) if resolved or not run.command else run.command
    if resolved and db is not None:
        command += " " + shlex.join(["--db", absolute(db)])
    return plugin_prefix(run.env.get("plugins") or [], run.env.get("plugin_path") or ()) + command


def rebuilt_command(sweep: dict) -> str:
    parts = ["attnprof", "sweep"]
    if sweep.get("impls"):
        parts += [
            "--impl",
            ",".join(_impl_token(name, options) for name, options in sweep.get("impl_specs") or [[i, {}] for i in sweep["impls"]]),
        ]
    if sweep.get("lengths"):
        parts += ["--lengths", ",".join(format_length(n) for n in sweep["lengths"])]
    for key, flag in SWEEP_FLAGS:
        if sweep.get(key):
            parts += [flag, ",".join(map(str, sweep[key]))]
    parts += _causal_and_mode(sweep)
    timing = () if sweep.get("accounting") else (("warmup_ms", "--warmup-ms"), ("rep_ms", "--rep-ms"))  # refused there: nothing is timed
    for key, flag in (*timing, ("timeout", "--timeout"), ("seed", "--seed")):
        if sweep.get(key) is not None:
            parts += [flag, _number(sweep[key])]
    if sweep.get("name"):
        parts += ["--name", sweep["name"]]
    if sweep.get("accounting"):
        parts.append("--accounting")
    return shlex.join(parts)


def _impl_token(name: str, options: dict) -> str:
    return name + (":" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) if options else "")


def _causal_and_mode(sweep: dict) -> list[str]:
    parts = []
    causal = set(sweep.get("causal") or ())
    if causal:
        parts += ["--causal", "both" if len(causal) == 2 else ("yes" if True in causal else "no")]
    if sweep.get("mode"):
        parts += ["--mode", ",".join(m.replace("_", "-") for m in sweep["mode"])]
    return parts


def _number(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def info_rows(run: RunInfo, count: int, statuses: dict) -> list[dict]:
    """(field, value) rows for the run itself: id, name, time, state, cases by status, tool version."""
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items(), key=lambda item: -item[1])) or "none yet"
    return [
        {"field": "run", "value": run.run_id},
        {"field": "name", "value": run.name or "-"},
        {"field": "created", "value": run.created_at},
        {"field": "state", "value": run.state},
        {"field": "cases", "value": f"{count} ({by_status})"},
        {"field": "attnprof", "value": run.tool_version},
    ]


def mapping_rows(mapping: dict, skip=()) -> list[dict]:
    """A dict as (field, value) rows, lists joined, for the environment and sweep tables."""
    from attnprof.table import format_bytes

    rows = []
    for key, value in mapping.items():
        if key in skip:
            continue
        text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else "-" if value is None else str(value)
        if key.endswith("_bytes") and isinstance(value, int) and not isinstance(value, bool):  # host_memory_bytes read 25276502016
            text = f"{format_bytes(value)} ({value:,} bytes)"
        rows.append({"field": key, "value": text})
    return rows
