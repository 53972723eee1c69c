"""A sweep killed with SIGKILL or stopped with Ctrl-C or SIGTERM loses nothing and resumes where it stopped;
readers see rows while the sweep writes (WAL)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from small_sweeps import assert_gone_soon

import attnprof
from attnprof.errors import UsageError
from attnprof.store import Store

TESTS = Path(__file__).resolve().parent  # on PYTHONPATH (conftest): plugin commands name it (fake_impls' folder)

SWEEP = [sys.executable, "-m", "attnprof", "sweep", *"--impl softmax,sdpa-math --lengths 64..2k --heads 2 --head-dim 16".split(),
         *"--device cpu --causal both --warmup-ms 1 --rep-ms 30".split(), "--name", "resume me"]  # fmt: skip
TOTAL = 2 * 6 * 2


def rows(db):
    store = Store.open(db, create=False)
    try:
        run = store.resolve_run("latest")
        return run, {m.case.key: m for m in store.measurements(run.run_id)}
    finally:
        store.close()


def start_and_wait_for(db, count, sweep=SWEEP):
    """Start a sweep and read the database while it writes, until `count` rows are there."""
    process = subprocess.Popen([*sweep, "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline and (not seen or seen[-1] < count):
        if db.exists():
            try:
                seen.append(len(rows(db)[1]))
            except UsageError:
                assert not seen, "the run vanished while the sweep was writing"  # before the run row exists: not ready yet
            except Exception as error:  # a reader must never fail while the writer works
                process.kill()
                raise AssertionError(f"read failed during the sweep: {error}") from error
        time.sleep(0.05)
    assert seen and seen[-1] >= count, f"sweep too slow: {seen[-5:]}"
    assert seen == sorted(seen)  # rows only ever appear, one committed transaction at a time
    return process


def test_kill_9_then_resume_loses_nothing_and_measures_nothing_twice(db):
    process = start_and_wait_for(db, 5)
    process.kill()
    process.wait()
    run, before = rows(db)
    # stored as running (nothing could record the end), read as interrupted: no process holds the run any more
    assert run.state == "interrupted" and 5 <= len(before) < TOTAL
    assert run.command.endswith(f"--name 'resume me' --db {db}")  # stored shell-quoted: the Reproduce views paste it
    resumed = subprocess.run(
        [sys.executable, "-m", "attnprof", "sweep", "--resume", "--db", str(db)], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    run_after, after = rows(db)
    assert run_after.run_id == run.run_id and run_after.state == "complete"
    assert len(after) == TOTAL
    for key, m in before.items():  # the rows saved before the kill are untouched: nothing measured twice
        assert after[key].times_ms == m.times_ms and after[key].wall_s == m.wall_s
    again = subprocess.run(
        [sys.executable, "-m", "attnprof", "sweep", "--resume", "--db", str(db)], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and again.stderr == f"run {run.run_id} already has a row for every case: nothing left to measure\n"


@pytest.mark.parametrize(
    "stops", [[signal.SIGINT], [signal.SIGTERM], [signal.SIGHUP], [signal.SIGINT] * 3], ids=["ctrl-c", "sigterm", "sighup", "ctrl-c-thrice"]
)
def test_ctrl_c_or_sigterm_saves_what_finished_and_prints_the_resume_command(db, stops):
    """SIGTERM is how CI cancels a job and how `timeout` stops one: it must leave a resumable run, not one
    that says 'running' forever. Ctrl-C pressed again while the workers stop used to end in click's bare
    'Aborted!' (exit 1) without the resume command. SIGHUP (the terminal closed, an ssh session dropped) ended it
    with 129 and no word on how to resume (a robustness audit)."""
    process = start_and_wait_for(db, 3)
    for stop in stops:
        process.send_signal(stop)
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + stops[0], stderr  # 130 Ctrl-C, 143 SIGTERM, as a shell reports them
    run, saved = rows(db)
    assert run.state == "interrupted" and len(saved) >= 3
    assert f"attnprof sweep --resume {run.run_id} --db {db}" in stderr
    assert "Traceback" not in stderr
    shown = subprocess.run([sys.executable, "-m", "attnprof", "show", "--db", str(db)], capture_output=True, text=True, timeout=120)
    assert f"interrupted: {len(saved)} of {TOTAL} cases, the rest with attnprof sweep --resume {run.run_id}" in shown.stdout


def test_a_second_process_cannot_measure_a_run_that_is_being_measured(db):
    """Two `--resume` of one run measured the same missing cells at once (each skewing the other's timings) and
    the store kept whichever row came last: an audit saw 552 ms printed and 664 ms stored. The same file through a
    symlink took a lock of its own and measured alongside (a database audit)."""
    # its last causal=no case never ends: the sweep is still measuring however slowly the two resumes start
    impls = SWEEP.index("--impl") + 1
    endless = [*SWEEP[:impls], "softmax,fault:kind=sleep,at_length=2048,on_data=1", *SWEEP[impls + 1 :]]
    process = start_and_wait_for(db, 3, endless)
    link = db.parent / "link.db"
    link.symlink_to(db)
    try:
        # both at once, while the first sweep still measures (one after the other, it could finish meanwhile)
        tries = [subprocess.Popen([sys.executable, "-m", "attnprof", "sweep", "--resume", "--db", str(path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for path in (db, link)]  # fmt: skip
        for second in tries:
            _, stderr = second.communicate(timeout=300)
            lines = stderr.strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1 and "is being measured by another process" in lines[0], stderr
            assert f"pid {process.pid}" in lines[0]
        assert rows(db)[0].state == "running"  # the refusals left the run as it was
    finally:
        process.kill()
        process.wait()


def test_a_full_disk_keeps_what_was_measured_and_says_how_to_resume_in_two_lines(db, monkeypatch):
    """SQLite's own 'database or disk is full' (SQLITE_FULL), made real by capping the file's pages once the run is
    recorded (a full filesystem needs root to make). It ended in a sqlite3 traceback, without the resume command."""
    from click.testing import CliRunner

    from attnprof.cli import cli

    real_add_run = Store.add_run

    def add_run_then_cap(self, run):
        real_add_run(self, run)
        pages = self.connection.execute("PRAGMA page_count").fetchone()[0]
        self.connection.execute(f"PRAGMA max_page_count = {pages + 1}")  # room for a few rows, not for 64

    monkeypatch.setattr(Store, "add_run", add_run_then_cap)
    args = ["sweep", "--accounting", "--impl", "softmax,sdpa-flash", "--lengths", "256..8k:+256", "--db", str(db)]
    result = CliRunner().invoke(cli, args)
    lines = result.stderr.strip().splitlines() if hasattr(result, "stderr") else result.output.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "cannot write the database" in lines[-2] and "database or disk is full" in lines[-2]
    assert lines[-1].endswith(f"attnprof sweep --resume {rows(db)[0].run_id} --db {db}")
    monkeypatch.undo()  # room again: the resume measures the rest, and nothing twice
    run, saved = rows(db)
    assert run.state == "interrupted" and 0 < len(saved) < 128
    assert CliRunner().invoke(cli, ["sweep", "--resume", "--db", str(db)]).exit_code == 0
    after = rows(db)[1]
    assert len(after) == 128 and all(after[key].flops == m.flops for key, m in saved.items())


def _command_line(process) -> str:
    """A child's command line; '' for one ending as it is read (a zombie has none: psutil raised ZombieProcess, and the
    test failed on a helper process of the sweep's, not on its worker)."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def test_a_killed_sweeps_worker_does_not_go_on_measuring(tmp_path):
    """SIGKILL of the sweep left its worker measuring the case in flight to the end (45 s at 99% CPU in an audit),
    beside the resume started at once."""
    import psutil

    # a case that never ends: a --rep-ms budget ended at the timing's 1000 repetitions, on a fast machine within the 5 s below
    case = "--impl fault:kind=sleep,on_data=1 --lengths 256 --causal no --device cpu --timeout 600"
    endless = [sys.executable, "-m", "attnprof", "sweep", *case.split()]
    process = subprocess.Popen([*endless, "--db", str(tmp_path / "long.db")])
    try:
        deadline, workers = time.monotonic() + 60, []
        while time.monotonic() < deadline and not workers:
            workers = [p for p in psutil.Process(process.pid).children() if "spawn_main" in _command_line(p)]
            time.sleep(0.2)
        assert workers, "no worker started"
        time.sleep(5)  # past start-up: inside the endless case
        assert workers[0].is_running() and not rows(tmp_path / "long.db")[1]
    finally:
        process.kill()
        process.wait()
    gone, alive = psutil.wait_procs(workers, timeout=5)
    for orphan in alive:
        orphan.kill()
    assert not alive, "the worker outlived its sweep"


@pytest.mark.parametrize("kind", ["spawn", "spawn_session"])
def test_a_killed_sweep_takes_the_processes_its_impl_started_along(tmp_path, kind):
    """The worker leads its own process group, so a kill of the sweep's group no longer reached what an impl spawned:
    the worker's parent watch kills its whole group when the sweep is gone, and its descendants in sessions of their own."""
    pid_file = tmp_path / "child.pid"
    sweep = [sys.executable, "-m", "attnprof", "sweep", "--impl", f"fault:kind={kind},pid_file={pid_file},on_data=1", "--lengths", "64",
             "--causal", "no", "--device", "cpu", "--heads", "2", "--head-dim", "16", "--db", str(tmp_path / "spawn.db")]  # fmt: skip
    process = subprocess.Popen(sweep, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (pid_file.exists() and pid_file.read_text()):
            time.sleep(0.2)
        child = int(pid_file.read_text())
    finally:
        process.kill()  # SIGKILL: nothing of the sweep's own runs
        process.wait()
    assert_gone_soon(child, "the killed sweep")


def test_retry_measures_again_a_transient_kill_and_the_lengths_skipped_after_it(db, tmp_path):
    """A worker killed once by someone else (SIGKILL) was a run's last word on that cell and, skipped after it, on every
    larger length of its line: `--resume` measured only cells without a row (a robustness audit). `--retry crashed`
    measures them again, each new row replacing the old one, and leaves the other rows as they were."""
    from click.testing import CliRunner

    from attnprof.cli import cli

    flag = tmp_path / "kill-while-here"
    flag.write_text("")
    impl = f"fault:kind=exit_while_file,at_length=128,pid_file={flag},softmax"
    args = ["--impl", impl, "--lengths", "64..256", "--heads", "2", "--head-dim", "16", "--device", "cpu", "--causal", "no"]
    first = CliRunner().invoke(cli, ["sweep", *args, "--warmup-ms", "1", "--rep-ms", "5", "--db", str(db)])
    assert first.exit_code == 0, first.output
    run, before = rows(db)
    assert sorted(str(m.status) for m in before.values()) == ["crashed", "ok", "ok", "ok", "ok", "skipped"]
    flag.unlink()  # whatever killed it has gone
    bare = CliRunner().invoke(cli, ["sweep", "--resume", "latest", "--db", str(db)])
    assert "nothing left to measure" in bare.output  # a resume alone keeps every row
    dry = CliRunner().invoke(cli, ["sweep", "--resume", "latest", "--retry", "crashed", "--dry-run", "--db", str(db)])
    assert dry.output.strip().endswith("2 cases, 0 refused, 2 to measure"), dry.output
    again = CliRunner().invoke(cli, ["sweep", "--resume", "latest", "--retry", "crashed", "--db", str(db)])
    assert again.exit_code == 0, again.output
    run_after, after = rows(db)
    assert run_after.run_id == run.run_id and run_after.state == "complete" and set(after) == set(before)
    assert all(str(m.status) == "ok" for m in after.values()), [(m.case.label, m.case.seq_len, m.reason) for m in after.values()]
    kept = [key for key, m in before.items() if str(m.status) == "ok"]
    assert all(after[key].times_ms == before[key].times_ms for key in kept)  # not measured again
    wrong = CliRunner().invoke(cli, ["sweep", *args, "--retry", "crashed", "--db", str(db)])
    assert wrong.exit_code == 2 and "--retry crashed goes with --resume RUN" in wrong.output, wrong.output
    unknown = CliRunner().invoke(cli, ["sweep", "--resume", "latest", "--retry", "ok", "--db", str(db)])
    assert unknown.exit_code == 2 and "bad retry 'ok': choose among crashed, timeout, oom, error" in unknown.output, unknown.output


def test_a_resumes_dry_run_says_which_cases_a_kept_failure_will_skip(db):
    """Listed as "to measure", they then got `skipped` rows (a robustness audit)."""
    import sqlite3

    from click.testing import CliRunner

    from attnprof.cli import cli

    args = ["--impl", "fault:kind=exit,at_length=128", "--lengths", "64..256", "--heads", "2", "--head-dim", "16", "--device", "cpu"]
    assert CliRunner().invoke(cli, ["sweep", *args, "--causal", "no", "--warmup-ms", "1", "--rep-ms", "5", "--db", str(db)]).exit_code == 0
    connection = sqlite3.connect(db)  # as if stopped before N = 256
    connection.execute("DELETE FROM measurements WHERE seq_len = 256")
    connection.execute("UPDATE runs SET state = 'interrupted'")
    connection.commit()
    connection.close()
    dry = CliRunner().invoke(cli, ["sweep", "--resume", "latest", "--dry-run", "--db", str(db)])
    listed = dry.output.strip().splitlines()
    assert listed[-1] == "1 case, 0 refused, 1 skipped, 0 to measure", dry.output
    assert listed[0].endswith("-> skipped: the same configuration had its worker killed (SIGKILL, the OOM killer's signal) at N=128")


def test_a_sweep_started_with_sighup_ignored_outlives_its_terminal(db):
    """`nohup attnprof sweep` ignores SIGHUP so that a long sweep outlives an ssh session; the sweep's own SIGHUP handler
    stopped it there all the same (a review)."""
    ignore_hangup = lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)  # noqa: E731  (what nohup does)
    sweep = [*("64..256" if arg == "64..2k" else arg for arg in SWEEP[:-2]), "--name", "nohup", "--db", str(db)]
    process = subprocess.Popen(sweep, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_hangup)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not (db.exists() and _has_rows(db)):
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()  # still measuring when the session drops
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=300)
    run, saved = rows(db)
    assert process.returncode == 0 and run.state == "complete" and len(saved) == 2 * 3 * 2, stderr


def _has_rows(db) -> bool:
    try:
        return len(rows(db)[1]) > 0
    except UsageError:  # the run row not written yet
        return False


def test_a_retry_stopped_after_the_failure_leaves_no_stale_skip_and_says_how_to_go_on(db, tmp_path, capsys):
    """A --retry stopped once the crashed length measured ok left the lengths after it "skipped" after a failure no row
    holds; the printed resume dropped --retry, and following it marked the run complete with those skips (a review)."""
    import sqlite3

    from click.testing import CliRunner

    from attnprof.cli import cli
    from attnprof.cli.group import exit_interrupted
    from attnprof.runner import SweepInterrupted

    args = ["--impl", "fault:kind=exit,at_length=128", "--lengths", "64..256", "--heads", "2", "--head-dim", "16", "--device", "cpu"]
    first = CliRunner().invoke(cli, ["sweep", *args, "--causal", "no", "--warmup-ms", "1", "--rep-ms", "5", "--db", str(db)])
    assert first.exit_code == 0, first.output
    # the complete run's crashed row said "resume the run once fixed", and nothing said how (a robustness audit)
    said = "1 crashed row: once the cause is fixed, measure them again with: "
    said += f"PYTHONPATH={TESTS} ATTNPROF_PLUGINS=fake_impls attnprof sweep --resume "
    assert said in first.stdout and f" --retry crashed --db {db}" in first.stdout, first.stdout
    markdown = CliRunner().invoke(cli, ["show", "latest", "--format", "markdown", "--db", str(db)]).stdout
    assert f" cases in {db}\n\n1 crashed row: once the cause" in markdown, markdown  # a paragraph of its own (a review)
    connection = sqlite3.connect(db)  # as a retry leaves it when stopped after measuring N = 128 again, ok this time
    connection.execute("UPDATE measurements SET status = 'ok', reason = '' WHERE seq_len = 128")
    connection.execute("UPDATE runs SET state = 'interrupted'")
    connection.commit()
    connection.close()
    dry = CliRunner().invoke(cli, ["sweep", "--resume", "latest", "--dry-run", "--db", str(db)])
    assert dry.output.strip().splitlines()[-1] == "1 case, 0 refused, 1 to measure" and "N=256" in dry.output, dry.output
    with pytest.raises(SystemExit):
        exit_interrupted(SweepInterrupted("r1", 3, 3, retry=("crashed",)), "a.db")
    said = capsys.readouterr().err.splitlines()
    assert said == ["Interrupted: 3 of 3 cases saved in run r1 (the crashed rows not reached yet keep their old result).",
                    f"Resume with: attnprof sweep --resume r1 --retry crashed --db {Path('a.db').absolute()}"]  # fmt: skip
    # a run of a plugin's impl: its resume needs the plugin modules, which the command printed left out (an audit)
    run_id = attnprof.load_measurements("latest", db)["run_id"].iloc[0]
    with pytest.raises(SystemExit):
        exit_interrupted(SweepInterrupted(run_id, 2, 3), db)
    resume = f"Resume with: PYTHONPATH={TESTS} ATTNPROF_PLUGINS=fake_impls attnprof sweep --resume {run_id} --db {db}"
    assert capsys.readouterr().err.splitlines()[-1] == resume


def test_a_retry_killed_outright_is_resumed_as_a_retry(db, tmp_path):
    """A --retry run killed with SIGKILL (an OOM killer, a lost CI job) could record nothing: its run then read
    "interrupted ... the rest with attnprof sweep --resume RUN" without --retry, and following that called the run
    complete with the crashed rows the retry had not reached (a robustness audit). The retry is recorded when it
    starts, and a resume of the run goes on with it."""
    import json
    import os
    import sqlite3

    flag = tmp_path / "crash-while-here"
    flag.touch()
    impl = f"fault:kind=exit_while_file,pid_file={flag}"
    args = ["--impl", impl, "--lengths", "64,128", "--heads", "2", "--head-dim", "16", "--device", "cpu", "--causal", "no"]
    first = subprocess.run(
        [sys.executable, "-m", "attnprof", "sweep", *args, "--rep-ms", "5", "--db", str(db)], capture_output=True, timeout=300
    )
    assert first.returncode == 0, first.stderr
    statuses = lambda: sorted(row[0] for row in sqlite3.connect(db).execute("SELECT status FROM measurements"))  # noqa: E731
    pending = lambda: json.loads(sqlite3.connect(db).execute("SELECT env_json FROM runs").fetchone()[0]).get("retry_pending")  # noqa: E731
    assert statuses() == ["crashed", "skipped"]
    flag.unlink()  # the fault is gone: a retry measures both again
    retry = subprocess.Popen([sys.executable, "-m", "attnprof", "sweep", "--resume", "latest", "--retry", "crashed", "--db", str(db)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while pending() is None and retry.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(retry.pid, signal.SIGKILL)  # before its worker measured anything: it starts torch first (seconds)
    retry.wait(timeout=60)
    assert pending() == ["crashed"] and statuses() == ["crashed", "skipped"]
    shown = subprocess.run(
        [sys.executable, "-m", "attnprof", "show", "latest", "--db", str(db)], capture_output=True, text=True, timeout=300
    )
    assert "attnprof sweep --resume " in shown.stdout + shown.stderr and " --retry crashed --db " in shown.stdout + shown.stderr, shown
    assert len(attnprof.plan(None, db, resume="latest")) == 2  # as the note said before: no --retry, and it retries still
    # another status asked for adds to the pending one: `--retry timeout` replaced it and completed the run (a review)
    attnprof.run_sweep(None, db, resume="latest", retry="timeout")
    assert statuses() == ["ok", "ok"] and pending() is None
    assert attnprof.load_measurements("latest", db)["status"].tolist() == ["ok", "ok"]


def test_a_timeout_is_retried_at_a_longer_limit(db):
    """A resume refused every sweep flag, --timeout too, so a case that timed out at the run's own limit timed out again
    at every retry the summary advised (a README audit). A resume takes --timeout, and the advice names a longer one."""
    from click.testing import CliRunner

    from attnprof.cli import cli

    args = ["--impl", "softmax", "--lengths", "1k", "--causal", "no", "--device", "cpu", "--warmup-ms", "1"]  # 3 s of timing
    first = CliRunner().invoke(cli, ["sweep", *args, "--rep-ms", "3000", "--timeout", "1", "--db", str(db)])
    assert first.exit_code == 0 and "1 timeout row: once the cause is fixed, measure them again with: " in first.stdout, first.output
    assert " --retry timeout --db " in first.stdout and first.stdout.rstrip().endswith(" --timeout 2"), first.stdout
    refused = CliRunner().invoke(cli, ["sweep", "--resume", "latest", "--rep-ms", "5", "--db", str(db)])
    assert refused.exit_code == 2 and "(all but --timeout); drop --rep-ms" in refused.output, refused.output
    bad = CliRunner().invoke(cli, ["sweep", "--resume", "latest", "--retry", "timeout", "--timeout", "0", "--db", str(db)])
    assert bad.exit_code == 2 and "bad timeout 0.0: must be positive" in bad.output, bad.output
    again = CliRunner().invoke(cli, ["sweep", "--resume", "latest", "--retry", "timeout", "--timeout", "60", "--db", str(db)])
    assert again.exit_code == 0, again.output
    assert attnprof.load_measurements("latest", db)["status"].tolist() == ["ok"]
    with pytest.raises(UsageError, match="timeout= goes with resume"):
        attnprof.run_sweep(attnprof.Sweep(impls="softmax", lengths=(64,), device=("cpu",)), db, timeout=5)
