"""Export streams its records: the same text as building it whole, no half-written file when it fails."""

import csv
import io
import json

import pytest

from attnprof.export import EXPORT_KEYS, measurement_record, write_records
from attnprof.records import Measurement, Status
from attnprof.spec import Case


def records(count: int) -> list[dict]:
    rows = [Measurement(Case(impl="softmax", seq_len=64 * (i + 1)), Status.OK, "a\nnote" if i else "", times_ms=[1.0, 2.5], peak_bytes=i)
            for i in range(count)]  # fmt: skip
    return [measurement_record("run-1", m) for m in rows]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_streamed_text_is_what_the_whole_list_gives(count):
    wanted = records(count)
    written = {}
    for output_format in ("json", "jsonl", "csv"):
        stream = io.StringIO()
        assert write_records(iter(wanted), output_format, stream) == count
        written[output_format] = stream.getvalue()
    assert written["json"] == json.dumps(wanted, default=str, indent=1) + "\n"
    assert [json.loads(line) for line in written["jsonl"].splitlines()] == json.loads(written["json"])
    rows = list(csv.DictReader(io.StringIO(written["csv"], newline="")))
    assert [row["seq_len"] for row in rows] == [str(r["seq_len"]) for r in wanted] and (not rows or list(rows[0]) == list(EXPORT_KEYS))
    assert [json.loads(row["times_ms"]) for row in rows] == [r["times_ms"] for r in wanted]


def test_a_failure_halfway_leaves_no_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import attnprof.export as export
    from attnprof.cli import cli
    from attnprof.records import RunInfo
    from attnprof.store import Store

    db = tmp_path / "x.db"
    store = Store.open(db)
    store.add_run(RunInfo("20260101-000000-abcd", "2026", {}, {}, "0.1.0", state="running"))
    for i in range(3):
        store.add_measurement("20260101-000000-abcd", Measurement(Case(impl="softmax", seq_len=64 + i), Status.OK, times_ms=[1.0]), "t")
    store.close()
    real = export.measurement_record

    def fails_on_the_third(run_id, m):
        if m.case.seq_len == 66:
            raise OSError(28, "No space left on device")
        return real(run_id, m)

    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(export, "measurement_record", fails_on_the_third)
    result = CliRunner().invoke(cli, ["export", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 2 and "cannot write" in result.output and "No space left on device" in result.output
    assert not list(tmp_path.glob("out.jsonl*"))  # neither the file nor its .part
    monkeypatch.undo()
    assert CliRunner().invoke(cli, ["export", "--db", str(db), "--out", str(out)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 3
