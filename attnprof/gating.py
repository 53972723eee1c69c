"""`attnprof gate`: read a rules file, measure its [sweep] (or take --run), judge the rules.

The I/O side of the gate; the judging itself is gate.py (pure).
"""

from __future__ import annotations

import os
from pathlib import Path

from attnprof.errors import UsageError, path_argument

BASELINE_KEYS = ("impl", "label", "options", "seq_len", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode",
                 "status", "reason", "median_ms", "times_ms", "peak_bytes", "peak_source", "flops")  # fmt: skip
# files written before these were kept read as they did (gate_regression: _source, _other_setup)
OPTIONAL_BASELINE_KEYS = ("peak_source", "timed_on")


def load_rules(path: str | Path, registered: bool = True):
    """(rules, sweep tables) from a rules file; with `registered`, every impl named must be registered here (a
    stored run is judged on what it measured instead: its plugin modules need not be importable)."""
    from attnprof import impls
    from attnprof.gate_rules import parse_rules
    from attnprof.scenario import read_toml, sweep_from_options, sweep_tables

    sweeps = sweep_tables(path, allowed_tables=("sweep", "rule"))
    for index, options in enumerate(sweeps, 1):
        try:  # validate every value before anything is measured, naming the table as a rule's slip names the rule
            sweep_from_options(options)
        except UsageError as error:
            raise UsageError(f"{path}: [sweep] {index}: {error}") from None
    if registered:
        impls.names()  # the plugin modules load here: one that cannot be imported is no rule's slip
    rules = parse_rules(read_toml(path).get("rule", []), str(path))
    for rule in rules if registered else ():
        for name in (rule.impl, rule.to):
            if name and name != "all":
                try:
                    impls.get(name.split("[")[0])  # raises naming the unknown impl and the known ones
                except UsageError as error:
                    raise UsageError(f"{path}: rule {rule.index}: {error}") from None
    return rules, sweeps


def gate_db(sweeps: list[dict], db=None):
    """The database a gate reads and measures into: `db` (--db), else the first [sweep]'s db, else the default."""
    from attnprof.api import default_db

    return db or next((s["db"] for s in sweeps if "db" in s), None) or default_db()


def run_gate(rules_path, *, runs: tuple[str, ...] = (), baseline: str | None = None, db=None, progress=None):
    """Judge the rules; returns (verdicts, run ids). Measures the file's sweeps when no run is given. Each verdict is a
    gate.RuleVerdict (`verdict` PASS, FAIL or MISSING, `message`); attnprof.gate_exit_status(verdicts) is the status
    `attnprof gate` exits with (0 pass, 1 a rule failed, 3 one could not be judged)."""
    import pandas as pd

    from attnprof.analysis import refuse_overlapping_runs
    from attnprof.api import load_measurements, resolve_sweep, run_budget, run_sweep
    from attnprof.gate import evaluate
    from attnprof.scenario import sweep_from_options

    if not isinstance(rules_path, (str, os.PathLike)):
        raise UsageError(f"bad rules file {rules_path!r}: give the path of a TOML file")
    runs = (runs,) if isinstance(runs, str) else tuple(runs or ())  # runs="alpha" was read as the runs a, l, p, h, a
    rules, sweeps = load_rules(rules_path, registered=not runs)
    needing = [rule for rule in rules if rule.needs_baseline]
    if needing and not baseline:  # a usage slip: say so before measuring anything, not as a verdict afterwards
        needs = "needs a baseline file (--baseline FILE; baseline= from Python)"
        key = "max_regression" if needing[0].kind == "regression" else "max_exponent_increase"
        raise UsageError(f"{rules_path}: rule {needing[0].index} has {key}, which {needs}")
    baseline_frame = read_baseline(path_argument(baseline, "baseline")) if baseline else None
    db = gate_db(sweeps, db)
    if not runs:
        if not sweeps:
            raise UsageError(f"{rules_path} has no [sweep] table: pass --run RUN to judge an existing run")
        parsed = [sweep_from_options(s) for s in sweeps]
        resolved = []
        for index, sweep in enumerate(parsed, 1):
            try:  # an unknown impl or device in a [sweep] is that table's slip, not a rule's
                resolved.append(resolve_sweep(sweep))
            except UsageError as error:
                raise UsageError(f"{rules_path}: [sweep] {index}: {error}") from None
        check_rules_are_swept(rules, resolved, rules_path)  # their labels as the sweep gives them (defaults dropped)
        check_rules_can_be_judged(rules, resolved, rules_path)
        runs = tuple(run_sweep(sweep, db, progress=progress, command=f"attnprof gate {rules_path}") for sweep in parsed)
    frames, run_ids = _distinct_runs([load_measurements(run, db) for run in runs], runs)
    refuse_overlapping_runs(pd.concat(frames, ignore_index=True), "judge")
    infos = _run_infos(run_ids, db)
    frames = [with_timing_setup(frame, info.env) for frame, info in zip(frames, infos, strict=True)]
    unfinished = _unfinished_runs(infos, frames, db)
    # an unfinished run's rules may name what it has yet to measure (MISSING then), not only what it has
    _check_rules_name_measured_impls(rules, frames, run_ids, rules_path, planned=_planned_lines(infos) if unfinished else (set(), set()))
    if not unfinished:  # an unfinished run may lack values it will measure: MISSING then, not the file's slip
        _check_filters_measured(rules, pd.concat(frames, ignore_index=True), run_ids, rules_path)
    budgets = [b for b in (run_budget(run, db) for run in run_ids) if b]
    verdicts = evaluate(rules, pd.concat(frames, ignore_index=True), baseline_frame, default_budget=min(budgets) if budgets else None)
    return [not_passed_on_part(verdict, unfinished) for verdict in verdicts] if unfinished else verdicts, run_ids


def _run_infos(run_ids, db) -> list:
    from attnprof.store import Store

    store = Store.open(db, create=False)
    try:
        return [store.resolve_run(run) for run in run_ids]
    finally:
        store.close()


def _unfinished_runs(infos, frames, db) -> str:
    """'' when every judged run is complete; else what each unfinished one lacks and the command that measures it."""
    from attnprof.dashboard.runinfo import unfinished_note

    notes = [unfinished_note(info, len(frame), db) for info, frame in zip(infos, frames, strict=True)]
    return "; ".join(f"run {info.run_id} is {note}" for info, note in zip(infos, notes, strict=True) if note)


def _planned_lines(infos) -> tuple[set[str], set[str]]:
    """(impl names, labels) the runs' sweeps plan: an interrupted run that has not reached softmax yet still
    measures it (a rule naming it was called the file's slip, exit 2, where the README promises MISSING, exit 3)."""
    from attnprof.spec import Sweep

    cases = [case for info in infos for case in Sweep.from_dict(info.sweep).cases()]
    return {case.impl for case in cases}, {case.label for case in cases}


def not_passed_on_part(verdict, unfinished: str):
    """A rule cannot pass on part of a run: an interrupted sweep holding 3 of 8 cases passed its rules over the
    lengths it had reached, exit 0. Its PASS becomes MISSING (exit 3) saying what is missing, and a MISSING says it
    too (a rule on an impl the sweep has not reached yet: resuming it is the answer); a FAIL stands."""
    from dataclasses import replace

    if verdict.verdict == "FAIL":
        return verdict
    return replace(verdict, verdict="MISSING", message=f"{verdict.message}; but {unfinished}")


def _distinct_runs(frames, runs) -> tuple[list, tuple]:
    """(frames, run ids), each run once: `--run latest --run <its id>` names one run twice."""
    kept = {}
    for frame, run in zip(frames, runs, strict=True):
        kept.setdefault(frame["run_id"].iloc[0] if len(frame) else run, frame)
    return list(kept.values()), tuple(kept)


def _check_rules_name_measured_impls(rules, frames, run_ids, rules_path, *, planned: tuple[set[str], set[str]]) -> None:
    """A rule naming an impl the judged runs never measured (nor plan to: `planned`) is a slip in the file (exit 2),
    not a MISSING verdict."""
    import pandas as pd

    cells = pd.concat(frames, ignore_index=True)
    impl_names, labels = set(cells["impl"]) | planned[0], set(cells["label"]) | planned[1]
    _refuse_unmeasured_names(rules, impl_names, labels, rules_path, f"run {', '.join(run_ids)} does not measure")
    from attnprof.analysis import CONFIG
    from attnprof.gate import matching

    for rule in (rule for rule in rules if rule.to):
        # as the ratio is taken: within one configuration, among the rows the rule's filters keep (two option sets
        # in two dtypes, the rule kept to one, name one line there)
        others = matching(rule, cells, to=True)
        for _, group in others.groupby(CONFIG[1:], dropna=False):
            _refuse_ambiguous_to([rule], set(zip(group["impl"], group["label"], strict=True)), rules_path)


def _check_filters_measured(rules, cells, run_ids, rules_path) -> None:
    """A filter keeping values the judged runs never measured (a typo, `heads = 7`), or an at_length none of them
    measures (`3k` over 128..1024), is the file's slip, exit 2, as it is against the file's own [sweep]; under --run
    it was MISSING (exit 3), which CI reads as "can't tell"."""
    lengths = sorted(set(cells["seq_len"].tolist()))
    for rule in rules:
        if rule.metric == "time" and "device" not in rule.filters and (cells["device"] == "meta").all():
            # as against the file's own sweeps (check_rules_can_be_judged): it was MISSING (exit 3) under --run
            raise UsageError(f"{rules_path}: rule {rule.index} judges time, but run {', '.join(run_ids)} is an accounting run (no times)")
        missing = [n for n in rule.at_length if n not in lengths]
        if missing:
            shown, runs = ", ".join(map(str, lengths)), ", ".join(run_ids)
            raise UsageError(
                f"{rules_path}: rule {rule.index} asks for N={missing[0]}, which run {runs} does not measure (lengths {shown})"
            )
        for key, allowed in rule.filters.items():
            measured = sorted(set(cells[key].tolist()), key=str)
            if not set(allowed) & set(measured):
                kept, shown, runs = ", ".join(map(str, allowed)), ", ".join(map(str, measured)), ", ".join(run_ids)
                raise UsageError(f"{rules_path}: rule {rule.index} keeps {key} {kept}, which run {runs} does not measure ({shown})")


def _refuse_ambiguous_to(rules, lines: set[tuple[str, str]], rules_path) -> None:
    """A `to` naming two lines (nystromformer, measured with two option sets) is the file's slip, exit 2, whether
    the gate measures its own sweeps or judges stored runs (these gave MISSING, exit 3: "the measurement failed").
    `lines`: (impl, label) pairs."""
    from attnprof.gate import names_line

    for rule in rules:
        named = sorted({label for impl, label in lines if names_line(rule.to, rule.to_exact, impl, label)})
        if len(named) > 1:  # the ratio would be taken to whichever line came first
            listed = f"{len(named)} lines ({', '.join(named)})"
            raise UsageError(f"{rules_path}: rule {rule.index} has to = {rule.to!r}, which names {listed}: name one")


def _refuse_unmeasured_names(rules, impl_names: set, labels: set, rules_path, where: str) -> None:
    """One line naming the first rule whose impl or `to` names no measured line: a bare name an impl measured, a name
    with options (GateRule.impl_exact) a label. `nystromformer[num_landmarks=64]` (the default) over a sweep of
    num_landmarks=32 measured first, then was MISSING, "no measurements match impl 'nystromformer'" (a review)."""
    from attnprof.gate_rules import exact_name

    for rule in rules:
        for name, exact in ((rule.impl, rule.impl_exact), (rule.to, rule.to_exact)):
            if name and name != "all" and name not in (labels if exact else impl_names | labels):
                shown, base = exact_name(name, exact), name.split("[")[0]
                hint = ""
                if exact and base in labels and not _registered(base):  # options at their defaults, maybe: unknown here
                    hint = (f"; if those are {base}'s default options, the run labels that line {base!r}: name it so, or load "
                            f"the plugin that registers {base} (ATTNPROF_PLUGINS) so that its defaults are known")  # fmt: skip
                raise UsageError(f"{rules_path}: rule {rule.index} names {shown!r}, which {where} ({', '.join(sorted(labels))}){hint}")


def _registered(name: str) -> bool:
    """Whether an impl is registered in this process (`gate --run` loads no plugin: a stored run's need not import)."""
    from attnprof import impls

    try:
        impls.get(name)
    except UsageError:
        return False
    return True


def check_rules_are_swept(rules, sweeps, rules_path) -> None:
    """Every impl a rule names is measured by the file's sweeps: a slip found before minutes of measuring, not
    as a MISSING verdict (exit 3, "the measurement failed") after them."""
    from attnprof import impls

    specs = [spec for sweep in sweeps for spec in sweep.impls]  # resolved sweeps: `all` expanded, labels as measured
    names = set(impls.names()) if any(spec.name == "all" for spec in specs) else {spec.name for spec in specs}
    labels = {spec.label for spec in specs} | (names if any(spec.name == "all" for spec in specs) else set())
    _refuse_unmeasured_names(rules, names, labels, rules_path, "no [sweep] of the file measures")
    _refuse_ambiguous_to(rules, {(spec.name, spec.label) for spec in specs}, rules_path)


FITTED_KINDS = ("exponent", "frontier", "slope")  # rules judged on a fit over length (gate_scaling.fit_points)


def check_rules_can_be_judged(rules, resolved_sweeps, rules_path) -> None:
    """What the file's own sweeps can never give a rule, said before measuring (exit 2), not as MISSING (exit 3,
    "the measurement failed") after it: times from accounting-only sweeps, a length none of them measures, a
    frontier on meta runs, which belong to no device and so have no default budget, a filter keeping values no sweep
    has."""
    from attnprof.fit_range import MIN_KEPT

    accounting_only = all(sweep.accounting for sweep in resolved_sweeps)
    lengths = sorted(set().union(*(sweep.lengths for sweep in resolved_sweeps)))
    for rule in rules:
        where = f"{rules_path}: rule {rule.index}"
        if rule.metric == "time" and accounting_only:
            raise UsageError(f"{where} judges time, but every [sweep] of the file is an accounting run (no times)")
        missing = [n for n in rule.at_length if n not in lengths]
        if missing:
            raise UsageError(
                f"{where} asks for N={missing[0]}, which no [sweep] of the file measures (lengths {', '.join(map(str, lengths))})"
            )
        if rule.kind in FITTED_KINDS and len(lengths) < MIN_KEPT:  # MISSING after the sweep, every time
            shown = ", ".join(map(str, lengths))
            raise UsageError(f"{where} fits {rule.metric} over length, which needs {MIN_KEPT} lengths; the file's sweeps measure {shown}")
        for key, allowed in rule.filters.items():  # dtype = "bfloat16" over float32 sweeps measured, then exited 3
            swept = sorted({value for sweep in resolved_sweeps for value in getattr(sweep, key)}, key=str)
            if not set(allowed) & set(swept):
                kept, shown = ", ".join(map(str, allowed)), ", ".join(map(str, swept))
                raise UsageError(f"{where} keeps {key} {kept}, which no [sweep] of the file measures ({shown})")
        if rule.min_frontier is not None and rule.budget is None and accounting_only:
            raise UsageError(f'{where}: accounting runs have no device memory to default to; set budget = "80GiB" in the rule')


def with_timing_setup(frame, env: dict):
    """The run's frame with `timed_on` (env.timing_setup of its run) on every row: what its times were taken on."""
    from attnprof.env import timing_setup

    return frame.assign(timed_on=[timing_setup(env)] * len(frame))


def baseline_records(frame) -> str:
    """The small baseline file a regression rule reads: one JSON object per case (with_timing_setup's frame)."""
    return frame[[*BASELINE_KEYS, "timed_on"]].to_json(orient="records", lines=True)


def read_baseline(path: str | Path):
    import pandas as pd

    try:
        frame = pd.read_json(Path(path), orient="records", lines=True, dtype=False)
    except FileNotFoundError:
        raise UsageError(f"baseline file {str(path)!r} not found") from None
    except ValueError as error:
        raise UsageError(f"baseline file {str(path)!r} is not an attnprof baseline (JSON lines): {error}") from None
    if frame.empty:  # "lacks the keys impl, label, ..." said of a file with no rows at all
        raise UsageError(f"baseline file {str(path)!r} is empty: export one with `attnprof export RUN --format baseline`")
    missing = [k for k in BASELINE_KEYS if k not in frame.columns and k not in OPTIONAL_BASELINE_KEYS]
    if missing:
        raise UsageError(f"baseline file {str(path)!r} lacks the keys {', '.join(missing)}")
    _check_baseline_values(frame, path)
    return frame


_CELL_KEYS = ("label", "seq_len", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode")  # one cell of a sweep
_NUMBER_KEYS = ("median_ms", "peak_bytes", "flops")  # a number, or null where the cell has none


def _check_baseline_values(frame, path) -> None:
    """Each value the gate reads has its type, and each cell is there once: a file written twice into one (a CI
    step appending with >>) or edited by hand crashed the judging with a traceback (exit 4)."""
    where = f"baseline file {str(path)!r}"
    for line, row in enumerate(frame.to_dict("records"), 1):
        bad = next((key for key in ("label", "dtype", "device", "mode", "status") if not isinstance(row[key], str)), None)
        bad = bad or next((key for key in ("seq_len", "batch", "heads", "head_dim") if not _is_whole(row[key])), None)
        bad = bad or ("causal" if not isinstance(row["causal"], bool) else None)
        bad = bad or next((key for key in _NUMBER_KEYS if row[key] is not None and not _is_number(row[key])), None)
        if not bad and not isinstance(row.get("timed_on", {}), dict):
            bad = "timed_on"
        times = row["times_ms"]
        if not bad and not (isinstance(times, list) and all(_is_number(t) for t in times)):
            bad = "times_ms"
        if not bad and row["status"] == "ok" and _is_number(row["median_ms"]) and row["median_ms"] == row["median_ms"] and not times:
            bad = "times_ms"  # a median without its samples: a time regression judged 'not significant (p=1)' and passed
        if bad:
            shown = "null" if row[bad] is None or row[bad] != row[bad] else repr(row[bad])  # pandas reads null as NaN
            raise UsageError(f"{where}, line {line}: {bad} = {shown} is not what attnprof export --format baseline writes")
    repeated = frame.duplicated(subset=list(_CELL_KEYS), keep="first")
    if repeated.any():
        line = int(repeated.to_numpy().argmax()) + 1
        cell = ", ".join(f"{key}={frame.iloc[line - 1][key]}" for key in _CELL_KEYS)
        raise UsageError(f"{where}, line {line}: a second row for the cell {cell} (one file appended to another?): export it again")


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
