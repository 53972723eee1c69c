"""The CI gate: rules judged against one run's measurements. Pure: no files, no exit.

Each rule is judged per configuration (impl label, batch, heads, head dim, dtype, device, causal,
mode) it matches; the rule's verdict is FAIL if any configuration fails, else MISSING if any could
not be judged (cases not ok, too few lengths, nothing in the baseline), else PASS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnprof.gate_rules import METRICS, GateRule
from attnprof.table import format_bytes

CONFIG = ["label", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode"]
REGRESSION_P_VALUE = 0.01  # a time regression must also be significant (one-sided Mann-Whitney U)


@dataclass(frozen=True)
class Judgement:
    subject: str  # the configuration judged
    verdict: str  # PASS, FAIL or MISSING
    message: str
    severity: float = 0.0  # how far past the bound (for ordering failures), 0 when passing


@dataclass(frozen=True)
class RuleVerdict:
    rule: GateRule
    verdict: str
    message: str
    judgements: tuple[Judgement, ...]


def evaluate(
    rules: list[GateRule], frame: pd.DataFrame, baseline: pd.DataFrame | None = None, default_budget: int | None = None
) -> list[RuleVerdict]:
    return [_verdict(rule, _judge(rule, frame, baseline, default_budget)) for rule in rules]


def exit_status(verdicts: list[RuleVerdict]) -> int:
    """0 all pass, 1 a rule failed, 3 a rule could not be judged because the measurement failed."""
    if any(v.verdict == "FAIL" for v in verdicts):
        return 1
    return 3 if any(v.verdict == "MISSING" for v in verdicts) else 0


NEW_CELL = "NEW"  # a judgement's verdict for a cell the baseline lacks: said, never judged


def _verdict(rule: GateRule, judgements: list[Judgement]) -> RuleVerdict:
    new = [j for j in judgements if j.verdict == NEW_CELL]
    judgements = [j for j in judgements if j.verdict != NEW_CELL]
    if not judgements:
        return RuleVerdict(rule, "MISSING", f"no measurements match impl {rule.impl!r} and the rule's filters", ())
    # A cell the baseline lacks cannot regress; said, so that a rule passing on 2 of 40 cells does not read as 40.
    unjudged = ""
    if new:
        unjudged = f"; {len(new)} cell{'s' * (len(new) > 1)} new since the baseline not judged ({new[0].subject}{', ...' * (len(new) > 1)})"
    for verdict in ("FAIL", "MISSING"):
        hits = failing(judgements, verdict)
        if hits:
            more = f" (+{len(hits) - 1} more {verdict}, listed below)" if len(hits) > 1 else ""
            return RuleVerdict(rule, verdict, f"{hits[0].subject}: {hits[0].message}{more}{unjudged}", tuple(judgements))
    worst = max(judgements, key=lambda j: j.severity)
    return RuleVerdict(
        rule,
        "PASS",
        f"{worst.subject}: {worst.message}" + (f" (and {len(judgements) - 1} more)" if len(judgements) > 1 else "") + unjudged,
        tuple(judgements),
    )


def failing(judgements, verdict: str) -> list[Judgement]:
    """The judgements with this verdict, the furthest past its bound first (the rule's message names the first)."""
    return sorted((j for j in judgements if j.verdict == verdict), key=lambda j: -j.severity)


def other_failures(verdict: RuleVerdict) -> list[str]:
    """Every failing configuration beyond the one the rule's message names, one line each: a kernel engineer
    reading "+11 more" needs to know which impls and lengths, not only how many."""
    if verdict.verdict == "PASS":
        return []
    return [f"{j.subject}: {j.message}" for j in failing(verdict.judgements, verdict.verdict)[1:]]


def _matching(rule: GateRule, frame: pd.DataFrame, impl: str | None = None) -> pd.DataFrame:
    impl = impl or rule.impl
    rows = frame if impl == "all" else frame[(frame["label"] == impl) | (frame["impl"] == impl)]
    for key, allowed in rule.filters.items():
        rows = rows[rows[key].isin(list(allowed))]
    return rows


def _judge(rule: GateRule, frame, baseline, default_budget) -> list[Judgement]:
    rows = _matching(rule, frame)
    if rule.kind == "regression":
        return _judge_regression(rule, rows, baseline)
    judgements = []
    for keys, group in rows.groupby(CONFIG, sort=True):
        if rule.kind in ("ratio", "value"):
            judge = _judge_ratio if rule.kind == "ratio" else _judge_value
            judgements += [judge(rule, f"{_subject(keys)} N={n}", group, frame, n) for n in rule.at_length]
        else:
            judge = _judge_exponent if rule.kind == "exponent" else _judge_frontier
            judgements.append(judge(rule, _subject(keys), group, frame, default_budget))
    return judgements


def _subject(keys) -> str:
    label, batch, heads, head_dim, dtype, device, causal, mode = keys
    return f"{label} B{batch} H{heads} D{head_dim} {dtype} {device} {'causal' if causal else 'bidir'} {mode}"


def _ok_points(rule: GateRule, group: pd.DataFrame):
    """(lengths, values) of the ok rows; time uses every raw sample."""
    ok = group[group["status"] == "ok"]
    if rule.metric == "time":
        ok = ok[ok["times_ms"].map(len) > 0].explode("times_ms")
        return ok["seq_len"].to_numpy(float), ok["times_ms"].to_numpy(float)
    ok = ok[ok[METRICS[rule.metric]].notna()]
    return ok["seq_len"].to_numpy(float), ok[METRICS[rule.metric]].to_numpy(float)


def _not_ok(rule: GateRule, group: pd.DataFrame) -> str:
    bad = group[group["status"] != "ok"]
    text = ", ".join(f"N={n} {s}" for n, s in zip(bad["seq_len"], bad["status"], strict=False))
    ok = group[group["status"] == "ok"]
    empty = ok["times_ms"].map(len) == 0 if rule.metric == "time" else ok[METRICS[rule.metric]].isna()
    if empty.any():
        text += ("; " if text else "") + f"{int(empty.sum())} ok rows carry no {rule.metric} (an accounting run has no times)"
    return text or "none"


def _judge_exponent(rule, subject, group, frame, budget) -> Judgement:
    from attnprof.fit import fit_power_law

    lengths, values = _ok_points(rule, group)
    if len(set(lengths)) < 3:
        return Judgement(subject, "MISSING", f"{len(set(lengths))} ok lengths, need 3 to fit (not ok: {_not_ok(rule, group)})")
    fit = fit_power_law(lengths, values, metric=rule.metric)
    interval = f"[95% {fit.exponent_low:.3f}, {fit.exponent_high:.3f}]"
    described = f"exponent {fit.exponent:.3f} {interval} over N={_span(fit.lengths_used)} ({fit.complexity})"
    # Judged on the interval's far end, and said so: "1.937 [95% 1.793, 2.082] < min 1.8" read as a false statement.
    high, low = f"95% upper end {fit.exponent_high:.3f}", f"95% lower end {fit.exponent_low:.3f}"
    if rule.max_exponent is not None and not fit.exponent_high <= rule.max_exponent:
        return Judgement(subject, "FAIL", f"{described}: {high} > max {rule.max_exponent:g}", fit.exponent_high - rule.max_exponent)
    if rule.min_exponent is not None and not fit.exponent_low >= rule.min_exponent:
        return Judgement(subject, "FAIL", f"{described}: {low} < min {rule.min_exponent:g}", rule.min_exponent - fit.exponent_low)
    bound = ": " + ", ".join(
        f"{end} {name} {value:g}"
        for end, name, value in ((high, "<= max", rule.max_exponent), (low, ">= min", rule.min_exponent))
        if value is not None
    )
    margin = (fit.exponent_high - rule.max_exponent) if rule.max_exponent is not None else (rule.min_exponent - fit.exponent_low)
    return Judgement(subject, "PASS", f"{described}{bound}", margin)


# A target not met because the cell itself failed is a failure; a cell never run is only missing.
FAILED_CELL = ("oom", "timeout", "crashed", "error", "skipped")


def _value_at(rule: GateRule, group: pd.DataFrame, length: int):
    """(value, status, why): the metric of the cell at `length`, or None with its status and reason."""
    row = group[group["seq_len"] == length]
    if row.empty:
        return None, "missing", "not measured"
    row = row.iloc[0]
    value = row[METRICS[rule.metric]]
    if row["status"] != "ok" or value is None or (isinstance(value, float) and math.isnan(value)):
        why = f"{row['status']}" + (f" ({row['reason']})" if row["reason"] else "") if row["status"] != "ok" else f"no {rule.metric}"
        return None, row["status"], why
    return float(value), "ok", ""


def _own_cell_failure(subject: str, status: str, why: str) -> Judgement:
    return Judgement(subject, "FAIL" if status in FAILED_CELL else "MISSING", why, math.inf if status in FAILED_CELL else 0.0)


def _judge_ratio(rule, subject, group, frame, length) -> Judgement:
    first = group.iloc[0]
    others = _matching(rule, frame, rule.to)
    for key in CONFIG[1:]:
        others = others[others[key] == first[key]]
    mine, status, why = _value_at(rule, group, length)
    if mine is None:
        return _own_cell_failure(subject, status, why)
    theirs, _, why_theirs = _value_at(rule, others, length)
    if not theirs:
        return Judgement(subject, "MISSING", f"no ratio: {rule.to} at N={length}: {why_theirs or 'zero'}")
    return _bounded(subject, f"{rule.metric} ratio to {rule.to}", mine / theirs, rule.max_ratio, rule.min_ratio, "{:.3g}")


def _judge_value(rule, subject, group, frame, length) -> Judgement:
    value, status, why = _value_at(rule, group, length)
    if value is None:
        return _own_cell_failure(subject, status, why)
    return _bounded(subject, rule.metric, value, rule.max_value, rule.min_value, _shown(rule.metric))


def _shown(metric: str):
    """A value of `metric` as a reader takes it: bytes in binary units, times in ms, FLOPs as a count."""
    if metric == "peak_bytes":
        return lambda v: format_bytes(int(v))
    return lambda v: f"{v:.4g}" + (" ms" if metric == "time" else "")


def _bounded(subject: str, what: str, value: float, maximum, minimum, shown) -> Judgement:
    show = shown.format if isinstance(shown, str) else shown
    described = f"{what} {show(value)}"
    if maximum is not None and value > maximum:
        return Judgement(subject, "FAIL", f"{described} > max {show(maximum)}", value / maximum if maximum else math.inf)
    if minimum is not None and value < minimum:
        return Judgement(subject, "FAIL", f"{described} < min {show(minimum)}", minimum / value if value else math.inf)
    bound = f"<= max {show(maximum)}" if maximum is not None else f">= min {show(minimum)}"
    return Judgement(subject, "PASS", f"{described} {bound}", value / maximum if maximum else (minimum / value if value else 0.0))


def _judge_frontier(rule, subject, group, frame, default_budget) -> Judgement:
    from attnprof.analysis import input_bytes_per_token, measured_boundaries
    from attnprof.crossover import memory_frontier
    from attnprof.fit import fit_power_law

    budget = rule.budget or default_budget
    if budget is None:
        return Judgement(subject, "MISSING", 'no budget: set budget = "80GiB" in the rule (the device\'s memory is unknown)')
    lengths, values = _ok_points(rule, group)
    if len(set(lengths)) < 3:
        return Judgement(subject, "MISSING", f"{len(set(lengths))} ok lengths, need 3 to fit (not ok: {_not_ok(rule, group)})")
    inputs = input_bytes_per_token(group.iloc[0])  # one configuration per group
    frontier = memory_frontier(
        fit_power_law(lengths, values, metric="peak_bytes"), budget, input_bytes_per_token=inputs, **measured_boundaries(group)
    )
    described = (
        f"frontier N={frontier.length:,.0f} [{frontier.length_low:,.0f}, {frontier.length_high:,.0f}] within {budget / 1024**3:.3g} GiB"
    )
    low = f"lower end {frontier.length_low:,.0f}"  # the 95% one, and extrapolated no longer than the class model's
    if not frontier.length_low >= rule.min_frontier:
        return Judgement(
            subject, "FAIL", f"{described}: {low} < min {rule.min_frontier:,}", rule.min_frontier / max(frontier.length_low, 1)
        )
    return Judgement(subject, "PASS", f"{described}: {low} >= min {rule.min_frontier:,}", rule.min_frontier / max(frontier.length_low, 1))


def _judge_regression(rule: GateRule, rows: pd.DataFrame, baseline: pd.DataFrame | None) -> list[Judgement]:
    if baseline is None:
        return [Judgement("baseline", "MISSING", "a max_regression rule needs --baseline FILE")]
    base = _matching(rule, baseline).set_index([*CONFIG, "seq_len"])
    judgements = []
    for _, row in rows.iterrows():
        key = tuple(row[c] for c in [*CONFIG, "seq_len"])
        subject = f"{_subject(key[:-1])} N={key[-1]}"
        if key not in base.index:  # a case new since the baseline is not a regression; said, not judged
            judgements.append(Judgement(subject, NEW_CELL, "not in the baseline"))
            continue
        judgements.append(_compare(rule, subject, row, base.loc[key]))
    # The run has the cells; the baseline names them otherwise (other options, lengths).
    if len(rows) and all(j.verdict == NEW_CELL for j in judgements):
        has = ", ".join(sorted(set(_matching(rule, baseline)["label"]) or set(baseline["label"]))) or "no cells"
        wanted = ", ".join(sorted(set(rows["label"])))
        reason = f"the baseline has no cell of the run's {wanted} at these shapes and lengths (its cells: {has})"
        return [Judgement("baseline", "MISSING", reason)]
    return judgements


def _compare(rule: GateRule, subject: str, new: pd.Series, old: pd.Series) -> Judgement:
    if old["status"] == "ok" and new["status"] != "ok":
        return Judgement(subject, "FAIL", f"was ok in the baseline, now {new['status']}: {new['reason']}", math.inf)
    if new["status"] != "ok" or old["status"] != "ok":
        return Judgement(subject, "PASS", f"{new['status']} now, {old['status']} in the baseline")
    column = METRICS[rule.metric]
    change = float(new[column]) / float(old[column]) - 1.0
    show = _shown(rule.metric)
    described = f"{rule.metric} {show(float(new[column]))} vs {show(float(old[column]))} in the baseline ({change:+.1%})"
    if rule.metric == "time":
        described += _busy(new, "now") + _busy(old, "in the baseline")
    if change > rule.max_regression:
        if rule.metric == "time":
            return _time_regression(rule, subject, described, change, list(new["times_ms"]), list(old["times_ms"]))
        return Judgement(subject, "FAIL", f"{described} > max {rule.max_regression:.0%}", change)
    return Judgement(subject, "PASS", f"{described} <= max {rule.max_regression:.0%}", change)


def _busy(row: pd.Series, when: str) -> str:
    """A time timed on a busy CPU says so beside the change: the slowdown may be the machine's, not the code's."""
    from attnprof.trackers.host_contention import NOTE_START

    reason = row.get("reason")
    if not isinstance(reason, str) or not reason.startswith(NOTE_START):
        return ""
    return f" [{when}: {reason.split(':')[0].removeprefix('timed while ')}]"


def _time_regression(rule: GateRule, subject: str, described: str, change: float, new: list, old: list) -> Judgement:
    """A median slowdown past the bound: FAIL if the samples show it is not noise. With enough samples that is the
    Mann-Whitney test; with too few for any outcome to reach REGRESSION_P_VALUE (fewer than 5 a side: at 3 and 3
    the smallest one-sided p is 1/20), the test cannot speak, so the rule asks for separation instead: every new
    sample slower than every baseline sample by more than the bound. Overlapping samples then cannot be judged."""
    bound = f"> max {rule.max_regression:.0%}"
    if new and old and 1 / math.comb(len(new) + len(old), len(new)) >= REGRESSION_P_VALUE:
        counts = f"{len(new)} samples now, {len(old)} in the baseline: too few for a significance test"
        gap = min(new) / max(old) - 1.0
        if gap > rule.max_regression:
            return Judgement(subject, "FAIL", f"{described} {bound} ({counts}; the fastest is {gap:+.0%} on the slowest before)", change)
        return Judgement(subject, "MISSING", f"{described} {bound}, but the samples overlap ({counts}; a longer rep_ms gives more)")
    p_value = mann_whitney_greater(new, old)
    if p_value >= REGRESSION_P_VALUE:
        return Judgement(subject, "PASS", f"{described}, not significant (p={p_value:.2g})", change)
    return Judgement(subject, "FAIL", f"{described} (p={p_value:.2g}) {bound}", change)


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


def _span(lengths) -> str:
    return f"{int(min(lengths))}..{int(max(lengths))}"


def markdown_report(verdicts: list[RuleVerdict]) -> str:
    lines = ["| rule | verdict | detail |", "|---|---|---|"]
    lines += [f"| {v.rule.title} | {v.verdict} | {_markdown_detail(v)} |" for v in verdicts]
    return "\n".join(lines) + f"\n\n{summary_line(verdicts)}\n"


MARKDOWN_LISTED = 10  # failing configurations listed per rule in the Markdown summary; the rest are counted


def _markdown_detail(verdict: RuleVerdict) -> str:
    others = other_failures(verdict)
    shown = [verdict.message, *others[:MARKDOWN_LISTED]]
    if len(others) > MARKDOWN_LISTED:
        shown.append(f"... and {len(others) - MARKDOWN_LISTED} more")
    return "<br>".join(text.replace("|", "/") for text in shown)


def summary_line(verdicts: list[RuleVerdict]) -> str:
    # Not "N passed, N failed": CI log readers take that shape for a test runner's closing line.
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("PASS", "FAIL", "MISSING")}
    return f"gate: {len(verdicts)} rules; PASS {counts['PASS']}, FAIL {counts['FAIL']}, MISSING {counts['MISSING']}"
