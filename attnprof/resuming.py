"""What a resume may measure into a stored run: only in the environment it was measured in, with its plugins
loaded, and the cells without a row (or, with `retry`, of the statuses asked for). The API's run_sweep and plan ask."""

from __future__ import annotations

from dataclasses import fields

from attnprof.errors import UsageError
from attnprof.spec import Sweep, parse_retry


def retried(retry, resume) -> tuple[str, ...]:
    """The statuses `retry` names (spec.parse_retry), () for none; refused without a run to resume. `--retry ""` is
    refused as a bad value, not taken for none (a review)."""
    if retry is None or retry == ():
        return ()
    if resume is None:
        raise UsageError("retry goes with resume: it measures again the cells of a stored run")
    return parse_retry(retry)


def resumable(store, resume: str):
    """(run, sweep) of the stored run `resume` names, refused when it was measured in another environment
    (env.resume_fields) or its plugin modules are not loaded."""
    from attnprof.env import capture_env, differing_fields, resume_fields

    run = store.resolve_run(resume)
    sweep = Sweep.from_dict(run.sweep)
    check_plugins_loaded(run, sweep)
    differences = differing_fields(run.env, capture_env(sweep.device), resume_fields(timed=not sweep.accounting))
    if differences:
        raise UsageError(
            f"cannot resume run {run.run_id}: it was measured in another environment ({'; '.join(differences)}); "
            "measure the rest in a new run"
        )
    return run, sweep


def pending_retry(run) -> tuple[str, ...]:
    """The statuses a --retry resume of `run` was measuring again when it stopped (store.RETRY_PENDING): a resume of
    the run retries them still, asked or not."""
    from attnprof.store import RETRY_PENDING

    return tuple(run.env.get(RETRY_PENDING) or ())


def resumed_timeout(timeout, resume) -> float | None:
    """A resume's own per-case timeout (seconds), checked as a sweep's is; None keeps the run's. Refused without a run."""
    if timeout is None:
        return None
    if resume is None:
        raise UsageError("timeout= goes with resume: a new sweep takes its timeout in Sweep(timeout=...)")
    from attnprof.scenario import SWEEP_KEYS

    return SWEEP_KEYS["timeout"][1](timeout)  # as a sweep's is checked: a positive, finite number (text too)


def with_pending(retry: tuple[str, ...], run) -> tuple[str, ...]:
    """The statuses asked for and those a stopped retry of the run was measuring again: a `--retry timeout` after a
    killed `--retry crashed` replaced it, and completed the run with the crashed rows not reached (a review)."""
    return tuple(dict.fromkeys((*retry, *pending_retry(run))))


def check_plugins_loaded(run, sweep: Sweep) -> None:
    """A run of a plugin impl resumed without its module said only "unknown impl 'mine'"."""
    from attnprof import impls

    known = set(impls.names())
    missing = [spec.name for spec in sweep.impls if spec.name not in known]
    plugins = ",".join(run.env.get("plugins") or [])
    if missing and plugins:
        from attnprof.dashboard.runinfo import plugin_prefix

        prefix = plugin_prefix(run.env.get("plugins"), run.env.get("plugin_path") or ()).strip()
        raise UsageError(f"run {run.run_id} measured impl {missing[0]!r} from plugin module(s) {plugins}: resume it with {prefix}")


def same_sweep(given: Sweep | None, stored: Sweep, run_id: str) -> None:
    """A resume measures the stored run's sweep: a Python caller's other sweep (new lengths, rep_ms) was ignored without
    a word, where the CLI refuses such flags (an API audit). None, Sweep() or the same sweep resolved pass."""
    if given is None or _is_default(given):
        return
    from attnprof.api import resolve_sweep

    mine = resolve_sweep(given)
    differ = [f.name for f in fields(Sweep) if f.compare and getattr(mine, f.name) != getattr(stored, f.name)]
    if differ:
        raise UsageError(
            f"resume takes the sweep from run {run_id}; this sweep differs in {', '.join(differ)}: pass sweep=None to resume it, "
            "or measure this one in a new run"
        )


def _is_default(sweep: Sweep) -> bool:
    """Whether `sweep` is Sweep() (the CLI's, which a resume gets): field by field, a value of another type (a numpy
    array of lengths) never compared with the default's tuple, which raised "could not be broadcast" (a review)."""
    default = Sweep()
    return all(
        type(getattr(sweep, f.name)) is type(getattr(default, f.name)) and getattr(sweep, f.name) == getattr(default, f.name)
        for f in fields(Sweep)
        if f.compare
    )
