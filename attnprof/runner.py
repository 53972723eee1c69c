"""Parent side of a sweep: order, resume, timeouts, worker restarts, skips, progress.

Cases run in a worker process per device (spawned, reused between cases). The parent waits for
each result at most the case's timeout; a worker that hangs is killed (`timeout`), one that dies is
reported (`crashed`) and replaced, one whose CUDA context is poisoned is replaced after its row is
saved. After an `oom` or a `timeout`, larger lengths of the same configuration are `skipped`.
Every measurement is stored the moment it arrives.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
from dataclasses import asdict
from datetime import datetime, timezone

from attnprof.errors import STOP_SIGNALS, signal_of
from attnprof.failures import killed_by_sigkill, signal_reason
from attnprof.process_tree import descendants, kill_all
from attnprof.progress_base import Progress
from attnprof.records import FINAL_FAILURES, Measurement, Status
from attnprof.spec import Case
from attnprof.store import Store
from attnprof.worker import Settings, refusal_of

WORKER_START_TIMEOUT_S = 300.0  # importing torch and initialising CUDA on a cold machine
START_ATTEMPTS = 2  # a device whose worker failed to start this often gets no further attempt in this sweep


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: everything measured so far is saved; `run_id` resumes the rest. `signum` is the
    signal that stopped it (the CLI exits 128 + signum, as a shell reports a process that signal ended).

    A KeyboardInterrupt, as the Ctrl-C it stands for: as an Exception, a notebook's loop of sweeps under `except
    Exception` caught it, and the interrupt button stopped one sweep of the loop, not the loop (an API audit)."""

    def __init__(self, run_id: str, done: int, total: int, signum: int = signal.SIGINT, retry: tuple[str, ...] = ()):
        again = f", retry={tuple(retry)!r}" if retry else ""
        resume = f"run_sweep(..., resume={run_id!r}{again}) measures the rest"
        super().__init__(f"interrupted after {done} of {total} cases of run {run_id}: {resume}")
        self.run_id, self.done, self.total, self.signum = run_id, done, total, int(signum)
        self.retry = tuple(retry)  # the statuses a --retry measured again: the resume asks for them too


@contextlib.contextmanager
def interrupts_held():
    """Inside: Ctrl-C and SIGTERM are ignored. Stopping the workers takes a moment, and a second Ctrl-C landing
    there (people press it twice) used to replace the saved-and-resumable message by click's bare 'Aborted!'."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


WORKER_NAME_PREFIX = "attnprof-worker-"  # the worker processes' names
SPAWN_HINT = (
    'a script that calls attnprof.run_sweep must do so under `if __name__ == "__main__":`, '
    "since workers are spawned and import the script first"
)


def _start_hint() -> str:
    """Why a worker may exit while it starts: it imports the script that started the sweep (unguarded, that script
    runs again there) and the plugin modules. The script's hint only where a script started it: a plugin exiting at
    import under the `attnprof` command was told to guard a script there was none of."""
    import os
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    script = getattr(main, "__file__", None)
    ours = (spec is not None and spec.name.startswith("attnprof")) or os.path.basename(script or "") in ("attnprof", "attnprof.exe")
    plugins = "a plugin module (ATTNPROF_PLUGINS or one a script imported) may exit or fail as it is imported there"
    return plugins if ours or not script else f"{SPAWN_HINT}; or {plugins}"


class WorkerHandle:
    """One worker process for one device, restarted on demand."""

    def __init__(self, device: str, modules: tuple[str, ...] = ()):
        self.device = device
        self.modules = modules  # plugin modules the sweep's impls come from (impls.worker_modules)
        self.process = None
        self.connection = None
        self.start_failures: list[str] = []  # why each start since the last good one failed

    def ensure_started(self) -> None:
        if self.process is not None and self.process.is_alive():
            return
        import torch

        from attnprof.worker_process import worker_main

        # the modules of impls a notebook imported: workers import them too; and the sweep's thread count, which the run
        # records (a notebook's torch.set_num_threads(1) was recorded while its worker timed with every core)
        config = (self.device, self.modules, torch.get_num_threads())
        spare = _take_spare()
        if spare is not None:
            self.process, self.connection = spare
            self.connection.send(("become", *config))
        else:
            self.process, self.connection = _spawn(worker_main, f"{WORKER_NAME_PREFIX}{self.device}", *config)
        if not self.connection.poll(WORKER_START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"worker for {self.device} did not start within {WORKER_START_TIMEOUT_S:.0f} s")
        try:
            said = self.connection.recv()  # ("ready",), or ("failed", why)
            if said[0] == "failed":
                self.kill()
                raise RuntimeError(f"the worker for {self.device} could not load the impls: {said[1]}")
        except EOFError:  # it died before saying so
            self.process.join(timeout=10)
            code = self.process.exitcode
            self.kill()
            # A signal (the OOM killer, a kill by hand) is said as such; the hint is for a script's own exit only.
            why = signal_reason(code) if code is not None and code < 0 else _start_hint()
            raise RuntimeError(f"the worker for {self.device} exited during start-up (exit code {code}); {why}") from None

    def run(self, case: Case, settings: Settings, timeout_s: float) -> Measurement:
        if len(self.start_failures) >= START_ATTEMPTS:
            # A worker that hangs while starting (CUDA init on a GPU in a bad state) cost the start-up limit for every
            # case left: hours for a sweep. The rows stay, each saying why; a resume tries again.
            reason = f"not run: the worker for {self.device} failed to start {len(self.start_failures)} times in this sweep"
            return Measurement(case=case, status=Status.CRASHED, reason=f"{reason} ({self.start_failures[-1]}); resume the run once fixed")
        try:
            self.ensure_started()
            self.connection.send(("case", case.to_dict(), asdict(settings)))
        except (RuntimeError, OSError, EOFError) as error:
            self.kill()
            self.start_failures.append(str(error))
            return Measurement(case=case, status=Status.CRASHED, reason=f"could not start a worker: {error}")
        self.start_failures.clear()
        return self._wait(case, timeout_s)

    def _wait(self, case: Case, timeout_s: float) -> Measurement:
        deadline = time.monotonic() + timeout_s
        stage = "its start"  # the worker names each step as it begins: a timeout in the reference check is no slow kernel
        while time.monotonic() < deadline:
            if self.connection.poll(min(0.2, max(0.0, deadline - time.monotonic()))):
                try:
                    message = self.connection.recv()
                except (EOFError, OSError):
                    return self._crashed(case, stage)
                if message[0] == "stage":
                    stage = message[1]
                    continue
                _, data, poisoned = message
                if poisoned:
                    self.kill()  # a poisoned CUDA context fails every later case: start afresh
                return Measurement.from_dict(data)
            if not self.process.is_alive():
                return self._crashed(case, stage)
        self.kill()
        reason = f"ran longer than the {timeout_s:g} s timeout during {stage}; worker killed"
        return Measurement(case=case, status=Status.TIMEOUT, reason=reason)

    def _crashed(self, case: Case, stage: str) -> Measurement:
        self.process.join(timeout=5)
        reason = signal_reason(self.process.exitcode)
        self.kill()
        return Measurement(case=case, status=Status.CRASHED, reason=f"{reason}, during {stage}")

    def kill(self) -> None:
        if self.process is not None and self.process.pid is not None:  # pid None: start() itself failed
            _end(self.process)
        self.process = None

    def stop(self) -> None:
        escaped = []
        if self.process is not None and self.process.is_alive():
            escaped = descendants(self.process.pid)  # before it ends: an impl's child in a session of its own outlived
            try:  # a sweep that finished (and a piped sweep's reader waited for it: 125 s; a review)
                self.connection.send(("stop",))
                self.process.join(timeout=10)
            except (OSError, BrokenPipeError):
                pass
        self.kill()
        kill_all(escaped)


def _spawn(target, name: str, *args):
    """(process, connection): `target(child_connection, *args)` started in a fresh interpreter."""
    context = multiprocessing.get_context("spawn")  # fork is unsafe once CUDA or OpenMP threads exist
    connection, child = context.Pipe()
    process = context.Process(target=target, args=(child, *args), daemon=True, name=name)
    with _unrunnable_main_hidden():
        process.start()
    child.close()
    return process, connection


_spare = None  # (process, connection) of the worker start_spare_worker started, until a device takes it


def start_spare_worker() -> None:
    """Start a worker before the sweep's process imports torch: both imports (about 2 s each, and torch._dynamo's
    1.5 s in the worker) ran one after the other before the first case, 7.5 s to the first row of a one-cell sweep
    on this 2-core machine. The first device's worker is this one (worker_process.spare_main); discard_spare_worker ends one
    that no device took."""
    global _spare
    if _spare is None:
        from attnprof.worker_process import spare_main

        _spare = _spawn(spare_main, f"{WORKER_NAME_PREFIX}spare")


def _take_spare():
    global _spare
    spare, _spare = _spare, None
    if spare is not None and not spare[0].is_alive():  # died starting (a script that cannot be imported twice, ...):
        _close(spare)  # a worker started as before says why
        return None
    return spare


def discard_spare_worker() -> None:
    spare = _take_spare()
    if spare is not None:
        _close(spare)


def _close(spare) -> None:
    process, connection = spare
    _end(process)
    connection.close()


def _end(process) -> None:
    """Kill a worker process and what it started (its process group, and its descendants in groups of their own), and
    reap it."""
    escaped = []
    if process.is_alive():
        escaped = descendants(process.pid)  # taken before the kill: once the worker is gone they are init's children
        process.kill()
    process.join(timeout=10)
    _kill_group(process.pid)
    kill_all(escaped)


def _kill_group(worker_pid: int) -> None:
    """Kill what the worker started and left running: it leads its own process group (worker_main), and a process an impl
    spawned outlived a timed-out worker, burning a core beside the next cases' timing in an audit."""
    import os

    if not hasattr(os, "killpg") or worker_pid == os.getpgrp():  # never our own group
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):  # none left (the usual case)
        os.killpg(worker_pid, signal.SIGKILL)


@contextlib.contextmanager
def _unrunnable_main_hidden():
    """Inside: a __main__ whose __file__ is no file (`python - < script.py` says '<stdin>') has none. A spawned worker
    runs its parent's main file first, and died on that one (FileNotFoundError) while a notebook, with no __file__,
    was fine: without it the worker starts as from a notebook."""
    import os
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or os.path.isfile(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def execute(
    store: Store, run_id: str, cases: list[Case], settings: Settings, timeout_s: float, progress: Progress | None = None, retry=()
) -> None:
    """Measure every case that has no row in `run_id` yet, and those whose row has a status in `retry` (each new row
    replacing the old one as it arrives: an interrupted retry keeps the rows it did not reach), storing each result as
    it arrives."""
    done_keys, failures = kept_rows(store, run_id, retry)
    pending = [case for case in cases if case.key not in done_keys]
    workers: dict[str, WorkerHandle] = {}
    from attnprof import impls

    modules = impls.worker_modules({case.impl for case in cases})
    progress = progress or Progress()
    progress.named(run_id)
    progress.begin(len(pending))
    interrupt = None
    try:
        for case in pending:
            progress.start(case)
            measurement = _skip_if_failed_before(case, failures) or refusal(case)
            if measurement is None:
                worker = workers.setdefault(case.device, WorkerHandle(case.device, modules))
                measurement = worker.run(case, settings, timeout_s)
            store.add_measurement(run_id, measurement, _now())
            _note_failure(measurement, failures)
            progress.done(case, measurement)
    except KeyboardInterrupt as error:
        interrupt = error
    finally:
        with interrupts_held():
            for worker in workers.values():
                if interrupt is not None:
                    worker.kill()  # the case in flight is abandoned (no row): resume measures it again
                else:
                    worker.stop()
    if interrupt is not None:
        raise SweepInterrupted(run_id, store.count(run_id), len(cases), signal_of(interrupt), retry) from None


def refusal(case: Case, plugin_hooks: bool = False) -> Measurement | None:
    """Refusals are known without a worker: answer them here and save the round trip. A plugin's `refuse` hook that
    raises makes its case an `error` row (it ended the sweep with a traceback, and every resume the same way). A plugin's
    hook runs in the worker unless `plugin_hooks` (a dry run's list): one that crashed the process ended the sweep,
    and every resume, and one that hung ignored --timeout (a robustness audit); there it is a row."""
    from attnprof import impls

    impl = impls.get(case.impl)
    if not plugin_hooks and impl.refuse is not None and not impls.is_builtin(impl):
        reasons = impl.declared_unsupported(case)
        return Measurement(case=case, status=Status.UNSUPPORTED, reason="; ".join(reasons)) if reasons else None
    return refusal_of(impl, case)


def kept_rows(store: Store, run_id: str, retry=()) -> tuple[set[str], dict]:
    """(keys of the rows a resume keeps, the failures among them that skip larger lengths). Not kept: rows of a status
    in `retry` (store.measured_keys), and a `skipped` row whose failure is gone: a --retry interrupted after the
    failure measured ok left the lengths after it "skipped" after a failure no row holds, and a resume kept them."""
    done_keys = store.measured_keys(run_id, retry)
    kept = [m for m in store.measurements(run_id) if m.case.key in done_keys]
    failures = _failures_from(kept)  # a retried one skips nothing
    stale = {m.case.key for m in kept if m.status == Status.SKIPPED and _skip_if_failed_before(m.case, failures) is None}
    return done_keys - stale, failures


def skipped_after(failures: dict):
    """case -> the `skipped` Measurement a sweep would store for it after `failures` (kept_rows'), or None (a dry run's view)."""
    return lambda case: _skip_if_failed_before(case, failures)


def _failures_from(measurements: list[Measurement]) -> dict[str, tuple[int, Status]]:
    failures: dict[str, tuple[int, Status]] = {}
    for measurement in measurements:
        _note_failure(measurement, failures)
    return failures


def _note_failure(measurement: Measurement, failures: dict[str, tuple[int, Status]]) -> None:
    if measurement.status not in FINAL_FAILURES and not _killed(measurement):
        return
    key = measurement.case.config_key
    if key not in failures or measurement.case.seq_len < failures[key][0]:
        failures[key] = (measurement.case.seq_len, measurement.status)


KILLED_WHY = "killed (SIGKILL, the OOM killer's signal)"


def _killed(measurement: Measurement) -> bool:
    """A worker killed by SIGKILL: the kernel's OOM killer, most likely, which every larger length of the line would wake
    again, maybe killing other users' jobs on a shared host (a robustness audit: each length after the first was killed
    in turn). Skipped after it as after an OOM; `--retry crashed` measures them again when it was not memory."""
    return killed_by_sigkill(measurement.status, measurement.reason)


def _skip_if_failed_before(case: Case, failures: dict[str, tuple[int, Status]]) -> Measurement | None:
    failed = failures.get(case.config_key)
    if failed is None or case.seq_len <= failed[0]:
        return None
    what = {Status.OOM: "ran out of memory", Status.TIMEOUT: "timed out"}.get(failed[1], f"had its worker {KILLED_WHY}")
    return Measurement(case=case, status=Status.SKIPPED, reason=f"the same configuration {what} at N={failed[0]}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
