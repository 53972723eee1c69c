"""The gate's slope rule: a configuration's fitted exponent against the baseline file's, over the lengths both have.

`max_exponent = 2.0` fixes a number a kernel engineer must pick and keep up to date; `max_exponent_increase = 0.1`
asks only that the slope not grow past the baseline's by more than that (a tile loop that turned quadratic, a
cache that stopped fitting). Both exponents are fitted as the exponent rule fits them (gate_scaling.fit_points,
fit.fit_power_law) from the same lengths, so a run measuring further than its baseline compares like with like.
Exact metrics (bytes, FLOPs) are judged on the difference itself; a time difference must be wholly past the bound
to fail (each 95% interval's far end against the other's), is said as "can't tell" when its range holds the
bound, and one drawn from cells timed on a busy machine is not judged (gate.unless_busy), nor is a pass (load bends
either curve, as it does a timed exponent's).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from attnprof.fit_range import MIN_KEPT
from attnprof.gate import CONFIG, NEW_CELL, QUIET, Judgement, busy_note, cell_of, located, matching, subject_of, unless_busy
from attnprof.gate_regression import absent_configurations, other_setup, timed_elsewhere
from attnprof.gate_rules import GateRule
from attnprof.gate_scaling import broken_cells, fit_points, span_text

# An exact exponent's increase within this of the bound is the bound: peaks rounded to whole bytes (1000 N^1.1 against
# 1000 N) read +0.10000000141 and failed "+0.100 > max increase 0.1", as a ratio exactly at its bound passes.
ROUNDING = 1e-6


def judge_slopes(rule: GateRule, rows: pd.DataFrame, baseline: pd.DataFrame | None) -> list[Judgement]:
    if baseline is None:
        return [Judgement("baseline", "MISSING", "a max_exponent_increase rule needs --baseline FILE")]
    theirs = matching(rule, baseline)
    before = {keys: group for keys, group in theirs.groupby(CONFIG, sort=False)}
    judgements = []
    for keys, group in rows.groupby(CONFIG, sort=True):
        subject, cell = subject_of(keys), cell_of(keys, group["impl"].iloc[0])
        base = before.get(keys)
        if base is None:  # a configuration new since the baseline cannot regress; said, not judged
            judgements.append(located(Judgement(subject, NEW_CELL, "not in the baseline"), cell))
        else:
            judgements.append(located(judge_slope(rule, subject, group, base), cell))
    if judgements and all(j.verdict == NEW_CELL for j in judgements):  # not "no measurements match": the run has them
        has = ", ".join(sorted(set(theirs["label"]))) or "none of this impl"
        reason = f"the baseline has no configuration of the run's {', '.join(sorted(set(rows['label'])))} (its: {has})"
        return [Judgement("baseline", "MISSING", reason)]
    return judgements + absent_configurations(set(zip(*(rows[c] for c in CONFIG), strict=True)), theirs)


def judge_slope(rule: GateRule, subject: str, group: pd.DataFrame, base: pd.DataFrame) -> Judgement:
    from attnprof.fit import fit_power_law

    broken = broken_cells(group)
    if broken:
        return Judgement(subject, "FAIL", broken, math.inf)
    if rule.metric == "time":  # the lengths of a configuration may come from two runs: each row against the other side
        pairs = [(base.iloc[0], row) for _, row in group.iterrows()] + [(row, group.iloc[0]) for _, row in base.iterrows()]
        elsewhere = next(((old, new) for old, new in pairs if other_setup(old, new)), None)
        if elsewhere:
            return Judgement(subject, "MISSING", timed_elsewhere("a time exponent", *elsewhere))
    ok_now, ok_then = (set(cells.loc[cells["status"] == "ok", "seq_len"]) for cells in (group, base))
    shared = sorted(ok_now & ok_then)
    if len(shared) < MIN_KEPT:  # said of both sides: "the run: 0 ok lengths" blamed a run whose 5 lengths ran, for the baseline's
        oks = f"ok in the run: {_listed(sorted(ok_now))}; in the baseline: {_listed(sorted(ok_then))}"
        why = f"{len(shared)} lengths ok in both, need {MIN_KEPT} to compare ({oks})"
        return Judgement(subject, "MISSING", why)
    now, then = _fits_over(rule, (group, base), shared, fit_power_law)
    if isinstance(now, str) or isinstance(then, str):
        where, why = ("the run", now) if isinstance(now, str) else ("the baseline", then)
        return Judgement(subject, "MISSING", f"{where}: {why} (over the lengths both measured: {_listed(shared)})")
    shared = [n for n in shared if n >= now.lengths_used[0]]  # what both fits used: the same lengths, see _fits_over
    increase = now.exponent - then.exponent
    lowest, highest = now.exponent_low - then.exponent_high, now.exponent_high - then.exponent_low
    bound = rule.max_exponent_increase
    figures = {"exponent": now.exponent, "interval": [now.exponent_low, now.exponent_high], "baseline_exponent": then.exponent,
               "baseline_interval": [then.exponent_low, then.exponent_high], "increase": increase, "max": bound,
               "lengths": [int(n) for n in shared]}  # fmt: skip
    described = (
        f"exponent {now.exponent:.3f} [95% {now.exponent_low:.3f}, {now.exponent_high:.3f}] vs {then.exponent:.3f} "
        f"[{then.exponent_low:.3f}, {then.exponent_high:.3f}] in the baseline over N={span_text(shared)}: {increase:+.3f}"
    )
    if rule.metric != "time":  # exact: the difference is the verdict, to within the rounding of whole bytes
        verdict, sign = ("FAIL", ">") if increase > bound + ROUNDING else ("PASS", "<=")
        return Judgement(subject, verdict, f"{described} {sign} max increase {bound:g}", increase - bound, figures)
    at = lambda cells: cells[cells["seq_len"].isin(shared)]  # noqa: E731  (only load on the fitted cells can explain them)
    busy = "".join(
        f" [{when}: {note[2:]}" for when, note in (("now", busy_note(at(group))), ("in the baseline", busy_note(at(base)))) if note
    )
    described += busy
    if lowest > bound:
        failed = Judgement(subject, "FAIL", f"{described} > max increase {bound:g} (at least {lowest:+.3f})", lowest - bound, figures)
        return unless_busy(failed, busy)
    if highest <= bound and busy:
        # as a timed exponent within its bound (gate_scaling.judge_exponent): load on either side bends its curve (a floor
        # flattening the run's, a burst at the baseline's largest lengths steepening the baseline's), hiding an increase
        within = f"{described} <= max increase {bound:g} (at most {highest:+.3f})"
        return Judgement(
            subject, "MISSING", f"{within}: within the bound, but timed on a busy machine: {QUIET}", 0.0, {**figures, "busy": True}
        )
    if highest <= bound:
        return Judgement(subject, "PASS", f"{described} <= max increase {bound:g} (at most {highest:+.3f})", highest - bound, figures)
    why = f"the increase lies in [{lowest:+.3f}, {highest:+.3f}], which holds the bound {bound:g}: can't tell"
    return Judgement(subject, "MISSING", f"{described}: {why}; more lengths or a longer rep_ms narrow it", 0.0, figures)


def _fits_over(rule: GateRule, sides, shared: list, fit_power_law) -> tuple:
    """The two fits (or why one cannot be made) over the same lengths: each side's range rule may drop other small
    lengths (the baseline's dropped 256 where the run's kept it, and "over N=256..4k" was not what both fitted), so
    both are fitted again from the larger first length either kept."""
    fits, start = [], None
    for _ in range(2):
        fits = []
        for cells in sides:
            lengths, values, missing = fit_points(rule, cells[cells["seq_len"].isin([n for n in shared if start is None or n >= start])])
            fits.append(missing or fit_power_law(lengths, values, metric=rule.metric, min_length=start))
        if any(isinstance(fit, str) for fit in fits) or fits[0].lengths_used[0] == fits[1].lengths_used[0]:
            return tuple(fits)
        start = max(fits[0].lengths_used[0], fits[1].lengths_used[0])
    return tuple(fits)


def _listed(lengths) -> str:
    return ", ".join(str(int(n)) for n in np.asarray(lengths, dtype=float)) or "none"
