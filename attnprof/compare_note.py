"""The sentence that goes with a comparison of two runs (pure but for reading the two runs' records): which runs, an
unfinished one, cells only one has, how many cells got worse and exponents changed, busy or noisy cells. `attnprof
compare` prints it; `compare_runs` keeps it in `cells.attrs["note"]`, where a notebook compared the two tables
without being told that one run was interrupted or that they were the same run."""

from __future__ import annotations


def comparison_note(baseline: str, candidate: str, db, cells, exponents) -> str:
    """cells, exponents: compare_runs' two frames (cells with its `score`)."""
    from attnprof.dashboard.compare import caveat_note

    worse = int((cells["score"] > 1.05).sum()) if len(cells) else 0  # as the dashboard's Compare note counts them
    note = f"{len(cells)} shared cells; {worse} at least 5% slower or larger, or failing now"
    changed = int(exponents["significant"].sum()) if len(exponents) else 0
    note += f"; {len(exponents)} exponents compared, {changed} changed beyond their 95% intervals."
    if not len(cells):  # empty tables and exit 0 said nothing of why
        note += " The two runs share no cell (configuration, length and seed): compare runs of the same sweep."
    return " ".join(filter(None, (_runs_note(baseline, candidate, db, len(cells)), note, caveat_note(cells))))


def _runs_note(baseline: str, candidate: str, db, shared: int) -> str:
    """Which two runs were compared (`latest` and names resolved: after a resume, `latest` is still the newest
    created), an unfinished one's state, and how many cells only one of them has: an interrupted candidate of 4 of
    18 cells read as a whole comparison."""
    from attnprof.dashboard.runinfo import run_name, unfinished_note
    from attnprof.store import Store

    store = Store.open(db, create=False)
    try:
        runs = [store.resolve_run(run) for run in (baseline, candidate)]
        counts = [store.count(run.run_id) for run in runs]
    finally:
        store.close()
    if runs[0].run_id == runs[1].run_id:
        return f"Run {run_name(runs[0])} against itself: the two are the same run."
    note = f"Candidate run {run_name(runs[1])} against baseline run {run_name(runs[0])}."
    for role, run, count in zip(("baseline", "candidate"), runs, counts, strict=True):
        if unfinished := unfinished_note(run, count, db):
            note += f" The {role} is {unfinished}."
    only = [count - shared for count in counts]
    if any(only):
        note += f" Not compared: {only[0]} cells only the baseline has, {only[1]} only the candidate."
    return note
