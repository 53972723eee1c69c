"""Gate rules that could pass a real regression unseen (a gate audit, acting as a kernel engineer's CI): a rule that
can never fail, a unit slip, a line named but not kept to, a reference slowed by load, baseline cells left unsaid."""

import json

import pytest
from click.testing import CliRunner
from test_gate import BUSY, frame

from attnprof.cli import cli
from attnprof.errors import UsageError
from attnprof.gate import evaluate
from attnprof.gate_output import verdicts_record
from attnprof.gate_rules import parse_rules


def two_cells(x_ms, y_ms, x_reason="", y_reason=""):
    cell = dict(seq_len=2048, status="ok", peak_bytes=1)
    return frame([dict(cell, times_ms=[x_ms], median_ms=x_ms, reason=x_reason),
                  dict(cell, impl="y", label="y", times_ms=[y_ms], median_ms=y_ms, reason=y_reason)])  # fmt: skip


def ratio_rule(**bound):
    return parse_rules([{"impl": "x", "metric": "time", "at_length": 2048, "to": "y", **bound}], "t")


def test_a_ratio_that_passes_only_because_the_reference_was_timed_busy_is_missing():
    """sdpa timed at 180 ms under load (51.4 quiet) passed a quadratic kernel at 0.529 against max 1, its true ratio
    1.85. Load on the reference lowers a ratio: a pass under max_ratio is MISSING then; load on the impl itself
    cannot hide a ratio too high, so that pass stands. Under min_ratio the other way round."""
    hidden = evaluate(ratio_rule(max_ratio=1.0), two_cells(95.3, 180.0, y_reason=BUSY))[0]
    assert hidden.verdict == "MISSING", hidden.message
    assert "but y was timed on a busy machine, which may have hidden a change" in hidden.message
    assert hidden.judgements[0].figures["busy"] is True
    assert evaluate(ratio_rule(max_ratio=1.0), two_cells(95.3, 180.0))[0].verdict == "PASS"  # quiet: as measured
    assert evaluate(ratio_rule(max_ratio=1.0), two_cells(40.0, 51.4, x_reason=BUSY))[0].verdict == "PASS"
    assert evaluate(ratio_rule(min_ratio=0.5), two_cells(40.0, 51.4, x_reason=BUSY))[0].verdict == "MISSING"
    assert evaluate(ratio_rule(min_ratio=0.5), two_cells(40.0, 51.4, y_reason=BUSY))[0].verdict == "PASS"
    at_least = parse_rules([{"impl": "x", "metric": "time", "at_length": 2048, "min_value": "30ms"}], "t")
    assert evaluate(at_least, two_cells(40.0, 51.4, x_reason=BUSY))[0].verdict == "MISSING"
    at_most = parse_rules([{"impl": "x", "metric": "time", "at_length": 2048, "max_value": "50ms"}], "t")
    assert evaluate(at_most, two_cells(40.0, 51.4, x_reason=BUSY))[0].verdict == "PASS"  # load only slows


def test_ratio_figures_name_the_reference_and_both_medians():
    (verdict,) = evaluate(ratio_rule(max_ratio=1.0), two_cells(20.0, 50.0))
    assert verdict.judgements[0].figures == {"value": 0.4, "max": 1.0, "min": None, "to": "y", "numerator": 20.0, "denominator": 50.0}


@pytest.mark.parametrize(
    ("rule", "said"),
    [
        ({"metric": "time", "min_frontier": "1k", "budget": "8GiB"}, "a frontier rule is for metric peak_bytes"),
        ({"metric": "flops", "min_frontier": "1k", "budget": "8GiB"}, "a frontier rule is for metric peak_bytes"),
        ({"metric": "peak_bytes", "at_length": 2048, "to": "x", "max_ratio": 1.0}, "to = 'x' is the rule's own impl"),
        ({"metric": "peak_bytes", "max_regression": 10}, 'a change above 100% is written as a percentage ("1000%")'),
        ({"metric": "peak_bytes", "max_regression": "10"}, 'expected a fraction such as 0.1 or a percentage such as "10%"'),
        ({"metric": "peak_bytes", "max_regression": "-5%"}, 'expected a percentage such as "10%"'),
        ({"metric": "peak_bytes", "max_regression": "ten%"}, "'ten' is not a number"),
        ({"metric": "time", "max_exponent": 110}, "an exponent of N above 4 bounds nothing"),
        ({"metric": "time", "min_exponent": 5}, "an exponent of N above 4 bounds nothing"),
    ],
)
def test_rules_that_mean_nothing_are_refused_naming_the_slip(rule, said):
    """Each passed a quadratic kernel (a gate audit): milliseconds or FLOPs read as bytes against a budget, a ratio of
    an impl to itself, 10 meaning 10% (it allowed +1000%), an exponent bound of 110."""
    with pytest.raises(UsageError, match="rule 1 of t") as raised:
        parse_rules([{"impl": "x", **rule}], "t")
    assert said in str(raised.value), str(raised.value)


def test_a_relative_bound_reads_a_fraction_or_a_percentage():
    read = lambda value: parse_rules([{"impl": "x", "metric": "peak_bytes", "max_regression": value}], "t")[0].max_regression  # noqa: E731
    assert (read(0.1), read(1), read("10%"), read(" 250 % "), read("0%")) == (0.1, 1.0, 0.1, 2.5, 0.0)


def test_impl_all_does_not_judge_the_reference_against_itself():
    """`impl = "all"` with `to = "y"` took y's ratio to itself: 1, a FAIL under max_ratio 0.5 whatever y measured."""
    rules = parse_rules([{"impl": "all", "metric": "time", "at_length": 2048, "to": "y", "max_ratio": 0.5}], "t")
    (verdict,) = evaluate(rules, two_cells(20.0, 50.0))
    assert verdict.verdict == "PASS" and [j.cell["label"] for j in verdict.judgements] == ["x"], verdict.message


def two_option_sets():
    """Nyströmformer at its default landmarks (labelled by its bare name) and at 16, the latter quadratic in bytes."""
    lengths = [1024, 2048, 4096, 8192]
    cell = dict(impl="nystromformer", status="ok", times_ms=[], median_ms=None, device="meta")
    rows = [dict(cell, label=label, seq_len=n, peak_bytes=n * grow(n))
            for label, grow in (("nystromformer", lambda n: 100), ("nystromformer[num_landmarks=16]", lambda n: n))
            for n in lengths]  # fmt: skip
    return frame(rows)


def test_a_rule_naming_the_default_options_judges_that_line_only():
    """`impl = "mylin-opt[variant=good]"` became the bare label, and a bare name matches every option set: the
    quadratic line beside it failed the rule that named the good one. Named with options, a rule keeps to its line;
    a bare name still judges every line of the impl."""
    bound = {"metric": "peak_bytes", "max_exponent": 1.1}
    (named,) = evaluate(parse_rules([{"impl": "nystromformer[num_landmarks=64]", **bound}], "t"), two_option_sets())
    assert named.verdict == "PASS" and [j.cell["label"] for j in named.judgements] == ["nystromformer"], named.message
    (bare,) = evaluate(parse_rules([{"impl": "nystromformer", **bound}], "t"), two_option_sets())
    assert bare.verdict == "FAIL" and "nystromformer[num_landmarks=16]" in bare.message
    ratio = {"metric": "peak_bytes", "at_length": 8192, "max_ratio": 1.0}
    by_name = parse_rules([{"impl": "nystromformer[num_landmarks=16]", "to": "nystromformer[num_landmarks=64]", **ratio}], "t")
    (versus,) = evaluate(by_name, two_option_sets())  # the `to` line named by its default options: one line, not two
    assert versus.verdict == "FAIL" and "peak_bytes ratio to nystromformer 81.9" in versus.message, versus.message


def test_baseline_configurations_the_run_does_not_measure_are_missing():
    """A baseline of timed and accounting cells passed a run of the timed ones only, the accounting cells unsaid."""
    cpu = [dict(seq_len=n, status="ok", times_ms=[1.0], median_ms=1.0, peak_bytes=n * 100) for n in (1024, 2048, 4096, 8192)]
    meta = [dict(row, device="meta") for row in cpu]
    unsupported = [dict(row, device="meta", causal=True, status="unsupported", peak_bytes=None) for row in cpu]
    baseline = frame(cpu + meta + unsupported)
    for rule in ({"max_regression": 0.1}, {"max_exponent_increase": 0.1}):
        (verdict,) = evaluate(parse_rules([{"impl": "x", "metric": "peak_bytes", **rule}], "t"), frame(cpu), baseline=baseline)
        assert verdict.verdict == "MISSING", verdict.message
        assert "x B1 H1 D64 float32 meta bidir fwd: in the baseline (N=1024..8192), not measured in the run" in verdict.message
        assert "causal" not in verdict.message  # unsupported in the baseline: nothing to vouch for
        on_cpu = parse_rules([{"impl": "x", "metric": "peak_bytes", "device": "cpu", **rule}], "t")
        (kept,) = evaluate(on_cpu, frame(cpu), baseline=baseline)
        assert kept.verdict == "PASS", kept.message  # filtered to what the run measures


def test_gate_json_says_what_each_rule_asks_and_which_cells_it_did_not_judge():
    rules = parse_rules([{"impl": "x", "metric": "peak_bytes", "max_regression": "5%", "device": "cpu", "heads": 1}], "t")
    run = frame([dict(seq_len=n, status="ok", times_ms=[1.0], median_ms=1.0, peak_bytes=100) for n in (1024, 2048)])
    record = verdicts_record(evaluate(rules, run, baseline=run.iloc[:1]), "t", ["r"])
    (rule,) = record["rules"]
    assert rule["filters"] == {"device": ["cpu"], "heads": [1]} and rule["max_regression"] == 0.05, rule
    assert [j["cell"]["seq_len"] for j in rule["judgements"]] == [1024]
    assert [(j["cell"]["seq_len"], j["verdict"]) for j in rule["unjudged"]] == [(2048, "NEW")]
    json.dumps(record)  # plain data


def test_an_empty_baseline_file_says_it_is_empty(tmp_path):
    (tmp_path / "rules.toml").write_text('[[rule]]\nimpl = "x"\nmetric = "peak_bytes"\nmax_regression = 0.1\n')
    (tmp_path / "empty.jsonl").write_text("")
    args = ["gate", str(tmp_path / "rules.toml"), "--run", "latest", "--baseline", str(tmp_path / "empty.jsonl")]
    result = CliRunner().invoke(cli, [*args, "--db", str(tmp_path / "a.db")])
    assert result.exit_code == 2 and "is empty: export one with" in result.output, result.output


def test_a_rule_naming_default_options_the_sweep_does_not_measure_is_refused_before_measuring(tmp_path):
    """`nystromformer[num_landmarks=64]` (the default) over a sweep of num_landmarks=32 measured first, then was MISSING,
    "no measurements match impl 'nystromformer'", read as every line of the impl (a review)."""
    rules = tmp_path / "rules.toml"
    sweep = '[sweep]\nimpl = "nystromformer:num_landmarks=32"\nlengths = "1k..4k"\naccounting = true\ncausal = "no"\nheads = 2\n'
    rules.write_text(sweep + '[[rule]]\nimpl = "nystromformer[num_landmarks=64]"\nmetric = "peak_bytes"\nmax_exponent = 1.5\n')
    result = CliRunner().invoke(cli, ["gate", str(rules), "--db", str(tmp_path / "g.db")])
    assert result.exit_code == 2 and "rule 1 names 'nystromformer[default options]', which no [sweep] of the file measures" in result.output
    assert not (tmp_path / "g.db").exists()  # nothing measured
    (rule,) = parse_rules([{"impl": "nystromformer:num_landmarks=64", "metric": "peak_bytes", "max_exponent": 1.5}], "t")
    assert rule.title == "rule 1 (nystromformer[default options] peak_bytes exponent)"
