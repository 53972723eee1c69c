"""What the runner tells of a sweep's progress (Progress: the CLI draws a bar, progress.py; a notebook may log or
ignore it), and a caller's own object taken as one (given_progress)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnprof.errors import UsageError

if TYPE_CHECKING:
    from attnprof.records import Measurement
    from attnprof.spec import Case


class Progress:
    """What the runner reports while it works; the CLI draws a bar, a notebook may log or ignore it."""

    def named(self, run_id: str) -> None:
        """The run being measured, before its first case (a log then holds its id even if the process is killed)."""

    def begin(self, total: int) -> None: ...

    def start(self, case: Case) -> None: ...

    def done(self, case: Case, measurement: Measurement) -> None: ...


PROGRESS_METHODS = ("named", "begin", "start", "done")


class PartialProgress(Progress):
    """A caller's object with some of Progress's methods: those it has are called, the others do nothing."""

    def __init__(self, given):
        self.given = given

    def named(self, run_id: str) -> None:
        self._call("named", run_id)

    def begin(self, total: int) -> None:
        self._call("begin", total)

    def start(self, case: Case) -> None:
        self._call("start", case)

    def done(self, case: Case, measurement: Measurement) -> None:
        self._call("done", case, measurement)

    def _call(self, name: str, *args) -> None:
        method = getattr(self.given, name, None)
        if callable(method):
            method(*args)


def given_progress(progress):
    """`progress` as the runner calls it: None, or an object with any of Progress's methods (named(run_id),
    begin(total), start(case), done(case, measurement)), the others doing nothing. progress=print, or one with done()
    alone, failed with an AttributeError after the run was created (an API audit)."""
    if progress is None or isinstance(progress, Progress):
        return progress
    if isinstance(progress, type):  # progress=MyProgress, the parentheses forgotten: its methods unbound
        raise UsageError(f"bad progress {progress.__name__}: a class; give an instance of it ({progress.__name__}())")
    if not any(callable(getattr(progress, name, None)) for name in PROGRESS_METHODS):
        raise UsageError(
            f"bad progress {progress!r}: give an object with any of the methods {', '.join(PROGRESS_METHODS)} "
            "(attnprof.Progress says what each is given), or None"
        )
    return PartialProgress(progress)
