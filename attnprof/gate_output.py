"""The gate's verdicts written out: the Markdown summary (a CI step summary), the JSON record (`gate --json`) and the
closing line. Pure: the CLI writes them."""

from __future__ import annotations

from attnprof.gate import Judgement, RuleVerdict, exit_status, other_failures
from attnprof.gate_rules import GateRule


def markdown_report(verdicts: list[RuleVerdict], run_ids=()) -> str:
    lines = ["| rule | verdict | detail |", "|---|---|---|"]
    lines += [f"| {v.rule.title} | {v.verdict} | {_markdown_detail(v)} |" for v in verdicts]
    runs = f" (run {', '.join(run_ids)})" if run_ids else ""
    return "\n".join(lines) + f"\n\n{summary_line(verdicts)}{runs}\n"


MARKDOWN_LISTED = 10  # failing configurations listed per rule in the Markdown summary; the rest are counted


def _markdown_detail(verdict: RuleVerdict) -> str:
    others = other_failures(verdict)
    shown = [verdict.message, *others[:MARKDOWN_LISTED]]
    if len(others) > MARKDOWN_LISTED:
        shown.append(f"... and {len(others) - MARKDOWN_LISTED} more")
    return "<br>".join(text.replace("|", "/") for text in shown)


def verdicts_record(verdicts: list[RuleVerdict], rules_file, run_ids, *, baseline=None, db=None) -> dict:
    """The gate's outcome as plain data (`gate --json`): exit status, counts, what was judged against what, and per
    rule every configuration judged, with its figures (the numbers its message gives: value and bounds, an
    exponent's interval and lengths, a regression's baseline value, change and p-value). A severity only orders
    failures, in the rule's own scale (a ratio to the bound, an exponent difference, a relative change); infinite for
    a cell that failed."""
    record = unjudged_record(rules_file, exit_status(verdicts), None, run_ids, baseline=baseline, db=db)
    record["counts"] = {k: sum(v.verdict == k for v in verdicts) for k in ("PASS", "FAIL", "MISSING")}
    return record | {
        "rules": [
            {
                "index": v.rule.index, "title": v.rule.title, "impl": v.rule.impl, "metric": v.rule.metric, "kind": v.rule.kind,
                **_rule_terms(v.rule), "verdict": v.verdict, "message": v.message,
                "judgements": [_judgement_record(j) for j in v.judgements],
                "unjudged": [_judgement_record(j) for j in v.unjudged],  # verdict NEW or UNSUPPORTED
            }
            for v in verdicts
        ],
    }  # fmt: skip


def _judgement_record(j: Judgement) -> dict:
    return {"subject": j.subject, "cell": j.cell, "verdict": j.verdict, "message": j.message, "severity": j.severity, "figures": j.figures}


def _rule_terms(rule: GateRule) -> dict:
    """What the rule asks, as data: its filters (lists) and the bounds and terms it sets (a CI script telling two
    rules on one impl apart read only their titles)."""
    terms = {key: getattr(rule, key) for key in ("max_exponent", "min_exponent", "max_ratio", "min_ratio", "to", "max_value", "min_value",
                                                 "max_regression", "max_exponent_increase", "min_frontier", "budget")}  # fmt: skip
    terms = {key: value for key, value in terms.items() if value is not None}
    if rule.at_length:
        terms["at_length"] = list(rule.at_length)
    exact = {"impl_exact": rule.impl_exact} | ({"to_exact": rule.to_exact} if rule.to is not None else {})  # that line alone
    return {"filters": {key: list(values) for key, values in rule.filters.items()}, **terms, **exact}


def unjudged_record(rules_file, status: int | None, error: str | None, run_ids=(), *, baseline=None, db=None) -> dict:
    """verdicts_record's shape with no verdict: every key present (counts 0, rules empty), `error` saying why, so that
    a CI script reads one shape whatever the exit status. status None: the gate has not finished (still measuring)."""
    from attnprof import __version__

    return {
        "rules_file": str(rules_file),
        "runs": list(run_ids),
        "baseline": None if baseline is None else str(baseline),
        "db": None if db is None else str(db),  # the database read and measured into (None: the rules file was unreadable)
        "attnprof_version": __version__,
        "exit_status": status,
        "error": error,
        "counts": {"PASS": 0, "FAIL": 0, "MISSING": 0},
        "rules": [],
    }


def summary_line(verdicts: list[RuleVerdict]) -> str:
    # Not "N passed, N failed": CI log readers take that shape for a test runner's closing line.
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("PASS", "FAIL", "MISSING")}
    return f"gate: {len(verdicts)} rules; PASS {counts['PASS']}, FAIL {counts['FAIL']}, MISSING {counts['MISSING']}"
