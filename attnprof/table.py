"""The summary table, impl x length (median time and peak memory, or the status): the only text formatting."""

from __future__ import annotations

import re

from attnprof.records import NOISY_IQR_RATIO, Measurement, Status, time_stats

AXES = ("batch", "heads", "head_dim", "dtype", "device", "causal", "mode")


BYTE_UNITS = (("EiB", 1024**6), ("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def format_bytes(value: int | None) -> str:
    """In the largest binary unit it reaches, one decimal; a value that rounds to 1024.0 of a unit is written as 1.0 of
    the next (1,048,575 bytes read '1024.0 KiB'). Only then: 1000 MiB stays '1000.0 MiB', so a bound of 1000 MiB and
    a peak 1% over it do not both read '1.0 GiB'."""
    if value is None:
        return "-"
    for index, (unit, size) in enumerate(BYTE_UNITS):
        if abs(value) >= size:
            if index and f"{abs(value) / size:.1f}" == "1024.0":
                unit, size = BYTE_UNITS[index - 1]
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def format_ms(value: float | None) -> str:
    """3 significant figures, in s from 999.5 ms on (999.7 ms read '1e+03 ms')."""
    if value is None:
        return "-"
    return f"{value:.3g} ms" if abs(value) < 999.5 else f"{value / 1000:.3g} s"


PEAK_SOURCES = {  # records.Measurement.peak_source, as a table's title says what its peaks are
    "allocator": "allocator peak",
    "live_tensors": "live tensors",
    "accounting": "accounted live tensors",
    "model": "modelled",
}


def peak_sources_text(measurements) -> str:
    """': allocator peak': which figure the table's peaks are ("peak memory" alone did not say it is the allocator's,
    not the process RSS); '' when no row has a peak."""
    sources = sorted({m.peak_source for m in measurements if m.peak_bytes is not None and m.peak_source})
    return f": {', '.join(PEAK_SOURCES.get(source, source) for source in sources)}" if sources else ""


NOISY_MARK = "~"  # before a median whose samples are noisy (records.NOISY_IQR_RATIO); marks_note explains it
BUSY_MARK = "!"  # before a median timed while other processes kept cores busy; marks_note explains it too


def cell_text(m: Measurement, separator: str = " / ") -> str:
    if m.status != Status.OK:
        return m.status.value
    marks = (BUSY_MARK if _busy(m) else "") + (NOISY_MARK if _noisy(m) else "")
    parts = [marks + format_ms(m.median_ms)] if m.times_ms else []
    return separator.join(parts + [format_bytes(m.peak_bytes)])


def marks_note(measurements: list[Measurement]) -> str:
    """'' or the lines that explain the marks: a median of samples split between 2.8 and 11 ms read "6.86 ms" as
    plainly as a steady one, and a cell timed 100x slow under load (184 ms for 1.8) as plainly as a quiet one, its
    note below the table naming all ten impls of the run."""
    lines = []
    noisy = f"noisy, the samples' interquartile range is over {NOISY_IQR_RATIO:.0%} of their median"
    for mark, flagged, what in ((BUSY_MARK, _busy, "timed while other processes kept cores busy: times may be inflated"),
                                (NOISY_MARK, _noisy, noisy)):  # fmt: skip
        count = sum(m.status == Status.OK and bool(m.times_ms) and flagged(m) for m in measurements)
        if count:
            lines.append(f"{mark}: {what} ({count} cell{'s' * (count > 1)})")
    return "\n  ".join(lines)


def cpu_heap_note(env: dict, measurements: list[Measurement]) -> str:
    """'' or a line saying that CPU times were taken on a retained heap. A plain script on glibc's default heap
    page-faults an impl's temporaries in on every call: softmax, fwd, N = 1024, H16, one thread, read 104 ms here and
    286 ms in a helper's script (sdpa alike in both), and nothing near the table said why (a harness audit)."""
    timed_on_cpu = any(m.status == Status.OK and m.times_ms and m.case.device.startswith("cpu") for m in measurements)
    if not timed_on_cpu or not str(env.get("cpu_heap", "")).startswith("glibc"):
        return ""
    return (
        "CPU times: freed memory stays in the heap while timing, as a GPU's caching allocator keeps it; a script on "
        "glibc's default heap also pays the page faults of an impl's temporaries (README, Timing pass)"
    )


def _busy(m: Measurement) -> bool:
    from attnprof.trackers.host_contention import timed_while_busy

    return bool(m.times_ms) and timed_while_busy(m.reason)


def _noisy(m: Measurement) -> bool:
    return bool(m.times_ms) and bool(time_stats(m.times_ms)["noisy"])


def summary_grid(measurements: list[Measurement]) -> tuple[list[int], list[tuple[str, dict[int, Measurement]]]]:
    """(lengths, [(row label, {length: measurement})]) with one row per configuration."""
    varying = [axis for axis in AXES if len({getattr(m.case, axis) for m in measurements}) > 1]
    rows: dict[str, dict[int, Measurement]] = {}
    for m in measurements:
        rows.setdefault(_row_label(m, varying), {})[m.case.seq_len] = m
    lengths = sorted({m.case.seq_len for m in measurements})
    return lengths, sorted(rows.items())


def _row_label(m: Measurement, varying: list[str]) -> str:
    parts = [m.case.label]
    for axis in varying:
        value = getattr(m.case, axis)
        parts.append(
            ("causal" if value else "bidir")
            if axis == "causal"
            else f"{axis}={value}"
            if axis in ("batch", "heads", "head_dim")
            else str(value)
        )
    return " ".join(parts)


def rich_tables(measurements: list[Measurement], title: str = "", grid=None, width: int | None = None) -> list:
    """The summary grid as drawn tables of at most `width` columns each: the lengths split between as many tables as
    that needs, each with the impl column (at 80 columns five lengths folded "!~60.4 ms" into "!~60.4" and a "ms" line
    beside another cell's memory, a user audit). One table without a width, or where one length alone is too wide."""
    lengths, rows = grid or summary_grid(measurements)
    if width is None:
        return [rich_table(measurements, title, (lengths, rows))]
    widest = lambda texts: max((len(line) for text in texts for line in text.split("\n")), default=0)  # noqa: E731
    name = widest([label.split(" ", 1)[0] for label, _ in rows] + ["impl"]) + 3  # its padding and its border
    needed = {n: max(widest([cell_text(cells[n], "\n") for _, cells in rows if n in cells]), len(f"N={n}")) + 3 for n in lengths}
    groups = [[]]
    for n in lengths:
        if groups[-1] and 1 + name + sum(needed[m] for m in groups[-1]) + needed[n] > width:
            groups.append([])
        groups[-1].append(n)
    return [rich_table(measurements, title if i == 0 else "", (part, rows)) for i, part in enumerate(groups)]


def rich_table(measurements: list[Measurement], title: str = "", grid=None):
    """The summary grid as a drawn table; `grid`: summary_grid(measurements), when the caller has it already (or the
    lengths to show of it)."""
    from rich.markup import escape
    from rich.table import Table

    lengths, rows = grid or summary_grid(measurements)
    table = Table(title=title, show_lines=False, min_width=len(title) + 4)  # a table narrower than its title wrapped it a word a line
    # The name never shrinks (at 80 columns rich cut every Combiner variant to 'combiner-…'): it takes its own
    # line above the rest of the label, and the value columns fold instead when the terminal is narrow.
    table.add_column("impl", no_wrap=True)
    for n in lengths:
        table.add_column(f"N={n}", justify="right", overflow="fold")
    styles = {Status.OK: "", Status.UNSUPPORTED: "dim", Status.SKIPPED: "dim"}
    for label, cells in rows:
        texts = []
        for n in lengths:
            m = cells.get(n)
            style = styles.get(m.status, "red") if m else ""
            text = cell_text(m, "\n") if m else ""
            texts.append(f"[{style}]{text}[/]" if style else text)
        # escaped: rich reads "[...]" as markup, and dropped the options of `nystromformer[num_landmarks=32]`
        table.add_row(escape(label).replace(" ", "\n", 1), *texts)
    return table


LARGE_TABLE_ROWS = 300  # beyond, plain text: rich took 7.2 s to draw a 5,000-row summary (50k cells), pandas 0.1 s


def is_large(row_count: int) -> bool:
    return row_count > LARGE_TABLE_ROWS


def summary_text(measurements: list[Measurement], grid=None) -> str:
    """The summary grid as a plain fixed-width table, one line a configuration ("time / memory" cells): for runs too
    large for a drawn table (is_large), which a terminal scrolls past anyway. `grid`: as rich_table's."""
    lengths, rows = grid or summary_grid(measurements)
    cells = [[label, *(cell_text(by_length[n]) if n in by_length else "" for n in lengths)] for label, by_length in rows]
    return plain_table(["impl", *(f"N={n}" for n in lengths)], cells)


def plain_table(header: list[str], rows: list[list]) -> str:
    """A fixed-width text table (pandas' to_string): the first column left-aligned, the others right-aligned."""
    import pandas as pd

    frame = pd.DataFrame([[str(cell) for cell in row] for row in rows], columns=[str(name) for name in header])
    first = frame.columns[0]
    width = max([len(first), *frame[first].str.len()])
    left = {first: lambda text: text.ljust(width)}
    return frame.to_string(index=False, formatters=left, justify="right").replace(first.rjust(width), first.ljust(width), 1)


def markdown_table(measurements: list[Measurement]) -> str:
    lengths, rows = summary_grid(measurements)
    lines = ["| impl | " + " | ".join(f"N={n}" for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(cell_text(cells[n]) if n in cells else "" for n in lengths) + " |")
    return "\n".join(lines) + "\n"


def reasons_list(measurements: list[Measurement]) -> list[str]:
    """One line per distinct reason, so a cell reading `oom` (or a modelled figure) is explained below the table.
    Reasons that differ only in their numbers are one line, each differing number given as its range: the host
    memory refusals of one sweep read "predicted peak 2.0 TiB" and "2.1 TiB", and the free memory moved by 0.1 GiB
    between cases, so one cause took a line per case."""
    seen: dict[tuple[str, str], tuple[list[list[str]], list[str]]] = {}
    for m in measurements:
        if m.reason:
            prefix = "note" if m.status == Status.OK else m.status.value
            numbers, labels = seen.setdefault((prefix, _NUMBER.sub("#", m.reason)), ([], []))
            numbers.append(_NUMBER.findall(m.reason))
            labels.append(m.case.label)
    lines = []
    for (prefix, template), (numbers, labels) in seen.items():
        parts = template.split("#")
        values = [_span_of([row[i] for row in numbers]) for i in range(len(parts) - 1)]
        text = "".join(part + value for part, value in zip(parts, [*values, ""], strict=True))
        lines.append(f"{prefix}: {text} ({', '.join(sorted(set(labels)))})")
    return lines


# A number standing alone ("N=65536", "2.0 TiB", "80%", "65,536"), not one inside a word or a version ("float32", "H100",
# "3.11.2"). Thousands separators first: "65,536 of 65,536 values" read "65..131,072..536 of ..." as four numbers.
_NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w.]|,\d)|(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def _span_of(texts: list[str]) -> str:
    """One number as written, or the lowest..highest of several."""
    distinct = sorted(set(texts), key=lambda text: float(text.replace(",", "")))
    return distinct[0] if len(distinct) == 1 else f"{distinct[0]}..{distinct[-1]}"


def frame_markdown(frame) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs tabulate, which we do not depend on)."""
    columns = list(frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def fits_display(fits) -> pd.DataFrame:  # noqa: F821
    """The human columns of analysis fits: configuration, metric, exponent with interval, class, range."""
    import pandas as pd

    rows = []
    for _, f in fits.iterrows():
        causal = "causal" if f["causal"] else "bidir"
        config = f"{f['label']} {causal} {f['mode']} {f['dtype']} {f['device']} B{f['batch']} H{f['heads']} D{f['head_dim']}"
        if f["fit"] is None:
            rows.append(
                {"config": config, "metric": f["metric"], "exponent": "-", "class": "-", "r2": "-", "lengths": "-", "rule": f["error"]}
            )
            continue
        rows.append({
            "config": config, "metric": f["metric"],
            "exponent": f"{f['exponent']:.3f} [{f['exponent_low']:.3f}, {f['exponent_high']:.3f}]",
            "class": _class_text(f),
            "r2": f"{f['r2']:.4f}", "lengths": f"{min(f['lengths_used'])}..{max(f['lengths_used'])}", "rule": f["range_rule"],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["config", "metric", "exponent", "class", "r2", "lengths", "rule"])


def _class_text(f) -> str:
    """The class with its runner-up and AIC margin; an ambiguous one names both leading classes ("ambiguous (next
    n^1.5)" hid which class led)."""
    if f["complexity"] == "ambiguous":
        return f"ambiguous: {f['best_class']} or {f['runner_up']} (dAIC {f['margin']:.1f})"
    return f"{f['complexity']} (next {f['runner_up']}, dAIC {f['margin']:.1f})"
