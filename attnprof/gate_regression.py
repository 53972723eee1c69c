"""The gate's regression rules: each cell of a run against the same cell of a baseline file.

Peak bytes and FLOPs are exact, so their change is the verdict. A time change must also show in the raw
samples (one-sided Mann-Whitney U), since two runs of one cell differ by noise alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pandas as pd

from attnprof.gate import BUSY_MACHINE, CONFIG, NEW_CELL, Judgement, cell_of, located, matching, metric_text, subject_of, unless_busy
from attnprof.gate_rules import METRICS, GateRule

REGRESSION_P_VALUE = 0.01  # a time regression must also be significant (one-sided Mann-Whitney U)


def judge_regression(rule: GateRule, rows: pd.DataFrame, baseline: pd.DataFrame | None) -> list[Judgement]:
    if baseline is None:
        return [Judgement("baseline", "MISSING", "a max_regression rule needs --baseline FILE")]
    # Rows as dicts keyed by cell: iterrows and a MultiIndex .loc per cell cost 0.15 ms a cell (12 s of a gate at 50k
    # rows, an audit's profile); a dict lookup costs next to nothing. (A baseline holds each cell once: gating.py.)
    theirs = matching(rule, baseline)
    base = theirs.set_index([*CONFIG, "seq_len"]).to_dict("index")
    judgements = []
    for row in rows.to_dict("records"):
        key = tuple(row[c] for c in [*CONFIG, "seq_len"])
        subject, cell = f"{subject_of(key[:-1])} N={key[-1]}", cell_of(key[:-1], row["impl"], key[-1], row["status"])
        if key not in base:  # a case new since the baseline is not a regression; said, not judged
            judgements.append(located(Judgement(subject, NEW_CELL, "not in the baseline"), cell))
            continue
        judgements.append(located(_compare(rule, subject, row, base[key]), cell))
    judgements += _absent_from_the_run(rows, base)
    # The run has the cells; the baseline names them otherwise (other options, lengths).
    if len(rows) and all(j.verdict == NEW_CELL for j in judgements):
        has = ", ".join(sorted(set(theirs["label"]) or set(baseline["label"]))) or "no cells"
        wanted = ", ".join(sorted(set(rows["label"])))
        reason = f"the baseline has no cell of the run's {wanted} at these shapes and lengths (its cells: {has}"
        return [Judgement("baseline", "MISSING", reason + _differences(rows, theirs) + ")")]
    # A configuration the run does not measure at all: a baseline's accounting cells passed a run of the timed ones,
    # unsaid (a gate audit)
    return judgements + absent_configurations(set(zip(*(rows[c] for c in CONFIG), strict=True)), theirs)


def _differences(rows: pd.DataFrame, base: pd.DataFrame) -> str:
    """'; heads 2 in the run, 4 in the baseline' for each axis whose values the two do not share: "its cells:
    chunked" did not say that a baseline taken at 4 heads was judged against a run at 2."""
    if base.empty:
        return ""
    parts = []
    for axis in [*CONFIG[1:], "seq_len"]:
        run_values, base_values = set(rows[axis]), set(base[axis])
        if not run_values & base_values:
            shown = [", ".join(map(str, sorted(values, key=str))) for values in (run_values, base_values)]
            parts.append(f"{axis} {shown[0]} in the run, {shown[1]} in the baseline")
    return "; " + "; ".join(parts) if parts else ""


def _absent_from_the_run(rows: pd.DataFrame, base: dict) -> list[Judgement]:
    """Baseline cells the run lacks, within the configurations the run measures: a cell not measured cannot be
    vouched for (a sweep trimmed to fewer lengths, or stopped early, passed on the cells it kept)."""
    measured = set(rows.set_index([*CONFIG, "seq_len"]).index)
    configurations = {key[:-1] for key in measured}
    absent = [key for key in base if key[:-1] in configurations and key not in measured]
    return [
        located(Judgement(f"{subject_of(key[:-1])} N={key[-1]}", "MISSING", "in the baseline, not measured in the run"),
                cell_of(key[:-1], base[key]["impl"], key[-1], "missing"))
        for key in absent
    ]  # fmt: skip


def absent_configurations(measured: set, baseline: pd.DataFrame) -> list[Judgement]:
    """A MISSING judgement for each configuration (CONFIG values) of the baseline's rows that the run does not measure
    at all; one the baseline holds as unsupported only is nothing to vouch for."""
    from attnprof.gate_scaling import span_text

    judgements = []
    for keys, group in baseline.groupby(CONFIG, sort=True):
        if keys in measured or (group["status"] == "unsupported").all():
            continue
        why = f"in the baseline (N={span_text(sorted(group['seq_len']))}), not measured in the run"
        judgements.append(located(Judgement(subject_of(keys), "MISSING", why), cell_of(keys, group["impl"].iloc[0])))
    return judgements


def _compare(rule: GateRule, subject: str, new: Mapping, old: Mapping) -> Judgement:
    if old["status"] == "ok" and new["status"] != "ok":
        return Judgement(subject, "FAIL", f"was ok in the baseline, now {new['status']}: {new['reason']}", math.inf)
    if new["status"] != "ok" or old["status"] != "ok":
        return Judgement(subject, "PASS", f"{new['status']} now, {old['status']} in the baseline")
    column = METRICS[rule.metric]
    then, now_source = _source(old), _source(new)
    if rule.metric == "peak_bytes" and then and now_source and now_source != then:  # another figure, not another kernel
        why = f"peak_bytes is the {now_source} peak now, the {then} peak in the baseline: not comparable"
        return Judgement(subject, "MISSING", f"{why}; export the baseline again from a run of this version")
    if rule.metric == "time" and other_setup(old, new):
        return Judgement(subject, "MISSING", timed_elsewhere("a time", old, new))
    now, before = _number(new[column]), _number(old[column])
    if now is None or before is None:  # "time nan ms vs nan ms (+nan%) <= max 10%" passed two accounting runs
        where = " and ".join(w for w, v in (("the run", now), ("the baseline", before)) if v is None)
        why = " (an accounting run has no times)" if rule.metric == "time" else ""
        return Judgement(subject, "MISSING", f"no {rule.metric} in {where}{why}")
    if before == 0:  # an impl without matmuls counts 0 FLOPs: the change was a ZeroDivisionError
        change = 0.0 if now == 0 else math.inf
    else:
        change = now / before - 1.0
    show = metric_text(rule.metric)
    figures = {"value": now, "baseline": before, "change": change, "max": rule.max_regression}
    described = f"{rule.metric} {show(now)} vs {show(before)} in the baseline ({change:+.1%})"
    if rule.metric == "time":
        described += _busy(new, "now") + _busy(old, "in the baseline")
    if change > rule.max_regression:
        if rule.metric == "time":
            judged = _time_regression(rule, subject, described, change, list(new["times_ms"]), list(old["times_ms"]))
            judged = replace(judged, figures={**figures, **judged.figures})  # with the test's p-value where one ran
            busy_now = _busy(new, "now")
            if judged.verdict == "PASS" and busy_now + _busy(old, "in the baseline"):  # "not significant" as load scattered it
                return Judgement(subject, "MISSING", f"{judged.message}, but {BUSY_MACHINE}", figures={**judged.figures, "busy": True})
            return unless_busy(judged, busy_now)  # a busy baseline was slowed: it cannot explain a slower run
        if rule.metric == "peak_bytes" and new["device"] == "cpu" and not then:  # the baseline's device is the run's: keyed by cell
            # Baselines written before peak_source was kept may hold the CPU's live tensors (attnprof 2ca3a97 and
            # earlier) where the run holds the allocator's peak, which counts a kernel's own workspace: an unchanged
            # Nystromformer read +317%. A growth past the bound cannot be told from that change.
            why = "the baseline keeps no peak_source: written by an attnprof whose CPU peaks were the live tensors, before the allocator's"
            return Judgement(subject, "MISSING", f"{described} > max {rule.max_regression:.0%}, but {why}; export it again", 0.0, figures)
        return Judgement(subject, "FAIL", f"{described} > max {rule.max_regression:.0%}", change, figures)
    if rule.metric == "time" and _busy(old, "in the baseline"):
        # A baseline slowed by load hides a slower run: 5 ms added to each call read -49.4% against a baseline cell
        # timed at 12 ms on a busy machine, 0.7 ms quiet (a gate audit). The ratio rule already said MISSING there.
        why = f"{described} <= max {rule.max_regression:.0%}, but the baseline was timed on a busy machine, which may hide a slowdown"
        return Judgement(subject, "MISSING", f"{why}: export the baseline from a run timed on a quiet one", 0.0, {**figures, "busy": True})
    return Judgement(subject, "PASS", f"{described} <= max {rule.max_regression:.0%}", change, figures)


def _source(row: Mapping) -> str | None:
    """What a row's peak_bytes measured; None where the row does not say (a baseline written before it was kept)."""
    source = row.get("peak_source")
    return source if isinstance(source, str) and source else None


def timed_elsewhere(what: str, old: Mapping, new: Mapping) -> str:
    why = f"{what} is compared only with a baseline timed on the same setup, and it was not ({other_setup(old, new)})"
    return f"{why}; export the baseline again from a run on this one"


def other_setup(old: Mapping, new: Mapping) -> str:
    """'cpu_threads: 2 -> 1' where the baseline's times were taken on another setup (env.TIMING_FIELDS); '' where
    they agree, or where the baseline does not say (written before it was kept)."""
    from attnprof.env import TIMING_FIELDS, differing_fields

    then, now = old.get("timed_on"), new.get("timed_on")
    if not isinstance(then, dict) or not isinstance(now, dict):
        return ""
    return "; ".join(differing_fields(then, now, TIMING_FIELDS))


def _number(value) -> float | None:
    """A stored metric as a float, None where it is missing (None, NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _busy(row: Mapping, when: str) -> str:
    """A time timed on a busy CPU says so beside the change: the slowdown may be the machine's, not the code's."""
    from attnprof.trackers.host_contention import timed_while_busy

    reason = row.get("reason")
    if not timed_while_busy(reason):
        return ""
    return f" [{when}: {reason.split(':')[0].removeprefix('timed while ')}]"


def _time_regression(rule: GateRule, subject: str, described: str, change: float, new: list, old: list) -> Judgement:
    """A median slowdown past the bound: FAIL if the samples show it is not noise. With enough samples that is the
    Mann-Whitney test; with too few for any outcome to reach REGRESSION_P_VALUE (at 3 and 3 the smallest one-sided
    p is 1/20), the rank test cannot speak. Then FAIL asks for both: every new sample slower than every baseline
    sample by more than the bound, and Welch's t of the log times past the bound at the same 1% (log-normal noise
    assumed). Separation alone failed unchanged code in 5.7% of cells at bound 0 and 0.9% at 10% with 10% noise
    (a statistics audit: 1000 cells each), where the rule promises 1%; the default rep_ms gives cells over about
    33 ms three samples, the long lengths a gate watches. Otherwise the cell cannot be judged."""
    bound = f"> max {rule.max_regression:.0%}"
    if new and old and 1 / math.comb(len(new) + len(old), len(new)) >= REGRESSION_P_VALUE:
        counts = f"{len(new)} samples now, {len(old)} in the baseline: too few for a significance test"
        gap = min(new) / max(old) - 1.0
        tested = log_t_statistic(new, old, rule.max_regression)
        if tested is None:
            return Judgement(subject, "MISSING", f"{described} {bound}, but too few samples to tell ({counts}; a longer rep_ms gives more)")
        statistic, freedom = tested
        critical = T_CRITICAL_1PCT[min(freedom, len(T_CRITICAL_1PCT)) - 1]
        if math.isfinite(statistic):
            t_text = f"Welch's t of the log times {statistic:.1f} {'>' if statistic > critical else '<='} {critical:.2f}, 1% one-sided"
        else:  # samples without any spread: the separation decides alone (an infinite t read "inf", and null in JSON)
            t_text = "no spread in either side's samples"
        figures = {"t": statistic if math.isfinite(statistic) else None, "t_critical": critical, "degrees_of_freedom": freedom}
        if gap > rule.max_regression and statistic > critical:
            said = f"{described} {bound} ({counts}; the fastest is {gap:+.0%} on the slowest before, and {t_text})"
            return Judgement(subject, "FAIL", said, change, figures)
        if gap <= rule.max_regression:
            why = "the samples overlap"
        else:  # with no spread, a gap past the bound only by rounding (110 on 100 against 10%)
            why = f"their spread leaves it unsure ({t_text})" if math.isfinite(statistic) else f"it sits on the bound ({t_text})"
        return Judgement(subject, "MISSING", f"{described} {bound}, but {why} ({counts}; a longer rep_ms gives more)", figures=figures)
    p_value = mann_whitney_greater(new, old)
    if p_value >= REGRESSION_P_VALUE:
        return Judgement(subject, "PASS", f"{described}, not significant (p={p_value:.2g})", change, {"p_value": p_value})
    return Judgement(subject, "FAIL", f"{described} (p={p_value:.2g}) {bound}", change, {"p_value": p_value})


# Student's t, one-sided, at REGRESSION_P_VALUE = 0.01, for 1..30 degrees of freedom (the last serves beyond: few-sample
# cells have at most 8); a table, as no dependency of attnprof has the t distribution (scipy is not one).
T_CRITICAL_1PCT = (31.821, 6.965, 4.541, 3.747, 3.365, 3.143, 2.998, 2.896, 2.821, 2.764, 2.718, 2.681, 2.650, 2.624, 2.602,
                   2.583, 2.567, 2.552, 2.539, 2.528, 2.518, 2.508, 2.500, 2.492, 2.485, 2.479, 2.473, 2.467, 2.462, 2.457)  # fmt: skip


def log_t_statistic(new, old, bound: float) -> tuple[float, int] | None:
    """Welch's t of mean log(new) - mean log(old) against log(1 + bound), and its degrees of freedom rounded down (a
    smaller one asks more); None with fewer than 2 samples a side. Samples with no spread at all: t is infinite (or
    minus infinite) when the difference passes (or not) the bound."""
    logs_new, logs_old = np.log(np.asarray(new, float)), np.log(np.asarray(old, float))
    if len(logs_new) < 2 or len(logs_old) < 2:
        return None
    shift = logs_new.mean() - logs_old.mean() - math.log1p(bound)
    parts = logs_new.var(ddof=1) / len(logs_new), logs_old.var(ddof=1) / len(logs_old)
    if parts[0] + parts[1] == 0:
        return (math.inf if shift > 0 else -math.inf), len(logs_new) + len(logs_old) - 2
    freedom = (parts[0] + parts[1]) ** 2 / (parts[0] ** 2 / (len(logs_new) - 1) + parts[1] ** 2 / (len(logs_old) - 1))
    return float(shift / math.sqrt(parts[0] + parts[1])), max(1, math.floor(freedom))


def mann_whitney_greater(new, old) -> float:
    """One-sided p-value that `new` samples are stochastically larger than `old` (normal approximation
    with tie correction; with fewer than 3 samples a side nothing can be shown, p = 1)."""
    new, old = np.asarray(new, float), np.asarray(old, float)
    n1, n2 = len(new), len(old)
    if n1 < 3 or n2 < 3:
        return 1.0
    ranks = pd.Series(np.concatenate([new, old])).rank().to_numpy()
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    _, counts = np.unique(np.concatenate([new, old]), return_counts=True)
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - (counts**3 - counts).sum() / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))
