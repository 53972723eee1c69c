"""Turning an exception raised while measuring into a status and a one-line reason."""

from __future__ import annotations

from attnprof.errors import UsageError
from attnprof.records import Status

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate")
_UNSUPPORTED_MARKERS = ("no available kernel", "no viable backend")
# A CUDA error other than OOM leaves the context unusable: every later call in the process fails.
_POISON_MARKERS = (
    "cuda error",
    "device-side assert",
    "illegal memory access",
    "cublas_status",
    "cudnn_status",
    "unspecified launch failure",
    "triton error [cuda]",  # Triton's own wording of a CUDA error ("Triton Error [CUDA]: misaligned address")
    "misaligned address",
    "illegal instruction",
    "launch timed out",
)


# How the rows of cases whose worker never started begin (runner.WorkerHandle.run): they say "resume the run once
# fixed", so a resume measures those cases again (Store.measured_keys leaves them out).
NEVER_STARTED = ("could not start a worker", "not run: the worker for ")


def never_started(status, reason) -> bool:
    """Whether a row is that of a case whose worker never started (not a measurement of the case at all)."""
    return str(status) == "crashed" and isinstance(reason, str) and reason.startswith(NEVER_STARTED)


KILLED_BY_SIGKILL = "worker process killed by SIGKILL"  # signal_reason's words


def killed_by_sigkill(status, reason) -> bool:
    """Whether a row is that of a case whose worker the SIGKILL signal ended (the kernel's OOM killer sends it)."""
    return str(status) == "crashed" and isinstance(reason, str) and reason.startswith(KILLED_BY_SIGKILL)


NOT_RUN = "; not run"  # how the CPU's host-memory guard ends the reason of an OOM it predicted (worker.py)


def is_prediction(reason) -> bool:
    """Whether an `oom` row's reason is the host-memory guard's prediction rather than a measured OOM."""
    # a note may follow ("; the impl changed torch's global settings ...")
    return isinstance(reason, str) and (reason.endswith(NOT_RUN) or f"{NOT_RUN}; " in reason)


def classify(error: BaseException) -> tuple[Status, str, bool]:
    """(status, reason, poisoned) for an exception raised by an impl or by the measurement."""
    import torch

    message = _first_line(error)
    lowered = message.lower()
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)) or any(m in lowered for m in _OOM_MARKERS):
        return Status.OOM, f"out of memory: {message}", False
    if any(m in lowered for m in _UNSUPPORTED_MARKERS):
        return Status.UNSUPPORTED, f"refused at run time: {message}", False
    poisoned = any(m in lowered for m in _POISON_MARKERS)
    if isinstance(error, UsageError):
        return Status.ERROR, message, poisoned  # already a sentence for the user; the class name adds nothing
    return Status.ERROR, f"{type(error).__name__}: {message}{raised_at(error)}", poisoned


FRAMEWORK_PACKAGES = {"torch", "triton", "attnprof", "numpy", "functools", "contextlib"}


def raised_at(error: BaseException) -> str:
    """ " (raised at file.py:42 in fn)": the innermost frame of the impl's (a plugin's) own code. A row kept only the
    message's first line, and a kernel's author had to reproduce the case to find the line. Frames of torch, Triton
    and attnprof itself are passed over (our own bugs carry their traceback in a worker's log, not a row); with no
    other frame, nothing is said."""
    import os

    found = None  # the innermost (file, line, function) of code that is none of FRAMEWORK_PACKAGES'
    tb = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] not in FRAMEWORK_PACKAGES:
            found = (code.co_filename, tb.tb_lineno, code.co_name)
        tb = tb.tb_next
    if found is None:
        return ""
    filename, line, name = found
    return f" (raised at {os.path.basename(filename.replace(chr(92), '/'))}:{line} in {name})"  # a Windows path too


def _first_line(error: BaseException) -> str:
    """The message's first line; with the next one where it only introduces it: torch.compile's "backend='inductor'
    raised:" said nothing of why (found running the tests on torch 2.4)."""
    try:
        text = str(error).strip() or repr(error)
    except Exception as unreadable:  # noqa: BLE001  (a plugin's __str__): its row named the __str__'s error, not the exception
        text = f"(its message could not be read: {type(unreadable).__name__}: {unreadable})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] + (f" {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else "")
    return line if len(line) <= 300 else line[:297] + "..."


def signal_reason(exitcode: int | None) -> str:
    """Why a worker process died, from its exit code (negative: killed by a signal)."""
    import signal

    if exitcode is None:
        return "worker process vanished"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else f"signal {-exitcode}"
        hint = " (the kernel's OOM killer sends this when the host runs out of memory)" if name == "SIGKILL" else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with status {exitcode}"
