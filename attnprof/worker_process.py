"""The worker process around CaseMeasurer: how it starts (worker_main, or spare_main before its device is known), the
loop the parent talks to over a pipe (runner.py), and how it ends (stopped, or with its parent gone)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from attnprof import cpu_heap, impls
from attnprof.errors import UsageError
from attnprof.spec import Case
from attnprof.worker import CaseMeasurer, Settings

PARENT_POLL_S = 0.5


def _exit_with_parent() -> None:
    """A parent killed outright (SIGKILL: no chance to stop us) left this worker measuring its case to the end, 45 s
    at 99% CPU in an audit, beside the resume the user started at once. A daemon thread sees the parent change (the
    orphan is adopted) and ends the process; torch's kernels release the GIL, so it runs during a case too."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        from attnprof.process_tree import descendants, kill_all

        kill_all(descendants(os.getpid()))  # those in sessions of their own too, which the group kill misses
        if hasattr(os, "killpg") and os.getpgrp() == os.getpid():  # our own group (worker_main): what an impl started too
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="attnprof-parent-watch", daemon=True).start()


def _exit_now() -> None:
    """Ends the worker without Python's finalisation, which took about 1 s at the end of every sweep once torch was
    loaded (0.05 s this way, measured from the parent's stop to the join). Nothing here needs it: the results went
    through the pipe and the database is the parent's. What an impl wrote through Python's buffers is flushed first."""
    import logging
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(0)


def worker_main(connection, device: str, modules=(), threads: int = 0) -> None:
    """The loop run in the worker process: ("case", case_dict, settings_dict) in, ("result", ...) out. `modules`:
    plugin modules the sweep's process imported (impls.worker_modules), imported here before the impls load.
    `threads`: the sweep's intra-op thread count (its env's cpu_threads), set here before the settings are kept."""
    _detach()
    _serve(connection, device, modules, threads)


def spare_main(connection) -> None:
    """A worker started before its sweep knows the device (runner.start_spare_worker): it imports torch and
    torch._dynamo (which the first op on `meta` imports, 1.3-1.7 s) while the sweep's process imports torch too, and
    becomes the first device's worker on ("become", device, modules, threads). The impls load only then, after the
    plugin modules, as in worker_main. Anything else (the sweep ended or was refused): it exits."""
    _detach()
    import torch  # noqa: F401  (the cost this process is started early to pay)
    import torch._dynamo  # noqa: F401

    try:
        message = connection.recv()
    except (EOFError, OSError):
        return
    if message[0] == "become":
        _serve(connection, *message[1:])


def _detach() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it saves and stops us
    if hasattr(os, "setpgrp"):
        os.setpgrp()  # a group of its own: the parent kills what an impl spawned along with us (runner._kill_group)
    _stdout_to_stderr()
    _exit_with_parent()


def _stdout_to_stderr() -> None:
    """What an impl prints (Python's print, or a C library's printf) goes to the sweep's standard error: on its standard
    output it landed in the middle of `attnprof sweep > table.txt`, binary bytes and all (a robustness audit)."""
    import sys

    with contextlib.suppress(OSError, ValueError, AttributeError):  # streams without a descriptor: left as they are
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def _serve(connection, device: str, modules, threads: int) -> None:
    import torch  # import cost paid before "ready", not inside a case's timeout

    if threads:
        torch.set_num_threads(threads)

    try:
        impls.import_modules(modules)
        impls.names()
    except UsageError as error:  # a plugin that cannot be imported here: said by the parent, not lost with our exit
        connection.send(("failed", str(error)))
        return
    cpu_heap.strict()  # host RSS follows live tensors; timing passes switch to a retained heap
    measurer = CaseMeasurer()
    measurer.warm_up(device)
    measurer.keep_torch_settings()
    connection.send(("ready",))
    measurer.announce = lambda stage: connection.send(("stage", stage))  # a few small messages a case
    try:
        while True:
            message = connection.recv()
            if message[0] == "stop":
                _exit_now()
            _, case_data, settings_data = message
            measurement = measurer.measure(Case.from_dict(case_data), Settings(**settings_data))
            connection.send(("result", measurement.to_dict(), measurer.poisoned))
    except (EOFError, OSError):  # the parent is gone (killed): nothing to answer, and no traceback on its terminal
        return
