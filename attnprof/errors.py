"""The exceptions the CLI turns into an exit status: bad user input (one line, exit 2) and a stop by a signal."""

import signal


class UsageError(ValueError):
    """A value given by the user (flag, scenario key, run id, path) is not acceptable.

    The message names the bad value; it is shown to the user as it is.
    """


def path_argument(value, what: str):
    """`value` as a Path, or a UsageError naming it when it is no path (an API's out=123 was pathlib's TypeError)."""
    import os
    from pathlib import Path

    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"bad {what} {value!r}: give a file path")
    return Path(value)


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP: the terminal closed, an ssh session dropped) raised as Ctrl-C is (the same cleanup runs),
    told apart for the exit status."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.signum = signum


# The signals that stop a command as Ctrl-C does: what was measured is saved and the run can be resumed. SIGHUP ended a
# sweep with status 129, no word on how to resume, and its lock file left behind (a robustness audit).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: Terminated's own (SIGTERM, SIGHUP), else SIGINT (Ctrl-C)."""
    return interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT


class StoreFault(Exception):
    """The database could not be written (disk full, I/O error) while a sweep measured: what was committed is kept,
    and `run_id` (None before the run was recorded) resumes the rest once it can be written."""

    def __init__(self, reason: str, db, run_id: str | None = None):
        super().__init__(reason)
        self.reason, self.db, self.run_id = reason, db, run_id


def make_folder(folder, what: str) -> None:
    """mkdir -p `folder`, or one UsageError naming `what` and why: a file in the way is named as such (mkdir says
    "File exists", which read as if the output were there already)."""
    from pathlib import Path

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        in_the_way = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f"{str(in_the_way)!r} is a file, not a folder" if in_the_way is not None else error.strerror
        raise UsageError(f"cannot write {what}: {why}") from None
