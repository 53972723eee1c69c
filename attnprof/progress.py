"""The sweep's progress on stderr: on a terminal a bar (ETA, the case being measured, a running count of failures);
elsewhere (CI, `> log`, `| tee`) a line now and then, which a bar cannot be there."""

from __future__ import annotations

import time

from attnprof.progress_base import Progress
from attnprof.records import Status

BAR_WIDTH = 20
LINE_EVERY_S = 30.0  # off a terminal: a progress line at most this often (a CI log of a 50,000-case sweep stays short)


class SweepProgress(Progress):
    """A rich progress bar on stderr when it is a terminal; otherwise plain lines: the run and its case count at the
    start, then where the sweep is at most every LINE_EVERY_S. Off a terminal a sweep printed nothing until it ended,
    so a CI log showed nothing for minutes and a killed job's log had no run id to resume (a user audit)."""

    def __enter__(self) -> SweepProgress:
        self._bar, self._failed, self.total = None, 0, None  # total: the cases the sweep had left to measure
        self._run_id, self._plain, self._done, self._started, self._said, self._task = "", False, 0, 0.0, 0.0, None
        return self

    def named(self, run_id: str) -> None:
        self._run_id = run_id

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def begin(self, total: int) -> None:
        """The bar starts with the first sweep, not on entry: a usage error found while the sweep is
        resolved then prints alone, without the line a started bar leaves behind on stderr."""
        self.total = total
        if total == 0:  # nothing to measure (a resume of a complete run): no bar at all
            return
        if self._bar is None and not self._plain:
            self._bar = self._started_bar()
            self._plain = self._bar is None  # not a terminal
        if self._plain:
            self._done, self._started = 0, time.monotonic()
            self._said = self._started
            self._line(f"run {self._run_id}: {total} case{'s' * (total != 1)} to measure")
            return
        if self._task is None:
            self._task = self._bar.add_task("starting", total=None)
        self._bar.update(self._task, total=total)

    def start(self, case) -> None:
        from rich.markup import escape

        if self._bar is None:
            return
        failed = f"{self._failed} not ok " if self._failed else ""
        # The case last, cut to the terminal's width: first, at 80 columns it left no room for the count, the elapsed
        # time and the ETA ("96/… 0:0… ETA 0:00:…", a user audit). BAR_WIDTH + the count, times and "ETA", spaced.
        room = self._bar.console.width - (BAR_WIDTH + 2 * len(str(self.total or 0)) + 1 + 7 + 3 + 7 + 6)
        text = f"{failed}{case.describe()}"
        text = text if len(text) <= room else text[: max(room - 1, 0)] + "…"
        self._bar.update(
            self._task, description=f"[red]{escape(text[: len(failed)])}[/]{escape(text[len(failed) :])}"
        )  # "[option=value]" is text

    def done(self, case, measurement) -> None:
        if measurement.status not in (Status.OK, Status.UNSUPPORTED, Status.SKIPPED):
            self._failed += 1
        if self._bar is not None:
            self._bar.advance(self._task)
        self._done += 1
        now = time.monotonic()
        if self._plain and now - self._said >= LINE_EVERY_S and self.total:
            self._said, elapsed = now, now - self._started
            eta = elapsed / self._done * (self.total - self._done)
            failed = f", {self._failed} not ok" if self._failed else ""
            where = f"{self._done}/{self.total} after {_clock(elapsed)}, ETA {_clock(eta)}{failed}"
            self._line(f"run {self._run_id}: {where}; last {case.describe()}")

    @staticmethod
    def _line(text: str) -> None:
        import click

        click.echo(text, err=True)

    @staticmethod
    def _started_bar(console=None):
        """The bar on `console` (stderr's), or None when it is not a terminal: there a transient bar still left an empty
        line behind, one per sweep in a CI log."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = console or Console(stderr=True)
        if not console.is_terminal:
            return None
        bar = Progress(
            BarColumn(bar_width=BAR_WIDTH),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=True,
        )
        bar.__enter__()
        return bar


def _clock(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}"
