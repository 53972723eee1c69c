"""The CI gate: rules judged against one run's measurements. Pure: no files, no exit.

Each rule is judged per configuration (impl label, batch, heads, head dim, dtype, device, causal,
mode) it matches; the rule's verdict is FAIL if any configuration fails, else MISSING if any could
not be judged (cases not ok, too few lengths, nothing in the baseline), else PASS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pandas as pd

from attnprof.gate_rules import METRICS, GateRule, exact_name, telling_apart
from attnprof.table import format_bytes

CONFIG = ["label", "batch", "heads", "head_dim", "dtype", "device", "causal", "mode"]


@dataclass(frozen=True)
class Judgement:
    subject: str  # the configuration judged
    verdict: str  # PASS, FAIL or MISSING
    message: str
    severity: float = 0.0  # how far past the bound (for ordering failures), 0 when passing
    figures: dict = field(default_factory=dict)  # the numbers the message gives, as data (gate --json): value, bound, ...
    cell: dict = field(default_factory=dict)  # the subject as data (gate --json): impl, label, the CONFIG keys, seq_len, status


@dataclass(frozen=True)
class RuleVerdict:
    rule: GateRule
    verdict: str
    message: str
    judgements: tuple[Judgement, ...]
    unjudged: tuple[Judgement, ...] = ()  # cells new since the baseline and unsupported configurations: said, not judged


def evaluate(
    rules: list[GateRule], frame: pd.DataFrame, baseline: pd.DataFrame | None = None, default_budget: int | None = None
) -> list[RuleVerdict]:
    return [_verdict(rule, _judge(rule, frame, baseline, default_budget)) for rule in rules]


def exit_status(verdicts: list[RuleVerdict]) -> int:
    """0 all pass, 1 a rule failed, 3 a rule could not be judged (cells not ok or missing, too noisy, a busy
    machine, an unfinished run, nothing in the baseline to compare with)."""
    if any(v.verdict == "FAIL" for v in verdicts):
        return 1
    return 3 if any(v.verdict == "MISSING" for v in verdicts) else 0


gate_exit_status = exit_status  # the name the package exports it by (attnprof.gate_exit_status)


NEW_CELL = "NEW"  # a judgement's verdict for a cell the baseline lacks: said, never judged
UNSUPPORTED_CONFIG = "UNSUPPORTED"  # a configuration the impl declares it does not run: said, never judged


def _verdict(rule: GateRule, judgements: list[Judgement]) -> RuleVerdict:
    new = [j for j in judgements if j.verdict == NEW_CELL]
    refused = [j for j in judgements if j.verdict == UNSUPPORTED_CONFIG]
    judgements = [j for j in judgements if j.verdict not in (NEW_CELL, UNSUPPORTED_CONFIG)]
    if not judgements:
        why = f"no measurements match impl {exact_name(rule.impl, rule.impl_exact)!r} and the rule's filters"
        if refused:
            why = f"every configuration it matches is unsupported: {refused[0].subject}: {refused[0].message}"
        return RuleVerdict(rule, "MISSING", why, (), tuple(refused))
    # A cell the baseline lacks cannot regress; said, so that a rule passing on 2 of 40 cells does not read as 40.
    unjudged = ""
    if new:
        unjudged = f"; {len(new)} cell{'s' * (len(new) > 1)} new since the baseline not judged ({new[0].subject}{', ...' * (len(new) > 1)})"
    if refused:  # `impl = "all"` with causal both: Nyströmformer's causal configurations made the rule MISSING (exit 3)
        plural = "s" * (len(refused) > 1)
        unjudged += f"; {len(refused)} unsupported configuration{plural} not judged ({refused[0].subject}{', ...' * (len(refused) > 1)})"
    for verdict in ("FAIL", "MISSING"):
        hits = failing(judgements, verdict)
        if hits:
            more = f" (+{len(hits) - 1} more {verdict}, listed below)" if len(hits) > 1 else ""
            return RuleVerdict(rule, verdict, f"{hits[0].subject}: {hits[0].message}{more}{unjudged}", tuple(judgements), (*new, *refused))
    worst = max(judgements, key=lambda j: j.severity)
    return RuleVerdict(
        rule,
        "PASS",
        f"{worst.subject}: {worst.message}" + (f" (and {len(judgements) - 1} more)" if len(judgements) > 1 else "") + unjudged,
        tuple(judgements),
        (*new, *refused),
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


def matching(rule: GateRule, frame: pd.DataFrame, *, to: bool = False) -> pd.DataFrame:
    """The rows of the rule's impl (its `to` impl with to=True) that its filters keep."""
    impl, exact = (rule.to, rule.to_exact) if to else (rule.impl, rule.impl_exact)
    rows = frame if impl == "all" else frame[names_line(impl, exact, frame["impl"], frame["label"])]
    for key, allowed in rule.filters.items():
        rows = rows[rows[key].isin(list(allowed))]
    if rule.metric == "time" and "device" not in rule.filters:
        # An accounting run (meta) has no times: beside a timed run, as the README pairs them, a time rule without a
        # device filter was MISSING on the meta cells, exit 3 on every run (a gate audit)
        rows = rows[rows["device"] != "meta"]
    return rows


def names_line(name: str, exact: bool, impl, label):
    """Whether a rule's impl name picks a line (impl, label), elementwise on Series too: a bare name every line of
    its impl, a name with options (GateRule.impl_exact) only its own label."""
    return label == name if exact else (label == name) | (impl == name)


def _judge(rule: GateRule, frame, baseline, default_budget) -> list[Judgement]:
    rows = matching(rule, frame)
    if rule.kind == "regression":
        from attnprof.gate_regression import judge_regression  # it builds on this module

        return judge_regression(rule, rows, baseline)
    if rule.kind == "slope":
        from attnprof.gate_slope import judge_slopes  # it builds on this module

        return judge_slopes(rule, rows, baseline)
    from attnprof.gate_scaling import judge_exponent, judge_frontier  # they build on this module

    judgements = []
    theirs = _by_configuration(matching(rule, frame, to=True)) if rule.kind == "ratio" else {}
    for keys, group in rows.groupby(CONFIG, sort=True):
        impl = group["impl"].iloc[0]
        others = theirs.get(tuple(keys[1:]), frame.iloc[:0])  # a ratio rule's `to` impl's cells of this configuration
        if keys[0] in set(others["label"]):  # the `to` line itself (impl = "all"): a ratio of 1 is no judgement
            continue
        if (group["status"] == "unsupported").all():  # a declared refusal (nystromformer causal): nothing to judge
            judged = Judgement(subject_of(keys), UNSUPPORTED_CONFIG, group["reason"].iloc[0])
            judgements.append(located(judged, cell_of(keys, impl)))
        elif len(others) and (others["status"] == "unsupported").all():
            # nor against one: `to = "nystromformer"` without a causal filter was MISSING (exit 3) on every run, where
            # `impl = "nystromformer"` passed with its causal configurations "not judged"
            judged = Judgement(subject_of(keys), UNSUPPORTED_CONFIG, f"{rule.to}: {others['reason'].iloc[0]}")
            judgements.append(located(judged, cell_of(keys, impl)))
        elif rule.kind in ("ratio", "value"):
            for n in rule.at_length:
                subject = f"{subject_of(keys)} N={n}"
                judged = _judge_ratio(rule, subject, group, others, n) if rule.kind == "ratio" else _judge_value(rule, subject, group, n)
                judgements.append(located(judged, cell_of(keys, impl, n, status_at(group, n))))
        else:
            judge = judge_exponent if rule.kind == "exponent" else judge_frontier
            judgements.append(located(judge(rule, subject_of(keys), group, frame, default_budget), cell_of(keys, impl)))
    return judgements


def subject_of(keys) -> str:
    label, batch, heads, head_dim, dtype, device, causal, mode = keys
    return f"{label} B{batch} H{heads} D{head_dim} {dtype} {device} {'causal' if causal else 'bidir'} {mode}"


def cell_of(keys, impl: str, seq_len=None, status: str | None = None) -> dict:
    """The subject as data: a CI script filters judgements by impl, causal or length here instead of parsing the
    subject text. seq_len and status only for a judgement of one length (status 'missing': the run has no row)."""
    cell = {"impl": str(impl), **{key: value.item() if hasattr(value, "item") else value for key, value in zip(CONFIG, keys, strict=True)}}
    cell["causal"] = bool(cell["causal"])
    if seq_len is not None:
        cell.update(seq_len=int(seq_len), status=status)
    return cell


def status_at(rows: pd.DataFrame, length: int) -> str:
    at = rows["status"][rows["seq_len"] == length]
    return str(at.iloc[0]) if len(at) else "missing"


def located(judgement: Judgement, cell: dict) -> Judgement:
    return replace(judgement, cell=cell)


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


def _by_configuration(rows: pd.DataFrame) -> dict:
    """Rows by configuration without the label (CONFIG[1:]), from one groupby: a ratio rule filtered the whole run by
    7 keys per configuration and length, quadratic in the run's rows (8.5 s of a gate at 50k rows, an audit's)."""
    return {tuple(keys): group for keys, group in rows.groupby(CONFIG[1:], sort=False, dropna=False)}


def _judge_ratio(rule, subject, group, others, length) -> Judgement:
    """group: this impl's cells of one configuration; others: the `to` impl's cells of the same configuration."""
    first = group.iloc[0]
    mine, status, why = _value_at(rule, group, length)
    if mine is None:
        return _own_cell_failure(subject, status, why)
    lines = sorted(set(others["label"]))
    if len(lines) > 1:  # a bare name matching nystromformer[num_landmarks=16] and [=256] took whichever came first
        return Judgement(subject, "MISSING", f"to = {rule.to!r} matches {len(lines)} lines ({', '.join(lines)}): name one of them")
    theirs, _, why_theirs = _value_at(rule, others, length)
    if not theirs:
        return Judgement(subject, "MISSING", f"no ratio: {rule.to} at N={length}: {why_theirs or 'zero'}")
    mine_busy, theirs_busy = _time_note(rule, group, length), _time_note(rule, others, length)
    note = "".join(f" [{label}: {busy[2:]}" for label, busy in ((first["label"], mine_busy), (rule.to, theirs_busy)) if busy)
    ratio = mine / theirs
    judged = _bounded(subject, f"{rule.metric} ratio to {rule.to}", ratio, rule.max_ratio, rule.min_ratio, "{:.3g}", note)
    judged = replace(judged, figures={**judged.figures, "to": rule.to, "numerator": mine, "denominator": theirs})
    if rule.metric == "time":
        judged = _unless_within_noise(
            judged, ratio, (rule.max_ratio, rule.min_ratio), _median_error_at(group, length) + _median_error_at(others, length)
        )
    # Load only slows: a ratio too high is explained by this impl's busy cell, one too low by the other's; and a
    # pass under max_ratio may be the other's load (sdpa slowed 3.5x by load passed a quadratic kernel at 0.53 against
    # its true 1.85, a gate audit), one over min_ratio this impl's.
    too_high = rule.max_ratio is not None and ratio > rule.max_ratio
    judged = unless_busy(judged, mine_busy if too_high else theirs_busy)
    hiding = [rule.to] * bool(theirs_busy and rule.max_ratio is not None)
    hiding += [first["label"]] * bool(mine_busy and rule.min_ratio is not None)
    return unless_busy_pass(judged, hiding)


def _judge_value(rule, subject, group, length) -> Judgement:
    value, status, why = _value_at(rule, group, length)
    if value is None:
        return _own_cell_failure(subject, status, why)
    note = _time_note(rule, group, length)
    judged = _bounded(subject, rule.metric, value, rule.max_value, rule.min_value, metric_text(rule.metric), note)
    if rule.metric == "time":
        judged = _unless_within_noise(judged, value, (rule.max_value, rule.min_value), _median_error_at(group, length))
    too_high = rule.max_value is not None and value > rule.max_value
    judged = unless_busy(judged, note if too_high else "")  # load only slows: a time under min_value is the code's
    return unless_busy_pass(judged, [group["label"].iloc[0]] * bool(note and rule.min_value is not None))  # and may lift one over it


def _median_error_at(rows: pd.DataFrame, length: int) -> float:
    """How far the median time of the cell at `length` may be off, as a ln-ratio (crossover.median_error)."""
    from attnprof.crossover import median_error

    row = rows[rows["seq_len"] == length].iloc[0]
    median, iqr, samples = row.get("median_ms", math.nan), row.get("iqr_ms", math.nan), row.get("times_ms")
    if not (median > 0 and iqr == iqr):  # no spread stored (a frame from elsewhere): nothing to widen by
        return 0.0
    return median_error(iqr / (2 * median), len(samples) if isinstance(samples, list) else 0)


def _unless_within_noise(judgement: Judgement, value: float, bounds, error: float) -> Judgement:
    """A time (or time ratio) closer to its bound than its medians may be off cannot tell which side it is on:
    Combiner-Mixture's ratio to SDPA read 0.503 (FAIL) and 0.499 (PASS) in two runs a minute apart against max 0.5,
    each median of 7-9 samples 0.3-0.6% wide (a user audit). Then MISSING, as a timed exponent whose interval holds
    its bound is. `error`: the medians' ln-ratio error summed (median_error); exact metrics never come here."""
    # strictly: a time exactly at its bound with no spread (one sample, or an IQR of 0) passes as it did (a review)
    near = [bound for bound in bounds if bound is not None and bound > 0 and value > 0 and abs(math.log(value / bound)) < error]
    if not near:
        return judgement
    why = f"within {error:.1%} of the bound {near[0]:.3g}, as far as its medians may be off (their samples' spread): can't tell"
    return replace(judgement, verdict="MISSING", message=f"{judgement.message}: {why}; a longer rep_ms or a quieter machine narrows it")


QUIET = "judge a run timed on a quiet one"
BUSY_MACHINE = f"timed on a busy machine, so the change may be the machine's: {QUIET}"


def unless_busy(judgement: Judgement, busy: str) -> Judgement:
    """A time FAIL drawn from cells timed while other processes kept cores busy cannot tell the code from the machine:
    a ratio to sdpa read 14.3 against 1.8-2.1 in seven quiet runs, the kernel's samples 535-2788 ms under a burst of
    load. It is MISSING (exit 3). `busy`: the note of the cells whose load could explain this failure (load only
    slows a call), '' when none could: a busy baseline cannot explain a slower run, only hide one."""
    if judgement.verdict != "FAIL" or not busy:
        return judgement
    # figures.busy: what a CI script reads to tell a busy runner from a cell not measured
    return Judgement(judgement.subject, "MISSING", f"{judgement.message}, but {BUSY_MACHINE}", figures={**judgement.figures, "busy": True})


def unless_busy_pass(judgement: Judgement, busy: list[str]) -> Judgement:
    """A time PASS that load could have made: a cell whose slowing moves the figure away from a bound it would
    otherwise cross. MISSING (exit 3), as a timed exponent or a time regression passed on a busy machine is.
    `busy`: the lines whose busy cells could have done so (their notes are in the message already)."""
    if judgement.verdict != "PASS" or not busy:
        return judgement
    was = "was" if len(busy) == 1 else "were"
    why = f"{judgement.message}, but {' and '.join(busy)} {was} timed on a busy machine, which may have hidden a change: {QUIET}"
    return Judgement(judgement.subject, "MISSING", why, 0.0, {**judgement.figures, "busy": True})


def _time_note(rule: GateRule, rows: pd.DataFrame, length: int) -> str:
    return busy_note(rows[rows["seq_len"] == length]) if rule.metric == "time" else ""


def _apart(show, value: float, bound: float) -> str:
    """A failing value and how far past its bound, in as many digits as tell them apart: "2.0 GiB > max 2.0 GiB" hid
    0.4% over (2,155,872,000 bytes), and "ratio to softmax 1 (+0.0%) > max 1" a ratio of 1.000195."""
    change = value / bound - 1 if bound else 0.0
    past = (f" ({change:+.1%})" if abs(change) >= 0.001 else f" ({change * 100:+.2g}%)") if bound else ""
    return f"{telling_apart(show, value, bound)(value)}{past}"


def busy_note(group: pd.DataFrame) -> str:
    """' [N=1024, 2048 timed while other processes kept 1.0 of 2 cores busy]' when CPU timing said so."""
    from attnprof.trackers.host_contention import timed_while_busy

    busy = group[group["reason"].map(timed_while_busy).astype(bool)]
    if busy.empty:
        return ""
    lengths = ", ".join(str(n) for n in sorted(set(busy["seq_len"])))
    return f" [N={lengths} {busy['reason'].iloc[0].split(':')[0]}]"


def metric_text(metric: str):
    """A value of `metric` as a reader takes it: bytes in binary units, times in ms, FLOPs as a count."""
    if metric == "peak_bytes":
        return lambda v: format_bytes(int(v))
    return lambda v: f"{v:.4g}" + (" ms" if metric == "time" else "")


def _bounded(subject: str, what: str, value: float, maximum, minimum, shown, note: str = "") -> Judgement:
    show = shown.format if isinstance(shown, str) else shown
    figures = {"value": value, "max": maximum, "min": minimum}
    if maximum is not None and value > maximum:
        described = f"{what} {_apart(show, value, maximum)}{note}"
        return Judgement(subject, "FAIL", f"{described} > max {show(maximum)}", value / maximum if maximum else math.inf, figures)
    if minimum is not None and value < minimum:
        described = f"{what} {_apart(show, value, minimum)}{note}"
        return Judgement(subject, "FAIL", f"{described} < min {show(minimum)}", minimum / value if value else math.inf, figures)
    described = f"{what} {show(value)}{note}"
    bound = f"<= max {show(maximum)}" if maximum is not None else f">= min {show(minimum)}"
    severity = value / maximum if maximum else (minimum / value if value else 0.0)
    return Judgement(subject, "PASS", f"{described} {bound}", severity, figures)
