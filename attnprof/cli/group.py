"""The `attnprof` click group and what every command shares: bad input as one line and exit 2, --db."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import click

from attnprof.errors import STOP_SIGNALS, StoreFault, Terminated, UsageError, signal_of

DB_KEY = "attnprof.db"  # where --db leaves its value in the context's meta


class BadInput(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class OnceCommand(click.Command):
    """A command whose options that take a value are given once each: click keeps the last of two, so
    `--impl softmax --impl cosformer` measured cosformer alone, and `--lengths 256 --lengths 512` N = 512 alone, without
    a word (a robustness audit); within one option a value twice is refused already."""

    def parse_args(self, ctx, args):
        repeated = _repeated_option(self, args)
        if repeated:
            takes_lists = any(repeated in p.opts and "comma" in (p.help or "").lower() for p in self.params if isinstance(p, click.Option))
            hint = " (a comma-separated list takes several values)" if takes_lists else ""  # not for --db (a review)
            raise UsageError(f"{repeated} given twice: give it once{hint}")
        return super().parse_args(ctx, args)


def _repeated_option(command: click.Command, args) -> str | None:
    """The first option taking a value (not a flag, not `multiple`) that `args` give twice, as first written."""
    once = {opt: param.name for param in command.params if isinstance(param, click.Option) and not (param.is_flag or param.multiple)
            for opt in param.opts}  # fmt: skip
    seen: dict[str, str] = {}
    for arg in args:
        if arg == "--":  # what follows is arguments, not options
            break
        opt = arg.split("=", 1)[0]
        name = once.get(opt)
        if name is not None and name in seen:
            return seen[name]
        if name is not None:
            seen[name] = opt
    return None


class AttnprofGroup(click.Group):
    command_class = OnceCommand

    def invoke(self, ctx):
        with _first_stop_only():
            return self._invoke(ctx)

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as error:
            raise BadInput(str(error)) from None
        except StoreFault as fault:  # disk full while measuring: one line and the way on, not sqlite3's traceback
            click.echo(f"Error: cannot write the database {str(fault.db)!r}: {fault.reason}", err=True)
            if fault.run_id:
                click.echo(f"The cases measured before are saved in run {fault.run_id}; once it can be written, resume with: "
                           f"{_resume_command(fault.run_id, fault.db)}", err=True)  # fmt: skip
            sys.exit(1)
        except click.UsageError as error:
            raise BadInput(" ".join(error.format_message().split())) from None
        except sqlite3.Error as error:  # a damaged file (a page overwritten), or one without a column: found only once read
            from attnprof.api import default_db

            db = ctx.meta.get(DB_KEY) or default_db()
            raise BadInput(f"cannot read the database {str(db)!r}: {error} (damaged? restore a copy, or give another --db)") from None
        except KeyboardInterrupt as stop:  # before a sweep's run exists (torch loading) or in a reader: click said only "Aborted!", exit 1
            click.echo("Interrupted.", err=True)
            sys.exit(128 + signal_of(stop))
        except OSError as error:
            if error.errno not in OUTPUT_FAULTS:
                raise
            _silence_stdout()  # else the interpreter's last flush raises again
            if error.errno == errno.EPIPE:  # the reader went away (`| head -1`): what a shell reports for a tool SIGPIPE ended
                sys.exit(128 + signal.SIGPIPE)
            raise click.ClickException(f"cannot write the output: {error.strerror}") from None


@contextlib.contextmanager
def _first_stop_only():
    """Ctrl-C, SIGTERM or SIGHUP stops a command once; any later one is ignored while it saves and exits. People press
    Ctrl-C twice, and a second one landing while a sweep stopped its workers and saved its state replaced the
    saved-and-resumable message by a bare 'Aborted!' or killed the process. Main thread only (CliRunner's too)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    stopped = []

    def stop(signum, frame):
        stopped.append(signum)
        for each in previous:
            signal.signal(each, signal.SIG_IGN)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    # A signal ignored when we started stays ignored: `nohup attnprof sweep` ignores SIGHUP so that the sweep outlives
    # its terminal or ssh session (handled here, it stopped the sweep when the session dropped: a review)
    handled = [signum for signum in STOP_SIGNALS if signum != getattr(signal, "SIGHUP", None) or signal.getsignal(signum) != signal.SIG_IGN]
    previous = {signum: signal.signal(signum, stop) for signum in handled}
    try:
        yield
    finally:
        if not stopped:  # once stopped the process is on its way out: keep ignoring, through the interpreter's exit too
            for signum, handler in previous.items():
                signal.signal(signum, handler)


OUTPUT_FAULTS = (errno.EPIPE, errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EDQUOT)  # stdout to a closed pipe or a full disk


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # no descriptor behind stdout (an in-process runner): nothing to flush
        pass


def output_console():
    """A rich Console for stdout. Off a terminal (a pipe, `tee`, a CI log) rich assumes 80 columns and wraps tables
    mid-word; there the width is $COLUMNS or wide enough for any table, and lines end where the table does."""
    from rich.console import Console

    class PipedConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich's own exits 1 in silence: `attnprof sweep | true` read as a failed sweep of a complete run (a
            # robustness audit). As the OSError it is, the command's handler ends it as a closed pipe does elsewhere.
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return PipedConsole()
    return PipedConsole(width=1000)


@click.group(cls=AttnprofGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="attnprof")
def cli():
    """Memory and throughput profiler for attention implementations.

    \b
    Example:
      attnprof sweep --impl softmax,sdpa --lengths 256..2k --device cpu
    """


def db_option(function):
    return click.option(
        "--db",
        type=click.Path(),  # a directory is refused in _database_file, which can name $ATTNPROF_DB when it came from there
        default=None,
        envvar="ATTNPROF_DB",  # so that a bad $ATTNPROF_DB is refused as --db is (SQLite said "unable to open database file")
        callback=_database_file,
        help="Database file (default: $ATTNPROF_DB or reports/attnprof.db).",
    )(function)


def _database_file(ctx, param, value):
    """`--db ""` (an unset shell variable) wrote to the default database as if no --db were given."""
    from click.core import ParameterSource

    name = "$ATTNPROF_DB" if ctx.get_parameter_source(param.name) == ParameterSource.ENVIRONMENT else "--db"
    if value is not None and not value.strip():
        raise UsageError(f"bad {name} '': an empty path (an unset variable?); give a database file")
    if value is not None and Path(value).is_dir():
        raise UsageError(f"bad {name} {value!r}: a directory; give a database file, e.g. {str(Path(value) / 'attnprof.db')!r}")
    ctx.meta[DB_KEY] = value  # shared with the group's context: an unreadable file's error names it
    return value


def exit_interrupted(stop, db) -> None:
    retry = ",".join(getattr(stop, "retry", ()))
    # a --retry stopped early keeps the old rows it had not reached: "4 of 4 saved" said nothing of them (a review)
    again = f" (the {retry} rows not reached yet keep their old result)" if retry else ""
    click.echo(f"Interrupted: {stop.done} of {stop.total} cases saved in run {stop.run_id}{again}.", err=True)
    click.echo(f"Resume with: {_resume_command(stop.run_id, db, retry)}", err=True)
    sys.exit(128 + stop.signum)  # 130 Ctrl-C, 143 SIGTERM: what a shell reports for a process that signal ended


def _resume_command(run_id: str, db, retry: str = "") -> str:
    """runinfo.resume_command with the plugin modules the run recorded (none where the database cannot be read)."""
    from attnprof.api import default_db
    from attnprof.dashboard.runinfo import resume_command
    from attnprof.store import Store

    db = db or default_db()
    env = {}
    with contextlib.suppress(Exception):  # the stop's own message comes first: an unreadable file costs only the plugins
        store = Store.open(db, create=False)
        try:
            env = store.resolve_run(run_id).env
        finally:
            store.close()
    return resume_command(run_id, db, env.get("plugins") or (), retry, env.get("plugin_path") or ())


def print_summary(db, run_id: str, output_format: str) -> None:
    from attnprof.dashboard.runinfo import unfinished_note
    from attnprof.spec import Sweep
    from attnprof.store import Store
    from attnprof.table import (
        cpu_heap_note,
        is_large,
        markdown_table,
        marks_note,
        peak_sources_text,
        reasons_list,
        rich_tables,
        summary_grid,
        summary_text,
    )

    store = Store.open(db, create=False)
    try:
        run = store.resolve_run(run_id)
        measurements = store.measurements(run.run_id)
    finally:
        store.close()
    if measurements and output_format == "markdown":  # no table for no cases: the last line says "0 cases"
        click.echo(markdown_table(measurements), nl=False)
    elif measurements:
        what = "peak memory" if run.sweep.get("accounting") else "median time / peak memory"  # accounting runs are not timed
        what += peak_sources_text(measurements)
        title = f"run {run.run_id}  ({what})"
        grid = summary_grid(measurements)  # built once: 0.13 s a build at 50k cells
        if is_large(len(grid[1])):  # lines, not a drawn table: fast however many configurations
            click.echo(f"{title}\n{summary_text(measurements, grid)}")
        else:
            console = output_console()
            for table in rich_tables(measurements, title=title, grid=grid, width=console.width):
                console.print(table)
    notes = list(filter(None, [marks_note(measurements), *reasons_list(measurements), cpu_heap_note(run.env, measurements)]))
    if notes and output_format == "markdown":
        click.echo()  # a line right below a Markdown table is read as one of its rows
    if output_format == "markdown":  # Markdown joins plain lines into one paragraph: a list keeps them apart (a report audit)
        for line in (part.strip() for note in notes for part in note.splitlines()):  # a note of several lines: one item each
            click.echo(f"- {line}")
        if notes:
            click.echo()  # else the closing line joins the last item
    for line in notes if output_format != "markdown" else ():
        click.echo(f"  {line}")
    unfinished = unfinished_note(run, len(measurements), db)
    cases = f"{len(measurements)} case{'s' * (len(measurements) != 1)}"
    click.echo(f"run {run.run_id}: {cases} in {db}" + (f"; {unfinished}" if unfinished else ""))
    again = sorted({m.status.value for m in measurements} & {"crashed", "timeout"})
    if again and not unfinished:  # a complete run's crashed rows said "resume the run once fixed", and nothing said how
        count = sum(m.status.value in again for m in measurements)
        retry = _resume_command(run.run_id, db, ",".join(again))
        if "timeout" in again:  # the run's own limit would time them out again (a README audit)
            retry += f" --timeout {2 * float(run.sweep.get('timeout') or Sweep().timeout):g}"
        if output_format == "markdown":  # else Markdown joins it to the line above as one paragraph (a review)
            click.echo()
        click.echo(f"{count} {' or '.join(again)} row{'s' * (count != 1)}: once the cause is fixed, measure them again with: {retry}")
