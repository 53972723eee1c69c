"""`attnprof report` (one self-contained HTML file, optional PNGs) and `attnprof serve` (binding, warnings)."""

import html
import importlib.util
import json
import re

import pytest
import seeding
from click.testing import CliRunner

from attnprof.cli import cli
from attnprof.dashboard import app as dashboard_app
from attnprof.errors import UsageError
from attnprof.fit import format_length


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_report_is_one_self_contained_html_file(two_runs_db, tmp_path):
    out = tmp_path / "sub" / "report.html"
    result = invoke("report", seeding.BASE, "--db", two_runs_db, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {out}"
    text = out.read_text()
    body = text.split("</head>", 1)[1]
    assert not re.search(r"<script[^>]+src=", text) and "https://" not in body  # works offline: nothing is fetched
    assert len(text) > 3_000_000  # plotly.js (about 4.6 MB) is inside
    for heading in ("Scaling", "Exponents", "Crossovers", "Memory frontier", "Coverage", "Roofline", "Run info", "Environment", "Sweep"):
        assert f">{heading}</h" in text, heading
    # time and memory scaling, exponents, crossovers of time, memory and FLOPs, frontier, coverage, roofline
    assert text.count('class="plotly-graph-div"') == 9
    crossovers = text.split(">Crossovers</h3>", 1)[1].split(">Memory frontier</h3>", 1)[0]
    # each metric's, as `attnprof fit` lists them (the report drew time's alone: an analysis audit)
    assert all(f"Crossover lengths ({metric})" in crossovers for metric in ("time", "peak_bytes", "flops")), crossovers[:3000]
    assert "--dtype float32 --device cpu --causal both" in text and seeding.OOM_REASON in text  # reproduced as it ran
    # every failed cell and its reason as text, not only in the plots' hover (lost in a printed or PNG copy: a report audit)
    table = text.split(">Cells not measured ok</h3>", 1)[1].split("</table>", 1)[0]
    assert f"<td>oom</td><td>{html.escape(seeding.OOM_REASON)}</td>" in table, table[:2000]


def test_report_default_path_is_reports_run_id(two_runs_db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("report", "latest", "--db", two_runs_db)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / f"{seeding.CANDIDATE}.html").exists()


def test_png_without_kaleido_is_one_line_and_exit_2(two_runs_db, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec  # kaleido is a dev extra, so its absence is staged
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "kaleido" else find_spec(name, *args))
    result = invoke("report", "latest", "--db", two_runs_db, "--out", tmp_path / "r.html", "--png", tmp_path / "png")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "kaleido" in result.output and "attnprof[png]" in result.output and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("args, fragment", [(["nope"], "unknown run 'nope'"), (["latest", "--db", "/nonexistent/x.db"], "no database at")])
def test_report_bad_input_is_one_line_and_exit_2(two_runs_db, args, fragment):
    result = invoke("report", *args, *([] if "--db" in args else ["--db", two_runs_db]))
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


HOSTS = [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("10.1.2.3", False), ("myhost.example", False)]


@pytest.mark.parametrize("host, loopback", HOSTS)
def test_loopback_detection(host, loopback):
    assert dashboard_app.is_loopback(host) is loopback


def test_serve_binds_where_told_and_warns_beyond_loopback(monkeypatch, tmp_path):
    calls = []

    class Stub:
        server = "the wsgi app"

    monkeypatch.setattr(dashboard_app, "create_app", lambda db: Stub())
    monkeypatch.setattr(dashboard_app, "serve_wsgi", lambda app, host, port: calls.append({"app": app, "host": host, "port": port}))
    result = invoke("serve", "--db", tmp_path / "none.db")
    assert result.exit_code == 0 and calls[-1] == {"app": "the wsgi app", "host": "127.0.0.1", "port": 8050}
    assert "warning" not in result.output and "no database at" in result.output
    result = invoke("serve", "--db", tmp_path / "none.db", "--host", "0.0.0.0", "--port", "9000")
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 9000
    assert "warning: listening on 0.0.0.0" in result.output


def test_serve_names_a_missing_folder_and_refuses_a_file_in_the_way(monkeypatch, tmp_path):
    """`serve --db /missing/dir/x.db` used to start with the same note as a missing file: a typo in the folder left
    the page empty forever."""
    monkeypatch.setattr(dashboard_app, "serve_wsgi", lambda app, host, port: None)
    result = invoke("serve", "--db", tmp_path / "typo" / "x.db")
    assert result.exit_code == 0 and f"and no folder '{tmp_path / 'typo'}' either (check the path)" in result.output
    (tmp_path / "afile").write_text("")
    result = invoke("serve", "--db", tmp_path / "afile" / "x.db")
    assert result.exit_code == 2 and f"'{tmp_path / 'afile'}' is a file, not a folder" in result.output


def test_serve_says_where_it_is_in_one_line_and_answers(two_runs_db, tmp_path):
    """A real server process: Flask's red development-server warning, Dash's and Werkzeug's "running on" lines and
    a line per request used to follow attnprof's own line."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "attnprof", "serve", "--db", str(two_runs_db), "--port", str(port)], stdout=out, stderr=out
        )
    try:
        deadline, status = time.monotonic() + 60, None
        while status is None and time.monotonic() < deadline:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=5).status
            except OSError:
                time.sleep(0.3)
    finally:
        process.send_signal(2)  # Ctrl-C
        code = process.wait(timeout=30)
    assert status == 200 and code == 0
    assert log.read_text().splitlines() == [f"attnprof dashboard on http://127.0.0.1:{port}/ (Ctrl-C stops it)"]


def test_create_app_builds_a_fresh_app_each_time(two_runs_db):
    import attnprof.dashboard.app as module
    from attnprof.store import Store

    first, second = module.create_app(two_runs_db, warm=False), module.create_app(two_runs_db, warm=False)
    assert first is not second and first.layout is not None
    assert not any(hasattr(module, name) for name in ("app", "server"))  # no global app at import time
    store = Store.open(two_runs_db, create=False)
    try:  # an open Store works too: its path is used, each request opens its own connection
        assert module.create_app(store, warm=False).attnprof.source.runs()[0].info.run_id == seeding.CANDIDATE
    finally:
        store.close()


def test_a_report_of_an_interrupted_run_says_it_is_partial_and_how_to_finish_it(tmp_path, monkeypatch):
    db = tmp_path / "partial.db"
    cells = seeding.run_cells()[:5]
    run = seeding.write_run(db, seeding.run_info("20260105-000000-part", "2026-01-05T00:00:00+00:00", state="interrupted"), cells)
    out = tmp_path / "partial.html"
    monkeypatch.chdir(tmp_path)  # the commands name the database wherever the reader runs them, not as the reporter typed it
    assert invoke("report", run, "--db", "partial.db", "--out", out).exit_code == 0
    planned = len(seeding.sweep_dict()["lengths"]) * 2 * 3  # lengths x causal x impls
    text = out.read_text()
    assert f"This run is interrupted: 5 of {planned} cases, the rest with attnprof sweep --resume {run} --db {db}." in text
    assert "Every cell of the run is shown" not in text
    # the coverage shows the cells not measured yet as the dashboard does (it left out the impls without a row)
    assert f"{planned - 5} missing, 4 ok, 1 oom" in text


def test_a_report_of_an_accounting_run_shows_memory_and_flops_not_an_empty_time_chart(tmp_path):
    from attnprof.api import run_sweep
    from attnprof.spec import Sweep, parse_impls

    db = tmp_path / "accounting.db"
    run_sweep(Sweep(impls=parse_impls("softmax,cosformer"), lengths=(1024, 2048, 4096), heads=(2,), causal=(False,), accounting=True), db)
    out = tmp_path / "accounting.html"
    assert invoke("report", "latest", "--db", db, "--out", out).exit_code == 0
    text = out.read_text()
    assert '"title":{"text":"FLOPs per call"}' in text and "peak memory (primary source) (bytes)" in text
    assert "median time (ms)" not in text  # accounting runs are not timed
    # its frontier at fit's budget, each saying where the budget came from: the report drew 80 GiB, fit none (a user audit)
    assert "Budget: a default: the run has no device memory" in text and "Memory frontier at 80.0 GiB" in text
    fitted = invoke("fit", "latest", "--db", db, "--metric", "peak_bytes", "--format", "json")
    frontier = json.loads(fitted.output)["frontiers"][0]
    assert f"up to N = {format_length(frontier['length'])} " in frontier["message"] and format_length(frontier["length"]) in text
    assert invoke("report", "latest", "--db", db, "--out", out, "--budget", "1GiB").exit_code == 0
    assert "Memory frontier at 1.0 GiB" in out.read_text() and "Budget from --budget." in out.read_text()
    assert invoke("report", "latest", "--db", db, "--out", out, "--budget", "1").exit_code == 0  # log2 0 drew 80 GiB (a review)
    assert "Memory frontier at 1 B" in out.read_text() or "Memory frontier at 1.0 B" in out.read_text(), re.findall(
        r"Memory frontier at [^:]*", out.read_text()
    )
    bad = invoke("report", "latest", "--db", db, "--out", out, "--budget", "lots")
    assert bad.exit_code == 2 and "bad budget 'lots'" in bad.output
    # the same figures for a notebook, as plotly Figures (only private functions had them: an API audit)
    import plotly.graph_objects as go

    import attnprof

    figures = attnprof.report_figures("latest", db, budget="1GiB")
    assert list(figures) == ["scaling-peak_bytes", "scaling-flops", "exponents", "crossovers", "crossovers-flops", "frontier", "coverage",
                             "roofline"]  # fmt: skip
    assert "Crossover lengths (flops)" in figures["crossovers-flops"].layout.title.text
    assert all(isinstance(figure, go.Figure) for figure in figures.values())
    assert figures["scaling-flops"].layout.title.text.startswith("FLOPs per call against sequence length")


def test_only_chooses_the_slice_a_report_shows(two_runs_db, tmp_path):
    from attnprof.report import slice_filters

    options = {"label": ["sdpa", "softmax"], "seq_len": [256, 512], "dtype": ["bfloat16", "float32"], "causal": [False, True]}
    assert slice_filters(["dtype=float32", "causal=yes", "impl=softmax,sdpa"], options) == {
        "dtype": ["float32"],
        "causal": [True],
        "label": ["softmax", "sdpa"],
    }
    # as `sweep --mode` spells it (fwd-bwd), and in the error the user's own words: impl (not label), 3k (not 3072)
    assert slice_filters(["mode=fwd-bwd"], {"mode": ["fwd", "fwd_bwd"]}) == {"mode": ["fwd_bwd"]}
    with pytest.raises(UsageError, match=r"the run has seq_len 256, 512, not '3k'$"):
        slice_filters(["seq_len=3k"], options)
    with pytest.raises(UsageError, match=r"the run has impl sdpa, softmax, not 'nope'$"):
        slice_filters(["impl=nope"], options)
    labelled = {"label": ["nystromformer[num_landmarks=32]", "sdpa"], "seq_len": [256, 1024, 2048, 4096]}
    assert slice_filters(["impl=nystromformer:num_landmarks=32", "seq_len=1k..2k"], labelled) == {  # as sweep takes them
        "label": ["nystromformer[num_landmarks=32]"],
        "seq_len": [1024, 2048],
    }
    # a range keeps the measured lengths within it: the README's seq_len=1k..8k was refused on a 256..4k run (an audit)
    assert slice_filters(["seq_len=1k..8k"], labelled) == {"seq_len": [1024, 2048, 4096]}
    assert slice_filters(["seq_len=256,2k..3k"], labelled) == {"seq_len": [256, 2048]}
    with pytest.raises(UsageError, match=r"the run has seq_len 256, 1k, 2k, 4k, none within 8k..16k$"):
        slice_filters(["seq_len=8k..16k"], labelled)
    with pytest.raises(UsageError, match=r"the run has seq_len 256, 1024, 2048, 4096, not '3k'$"):  # a step asks for its values
        slice_filters(["seq_len=1k..3k:+1k"], labelled)
    out = tmp_path / "causal.html"
    assert invoke("report", seeding.BASE, "--db", two_runs_db, "--out", out, "--only", "causal=yes").exit_code == 0
    assert "Figures show causal = True (of False, True)" in out.read_text()
    from attnprof.report import write_report

    one, _ = write_report(seeding.BASE, db=two_runs_db, out=tmp_path / "one.html", only="causal=yes")  # read 'c', 'a', ...
    assert "Figures show causal = True (of False, True)" in one.read_text()
    for bad, fragment in (
        ("dtype=float8", "the run has dtype float32, not 'float8'"),
        ("colour=red", "AXIS=VALUE"),
        ("heads=", "no value"),
    ):
        result = invoke("report", seeding.BASE, "--db", two_runs_db, "--out", tmp_path / "x.html", "--only", bad)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and fragment in result.output, result.output


def test_fit_the_report_and_the_dashboard_start_from_the_same_budget(tmp_path):
    """The run's recorded host memory, to the byte. The dashboard rounded its log2 to the slider's step, so a
    report drew the frontier at 23.6 GiB (N = 564164) where `fit` said 23.5 GiB (N = 563065) for the same run."""
    import dataclasses

    from attnprof.api import run_budget
    from attnprof.dashboard import pages

    host = 17717985280  # 16.5 GiB: not a power of two, nor the memory of the machine reading the run
    db = tmp_path / "host.db"
    info = seeding.run_info(seeding.BASE, "2026-01-01T00:00:00+00:00")
    seeding.write_run(db, dataclasses.replace(info, env={**info.env, "host_memory_bytes": host}), seeding.run_cells())
    source = dashboard_app.create_app(db, warm=False).attnprof.source
    assert run_budget("latest", db) == host == round(2.0 ** pages.default_budget_log2(source, seeding.BASE))
    fitted = json.loads(CliRunner().invoke(cli, ["fit", "--db", str(db), "--format", "json", "--metric", "peak_bytes"]).output)
    assert {row["budget_bytes"] for row in fitted["frontiers"]} == {host}
