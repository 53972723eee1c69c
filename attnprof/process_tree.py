"""The processes a worker started, wherever they went: its own process group holds most, but a child started with
start_new_session=True leaves it, and only the worker's descendants (psutil) still name it."""

from __future__ import annotations

import contextlib


def descendants(pid: int) -> list:
    """The processes `pid` started and theirs (psutil.Process), those that left its process group included: an impl's
    child started with start_new_session=True (a server, a daemon-like helper) escaped the group kill and burnt a core
    beside the next cases' timing."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:  # gone already
        return []


def kill_all(processes) -> None:
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):  # gone, or its pid reused by another user's process (psutil checks)
            process.kill()
