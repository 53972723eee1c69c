"""The library API the CLI is a shell over; a notebook calls the same functions.

run_id = run_sweep(Sweep(impls=parse_impls("softmax,sdpa"), lengths=(256, 512)), db="x.db")
frame = load_measurements(run_id, db="x.db")
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import signal
import sqlite3
import threading
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from attnprof.errors import Terminated, UsageError
from attnprof.spec import ImplSpec, Sweep, parse_impls, parse_lengths
from attnprof.sweep_checks import check_device, check_input_size, check_reachable, checked_values

DEFAULT_DB = Path("reports") / "attnprof.db"


def default_db() -> Path:
    return Path(os.environ.get("ATTNPROF_DB") or DEFAULT_DB)


def resolve_sweep(sweep: Sweep) -> Sweep:
    """Fill the device-dependent defaults, expand `all`, and validate impls, options and devices."""
    import torch

    if not isinstance(sweep, Sweep):  # run_sweep("softmax") was an AttributeError: 'str' object has no attribute 'impls'
        raise UsageError(f"a sweep is an attnprof.Sweep, not {type(sweep).__name__}: e.g. Sweep(impls='softmax,sdpa', lengths='1k..8k')")
    if not isinstance(sweep.name, str):
        raise UsageError(f"bad name {sweep.name!r}: a run's name is text")
    sweep = _spelled_as_the_cli(sweep)
    if sweep.name.strip().lower() == "latest":  # `show latest` means the newest run: a run named so could not be named
        raise UsageError("bad name 'latest': it means the newest run wherever a run is named; choose another")
    if sweep.accounting and any(device.split(":")[0] not in ("cuda", "meta") for device in sweep.device or ()):
        # meta stands for a GPU: the counts are of the plan a GPU runs (cosFormer's steps, bf16 products differ on the CPU)
        shown = ",".join(sweep.device)
        raise UsageError(f"--accounting counts the GPU plan on the meta device; --device {shown} cannot be accounted, drop it")
    devices = ("meta",) if sweep.accounting else (sweep.device or (("cuda",) if torch.cuda.is_available() else ("cpu",)))
    for device in devices:
        check_device(device, sweep.accounting)
    cpu_only = all(d == "cpu" for d in devices)
    resolved = replace(
        sweep,
        device=devices,
        lengths=sweep.lengths or parse_lengths("256..4k" if cpu_only else "1k..64k"),
        dtype=sweep.dtype or (("float32",) if cpu_only else ("bfloat16",)),
        impls=_expand_impls(sweep.impls),
    )
    check_reachable(resolved)
    resolved = checked_values(resolved)
    check_input_size(resolved)
    return resolved


GRID_KEYS = ("impl", "lengths", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode")
NUMBER_KEYS = ("lengths", "batch", "heads", "head_dim")
DEVICE_DEFAULTS = ("lengths", "dtype", "device")  # the Sweep fields whose empty tuple means "the device's default"


def _spelled_as_the_cli(sweep: Sweep) -> Sweep:
    """A Sweep built in Python may use the CLI's spellings (device="cpu", causal="yes", mode=("fwd-bwd",),
    lengths="1k..8k", impls="softmax,sdpa"): each grid field is parsed as the CLI parses it. A string where a
    tuple belongs was read letter by letter (devices 'c', 'p', 'u'; causal 'y', 'e', 's'), and "fwd-bwd" or
    "fp32" made rows saying the impl did not support them, or a KeyError."""
    from attnprof.scenario import SWEEP_KEYS

    changes = {}
    for key in GRID_KEYS:
        field, parse = SWEEP_KEYS[key]
        value = getattr(sweep, field)
        if isinstance(value, (tuple, list)) and not value and field in DEVICE_DEFAULTS:
            continue  # empty: the device's default
        if isinstance(value, (tuple, list)) and not value:  # impls=() ran a "complete" run of 0 cases, then `latest`
            raise UsageError(f"bad {field} {value!r}: give at least one value")
        if key == "impl" and isinstance(value, (tuple, list)) and all(isinstance(item, ImplSpec) for item in value):
            continue
        if key in NUMBER_KEYS and isinstance(value, tuple) and all(type(item) is int for item in value):
            continue  # _checked_values checks their range
        if key == "impl" and not isinstance(value, (str, tuple, list)):
            raise UsageError(f"bad impls {value!r}: give a string as --impl takes it ('softmax,sdpa') or parse_impls(...)")
        changes[field] = parse(list(value) if isinstance(value, (tuple, list)) else value)
    SWEEP_KEYS["accounting"][1](sweep.accounting)  # a boolean or refused: "false", a true string, made an accounting run
    return replace(sweep, **changes) if changes else sweep


def _expand_impls(specs: tuple[ImplSpec, ...]) -> tuple[ImplSpec, ...]:
    from attnprof import impls
    from attnprof.impls.base import option_text

    expanded: list[ImplSpec] = []
    for spec in specs:
        if spec.name == "all":
            expanded.extend(ImplSpec(name) for name in impls.names())
            continue
        impl = impls.get(spec.name)
        resolved = impl.resolve_options(spec.options)  # raises UsageError naming the bad option
        # An option given at its default value (block_size=auto, num_landmarks=64) is the same line as the plain impl.
        kept = tuple((k, option_text(resolved[k])) for k, _ in spec.options if resolved[k] != impl.options[k])
        expanded.append(ImplSpec(spec.name, kept))
    return tuple(dict.fromkeys(expanded))


def impl_labels(text: str) -> list[str]:
    """The labels a run gives the impls of `text`, written as --impl takes them: `nystromformer:num_landmarks=32`
    -> `nystromformer[num_landmarks=32]`; an option at its default is dropped, as the sweep drops it."""
    return [spec.label for spec in _expand_impls(parse_impls(text))]


def plan(sweep: Sweep | None, db: str | Path | None = None, *, resume: str | None = None, retry=()) -> list[tuple]:
    """(case, refusal reasons) for every case of the resolved sweep, or for the cases of run `resume` in
    `db` that have no row yet (or one of a status in `retry`): what `--dry-run` prints. A resume that run_sweep would
    refuse is refused. A resumed case that a failure the run kept will skip reads "skipped: ..." (listed as to be
    measured, it then got a `skipped` row: a robustness audit)."""
    from attnprof.resuming import resumable, retried, same_sweep, with_pending
    from attnprof.runner import kept_rows, skipped_after
    from attnprof.store import Store

    if resume is None:
        return [(case, _refused(case)) for case in resolve_sweep(sweep).cases()]
    store = Store.open(db or default_db(), create=False)
    try:
        run, stored = resumable(store, resume)
        same_sweep(sweep, stored, run.run_id)
        done, failures = kept_rows(store, run.run_id, with_pending(retried(retry, resume), run))
    finally:
        store.close()
    skip = skipped_after(failures)
    pending = [case for case in stored.cases() if case.key not in done]
    return [(case, [f"skipped: {skipped.reason}"] if (skipped := skip(case)) else _refused(case)) for case in pending]


def _refused(case) -> list[str]:
    """A case's refusal reasons, as the sweep will store them (a refuse hook that raises: the error it will store)."""
    from attnprof.runner import refusal

    answer = refusal(case, plugin_hooks=True)
    return [] if answer is None else [answer.reason] if answer.status == "unsupported" else [f"error: {answer.reason}"]


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def run_sweep(
    sweep: Sweep | None,
    db: str | Path | None = None,
    *,
    resume: str | None = None,
    retry=(),
    progress=None,
    command: str = "",
    timeout: float | None = None,
) -> str:
    """Measure every case of `sweep` (or the missing cases of run `resume`, whose stored sweep is measured: `sweep`
    None, or the same sweep) into `db`; returns the run id. `retry`
    (statuses among spec.RETRYABLE, with `resume`): the run's cells of those statuses are measured again, and the
    lengths skipped after them; a transient kill or timeout was otherwise a run's last word on its cells. `timeout`
    (with `resume`): the seconds a case may take in this resume, the run's own otherwise, so that a case that timed out
    can be retried at a longer limit (a resume took the stored sweep's whole: a README audit).

    `progress`: an attnprof.Progress, or any object with some of its methods (named, begin, start, done), told of
    each case as it is measured.

    Raises runner.SweepInterrupted on Ctrl-C or SIGTERM after saving everything measured; the run is then
    "interrupted" (resumable), as it is after any other fault.
    """
    from attnprof.progress_base import given_progress
    from attnprof.resuming import resumed_timeout, retried
    from attnprof.runner import SPAWN_HINT, WORKER_NAME_PREFIX, discard_spare_worker, start_spare_worker

    if multiprocessing.current_process().name.startswith(WORKER_NAME_PREFIX):
        # a worker importing the user's unguarded script: stop it here, before it writes a run of its own;
        # the parent then records the worker's failed start with the same hint
        raise RuntimeError(SPAWN_HINT)
    progress = given_progress(progress)  # before the run exists: a bad one left an empty run, then `latest`
    start_spare_worker()  # its imports overlap this process's (resolve_sweep imports torch); ended below if unused
    try:
        return _measure(sweep, db, resume, retried(retry, resume), progress, command, resumed_timeout(timeout, resume))
    finally:
        discard_spare_worker()


def _measure(sweep: Sweep, db, resume: str | None, retry: tuple[str, ...], progress, command: str, timeout: float | None = None) -> str:
    from attnprof.errors import StoreFault, signal_of
    from attnprof.resuming import resumable, same_sweep, with_pending
    from attnprof.run_lock import measuring
    from attnprof.runner import SweepInterrupted, execute
    from attnprof.store import Store
    from attnprof.worker import Settings

    if resume is None:
        sweep = resolve_sweep(sweep)  # before the database: a sweep refused leaves no empty file behind
    store = Store.open(db or default_db(), create=resume is None)  # resuming needs the run's database: never create an empty one
    try:
        if resume is not None and store.read_only:
            raise UsageError(f"database path {str(store.path)!r} is not writable: resuming adds the missing rows to it")
        if resume is not None:
            run, stored = resumable(store, resume)
            same_sweep(sweep, stored, run.run_id)
            sweep = stored if timeout is None else replace(stored, timeout=timeout)
        else:
            run = _new_run(sweep, command)
            try:
                store.add_run(run)
            except sqlite3.Error as error:
                raise StoreFault(str(error), store.path) from None
        settings = Settings(warmup_ms=sweep.warmup_ms, rep_ms=sweep.rep_ms, accounting=sweep.accounting)
        with measuring(store.path, run.run_id):  # a second resume of the same run is refused, not run alongside
            _mark_running(store, run.run_id)
            retry = with_pending(retry, run) if resume is not None else retry  # a retry stopped early goes on
            if retry:
                store.set_pending_retry(run.run_id, retry)
            try:
                with _terminate_as_interrupt():
                    execute(store, run.run_id, sweep.cases(), settings, sweep.timeout, progress, retry)
            except SweepInterrupted:  # execute's own, said already (it is a KeyboardInterrupt too): the run is interrupted
                store.set_run_state(run.run_id, "interrupted")
                raise
            except KeyboardInterrupt as error:  # outside execute's loop (starting, finishing): the same saved, resumable stop
                store.set_run_state(run.run_id, "interrupted")
                raise SweepInterrupted(run.run_id, store.count(run.run_id), len(sweep.cases()), signal_of(error), retry) from None
            except sqlite3.Error as error:  # disk full, I/O error: every row committed before it stays
                with contextlib.suppress(sqlite3.Error):  # may fail alike; the run then reads as interrupted (run_lock)
                    store.set_run_state(run.run_id, "interrupted")
                raise StoreFault(str(error), store.path, run.run_id) from None
            except BaseException:  # Ctrl-C, SIGTERM (a CI job cancelled, `timeout`), or a fault: resumable, not 'running' forever
                store.set_run_state(run.run_id, "interrupted")
                raise
            if retry:
                store.set_pending_retry(run.run_id, ())
            store.set_run_state(run.run_id, "complete")
        return run.run_id
    finally:
        store.close()


@contextlib.contextmanager
def _terminate_as_interrupt():
    """Inside: SIGTERM stops the sweep as Ctrl-C does (what was measured is saved, the run can be resumed).
    Only the main thread can install handlers; elsewhere, or where a handler is installed already (the CLI's),
    SIGTERM keeps it."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _new_run(sweep: Sweep, command: str):
    import attnprof
    from attnprof.env import capture_env
    from attnprof.records import RunInfo

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env = capture_env(sweep.device, [spec.name for spec in sweep.impls])
    return RunInfo(new_run_id(), created, sweep.to_dict(), env, attnprof.__version__, sweep.name, command, "running")


def _mark_running(store, run_id: str) -> None:
    """The run's first write. A file this process may read but not write (mode 444 for its user) opens, SQLite
    reading it read-only, and failed here with a traceback: the resume's refusal is one line, as a new sweep's is."""
    from attnprof.errors import StoreFault

    try:
        store.set_run_state(run_id, "running")
    except sqlite3.Error as error:
        if "readonly" in str(error):
            raise UsageError(f"database path {str(store.path)!r} is not writable ({error}): resuming adds the missing rows to it") from None
        raise StoreFault(str(error), store.path, run_id) from None


def load_measurements(run: str = "latest", db: str | Path | None = None):
    """Every measurement of a run as a pandas DataFrame, one row per case (the export columns; units in their names).

    Numbers are floats with NaN where a value is missing (a source this machine lacks, a case that failed), and
    `noisy` is pandas' nullable boolean: a column's dtype no longer depends on the data (with no ok row, median_ms
    was object holding None; the GPU memory columns always were on the CPU)."""
    from attnprof.export import measurements_frame, numeric_frame
    from attnprof.store import Store

    store = Store.open(db or default_db(), create=False)
    try:
        info = store.resolve_run(run)
        frame = numeric_frame(measurements_frame(info.run_id, store.measurements(info.run_id)))
    finally:
        store.close()
    # the grid's own dtypes whatever the rows: a run without rows gave object columns, and a concat with another run's
    # frame then had seq_len as object, which np.log2 refused (an API audit)
    return frame.astype({"noisy": "boolean", "causal": bool, **dict.fromkeys(("seq_len", "batch", "heads", "head_dim", "seed"), "int64")})


def compare_runs(baseline: str, candidate: str = "latest", db: str | Path | None = None):
    """(cells, exponents), candidate against baseline, as the dashboard's Compare view and `attnprof compare`:
    cells: one row per cell both measured, worst first (dashboard.compare.CELL_COLUMNS: statuses, medians and
    peaks of both, their ratios candidate/baseline, `change` in words; `score` the sort key: inf for ok -> failing,
    else the larger ratio); exponents: per configuration both runs have
    and metric (time, peak_bytes), both fitted exponents over the lengths both runs measured, the change and whether
    the 95% intervals are disjoint (`significant`), those first, each group by the size of the change either way.
    `cells.attrs["note"]`: the sentence `attnprof compare` prints (which runs, an unfinished one, cells only one has,
    busy or noisy cells)."""
    import pandas as pd

    from attnprof.compare_note import comparison_note
    from attnprof.dashboard.compare import compare_cells, exponent_changes, shared_configurations
    from attnprof.dashboard.views import fit_metric

    a, b = load_measurements(baseline, db), load_measurements(candidate, db)
    cells = compare_cells(a, b)
    fitted_a, fitted_b = shared_configurations(a, b)
    fits = [pd.concat([fit_metric(frame, m) for m in ("time", "peak_bytes")], ignore_index=True) for frame in (fitted_a, fitted_b)]
    exponents = exponent_changes(pd.concat([a, b]), *fits)
    cells.attrs["note"] = comparison_note(baseline, candidate, db or default_db(), cells, exponents)
    return cells, exponents


def run_budget(run: str, db: str | Path | None = None) -> int | None:
    """The default memory budget of a run (env.memory_budget): its GPU's memory, its host's for CPU runs,
    None for accounting runs."""
    from attnprof.env import memory_budget
    from attnprof.store import Store

    store = Store.open(db or default_db(), create=False)
    try:
        info = store.resolve_run(run)
    finally:
        store.close()
    return memory_budget(info.env, info.sweep.get("device", []))
