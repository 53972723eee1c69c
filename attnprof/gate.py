"""The CI gate: rules judged against one run's measurements. Pure: no files, no exit.

Each rule is judged per configuration (impl label, batch, heads, head dim, dtype, device, causal,
mode) it matches; the rule's verdict is FAIL if any configuration fails, else MISSING if any could
not be judged (cases not ok, too few lengths, nothing in the baseline), else PASS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from attnprof.gate_rules import METRICS, GateRule
from attnprof.table import format_bytes

CONFIG = ["label", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode"]


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


def matching(rule: GateRule, frame: pd.DataFrame, impl: str | None = None) -> pd.DataFrame:
    impl = impl or rule.impl
    rows = frame if impl == "all" else frame[(frame["label"] == impl) | (frame["impl"] == impl)]
    for key, allowed in rule.filters.items():
        rows = rows[rows[key].isin(list(allowed))]
    return rows


def _judge(rule: GateRule, frame, baseline, default_budget) -> list[Judgement]:
    rows = matching(rule, frame)
    if rule.kind == "regression":
        from attnprof.gate_regression import judge_regression  # it builds on this module

        return judge_regression(rule, rows, baseline)
    judgements = []
    for keys, group in rows.groupby(CONFIG, sort=True):
        if rule.kind in ("ratio", "value"):
            judge = _judge_ratio if rule.kind == "ratio" else _judge_value
            judgements += [judge(rule, f"{subject_of(keys)} N={n}", group, frame, n) for n in rule.at_length]
        else:
            judge = _judge_exponent if rule.kind == "exponent" else _judge_frontier
            judgements.append(judge(rule, subject_of(keys), group, frame, default_budget))
    return judgements


def subject_of(keys) -> str:
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
    others = matching(rule, frame, rule.to)
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
    return _bounded(subject, rule.metric, value, rule.max_value, rule.min_value, metric_text(rule.metric))


def metric_text(metric: str):
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
