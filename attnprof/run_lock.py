"""One process measures a run at a time: a lock per run that the kernel releases when its holder dies.

Two `sweep --resume` of one run measured the same missing cells at once, each skewing the other's timings on
shared cores, and the store kept whichever row came last (an audit saw 552 ms printed and 664 ms stored). The
lock is flock(2) on a sidecar file `<db>.<run id>.lock`: held while a process measures the run, released
however that process stops (SIGKILL included), so a killed sweep never blocks its resume. flock, not a POSIX
byte-range lock: closing any descriptor of a file drops every POSIX lock the process holds on it, so a reader
asking whether a run is held would have freed its own sweep's lock. The holder removes the file when done;
one a killed sweep leaves is free to take, and says nothing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from attnprof.errors import UsageError

try:
    import fcntl
except ImportError:  # not POSIX: no guard, as before
    fcntl = None


def lock_path(db_path: str | Path, run_id: str) -> Path:
    """Beside the database file itself: a sweep resumed through a symlink to it took a lock of its own (the link's
    name) and measured the cells the first was measuring, each skewing the other's timings."""
    path = Path(os.path.realpath(db_path))
    return path.with_name(f"{path.name}.{run_id}.lock")


@contextlib.contextmanager
def measuring(db_path: str | Path, run_id: str):
    """Inside: this process measures `run_id`. Another process measuring it already: UsageError, one line."""
    handle = _acquire(lock_path(db_path, run_id), run_id) if fcntl else None
    try:
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                os.unlink(handle.name)  # while still held: a process opening the old path later finds it stale
            handle.close()


def _acquire(path: Path, run_id: str):
    for _ in range(10):  # a holder may remove the file between our open and our lock: then open the new one
        try:
            handle = open(path, "a+")
        except OSError:  # a directory that cannot hold the sidecar (read-only): no guard, as before
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(handle)
            handle.close()
            raise UsageError(f"run {run_id} is being measured by another process{holder}: wait for it to end, or stop it") from None
        if _same_file(handle, path):
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            return handle
        handle.close()
    return None


def is_measured(db_path: str | Path, run_id: str) -> bool | None:
    """Whether some process holds `run_id`'s lock now; None where that cannot be told (no flock)."""
    if fcntl is None:
        return None
    try:
        handle = open(lock_path(db_path, run_id))
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        return False


def _same_file(handle, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _read_holder(handle) -> str:
    with contextlib.suppress(OSError, ValueError):
        handle.seek(0)
        pid = int(handle.read().strip() or 0)
        return f" (pid {pid})" if pid else ""
    return ""
