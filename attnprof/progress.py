"""The sweep's progress bar: ETA, the case being measured, and a running count of failures."""

from __future__ import annotations

from attnprof.records import Status
from attnprof.runner import Progress


class SweepProgress(Progress):
    """A rich progress bar on stderr; silent when stderr is not a terminal."""

    def __enter__(self) -> SweepProgress:
        self._bar, self._failed, self.total = None, 0, None  # total: the cases the sweep had left to measure
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def begin(self, total: int) -> None:
        """The bar starts with the first sweep, not on entry: a usage error found while the sweep is
        resolved then prints alone, without the line a started bar leaves behind on stderr."""
        self.total = total
        if total == 0:  # nothing to measure (a resume of a complete run): no bar at all
            return
        if self._bar is None:
            self._bar = self._started_bar()
            if self._bar is None:  # not a terminal
                return
            self._task = self._bar.add_task("starting", total=None)
        self._bar.update(self._task, total=total)

    def start(self, case) -> None:
        from rich.markup import escape

        if self._bar is None:
            return
        failed = f" [red]{self._failed} not ok[/]" if self._failed else ""
        self._bar.update(self._task, description=f"{escape(case.describe())}{failed}")  # "[option=value]" is text

    def done(self, case, measurement) -> None:
        if measurement.status not in (Status.OK, Status.UNSUPPORTED, Status.SKIPPED):
            self._failed += 1
        if self._bar is not None:
            self._bar.advance(self._task)

    @staticmethod
    def _started_bar():
        """The bar, or None when stderr is not a terminal: there a transient bar still left an empty line behind,
        one per sweep in a CI log."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            return None
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        bar.__enter__()
        return bar
