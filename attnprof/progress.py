"""The sweep's progress bar: ETA, the case being measured, and a running count of failures."""

from __future__ import annotations

from attnprof.records import Status
from attnprof.runner import Progress


class SweepProgress(Progress):
    """A rich progress bar on stderr; silent when stderr is not a terminal."""

    def __enter__(self) -> SweepProgress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("starting", total=None)
        self._failed = 0
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def begin(self, total: int) -> None:
        self._bar.update(self._task, total=total)

    def start(self, case) -> None:
        failed = f" [red]{self._failed} not ok[/]" if self._failed else ""
        self._bar.update(self._task, description=f"{case.describe()}{failed}")

    def done(self, case, measurement) -> None:
        if measurement.status not in (Status.OK, Status.UNSUPPORTED, Status.SKIPPED):
            self._failed += 1
        self._bar.advance(self._task)
