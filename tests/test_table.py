"""The run summary table at a narrow terminal: every impl's name stays whole."""

from rich.console import Console

from attnprof.records import Measurement, Status
from attnprof.spec import Case
from attnprof.table import rich_table

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
