"""The run summary table at a narrow terminal: every impl's name stays whole."""

from rich.console import Console

from attnprof.fit_text import quantity
from attnprof.records import Measurement, Status
from attnprof.spec import Case
from attnprof.table import format_bytes, format_ms, peak_sources_text, reasons_list, rich_table, rich_tables

NAMES = ("combiner-axial", "combiner-fixed", "combiner-logsparse", "combiner-mixture", "sdpa-efficient")


def test_names_stay_whole_at_80_columns():
    rows = []
    for name in NAMES:
        for n in (256, 512, 1024, 2048, 4096):
            case = Case(impl=name, seq_len=n, causal=True)
            if name == "sdpa-efficient":
                rows.append(Measurement(case, Status.UNSUPPORTED, "runs on cuda, not cpu"))
            else:
                rows.append(Measurement(case, Status.OK, times_ms=[12.5, 13.0, 12.75], peak_bytes=134_545_203))
    console = Console(width=80, record=True)
    console.print(rich_table(rows, title="run x"))
    text = console.export_text()
    assert all(f" {name} " in text for name in NAMES), text  # rich used to print 'combiner-…' for each variant
    assert max(len(line) for line in text.splitlines()) <= 80


def test_lengths_too_many_for_the_width_go_to_a_second_table_not_into_folded_cells():
    """At 80 columns five lengths folded "!~60.4 ms" into "!~60.4" and a "ms" line beside another cell's memory, and
    "128.3 MiB" into two lines (a user audit): each table now holds the lengths that fit, each keeps the impl column."""
    lengths = (256, 512, 1024, 2048, 4096)
    rows = [Measurement(Case(impl=name, seq_len=n, causal=True), Status.OK, times_ms=[60.4, 60.4 * 1.2, 60.4 * 0.8], peak_bytes=134_545_203)
            for name in NAMES[:4] for n in lengths]  # fmt: skip
    tables = rich_tables(rows, title="run x", width=80)
    assert len(tables) == 2 and [len(t.columns) for t in tables] == [5, 2] and tables[1].title == ""
    console = Console(width=80, record=True)
    for table in tables:
        console.print(table)
    text = console.export_text()
    cells = [cell.strip() for line in text.splitlines() for cell in line.split("│")[2:-1]]  # the value cells, line by line
    assert max(len(line) for line in text.splitlines()) <= 80 and all(f"N={n}" in text for n in lengths)
    assert {cell for cell in cells if cell} == {"~60.4 ms", "128.3 MiB"}, text  # never a number without its unit
    assert text.count("combiner-mixture") == 2 and len(rich_tables(rows, width=200)) == 1 and len(rich_tables(rows)) == 1


def test_options_in_a_label_are_text_not_markup():
    """`nystromformer[num_landmarks=32]` beside `nystromformer`: rich read "[num_landmarks=32]" as a markup tag
    and printed both rows as `nystromformer`."""
    rows = [
        Measurement(Case(impl="nystromformer", seq_len=1024, options=options), Status.OK, times_ms=[1.0], peak_bytes=1)
        for options in ((), (("num_landmarks", 32),))
    ]
    console = Console(width=120, record=True)
    console.print(rich_table(rows, title="run x"))
    text = console.export_text()
    assert "nystromformer[num_landmarks=32]" in text and text.count("nystromformer") == 2


def test_a_table_narrower_than_its_title_keeps_the_title_on_one_line():
    """One impl at one length: the title used to wrap a word a line ("run / 20261123 / -174357- / 94ca / ...")."""
    title = "run 20261123-174357-94ca  (median time / peak memory)"
    rows = [Measurement(Case(impl="softmax", seq_len=64), Status.OK, times_ms=[0.06], peak_bytes=34_816)]
    console = Console(width=80, record=True)
    console.print(rich_table(rows, title=title))
    assert title in console.export_text()


def test_an_ambiguous_class_names_both_leading_classes():
    """It read "ambiguous (next n^1.5, dAIC 0.0)", which hid the class that led (n log n, said only the JSON)."""
    import pandas as pd

    from attnprof.analysis import CONFIG
    from attnprof.fit_groups import fit_frame
    from attnprof.table import fits_display

    config = dict(label="combiner-axial", batch=1, heads=16, head_dim=64, dtype="bfloat16", device="meta", causal=False, mode="fwd")
    rows = pd.DataFrame([{**config, "seq_len": n, "peak_bytes": 1e6 * n} for n in (1024, 2048)])  # 2 lengths: always ambiguous
    fits = fit_frame(rows, "peak_bytes", CONFIG).assign(metric="peak_bytes")
    [text] = fits_display(fits)["class"]
    assert text.startswith(f"ambiguous: {fits['best_class'][0]} or {fits['runner_up'][0]} (dAIC"), text


def test_reasons_differing_only_in_numbers_are_one_line_with_their_range():
    """The host-memory refusals of one sweep differ in the predicted peak and, by 0.1 GiB, the free memory: a line
    per case for one cause. Numbers inside words (float32, H100) are part of the text, not merged."""
    refusal = "predicted peak {} TiB exceeds 80% of available host memory ({} GiB); not run"
    rows = [
        Measurement(Case(impl="softmax", seq_len=131072), Status.OOM, refusal.format("2.0", "21.8")),
        Measurement(Case(impl="sdpa-math", seq_len=131072), Status.OOM, refusal.format("2.1", "21.7")),
        Measurement(Case(impl="softmax", seq_len=262144), Status.OOM, refusal.format("8.0", "21.8")),
        Measurement(Case(impl="softmax", seq_len=64), Status.UNSUPPORTED, "needs float32, not float16"),
        Measurement(Case(impl="cosformer", seq_len=64), Status.UNSUPPORTED, "needs float16, not float32"),
    ]
    assert reasons_list(rows) == [
        "oom: predicted peak 2.0..8.0 TiB exceeds 80% of available host memory (21.7..21.8 GiB); not run (sdpa-math, softmax)",
        "unsupported: needs float32, not float16 (softmax)",
        "unsupported: needs float16, not float32 (cosformer)",
    ]


def test_numbers_with_thousands_separators_merge_whole():
    """ "65,536 of 65,536" and "131,072 of 131,072" read "65..131,072..536 of ...": the separator split each in two."""
    wrong = "failed its check at the measured length N={}: {} of {} values are NaN or inf"
    rows = [Measurement(Case(impl="fault", seq_len=n), Status.ERROR, wrong.format(n, f"{n * 128:,}", f"{n * 128:,}")) for n in (512, 1024)]
    merged = "N=512..1024: 65,536..131,072 of 65,536..131,072 values are NaN or inf (fault)"
    assert reasons_list(rows) == [f"error: failed its check at the measured length {merged}"]


def test_a_noisy_median_is_marked_and_the_mark_explained():
    """A median of samples split between 2.8 and 11 ms read "6.86 ms" as plainly as a steady one."""
    from attnprof.table import cell_text, marks_note

    steady = Measurement(Case(impl="softmax", seq_len=1024), Status.OK, times_ms=[6.8, 6.86, 6.9], peak_bytes=1)
    split = Measurement(Case(impl="softmax", seq_len=2048), Status.OK, times_ms=[2.8, 2.9, 6.86, 10.0, 11.0], peak_bytes=1)
    assert cell_text(steady).startswith("6.86 ms") and cell_text(split).startswith("~6.86 ms")
    assert marks_note([steady, split]) == "~: noisy, the samples' interquartile range is over 10% of their median (1 cell)"
    assert marks_note([steady]) == ""


def test_a_median_timed_on_a_busy_machine_is_marked_in_its_cell():
    """A cell timed 100x slow under load (184 ms for 1.8) read as plainly as a quiet one; the note below the table
    named all ten impls of the run, not which cells."""
    from attnprof.table import cell_text, marks_note

    busy = "timed while other processes kept 1.0 of 2 cores busy: times may be inflated"
    slowed = Measurement(Case(impl="combiner-axial", seq_len=256), Status.OK, busy, times_ms=[184.0, 184.2, 183.9], peak_bytes=1)
    quiet = Measurement(Case(impl="combiner-axial", seq_len=512), Status.OK, times_ms=[3.1, 3.1, 3.2], peak_bytes=1)
    assert cell_text(slowed).startswith("!184 ms") and cell_text(quiet).startswith("3.1 ms")
    assert marks_note([slowed, quiet]) == "!: timed while other processes kept cores busy: times may be inflated (1 cell)"


def test_a_value_that_rounds_up_to_the_next_unit_is_written_in_it():
    """999.7 ms read '1e+03 ms' and 1,048,575 bytes '1024.0 KiB' in tables and hovers (a consistency audit)."""
    assert [format_ms(v) for v in (0.5, 999.4, 999.7, 1000.0, 59_999.0)] == ["0.5 ms", "999 ms", "1 s", "1 s", "60 s"]
    written = [format_bytes(v) for v in (1023, 1024, 1_048_575, 1_048_576, 2**30 - 1, 1000 * 2**20, 1010 * 2**20)]
    assert written == ["1023 B", "1.0 KiB", "1.0 MiB", "1.0 MiB", "1.0 GiB", "1000.0 MiB", "1010.0 MiB"]  # only 1024.0 moves up
    assert quantity(1500.0, "time") == "1.5 s"  # a fit's overhead, said in the same units as the tables


def test_the_title_says_which_peak_the_table_shows():
    """ "peak memory" did not say it is the allocator's peak, not the process RSS (a consistency audit)."""
    rows = [Measurement(case=Case("softmax", n), status=Status.OK, peak_bytes=n, peak_source=source)
            for n, source in ((256, "allocator"), (512, "allocator"), (1024, "live_tensors"))]  # fmt: skip
    assert peak_sources_text(rows) == ": allocator peak, live tensors"
    assert peak_sources_text(rows[:2]) == ": allocator peak" and peak_sources_text([Measurement(Case("softmax", 256), Status.OOM)]) == ""


def test_a_large_summary_is_plain_lines_with_every_cell():
    """Past LARGE_TABLE_ROWS configurations the summary is a plain fixed-width table: rich took 7.2 s to draw a
    5,000-row summary (50k cells). Same cells, one line a configuration, labels left-aligned."""
    from attnprof.table import LARGE_TABLE_ROWS, is_large, summary_text

    rows = [
        Measurement(
            Case(impl="softmax", seq_len=n, batch=batch),
            Status.OK if n < 2048 else Status.OOM,
            times_ms=[1.5 * batch],
            peak_bytes=batch * 1024**2,
        )  # fmt: skip
        for batch in range(1, LARGE_TABLE_ROWS + 2)
        for n in (1024, 2048)
    ]
    assert is_large(len(rows) // 2) and not is_large(LARGE_TABLE_ROWS)
    lines = summary_text(rows).splitlines()
    assert lines[0].split() == ["impl", "N=1024", "N=2048"] and lines[0].startswith("impl ")
    assert len(lines) == 1 + LARGE_TABLE_ROWS + 1 and len({len(line) for line in lines}) == 1
    assert lines[1].startswith("softmax batch=1 ") and lines[1].endswith(" oom")
    assert "  1.5 ms / 1.0 MiB  " in lines[1]
    assert {" ".join(line.split()[:2]) for line in lines[1:]} == {f"softmax batch={b}" for b in range(1, LARGE_TABLE_ROWS + 2)}
