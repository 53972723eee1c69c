"""The CLI through click's CliRunner: bad input is one line and exit 2, help ends with an example."""

import dataclasses
import json
import sqlite3

import pytest
from click.testing import CliRunner

from attnprof import impls
from attnprof.cli import cli
from attnprof.cli.results import _checked_as
from attnprof.errors import UsageError
from attnprof.store import Store

QUICK = [
    "--impl",
    "softmax",
    "--lengths",
    "64,128",
    "--heads",
    "2",
    "--head-dim",
    "16",
    "--device",
    "cpu",
    "--causal",
    "no",
    "--warmup-ms",
    "1",
    "--rep-ms",
    "5",
]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_bad_input(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--lengths", "64k..1k"], ["64k..1k", "reversed"]),
        (["--lengths", ".."], ["'..'"]),
        (["--lengths", "1q"], ["'1q'"]),
        (["--lengths", ""], ["lengths"]),
        (["--lengths", "99999999999999999999"], ["'99999999999999999999'", "2^62"]),
        (["--batch", "0"], ["batch", "'0'"]),
        (["--heads", "-4"], ["heads", "'-4'"]),
        (["--head-dim", "0"], ["head_dim"]),
        (["--impl", "nope"], ["'nope'", "softmax", "sdpa"]),
        (["--impl", "softmax:bogus=1"], ["'bogus'"]),
        (["--impl", "cosformer:chunk_size=-3"], ["'cosformer'", "chunk_size", "-3"]),
        (["--impl", "combiner-fixed:block_size=0"], ["'combiner-fixed'", "block_size", "0"]),
        (["--impl", "nystromformer:pinv_init=weird"], ["'nystromformer'", "pinv_init", "'weird'"]),
        (["--dtype", "float8"], ["'float8'", "float32"]),
        (["--mode", "train"], ["'train'", "fwd"]),
        (["--causal", "maybe"], ["'maybe'"]),
        (["--device", "cuda"], ["cuda", "not available"]),
        (["--device", "tpu"], ["'tpu'"]),
        (["--timeout", "0"], ["timeout"]),
        (["--rep-ms", "nan"], ["rep_ms", "nan", "finite"]),
        (["--lengths", "99999999999k"], ["N=102399999998976", "PiB"]),
        (["--accounting", "--device", "cpu"], ["--accounting", "GPU plan", "--device cpu"]),
        (["--timeout", "inf"], ["timeout", "inf", "finite"]),
        (["--impl", "nystromformer:num_landmarks=32,num_landmarks=64"], ["'num_landmarks'", "2 times"]),
        (["--impl", "softmax,cosformer,softmax"], ["'softmax'", "2 times"]),  # was merged into one line silently
        (["--impl", "all:num_landmarks=8"], ["'all' takes no options"]),  # the options were dropped silently
        (["--impl", "cosformer:chunk_size=64,cosformer:chunk_size=64"], ["'cosformer[chunk_size=64]'", "2 times"]),
        (["--accounting", "--rep-ms", "5"], ["--rep-ms", "--accounting", "times nothing"]),  # was ignored silently
        (["--accounting", "--warmup-ms", "5"], ["--warmup-ms", "--accounting"]),
        (["--bogus-flag"], ["--bogus-flag"]),
        (["--seed", "9223372036854775808"], ["seed", "9223372036854775808", "2^63 - 1"]),  # SQLite's INTEGER is 64-bit signed
    ],
)
def test_bad_sweep_input(db, args, fragments):
    assert_bad_input(invoke("sweep", "--db", db, *args, "--dry-run"), *fragments)
    assert not db.exists()  # the database is untouched


def test_missing_and_malformed_scenarios(tmp_path, db):
    assert_bad_input(invoke("sweep", tmp_path / "none.toml", "--db", db), "none.toml", "not found")
    broken = tmp_path / "broken.toml"
    broken.write_text("[sweep\nimpl = 'softmax'")
    assert_bad_input(invoke("sweep", broken, "--db", db), "broken.toml", "not valid TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[sweep]\nimpl = 'softmax'\nlenghts = '1k'\n")
    assert_bad_input(invoke("sweep", unknown, "--db", db), "'lenghts'")
    table = tmp_path / "table.toml"
    table.write_text("[swep]\nimpl = 'softmax'\n")
    assert_bad_input(invoke("sweep", table, "--db", db), "'swep'")
    top = tmp_path / "top.toml"  # it said "unknown table 'impl'": a key, above any table
    top.write_text("impl = 'softmax'\n[sweep]\nlengths = '1k'\n")
    assert_bad_input(invoke("sweep", top, "--db", db), "key 'impl' in", "is outside any table: sweep options go under [sweep]")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes("# caf\u00e9\n[sweep]\nimpl = 'softmax'\n".encode("latin-1"))
    assert_bad_input(invoke("sweep", latin1, "--db", db), "latin1.toml", "UTF-8")
    assert_bad_input(invoke("gate", latin1, "--db", db), "latin1.toml", "UTF-8")
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing yet\n")
    assert_bad_input(invoke("sweep", empty, "--db", db), "empty.toml", "no [sweep] table")  # not the whole default sweep
    named = tmp_path / "named.toml"
    named.write_text("[sweep]\nimpl = 'softmax'\nname = 5\n")
    assert_bad_input(invoke("sweep", named, "--db", db), "name", "5")
    nan = tmp_path / "nan.toml"
    nan.write_text("[sweep]\nimpl = 'softmax'\nwarmup_ms = nan\n")
    assert_bad_input(invoke("sweep", nan, "--db", db), "warmup_ms", "finite")
    # each of these was a TypeError traceback (exit 1) or, for the seed, silently seed 1
    shapes = {"sweep = 3\n": "must be a table", "[sweep]\nimpl = 'softmax'\nseed = 1.5\n": "whole number"}
    shapes["rule = [1]\n[sweep]\nimpl = 'softmax'\naccounting = true\n"] = "must be a [[rule]] table"
    for number, (text, fragment) in enumerate(shapes.items()):
        shaped = tmp_path / f"shape{number}.toml"
        shaped.write_text(text)
        assert_bad_input(invoke("gate" if "rule" in text else "sweep", shaped, "--db", db), fragment)
    assert not db.exists()


def test_text_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    """Bytes a terminal's locale could not decode reach Python as surrogates: storing them was a traceback."""
    assert_bad_input(invoke("sweep", *QUICK, "--db", tmp_path / "u.db", "--name", "bad\udcff"), "name", "not valid UTF-8")
    assert_bad_input(invoke("sweep", *QUICK, "--db", tmp_path / "p\udce9th.db"), "database path", "not valid UTF-8")
    assert_bad_input(invoke("sweep", *QUICK, "--db", tmp_path / "n.db", "--name", "two\nlines"), "name", "control characters")
    assert_bad_input(invoke("sweep", *QUICK, "--db", tmp_path / "n.db", "--name", "x" * 100_000), "100000 characters", "at most 200")
    assert not list(tmp_path.iterdir())


def test_scenario_lengths_as_a_toml_list_and_options_at_their_defaults(tmp_path, db):
    listed = tmp_path / "listed.toml"
    listed.write_text("[sweep]\nimpl = ['combiner-fixed:block_size=auto', 'nystromformer:num_landmarks=64', 'nystromformer']\n")
    listed.write_text(listed.read_text() + "lengths = [256, '1k']\ncausal = 'no'\ndevice = 'cpu'\n")
    result = invoke("sweep", listed, "--db", db, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "4 cases, 0 refused" in lines[-1]  # an option at its default is the plain impl's line, not another
    assert {line.split()[0] for line in lines[:-1]} == {"combiner-fixed", "nystromformer"}
    assert {line.split()[1] for line in lines[:-1]} == {"N=256", "N=1024"}


def test_an_empty_database_path_or_run_id_is_refused_not_read_as_the_default(tmp_path, monkeypatch):
    """`--db "$DB"` with DB unset wrote to reports/attnprof.db; `show "$RUN"` showed the latest run."""
    monkeypatch.chdir(tmp_path)
    assert_bad_input(invoke("sweep", *QUICK, "--db", ""), "--db ''", "empty path")
    assert_bad_input(invoke("runs", "--db", ""), "--db ''")
    assert not (tmp_path / "reports").exists()
    assert invoke("sweep", "--accounting", "--impl", "softmax", "--lengths", "1k..4k", "--db", "a.db").exit_code == 0
    assert_bad_input(invoke("show", "", "--db", tmp_path / "a.db"), "bad run ''")


def test_a_directory_as_the_database_is_refused_naming_where_it_came_from(tmp_path, monkeypatch):
    """$ATTNPROF_DB naming a directory got SQLite's "unable to open database file" (and `sweep --dry-run` passed),
    where --db got a clear line; both now say it is a directory, and which of the two named it."""
    assert_bad_input(invoke("runs", "--db", tmp_path), f"bad --db {str(tmp_path)!r}: a directory")
    monkeypatch.setenv("ATTNPROF_DB", str(tmp_path))
    assert_bad_input(invoke("runs"), f"bad $ATTNPROF_DB {str(tmp_path)!r}: a directory", "attnprof.db")
    assert_bad_input(invoke("sweep", *QUICK, "--dry-run"), "bad $ATTNPROF_DB")
    assert invoke("sweep", "--accounting", "--impl", "softmax", "--lengths", "1k", "--db", tmp_path / "a.db").exit_code == 0  # --db wins
    monkeypatch.setenv("ATTNPROF_DB", str(tmp_path / "a.db"))
    listed = invoke("runs")  # a file in $ATTNPROF_DB is the default database
    assert listed.exit_code == 0 and "complete" in listed.output and "2 cases" in listed.output, listed.output
    with pytest.raises(UsageError, match="is a directory"):  # the library says it too
        Store.open(tmp_path)
    for command in ("sweep", "runs"):  # a device: "not an attnprof database (cannot rollback - no transaction is active)"
        assert_bad_input(invoke(command, "--db", "/dev/null"), "database path '/dev/null' is not a regular file")


def test_a_file_where_a_folder_must_be_is_named(tmp_path):
    """mkdir said "File exists", which read as if the output were there already."""
    (tmp_path / "notes").write_text("x")
    in_the_way = f"{str(tmp_path / 'notes')!r} is a file, not a folder"
    assert_bad_input(invoke("sweep", *QUICK, "--db", tmp_path / "notes" / "a.db"), "cannot write database", in_the_way)
    db = tmp_path / "a.db"
    assert invoke("sweep", "--accounting", "--impl", "softmax", "--lengths", "1k", "--db", db).exit_code == 0
    assert_bad_input(invoke("export", "--db", db, "--out", tmp_path / "notes" / "sub" / "x.csv"), in_the_way)
    assert_bad_input(invoke("report", "--db", db, "--out", tmp_path / "notes" / "x.html"), "cannot write the report", in_the_way)


def test_unwritable_and_foreign_databases(tmp_path):
    assert_bad_input(invoke("sweep", *QUICK, "--db", "/proc/attnprof.db"), "cannot create database '/proc/attnprof.db'")
    foreign = tmp_path / "foreign.db"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE people (name TEXT)")
    connection.commit()
    connection.close()
    before = foreign.read_bytes()
    assert_bad_input(invoke("sweep", *QUICK, "--db", foreign), "not an attnprof database")
    assert foreign.read_bytes() == before
    text = tmp_path / "notes.db"
    text.write_text("just some text, not sqlite at all" * 20)
    assert_bad_input(invoke("runs", "--db", text), "not an attnprof database")
    assert_bad_input(invoke("runs", "--db", tmp_path / "missing.db"), "no database")
    from attnprof.store import Store

    Store.open(tmp_path / "empty.db").close()
    empty = CliRunner().invoke(cli, ["runs", "--db", str(tmp_path / "empty.db")])
    assert empty.exit_code == 0 and "no runs in" in empty.output and "attnprof sweep --db" in empty.output  # was a blank line


def test_resume_of_unknown_run_and_with_sweep_options(db):
    assert invoke("sweep", *QUICK, "--db", db).exit_code == 0
    assert_bad_input(invoke("sweep", "--resume", "nosuchrun", "--db", db), "'nosuchrun'")
    elsewhere = db.parent / "elsewhere.db"
    assert_bad_input(invoke("sweep", "--resume", "--db", elsewhere), "no database", "elsewhere.db")
    assert not elsewhere.exists()  # a typo in --db used to leave an empty database behind
    assert_bad_input(invoke("sweep", "--resume", "--lengths", "1k", "--db", db), "--lengths")
    assert_bad_input(invoke("sweep", "--resume", "nosuchrun", "--dry-run", "--db", db), "'nosuchrun'")  # listed the default grid


def test_a_dry_run_of_a_resume_lists_the_cases_without_a_row(db):
    assert invoke("sweep", *QUICK, "--db", db).exit_code == 0
    assert invoke("sweep", "--resume", "--dry-run", "--db", db).output.splitlines() == ["0 cases, 0 refused, 0 to measure"]
    connection = sqlite3.connect(db)
    connection.execute("DELETE FROM measurements WHERE seq_len = 128")
    connection.commit()
    connection.close()
    listed = invoke("sweep", "--resume", "--dry-run", "--db", db).output.splitlines()
    assert len(listed) == 2 and "softmax N=128" in listed[0] and listed[1] == "1 case, 0 refused, 1 to measure"


def test_sweep_show_export_runs_list(db, tmp_path):
    result = invoke("sweep", *QUICK, "--db", db, "--name", "smoke")
    assert result.exit_code == 0, result.output
    assert "N=64" in result.output and "N=128" in result.output and "run " in result.output
    runs = invoke("runs", "--db", db)
    assert "complete" in runs.output and "smoke" in runs.output and "2 cases" in runs.output
    markdown = invoke("show", "latest", "--format", "markdown", "--db", db)
    assert markdown.output.startswith("| impl | N=64 | N=128 |") and "ms /" in markdown.output
    legend = markdown.output.split("\n\n")[1].splitlines()  # between the table and the closing line, blank lines around
    assert legend and all(line.startswith("- ") for line in legend), markdown.output  # one paragraph otherwise (a report audit)
    assert markdown.output.rstrip().splitlines()[-1].startswith("run ")
    records = json.loads(invoke("show", "--format", "json", "--db", db).output)  # one JSON array
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}
    lines = invoke("export", "--format", "jsonl", "--db", db).output.splitlines()
    assert [json.loads(line) for line in lines] == records
    out = tmp_path / "new-dir" / "out.csv"  # the directory is created, as `report --out` does
    assert invoke("export", "latest", "--format", "csv", "--out", out, "--db", db).exit_code == 0
    import pandas as pd

    frame = pd.read_csv(out)
    required = (
        "run_id impl seq_len batch heads head_dim dtype device causal mode status reason median_ms p20_ms p80_ms times_ms "
        "peak_bytes peak_source peak_alloc_bytes peak_reserved_bytes peak_device_bytes peak_rss_bytes flops"
    )
    assert set(required.split()) <= set(frame.columns)
    assert list(frame.seq_len) == [64, 128] and (frame.p20_ms <= frame.median_ms).all() and (frame.median_ms <= frame.p80_ms).all()
    listing = invoke("list")
    assert "softmax" in listing.output and "sdpa-flash" in listing.output and "options" in listing.output
    assert "options: block_size=auto" in listing.output and "None" not in listing.output  # None reads as a missing value
    # what each is checked against, and where a plugin comes from (an audit could not tell from the listing)
    assert "exact: checked against softmax at N <= 256, and on sampled rows and gradients at every length" in listing.output
    # cosFormer's, Combiner's and Nyströmformer's row references check sampled rows at every length: the listing said
    # finite outputs only, which is now said only of an approximation without one
    approximations = {line.split()[0]: listing.output.splitlines()[i + 3] for i, line in enumerate(listing.output.splitlines())
                      if line.split() and line.split()[0] in ("cosformer", "combiner-fixed", "nystromformer")}  # fmt: skip
    assert all("on sampled rows and gradients at every length" in line for line in approximations.values()), approximations
    unrowed = dataclasses.replace(impls.get("nystromformer"), coupled_row_reference=None)
    assert _checked_as(unrowed) == "approximation: checked against its own reference at N <= 256; finite outputs at every length"
    assert "exact, own reference: checked against it at N <= 256, and where heads x N^2 <= 33,554,432" in listing.output  # scaled
    assert "; plugin from fake_impls" in listing.output


def test_dry_run_lists_cases_and_refusals(db):
    result = invoke("sweep", "--impl", "softmax,sdpa-efficient", "--lengths", "1k..4k", "--device", "cpu", "--dry-run", "--db", db)
    assert result.exit_code == 0, result.output
    assert "12 cases, 6 refused, 6 to measure" in result.output
    assert "unsupported: sdpa-efficient runs on cuda, not cpu" in result.output
    assert not db.exists()


def test_every_help_ends_with_an_example():
    commands = [[]] + [[name] for name in cli.commands]
    for command in commands:
        result = invoke(*command, "--help")
        assert result.exit_code == 0
        text = result.output.split("Options:")[0].rstrip()
        example_block = text.split("Example:")[-1]
        assert "Example:" in text and "attnprof " in example_block, f"{command}: {text}"


def test_resume_refuses_a_different_environment(db):
    assert invoke("sweep", *QUICK, "--db", db).exit_code == 0
    connection = sqlite3.connect(db)
    env = json.loads(connection.execute("SELECT env_json FROM runs").fetchone()[0])
    env.update(torch_version="1.0.0", gpu_name="NVIDIA A100")
    connection.execute("UPDATE runs SET env_json = ?, state = 'interrupted'", (json.dumps(env),))
    connection.commit()
    connection.close()
    result = invoke("sweep", "--resume", "latest", "--db", db)
    assert_bad_input(result, "cannot resume", "gpu_name: NVIDIA A100 -> None", "torch_version: 1.0.0 ->")


@pytest.mark.parametrize(
    "args", [["--impl", "softmax", "--impl", "cosformer"], ["--lengths", "64", "--lengths=128"], ["--causal", "no", "--causal", "yes"]]
)
def test_an_option_given_twice_is_refused_not_overwritten(db, args):
    """click keeps the last of two: `--impl softmax --impl cosformer` measured cosformer alone (a robustness audit)."""
    result = invoke("sweep", "--dry-run", *args, "--db", db)
    assert_bad_input(result, f"{args[0]} given twice: give it once")


CHANGED = [("git_sha", "5dbc0a5"), ("attnprof_version", "0.0.1"), ("cpu", "AMD EPYC"), ("cpu_threads", 64)]


@pytest.mark.parametrize(("field", "value"), CHANGED)
def test_resume_refuses_another_attnprof_or_another_cpu(db, field, value):
    """A resume after a commit, or on another node's CPU, was accepted: the run read as one experiment, half old code."""
    assert invoke("sweep", *QUICK, "--db", db).exit_code == 0
    connection = sqlite3.connect(db)
    env = json.loads(connection.execute("SELECT env_json FROM runs").fetchone()[0])
    env[field] = value
    connection.execute("UPDATE runs SET env_json = ?, state = 'interrupted'", (json.dumps(env),))
    connection.commit()
    connection.close()
    assert_bad_input(invoke("sweep", "--resume", "latest", "--db", db), "cannot resume", f"{field}: {value} ->", "in a new run")


def test_accounting_sweep_on_meta_is_exact_and_marks_models(db):
    result = invoke("sweep", "--accounting", "--impl", "softmax,sdpa-flash", "--lengths", "1k,64k", "--causal", "no", "--db", db)
    assert result.exit_code == 0, result.output
    records = {(r["impl"], r["seq_len"]): r for r in json.loads(invoke("show", "--format", "json", "--db", db).output)}
    soft = records[("softmax", 65536)]
    assert soft["device"] == "meta" and soft["peak_source"] == "accounting" and soft["times_ms"] == []
    assert soft["peak_bytes"] > 16 * 65536**2 * 4  # the fp32 N x N softmax of 16 heads
    flash = records[("sdpa-flash", 65536)]
    assert flash["peak_source"] == "model" and "unverified" in flash["reason"]
    assert flash["peak_bytes"] == 16 * 65536 * (64 * 2 + 4)  # output in bf16 + fp32 log-sum-exp
    assert "note: modelled" in result.output


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(db):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_bad_input(invoke("serve", "--port", port, "--db", db), f"127.0.0.1:{port}", "--port")


@pytest.mark.parametrize("command", [["sweep", "--impl", "nope"], ["gate", "rules.toml"]])
def test_a_usage_error_is_the_only_line_on_stderr_of_a_real_process(tmp_path, command):
    """Through a real process (CliRunner hides it): the progress bar used to start before the sweep was
    resolved and left an empty line above the error."""
    import subprocess
    import sys

    (tmp_path / "rules.toml").write_text('[[rule]]\nimpl = "nope"\nmetric = "time"\nmax_exponent = 1\n')
    argv = [sys.executable, "-m", "attnprof", *command, "--db", "x.db"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: ") and "unknown impl 'nope'" in done.stderr and done.stderr.count("\n") == 1, repr(done.stderr)


def test_a_sweep_through_a_pipe_says_its_run_and_where_it_is_in_plain_lines(tmp_path, monkeypatch):
    """Not a terminal: the transient progress bar still left an empty line on stderr, one per sweep in a CI log; then
    nothing at all until the sweep ended, so a CI log showed nothing for minutes and a killed job's log had no run id
    (a user audit). Now the run and its case count first, and where it is at most every LINE_EVERY_S."""
    import re
    import subprocess
    import sys

    from attnprof import progress

    argv = [sys.executable, "-m", "attnprof", "sweep", "--impl", "softmax", "--lengths", "64,128", "--accounting", "--db", "x.db"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    run_id = Store.open(tmp_path / "x.db").resolve_run("latest").run_id
    assert done.returncode == 0 and done.stderr == f"run {run_id}: 4 cases to measure\n" and "softmax" in done.stdout, repr(done.stderr)
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)  # a line after every case
    every = CliRunner().invoke(cli, ["sweep", "--impl", "softmax", "--lengths", "64,128", "--accounting", "--db", str(tmp_path / "y.db")])
    lines = [line for line in every.output.splitlines() if line.startswith("run ") and " to measure" in line or " after " in line]
    assert len(lines) == 5 and lines[0].endswith(": 4 cases to measure"), every.output
    assert re.fullmatch(r"run \S+: 4/4 after \d:\d\d:\d\d, ETA 0:00:00; last softmax .*N=128.*", lines[-1]), lines


def test_serve_refuses_a_file_that_is_not_an_attnprof_database(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(bytes(range(256)) * 12)
    assert_bad_input(invoke("serve", "--db", junk), "junk.db", "not an attnprof database")  # checked before it listens


def test_output_to_a_closed_pipe_a_full_disk_and_a_pipe_wider_than_80_columns(tmp_path, db):
    """Through real processes: click turned a closed pipe into a silent exit 1 and a full disk into a traceback;
    rich wrapped tables at 80 columns whenever stdout was not a terminal (CI logs, `| tee`)."""
    import os
    import shlex
    import subprocess
    import sys

    attnprof = f"{shlex.quote(sys.executable)} -m attnprof"

    def shell(script):
        return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    closed = shell(f"{attnprof} list 2>err.txt | true; echo ${{PIPESTATUS[0]}}")  # `true` is gone before the first write
    assert closed.stdout.strip() == "141" and (tmp_path / "err.txt").read_text() == ""
    if os.path.exists("/dev/full"):
        full = shell(f"{attnprof} list > /dev/full")
        assert full.returncode == 1 and full.stderr == "Error: cannot write the output: No space left on device\n"
    assert invoke("sweep", "--accounting", "--impl", "softmax", "--lengths", "256..64k", "--causal", "no", "--db", db).exit_code == 0
    # a table is printed by rich, whose own broken-pipe exit was 1 in silence: `show | true` read as a failure (an audit)
    table = shell(f"{attnprof} show --db {shlex.quote(str(db))} 2>err.txt | true; echo ${{PIPESTATUS[0]}}")
    assert table.stdout.strip() == "141" and (tmp_path / "err.txt").read_text() == ""
    shown = shell(f"COLUMNS= {attnprof} show --db {shlex.quote(str(db))} | cat")
    assert shown.returncode == 0 and "N=16384" in shown.stdout and "N=65536" in shown.stdout, shown.stdout


def test_a_plugin_that_fails_on_import_is_one_line_naming_it(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "ATTNPROF_PLUGINS": "broken_plugin"}
    done = subprocess.run([sys.executable, "-m", "attnprof", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "'broken_plugin'" in done.stderr and "RuntimeError: boom" in done.stderr


def test_a_plugin_in_the_current_folder_is_found_or_the_error_says_how(tmp_path):
    """`ATTNPROF_PLUGINS=myimpl attnprof sweep` beside myimpl.py: the attnprof command does not search the current
    folder (python -m does), and the error gave no hint; an unknown impl did not mention ATTNPROF_PLUGINS either."""
    import os
    import shutil
    import subprocess
    import sys

    (tmp_path / "myimpl.py").write_text("X = 1\n")
    command = shutil.which("attnprof", path=os.path.dirname(sys.executable))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATTNPROF_PLUGINS")}
    done = subprocess.run(
        [command, "list"], cwd=tmp_path, capture_output=True, text=True, env={**env, "ATTNPROF_PLUGINS": "myimpl"}, timeout=120
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "No module named 'myimpl'; it is in the current folder, which the attnprof command does not search: PYTHONPATH=." in done.stderr
    unknown = subprocess.run(
        [command, "sweep", "--impl", "mine", "--dry-run"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert unknown.returncode == 2 and "(an impl of your own: name its module in ATTNPROF_PLUGINS)" in unknown.stderr, unknown.stderr


@pytest.mark.parametrize("column", ["env_json", "sweep_json"])
def test_a_damaged_record_is_one_line_naming_it(db, column):
    assert invoke("sweep", *QUICK, "--db", db).exit_code == 0
    connection = sqlite3.connect(db)
    connection.execute(f"UPDATE runs SET {column} = '{{'")
    connection.commit()
    connection.close()
    for command in (["show"], ["runs"], ["fit"], ["export"]):
        assert_bad_input(invoke(*command, "--db", db), "the database is damaged", "of run", "not valid JSON")


def test_serve_on_an_address_this_machine_lacks_asks_for_another_host(db):
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no machine has it; the message used to advise another --port
    assert_bad_input(invoke("serve", "--host", "192.0.2.1", "--db", db), "192.0.2.1", "--host")


def test_show_prints_a_large_run_as_plain_lines(tmp_path):
    """A run of more configurations than LARGE_TABLE_ROWS: one plain line each, no box drawing (rich took 7.2 s for
    5,000 rows); a small run keeps the drawn table."""
    from attnprof.records import Measurement, RunInfo, Status
    from attnprof.spec import Case
    from attnprof.table import LARGE_TABLE_ROWS

    db = tmp_path / "large.db"
    store = Store.open(db)
    for run_id, configurations in (("20260101-000000-small", 3), ("20260101-000001-large", LARGE_TABLE_ROWS + 1)):
        store.add_run(RunInfo(run_id, run_id[:8], {}, {}, "0.1.0", state="running"))
        for batch in range(1, configurations + 1):
            m = Measurement(Case(impl="softmax", seq_len=64, batch=batch), Status.OK, times_ms=[2.0], peak_bytes=2048)
            store.add_measurement(run_id, m, "2026-01-01T00:00:00")
        store.set_run_state(run_id, "complete")
    store.close()
    large = invoke("show", "20260101-000001-large", "--db", str(db))
    lines = large.output.splitlines()
    assert large.exit_code == 0 and "┃" not in large.output and lines[1].split() == ["impl", "N=64"]
    assert sum(line.startswith("softmax batch=") and line.endswith("2 ms / 2.0 KiB") for line in lines) == LARGE_TABLE_ROWS + 1
    small = invoke("show", "20260101-000000-small", "--db", str(db))
    assert small.exit_code == 0 and "┃" in small.output


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_progress_bar_keeps_its_count_and_eta_on_a_narrow_terminal(width):
    """At 80 columns the case's description took the line: "sdpa-math N=2048 … ━━━╺ 96/… 0:0… ETA 0:00:…" (a user
    audit). The count, the times and the ETA come first now, the case after them, cut to what is left."""
    import io

    from rich.console import Console

    from attnprof.progress import SweepProgress
    from attnprof.records import Measurement, Status
    from attnprof.spec import Case

    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    case = Case(impl="sdpa-math", seq_len=2048, causal=True, mode="fwd_bwd")
    with SweepProgress() as progress:
        progress._bar, progress._plain = SweepProgress._started_bar(console), False
        progress._bar.stop()  # no live refresh: the line is drawn once, below
        progress.begin(110)
        for _ in range(96):
            progress.done(case, Measurement(case=case, status=Status.OOM))
        progress.start(case)
        with console.capture() as shown:
            console.print(progress._bar.make_tasks_table(progress._bar.tasks))
    line = shown.get().rstrip("\n")
    assert "\n" not in line and len(line) <= width and " 96/110 " in line and "ETA" in line, repr(line)
    assert ("96 not ok sdpa-math" if width >= 80 else "96 not ok") in line and line.endswith("fwd_bwd" if width >= 120 else "…"), repr(line)


def test_list_gives_an_impl_without_a_description_no_blank_line():
    """A plugin registered without `description` got an empty line, read as a row missing (a plugin author's audit)."""
    from attnprof import impls
    from attnprof.impls.base import AttentionImpl
    from attnprof.impls.softmax import softmax_attention

    impls.register(AttentionImpl(name="undescribed", family="test", fn=softmax_attention))
    try:
        listed = CliRunner().invoke(cli, ["list"])
    finally:
        impls._REGISTRY.pop("undescribed", None)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("undescribed "))
    assert lines[at + 1].strip().startswith("options:") and lines[at + 2].strip().startswith("exact: checked"), lines[at : at + 3]
    assert all(line.strip() for line in lines[at : at + 3])
