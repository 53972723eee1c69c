"""Opening a database file, where it goes wrong: the refusals Store.open raises (a file that is no attnprof database, a
locked one, a disk that is full), and the checks of the path before it (its folder, read-only media)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from attnprof.errors import UsageError, make_folder


def refusal(connection, path: Path, error: Exception) -> UsageError:
    """The error to raise for a file Store.open refuses, after closing its connection (an open handle keeps the
    file, and its mount, busy): ours as it is, an SQLite one as 'not an attnprof database'."""
    close_quietly(connection)
    if isinstance(error, UsageError):
        return error
    if not path.exists():  # nothing was there to be a database: it could not be made ('/proc/x.db')
        return UsageError(f"cannot create database {str(path)!r} ({error})")
    if "locked" in str(error):  # held by another process past the 30 s wait: the file is fine
        return UsageError(f"{str(path)!r} is locked by another process (waited 30 s): try again once it is done")
    return UsageError(f"{str(path)!r} is not an attnprof database ({error})")


def disk_fault(error: BaseException) -> bool:
    """Whether an SQLite error, or one it was raised while handling, is the disk's (full, an I/O error, a file size
    limit): under `ulimit -f` the write's SQLITE_IOERR_WRITE surfaced as "cannot rollback - no transaction is active"."""
    return any(_of_the_disk(e) for e in _chain(error))


def disk_refusal(connection, path: Path, error: BaseException, existed: bool):
    """A database that could not be opened for the disk's sake: a full disk read "'x.db' is not an attnprof database
    (disk I/O error)", exit 2, for a file SQLite found sound once room was made, and a user may delete such a file (a
    robustness audit). A file this open created is removed again, empty (a 0-byte x.db was left behind)."""
    from attnprof.errors import StoreFault

    close_quietly(connection)
    if not existed:
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            with contextlib.suppress(OSError):
                if leftover.is_file() and leftover.stat().st_size <= 32768:  # nothing of a run: the open wrote no row
                    leftover.unlink()
    cause = next((e for e in _chain(error) if _of_the_disk(e)), error)
    said = "it was not changed" if existed else "it was not created"
    return StoreFault(f"{cause} (a full disk, or a file size limit?); {said}", path)


def _of_the_disk(error: BaseException) -> bool:
    name = getattr(error, "sqlite_errorname", "") or ""
    return name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR") or "disk is full" in str(error) or "disk I/O error" in str(error)


def _chain(error):
    """An error and the ones it was raised while handling."""
    while error is not None:
        yield error
        error = error.__context__


def close_quietly(connection) -> None:
    if connection is not None:
        connection.close()


def unwritable(path: Path) -> bool:
    """The file or its directory (where SQLite puts -wal and -shm) cannot be written: a read-only mount or
    permissions. os.access says yes to root on a read-only mount, so that is asked of the mount too."""
    for target in (path, path.parent):
        if not os.access(target, os.W_OK):
            return True
        try:
            if os.statvfs(target).f_flag & os.ST_RDONLY:
                return True
        except OSError:
            return True
    return False


def prepare_parent(path: Path) -> None:
    make_folder(path.parent, f"database {str(path)!r}")  # a directory at `path` itself is refused in Store.open
    for target, what in ((path, "the file"), (path.parent, "its folder, where SQLite keeps its journal")):
        if target.exists() and not os.access(target, os.W_OK):  # a folder that is not: "not an attnprof database"
            raise UsageError(f"database path {str(path)!r} is not writable ({what})")
