"""`attnprof report`: one self-contained HTML file per run (plotly.js inline, so it opens offline and can be
attached to an issue or a CI artifact), with the dashboard's scaling, exponent, coverage and roofline views and the
run info. Optionally the figures as PNG files, through kaleido, an optional extra (`pip install 'attnprof[png]'`).
"""

from __future__ import annotations

import html
import importlib.util
import math
import os
from pathlib import Path

from attnprof.errors import UsageError, make_folder, path_argument
from attnprof.fit import format_length
from attnprof.gate_rules import bytes_or_none

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1280px; color: #222; font-size: 14px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
pre { background: #f4f4f4; padding: 8px; white-space: pre-wrap; } .note { color: #8a4b00; }
"""


def write_report(run: str = "latest", db=None, out=None, png_dir=None, only=(), budget=None) -> tuple[Path, list[Path]]:
    """Write the report of `run` (id, prefix or `latest`) to `out` (default reports/<run_id>.html); with `png_dir`,
    each figure as PNG too; `only`: "axis=value[,value]" texts choosing the slice shown (default: the dashboard's,
    the first dtype, device, batch, heads and head dim); `budget`: the memory frontier's, in bytes or as "80GiB"
    (default: the run's device memory, else env.DEFAULT_BUDGET, as `attnprof fit`). Returns (html path, png paths).
    Raises UsageError for a bad run, database, path, slice or budget."""
    from attnprof.api import default_db
    from attnprof.dashboard.data import SnapshotSource

    out = None if out is None else path_argument(out, "out")
    png_dir = None if png_dir is None else path_argument(png_dir, "png_dir")
    if png_dir is not None and importlib.util.find_spec("kaleido") is None:
        raise UsageError("--png needs kaleido, which is not installed: pip install 'attnprof[png]' (kaleido also needs a Chromium)")
    only = (only,) if isinstance(only, str) else tuple(only)  # one "dtype=float32" was read a character at a time
    budget_bytes = bytes_or_none(budget, "budget")
    source = SnapshotSource(db or default_db())  # one read of the run for every section
    info = source.run(run)
    figures, body = report_sections(source, info.run_id, only, budget_bytes)
    path = Path(out) if out else Path("reports") / f"{info.run_id}.html"
    _write(path, _page(info.run_id, body))
    return path, (_write_pngs(figures, Path(png_dir), info.run_id) if png_dir is not None else [])


def report_figures(run: str = "latest", db=None, only=(), budget=None) -> dict:
    """The report's figures of `run` as plotly Figures, by name (scaling-time, scaling-peak_bytes, exponents,
    crossovers (time's; an accounting run's peak_bytes'), crossovers-<metric> for the other metrics measured, frontier,
    coverage, roofline; an accounting run's scaling-flops for time), to show in a notebook or
    restyle: `only` and `budget` as write_report takes them. A notebook had them only through private functions."""
    from attnprof.api import default_db
    from attnprof.dashboard.data import SnapshotSource

    only = (only,) if isinstance(only, str) else tuple(only)
    source = SnapshotSource(db or default_db())
    return report_sections(source, source.run(run).run_id, only, bytes_or_none(budget, "budget"))[0]


def _budget_origin(budget_bytes, device_bytes) -> str:
    """Where the frontier's budget came from, as `attnprof fit` says it in its heading."""
    from attnprof.env import DEFAULT_BUDGET_SAID

    if budget_bytes is not None:
        return "Budget from --budget."
    if device_bytes:
        return "Budget: the run's device memory (a CPU run's: the host's RAM); --budget sets another."
    return f"Budget: {DEFAULT_BUDGET_SAID}."


def report_sections(source, run_id: str, only=(), budget_bytes: int | None = None) -> tuple[dict, str]:
    """(name -> figure, HTML body) of a run, with the dashboard's default filters (narrowed or widened by `only`)
    and facets; the memory frontier at budget_bytes (default: the dashboard's, the run's device memory or
    env.DEFAULT_BUDGET)."""
    from attnprof.dashboard import pages, views

    frame = source.frame(run_id)
    # the planned cells too, as the dashboard's filters have them: a running run's unmeasured cells read as missing
    options, defaults = pages.axis_choices(frame, pages.planned(source, run_id, frame))
    filters, facets = {**defaults, **slice_filters(only, options)}, views.default_facets(frame)
    figures, notes = {}, {}
    budget = pages.default_budget_log2(source, run_id) if budget_bytes is None else math.log2(budget_bytes)
    notes["frontier"] = _budget_origin(budget_bytes, pages.device_memory(source, run_id))
    crossing = pages.usable_metric(source, run_id, "time", views.EXPONENT_METRICS)
    # Timed runs: time and memory. Accounting runs have no times (their report opened on an empty time chart): memory
    # and FLOPs, both exact there.
    has = pages.metrics_with_values(source, run_id)
    for metric in [m for m in (("time", "peak_bytes") if "time" in has else ("peak_bytes", "flops")) if m in has] or ["peak_bytes"]:
        figures[f"scaling-{metric}"], notes[f"scaling-{metric}"] = pages.scaling(source, run_id, filters, metric, facets)
    table, figures["exponents"], figures["crossovers"], frontier, notes["exponents"] = pages.exponents(
        source, run_id, filters, crossing, budget
    )
    # the other metrics' crossovers too, as `attnprof fit` lists them: the report drew time's alone (an analysis audit)
    for metric in [m for m in views.EXPONENT_METRICS if m != crossing and m in has]:
        figures[f"crossovers-{metric}"] = pages.crossovers(source, run_id, filters, metric)  # from the fits kept above
    figures["frontier"] = frontier
    figures["coverage"], notes["coverage"] = pages.coverage(source, run_id, filters)
    figures["roofline"], notes["roofline"] = pages.roofline(source, run_id, filters, None, None)
    return figures, _body(source, run_id, frame, (options, filters), figures, notes, table)


def _body(source, run_id, frame, choices, figures, notes, table) -> str:
    from attnprof.dashboard import pages, views
    from attnprof.dashboard.runinfo import unfinished_note

    rows, env, sweep, command = pages.run_info(source, run_id)
    unfinished = unfinished_note(source.run(run_id), len(frame), source.path)  # a partial run must not read as the whole
    parts = [f"<h1>attnprof report: run {html.escape(run_id)}</h1>", _note(f"This run is {unfinished}." if unfinished else None)]
    parts += [_selection(*choices, views)]
    parts += ["<h2>Scaling</h2>"] + [_figure(figures[k], notes.get(k)) for k in figures if k.startswith("scaling-")]
    parts += ["<h2>Exponents</h2>", _note(notes["exponents"]), _table(table), _figure(figures["exponents"])]
    parts += [
        "<h3>Crossovers</h3>",
        _figure(figures["crossovers"]),
        *(_figure(figures[k]) for k in figures if k.startswith("crossovers-")),
        "<h3>Memory frontier</h3>",
        _figure(figures["frontier"], notes["frontier"]),
    ]
    parts += ["<h2>Coverage</h2>", _figure(figures["coverage"], notes["coverage"])]
    failed = failure_rows(frame)
    parts += ["<h3>Cells not measured ok</h3>", _note(failed[1]), _table(failed[0])] if failed[0] else []
    parts += ["<h2>Roofline</h2>", _figure(figures["roofline"], notes["roofline"])]
    parts += ["<h2>Run info</h2>", _table(rows), "<h3>Reproduce</h3>", f"<pre>{html.escape(command)}</pre>"]
    parts += ["<h3>Environment</h3>", _table(env), "<h3>Sweep</h3>", _table(sweep)]
    return "\n".join(parts)


FAILURES_LISTED = 500  # rows of the failures table; the rest are counted


def failure_rows(frame) -> tuple[list[dict], str]:
    """Every cell of the run that is not ok, with its status and reason, as text (and a note when some are left out):
    the reasons were only in the plots' hover text, lost in a printed, PDF or PNG copy (a report audit)."""
    if not len(frame):
        return [], ""
    failed = frame[frame["status"] != "ok"].sort_values(["label", "causal", "mode", "dtype", "batch", "heads", "head_dim", "seq_len"])
    rows = [
        {"impl": r.label, "N": format_length(r.seq_len), "B": r.batch, "H": r.heads, "D": r.head_dim, "dtype": r.dtype, "device": r.device,
         "causal": "causal" if r.causal else "bidir", "mode": r.mode, "status": r.status, "reason": r.reason}
        for r in failed.head(FAILURES_LISTED).itertuples()
    ]  # fmt: skip
    more = len(failed) - len(rows)
    return rows, (f"The first {len(rows)} of {len(failed)}: `attnprof show` lists them all." if more > 0 else "")


def slice_filters(only, options: dict) -> dict:
    """`dtype=float32`, `heads=2,4`, `impl=softmax` (the label axis), `causal=yes` -> {axis: [values]}; a value the
    run lacks is bad input naming what it has."""
    filters = {}
    for text in only:
        axis, sep, listed = str(text).partition("=")
        axis = {"impl": "label", "n": "seq_len", "length": "seq_len"}.get(axis.strip(), axis.strip())
        if not sep or axis not in options:
            raise UsageError(f"bad --only {text!r}: expected AXIS=VALUE[,VALUE] with AXIS one of impl, {', '.join(list(options)[1:])}")
        spelled = {_spelling(value): value for value in options[axis]}
        chosen = []
        for raw in _slice_values(axis, _measured_within(text, listed, options[axis]) if axis == "seq_len" else listed):
            key = _spelled_as_stored(axis, raw)
            if key not in spelled:
                shown = {"label": "impl"}.get(axis, axis)
                given = format_length(int(raw)) if axis == "seq_len" else raw  # as typed: 3k, not 3072
                raise UsageError(f"bad --only {text!r}: the run has {shown} {', '.join(spelled)}, not {given!r}")
            chosen.append(spelled[key])
        if not chosen:
            raise UsageError(f"bad --only {text!r}: no value given")
        filters[axis] = chosen
    return filters


def _measured_within(text: str, listed: str, measured) -> str:
    """`listed` lengths with each range (`1k..8k`, no step given) replaced by the measured lengths within it: the
    README's `seq_len=1k..8k` was refused on the CPU's default 256..4k run, which has no 8k (a README audit). A range
    the run has no length within is bad input naming what it has."""
    from attnprof.spec import parse_lengths

    parts = []
    for part in (p.strip() for p in listed.split(",") if p.strip()):
        if ".." not in part or ":" in part:  # a value, or a range with its own step: those values, each checked
            parts.append(part)
            continue
        wanted = parse_lengths(part)
        inside = [str(n) for n in sorted(measured) if min(wanted) <= n <= max(wanted)]
        if not inside:
            have = ", ".join(format_length(n) for n in sorted(measured))
            raise UsageError(f"bad --only {text!r}: the run has seq_len {have}, none within {part}")
        parts += inside
    return ",".join(parts)


def _slice_values(axis: str, listed: str) -> list[str]:
    """The values of one --only, spelled as the run's values are: lengths in the sweep's grammar (`1k`, `1k..4k`),
    impls also as --impl takes them (`nystromformer:num_landmarks=32`, whose commas separate options)."""
    from attnprof.api import impl_labels
    from attnprof.spec import parse_lengths

    if axis == "seq_len":
        return [str(n) for n in parse_lengths(listed)] if listed.strip() else []
    if axis == "label" and ":" in listed:
        return impl_labels(listed)
    return [v.strip() for v in listed.split(",") if v.strip()]


def _spelled_as_stored(axis: str, raw: str) -> str:
    """causal yes/no/true/false as causal/bidir; a mode as --mode takes it (fwd-bwd) as stored (fwd_bwd)."""
    if axis == "causal":
        return {"yes": "causal", "true": "causal", "no": "bidir", "false": "bidir"}.get(raw.lower(), raw)
    return raw.lower().replace("-", "_") if axis == "mode" else raw


def _spelling(value) -> str:
    return ("causal" if value else "bidir") if isinstance(value, bool) else str(value)


def _selection(options, filters, views) -> str:
    """Which values of the axes with several values the figures show (the defaults narrow some to one)."""
    narrowed = [f"{axis} = {', '.join(map(str, filters[axis]))} (of {', '.join(map(str, options[axis]))})"
                for axis in views.AXES if len(filters[axis]) < len(options[axis])]  # fmt: skip
    if not narrowed:
        return "<p>Every cell measured in the run is shown.</p>"
    return (
        "<p class='note'>Figures show "
        + html.escape("; ".join(narrowed))
        + ". The dashboard (`attnprof serve`), or `attnprof report --only AXIS=VALUES`, shows the rest.</p>"
    )


def _figure(figure, note: str | None = None) -> str:
    return _note(note) + figure.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _note(text: str | None) -> str:
    return f"<p class='note'>{html.escape(text)}</p>" if text else ""


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>-</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if r.get(c) is None else str(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(run_id: str, body: str) -> str:
    from plotly.offline import get_plotlyjs

    title = f"attnprof report {html.escape(run_id)}"
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>\n"
            f"<script type='text/javascript'>{get_plotlyjs()}</script>\n</head><body>\n{body}\n</body></html>\n")  # fmt: skip


def _write(path: Path, text: str) -> None:
    make_folder(path.parent, f"the report to {str(path)!r}")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot write the report to {str(path)!r}: {error.strerror}") from None


def _write_pngs(figures: dict, folder: Path, run_id: str) -> list[Path]:
    make_folder(folder, f"the PNG folder {str(folder)!r}")
    import plotly.io

    paths = [folder / f"{run_id}-{name}.png" for name in figures]
    try:
        # one Chromium for all the figures: figure.write_image started one a figure (report_png's test, 7 figures:
        # 27.7 s that way)
        plotly.io.write_images(list(figures.values()), paths, width=PNG_WIDTH, height=[png_height(f) for f in figures.values()])
    except Exception as error:  # noqa: BLE001  (kaleido fails in many ways: no Chromium, sandbox, ...)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]  # kaleido's message starts with blank lines
        reason = lines[0] if lines else type(error).__name__
        browser = os.environ.get("BROWSER_PATH")
        chosen = f" (BROWSER_PATH is {browser!r})" if browser else ""
        raise UsageError(f"kaleido could not write the PNG files in {str(folder)!r}: {reason}{chosen}") from None
    return paths


PNG_WIDTH, PNG_MIN_HEIGHT = 1200, 500
LEGEND_ENTRY_PX, LEGEND_GROUP_GAP_PX, LEGEND_PAD_PX = 20, 10, 20  # plotly.js at its 12 px font; tracegroupgap's default


def png_height(figure) -> int:
    """A PNG's height: the figure's own, or taller where its legend needs it. A static image cannot scroll the
    legend, and at the figure's height the scaling figures of the default sweep cut off their last lines (29
    entries in 10 groups against 500 px: 810 px now). Entries: named traces not hidden from the legend, and
    shapes shown in it. plotly.js puts a gap after each legend group and, once there is a group, after each
    ungrouped entry; the legend runs from the top margin to the bottom margin (plotly's defaults: 100, 80)."""
    layout = figure.layout
    entries = [t for t in figure.data if t.showlegend is not False and t.name]
    entries += [s for s in layout.shapes or () if getattr(s, "showlegend", None)]
    named = {getattr(e, "legendgroup", None) or None for e in entries} - {None}
    gaps = len(named) + sum(1 for e in entries if not getattr(e, "legendgroup", None)) if named else 1
    margin = layout.margin
    legend = (100 if margin.t is None else margin.t) + (80 if margin.b is None else margin.b) + LEGEND_PAD_PX
    legend += LEGEND_ENTRY_PX * (len(entries) + bool(layout.legend.title.text)) + LEGEND_GROUP_GAP_PX * gaps
    return max(PNG_MIN_HEIGHT, int(layout.height or 0), legend if len(entries) > 1 or layout.showlegend else 0)
