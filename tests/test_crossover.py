"""Crossovers between two fitted curves and memory frontiers, on curves with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from attnprof.crossover import crossover, crossover_frame
from attnprof.fit import fit_power_law
from attnprof.fit_groups import fit_frame
from attnprof.frontier import memory_frontier

LENGTHS = 2.0 ** np.arange(7, 15)  # 128 .. 16k


def fit_of(fn, lengths=LENGTHS, sigma=0.0, seed=0, samples=1):
    """A fit of fn at `lengths`, each value with `samples` draws of lognormal noise (timings come several a length)."""
    rng = np.random.default_rng(seed)
    repeated = np.repeat(lengths, samples)
    return fit_power_law(repeated, fn(repeated) * np.exp(rng.normal(0.0, sigma, len(repeated))))


def test_linear_and_quadratic_cross_where_a_n_equals_b_n_squared():
    linear = fit_of(lambda n: 2000.0 * n)  # equal to 0.5 n^2 at n = 4000
    quadratic = fit_of(lambda n: 0.5 * n**2)
    found = crossover(linear, quadratic, name_a="linear", name_b="softmax")
    assert found.length == pytest.approx(4000.0, rel=1e-6)
    assert found.length_low <= 4000.0 <= found.length_high
    assert found.kind == "in range"
    assert (found.cheaper_below, found.cheaper_above) == ("softmax", "linear")
    assert "linear is cheaper above N = 4000" in found.message
    assert crossover(quadratic, linear).length == pytest.approx(found.length)  # order does not matter


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_crossover_interval_covers_the_true_length(seed):
    linear = fit_of(lambda n: 2000.0 * n, sigma=0.05, seed=seed, samples=5)
    quadratic = fit_of(lambda n: 0.5 * n**2, sigma=0.05, seed=seed + 10, samples=5)
    found = crossover(linear, quadratic)
    assert found.length_low <= 4000.0 <= found.length_high
    # informative, not (0, inf): the measured lengths around it, one skipped where the medians are within their spread
    assert found.length_high / found.length_low <= 4.0


def test_crossing_beyond_the_measured_lengths_is_extrapolated():
    found = crossover(fit_of(lambda n: 1e5 * n), fit_of(lambda n: 0.5 * n**2))  # cross at 200k
    assert found.length == pytest.approx(2e5, rel=1e-6)
    assert found.kind == "extrapolated"
    assert "outside the measured 128..16k" in found.message


def test_explicit_range_decides_in_range():
    a, b = fit_of(lambda n: 2000.0 * n), fit_of(lambda n: 0.5 * n**2)
    assert crossover(a, b, lo=8192, hi=65536).kind == "extrapolated"


def test_parallel_curves_never_cross():
    found = crossover(fit_of(lambda n: 3.0 * n), fit_of(lambda n: 5.0 * n), name_a="x", name_b="y")
    assert found.kind == "none"
    assert math.isnan(found.length)
    assert "x is cheaper at every length" in found.message


def test_crossing_below_one_token_is_none():
    found = crossover(fit_of(lambda n: 10.0 * n), fit_of(lambda n: 1.0 * n**0.5), name_a="x", name_b="y")
    assert found.kind == "none"
    assert "y is cheaper at every length" in found.message


def test_indistinguishable_exponents_give_an_unbounded_interval():
    a = fit_of(lambda n: 1.0 * n, lengths=np.array([1024.0, 2048.0]))
    b = fit_of(lambda n: 0.001 * n**2, lengths=np.array([1024.0, 2048.0]))
    found = crossover(a, b)
    assert found.length == pytest.approx(1000.0, rel=1e-6)
    assert (found.length_low, found.length_high) == (0.0, math.inf)


def test_frontier_matches_the_analytic_length():
    peak = fit_of(lambda n: 64.0 * n**2)  # bytes
    budget = 64.0 * 100_000.0**2
    found = memory_frontier(peak, budget, ok_points=[(16384, 64.0 * 16384**2)], oom_lengths=[131072])
    assert found.length == pytest.approx(100_000.0, rel=1e-6)
    assert found.length_low <= 100_000.0 <= found.length_high
    assert found.kind == "extrapolated"
    assert found.consistent and found.conflicts == ()
    assert "inconsistent" not in found.message


def test_a_frontier_where_nothing_fits_says_so():
    """ "up to N = 0 (range 0..0) fits 1.0 MiB" (an audit, at the dashboard slider's lowest budget)."""
    found = memory_frontier(fit_of(lambda n: 4e6 + 64.0 * n), 2**20)
    assert found.length < 1 and found.message == "nothing fits: even one token's peak exceeds 1.0 MiB", found.message


def test_frontier_flags_an_oom_below_and_a_success_above_the_prediction():
    peak = fit_of(lambda n: 64.0 * n**2)
    budget = 64.0 * 100_000.0**2
    found = memory_frontier(peak, budget, oom_lengths=[65536, 262144], ok_points=[(150_000, 0.9 * budget)])
    assert not found.consistent
    assert found.conflicts == (65536,)  # 150000 ran within the budget: the frontier is at least that, as measured
    assert "OOM measured at N = 64k" in found.message
    assert "at least N = 150000 fits" in found.message and "(the fit alone said N = 100000)" in found.message


def test_a_case_that_ran_above_a_what_if_budget_is_no_conflict():
    """Asked 'what fits 1 GiB?' of a run made on a bigger machine: cases that ran at 2 GiB agree with the fit."""
    peak = fit_of(lambda n: 64.0 * n**2)
    budget = 64.0 * 100_000.0**2
    found = memory_frontier(peak, budget, ok_points=[(150_000, 64.0 * 150_000**2)])
    assert found.consistent and "inconsistent" not in found.message


def test_noisy_frontier_interval_covers_the_truth():
    peak = fit_of(lambda n: 64.0 * n**2, sigma=0.05, seed=4)
    found = memory_frontier(peak, 64.0 * 100_000.0**2)
    assert found.length_low <= 100_000.0 <= found.length_high


def test_frontier_in_range_and_unbounded():
    peak = fit_of(lambda n: 64.0 * n**2)
    assert memory_frontier(peak, 64.0 * 1000.0**2).kind == "in range"
    flat = fit_of(lambda n: 1e9 + 0.0 * n)
    found = memory_frontier(flat, 2e9)
    assert found.kind == "unbounded" and found.length == math.inf
    with pytest.raises(ValueError, match="budget_bytes must be positive"):
        memory_frontier(peak, 0)


def test_the_inputs_count_against_the_budget():
    """A linear peak of 1 KiB per token beside inputs of 3 KiB per token (q, k, v): the budget holds a quarter
    of the tokens the peak alone would suggest. Without inputs a flat peak never exhausts a budget; with
    them every length does eventually."""
    peak = fit_of(lambda n: 1024.0 * n)
    budget = 1024.0 * 2**24
    assert memory_frontier(peak, budget).length == pytest.approx(2**24, rel=1e-6)
    found = memory_frontier(peak, budget, input_bytes_per_token=3 * 1024.0)
    assert found.length == pytest.approx(2**22, rel=1e-6) and found.length_low <= 2**22 <= found.length_high
    assert "with its inputs" in found.message
    flat = memory_frontier(fit_of(lambda n: 1e9 + 0.0 * n), 2e9, input_bytes_per_token=1000.0)
    assert flat.kind == "extrapolated" and flat.length == pytest.approx(1e6, rel=1e-6)  # (2e9 - 1e9) / 1000
    # a case that ran at 2^23 tokens within the budget by its peak alone, but not with its inputs: no conflict
    assert memory_frontier(peak, budget, input_bytes_per_token=3 * 1024.0, ok_points=[(2**23, 1024.0 * 2**23)]).consistent
    assert memory_frontier(fit_of(lambda n: 1024.0 * n), 100.0, input_bytes_per_token=1000.0).length == 0.0  # nothing fits


PER_TOKEN, BUDGET = 3 * 16 * 64 * 2.0, 80 * 2.0**30  # q, k, v of B=1, H=16, d=64 in bf16; an 80 GiB GPU


@pytest.mark.parametrize("impl", ["combiner-fixed", "combiner-axial"])
def test_an_extrapolated_frontiers_low_end_is_a_length_that_fits(impl):
    """Accounted on meta over 1k..64k (B=1, H=16, d=64, bf16), at 80 GiB: Combiner-Fixed's 95% low end was
    N = 689728, where its peak and inputs are 87 GiB (-Axial's 669552: 98 GiB), and a `min_frontier` gate passed
    on it. The low end is now also no longer than the class model's; the peak there is accounted again."""
    from attnprof import impls
    from attnprof.accounting_runs import account_on_meta
    from attnprof.inputs import make_inputs
    from attnprof.spec import Case

    accounted = lambda n: account_on_meta(impls.get(impl), Case(impl=impl, seq_len=n, dtype="bfloat16", device="meta"))  # noqa: E731
    lengths = [2**k for k in range(10, 17)]
    found = memory_frontier(fit_power_law(lengths, [accounted(n).peak_bytes for n in lengths]), BUDGET, input_bytes_per_token=PER_TOKEN)
    low = int(found.length_low)
    inputs = make_inputs(Case(impl=impl, seq_len=low, dtype="bfloat16", device="meta"), device="meta").nbytes
    assert found.kind == "extrapolated" and accounted(low).peak_bytes + inputs <= BUDGET, found.message


def test_a_fading_workspace_is_not_extrapolated_at_its_flattened_slope():
    """A fixed workspace beside a linear term, over 75% of the peak at every length (cosFormer's peak fitted 0.74
    over 1k..64k, and its frontier at 80 GiB read 11.6M, where its output and inputs alone need 89 GiB): the
    exponent is that of workspace + a N^b, 1, and the frontier the exact one; its range (from an exponent fitted to the
    5-30% of the peak the workspace leaves) holds it, the low end within 10%."""
    peak = lambda n: 4e8 + 1.5e3 * n  # noqa: E731
    fit = fit_of(peak, lengths=2.0 ** np.arange(10, 17))
    found = memory_frontier(fit, BUDGET, input_bytes_per_token=PER_TOKEN)
    exact = (BUDGET - 4e8) / (1.5e3 + PER_TOKEN)
    assert fit.exponent == pytest.approx(1.0, abs=1e-5) and fit.overhead == pytest.approx(4e8, rel=1e-6), fit.range_rule
    assert found.length == pytest.approx(exact, rel=1e-6)
    assert exact * 0.9 < found.length_low <= exact * (1 + 1e-6) <= found.length_high, found.message


def test_an_exact_linear_peak_keeps_a_tight_extrapolated_frontier():
    """Nyströmformer's: linear beside a small constant, class linear; the low end stays within 1% of the truth."""
    peak = lambda n: 2e6 + 2e3 * n  # noqa: E731
    found = memory_frontier(fit_of(peak, lengths=2.0 ** np.arange(10, 17)), BUDGET, input_bytes_per_token=PER_TOKEN)
    assert found.length_low == pytest.approx((BUDGET - 2e6) / (2e3 + PER_TOKEN), rel=0.01)


def test_crossover_frame_pairs_impls_within_each_configuration():
    rows = []
    for heads in (4, 8):
        for impl, fn in (("softmax", lambda n: 0.5 * n**2), ("linear", lambda n: 2000.0 * n), ("nystrom", lambda n: 4000.0 * n)):
            rows += [{"impl": impl, "heads": heads, "seq_len": n, "median_ms": heads * fn(n)} for n in LENGTHS]
    rows += [{"impl": "broken", "heads": 4, "seq_len": n, "median_ms": np.nan} for n in LENGTHS]
    fits = fit_frame(pd.DataFrame(rows), "median_ms", ["impl", "heads"])
    pairs = crossover_frame(fits)
    assert len(pairs) == 6  # 3 pairs per head count; the broken fit pairs with nothing
    row = pairs[(pairs.heads == 8) & (pairs.impl_a == "linear") & (pairs.impl_b == "softmax")].iloc[0]
    assert row.length == pytest.approx(4000.0, rel=1e-6)
    assert row.kind == "in range" and row.metric == "median_ms"
    parallel = pairs[(pairs.impl_a == "linear") & (pairs.impl_b == "nystrom")]
    assert set(parallel.kind) == {"none"}


def test_crossover_frame_needs_configuration_columns_when_not_recorded():
    fits = fit_frame(pd.DataFrame({"impl": ["a"] * 3, "seq_len": [1, 2, 4], "ms": [1.0, 2.0, 4.0]}), "ms", ["impl"])
    bare = pd.DataFrame(fits.to_dict("records"))  # attrs lost
    with pytest.raises(ValueError, match="pass config_cols"):
        crossover_frame(bare)
    assert crossover_frame(bare, config_cols=[]).empty  # one impl: no pair


def test_near_crossings_are_in_range_or_close_with_a_bounded_interval():
    from attnprof.crossover import NEAR_SPAN, is_near

    linear = fit_of(lambda n: 2000.0 * n)
    assert is_near(crossover(linear, fit_of(lambda n: 0.5 * n**2)))  # in range, at 4000
    just_beyond = crossover(linear, fit_of(lambda n: 2000.0 / (4 * LENGTHS[-1]) * n**2))  # crosses at 4 x 16k
    assert just_beyond.kind == "extrapolated" and is_near(just_beyond)
    far = crossover(linear, fit_of(lambda n: 2000.0 / (2 * NEAR_SPAN * LENGTHS[-1]) * n**2))  # at 32 x 16k
    assert far.kind == "extrapolated" and math.isfinite(far.length_high) and not is_near(far)
    # two nearly parallel noisy curves "cross" somewhere astronomical, with an interval of 0..inf
    parallel = crossover(fit_of(lambda n: 2.0 * n, sigma=0.02, seed=3), fit_of(lambda n: 1.0 * n, sigma=0.02, seed=4))
    assert parallel.kind == "extrapolated" and (parallel.length_low, parallel.length_high) == (0.0, math.inf)
    assert not is_near(parallel)
    # a crossing just beyond the measured lengths whose interval still reaches far: not a prediction either
    noisy_linear = fit_of(lambda n: 2000.0 * n, sigma=0.8, seed=5, samples=3)
    vague = crossover(noisy_linear, fit_of(lambda n: 2000.0 / (2 * LENGTHS[-1]) * n**2, sigma=0.8, seed=6, samples=3))
    assert vague.kind == "extrapolated" and vague.length < NEAR_SPAN * LENGTHS[-1] < vague.length_high
    assert not is_near(vague)


def test_fitted_lines_that_contradict_the_medians_give_way_to_them():
    """An audit found 7 of 10 in-range crossings of a timed sweep contradicted by the medians. Here b carries a
    large fixed cost beside its linear term; the fit subtracts it to find b's exponent, so the fitted lines were
    parallel and alone reported b as cheaper at every length. The fits now carry that overhead: b, cheaper per
    token, overtakes a at N = 20000, beyond the measured 16k."""
    a = fit_of(lambda n: 3000.0 * n)
    beyond = crossover(a, fit_of(lambda n: 2500.0 * n + 1e7), name_a="a", name_b="b")
    assert beyond.kind == "extrapolated" and (beyond.cheaper_below, beyond.cheaper_above) == ("a", "b")
    assert beyond.length == pytest.approx(20000, rel=1e-3)
    late = crossover(a, fit_of(lambda n: 2000.0 * n + 1e7), name_a="a", name_b="b")  # equal at N = 10000
    assert late.kind == "in range" and (late.cheaper_below, late.cheaper_above) == ("a", "b")
    assert (late.length_low, late.length_high) == (8192, 16384) and "measured: between 8k and 16k" in late.message


def test_an_in_range_crossing_agrees_with_the_medians_on_both_sides():
    """A quadratic against a line with a large constant (a fixed workspace): the power law through the second
    bends, so its fitted crossing can fall on the wrong side of a measured length. They cross at N = 7623."""
    quadratic, line = (lambda n: n**2 / 100.0), (lambda n: 50.0 * n + 2e5)
    found = crossover(fit_of(quadratic), fit_of(line), name_a="quadratic", name_b="line")
    assert found.kind == "in range" and (found.cheaper_below, found.cheaper_above) == ("quadratic", "line")
    assert 4096 <= found.length <= 8192 and found.length_low <= 7623 <= found.length_high
    for n in LENGTHS:  # every measured length is on the side of the crossing where its cheaper impl is named
        assert (quadratic(n) < line(n)) == (n < found.length)


ACCOUNTED = (1024, 2048, 4096, 8192, 16384, 32768, 65536)  # N of an accounting run, B1 H16 D64 bf16 bidirectional fwd


def test_an_extrapolated_crossing_keeps_the_overhead_the_fit_subtracted():
    """Nyströmformer's FLOPs are 2.2e8 (the m x m pseudo-inverse) + 5.9e5 N; fitted over 1k..64k the overhead is
    still 0.6% at 64k, so the fit subtracts it. The crossing with softmax (4096 N^2) lies near N = 314, below the
    measured lengths; with the overhead left out of the fitted curve it was put at N = 145 (95% 144..145)."""
    lengths = np.array(ACCOUNTED, dtype=float)
    nystrom = fit_power_law(lengths, 2.18e8 + 5.92e5 * lengths)
    softmax = fit_power_law(lengths, 4096.0 * lengths**2)
    assert nystrom.overhead == pytest.approx(2.18e8, rel=1e-2)
    truth = (5.92e5 + math.sqrt(5.92e5**2 + 4 * 4096 * 2.18e8)) / (2 * 4096)  # 4096 N^2 = 2.18e8 + 5.92e5 N
    found = crossover(nystrom, softmax, name_a="nystromformer", name_b="softmax")
    assert found.kind == "extrapolated" and found.cheaper_above == "nystromformer"
    assert found.length == pytest.approx(truth, rel=0.01) and found.length_low <= truth <= found.length_high


def test_an_extrapolated_crossing_spans_the_class_models_answer():
    """Accounted peaks (bytes). Combiner-Fixed's fit drops 1k..4k, where its 5 MiB of fixed workspace shows, and its
    power law then "crossed" Nyströmformer's at N = 258 (95% 137..476), Combiner-Fixed cheaper below, a default-listed
    prediction; the accounting says Nyströmformer is cheaper at every length from 16 on. Its class model (c0 + c1
    N^1.5) keeps the workspace and never meets Nyströmformer's, so the range reaches down to 0: no prediction."""
    from attnprof.crossover import is_near

    lengths = np.array(ACCOUNTED, dtype=float)
    fixed = (25625600, 55447552, 118493184, 270548992, 606617600, 1481703424, 3497066496)
    nystrom = (11535392, 22020096, 42991616, 84934656, 168820736, 336592896, 672137216)
    found = crossover(fit_power_law(lengths, np.array(fixed, float)), fit_power_law(lengths, np.array(nystrom, float)))
    assert found.kind == "extrapolated" and found.length_low < 16 and not is_near(found)
    assert "(range 0.." in found.message  # not a "95%" interval: it spans the class models' answer too


def test_a_measured_crossing_names_the_lengths_between_where_the_two_are_level():
    """Two timed curves 0.04% apart at 8k: the crossing "at 5353 (measured: between 4k and 16k)" read as if
    cosFormer were cheaper at 8k, where Combiner-Fixed still was. The level lengths are named."""
    lengths = np.array([1024, 2048, 4096, 8192, 16384], dtype=float)
    fixed = np.array([1.0, 2.0, 4.0, 8.0, 16.0]) * 1e6 * np.array([1, 1, 1, 1, 1.3])
    cosformer = np.array([2.0, 3.0, 5.0, 8.0032, 16.0]) * 1e6  # 0.04% above at 8k, below at 16k
    spread = np.full(5, 0.002)  # medians of timings, 0.2% spread each
    found = crossover(
        fit_power_law(lengths, fixed, spreads=spread), fit_power_law(lengths, cosformer, spreads=spread), name_a="fixed", name_b="cosformer"
    )
    assert found.kind == "in range" and (found.length_low, found.length_high) == (4096, 16384), found.message
    assert "at 8k the two are level" in found.message


def test_exact_curves_differ_wherever_their_values_do():
    """Exact values (FLOPs, accounted bytes: no spread) are not level within 1%: Combiner-Fixed's FLOPs 0.8% under
    cosFormer's at 4k (bidirectional, B1 H16 D64) were "level", and the crossing read "3695 (between 2k and 8k)";
    the formulas' order last changes at N = 4100."""
    lengths = np.array([1024, 2048, 4096, 8192, 16384], dtype=float)
    fixed = np.array([1.0, 2.0, 4.0, 8.0, 16.0]) * 1e6 * np.array([1, 1, 1, 1, 1.3])
    cosformer = np.array([2.0, 3.0, 5.0, 8.0032, 16.0]) * 1e6  # 0.04% above at 8k, below at 16k
    found = crossover(fit_power_law(lengths, fixed), fit_power_law(lengths, cosformer), name_a="fixed", name_b="cosformer")
    assert found.kind == "in range" and (found.length_low, found.length_high) == (8192, 16384), found.message
    assert (found.cheaper_below, found.cheaper_above) == ("fixed", "cosformer") and "level" not in found.message


def test_measured_peaks_on_both_sides_of_the_budget_outweigh_the_fit():
    """An accounting run's peaks are exact: cosFormer's causal fwd_bwd at 1 GiB fit at 16384 (1001.7 MiB with its
    inputs) and not at 20480 (1065.9), where the fit said 14059, "in range", and nothing said otherwise."""
    peak = fit_of(lambda n: 64.0 * n**2)  # says 100000 fits
    budget = 64.0 * 100_000.0**2
    found = memory_frontier(peak, budget, ok_points=[(65536, 0.5 * budget), (131072, 0.9 * budget), (262144, 1.2 * budget)])
    between = math.exp(math.log(131072) + math.log(1 / 0.9) / math.log(1.2 / 0.9) * math.log(2))
    assert found.length == pytest.approx(between) and (found.length_low, found.length_high) == (131072, 262144)
    assert found.message.startswith("in range: about N = ") and "(the fit alone said N = 100000)" in found.message
    assert "measured N = 128k needs" in found.message and found.consistent
    # beyond the longest that fits, with nothing measured over the budget: at least that long
    longest = memory_frontier(peak, budget, ok_points=[(131072, 0.9 * budget)])
    assert longest.length == 131072 and "at least N = 128k fits" in longest.message and longest.length_low == 131072
    # a peak measured over the budget where the fit says it fits contradicts it
    over = memory_frontier(peak, budget, ok_points=[(65536, 1.1 * budget)])
    assert not over.consistent and "N = 64k measured" in over.message and "over the budget" in over.message


def test_an_oom_does_not_bound_a_what_if_budget_but_a_measured_peak_does():
    """An 80 GB GPU's OOM at 64k says nothing of a 1 TiB budget: it capped that frontier at 32k, "in range"."""
    peak = fit_of(lambda n: 64.0 * n**2)
    budget = 64.0 * 100_000.0**2
    small = [(n, 64.0 * n**2) for n in (8192, 16384, 32768)]
    found = memory_frontier(peak, budget, oom_lengths=[65536], ok_points=small, device_bytes=budget / 2)
    assert found.length == pytest.approx(100_000.0, rel=1e-6) and found.conflicts == (65536,)  # said, not obeyed
    # within the device's memory the OOM is a bound: the frontier lies between 32k, which ran, and 64k
    on_device = memory_frontier(peak, budget, oom_lengths=[65536], ok_points=small, device_bytes=budget)
    assert on_device.length == 32768 and (on_device.length_low, on_device.length_high) == (32768, 65536) and on_device.consistent
    assert "at least N = 32k fits" in on_device.message and "N = 64k ran out of memory (the fit alone said N = 100000)" in on_device.message


def test_predicted_ooms_and_modelled_peaks_are_no_measured_boundaries():
    """The CPU's host-memory guard predicts an OOM from the free memory of the moment, and a fused kernel's
    accounting peak is its analytic model: neither is a measurement a frontier or a gate may lean on."""
    import pandas as pd

    from attnprof.analysis import measured_boundaries

    cells = pd.DataFrame(
        [
            dict(seq_len=1024, device="cpu", status="ok", peak_bytes=10.0, peak_source="live_tensors", reason=""),
            dict(seq_len=2048, device="cpu", status="oom", peak_bytes=None, peak_source=None, reason="predicted peak 9 GiB; not run"),
            dict(seq_len=4096, device="cpu", status="oom", peak_bytes=None, peak_source=None, reason="out of memory: CUDA out of memory"),
            dict(seq_len=1024, device="meta", status="ok", peak_bytes=20.0, peak_source="model", reason="modelled"),
        ]
    )
    assert measured_boundaries(cells) == {"oom_lengths": (4096,), "ok_points": ((1024, 10.0),)}


def test_a_frontier_never_lets_the_peak_fall_below_the_calls_own_output():
    """A workspace still fading at the measured lengths fits a power law under 1 (SDPA's CPU peak, N^0.75 at B1 H2):
    extrapolated, it put 15.4M tokens in 23.5 GiB, where the inputs and the output alone need 29.3 GiB."""
    lengths = np.array([512, 1024, 2048, 4096, 8192], dtype=float)
    peak = fit_power_law(lengths, 400.0 * lengths**0.75, metric="peak_bytes")
    budget = 23.5 * 2**30
    inputs, output = 3 * 512.0, 512.0  # q, k, v and the output: B1 H2 D64 float32, per token
    free = memory_frontier(peak, budget, input_bytes_per_token=inputs)
    floored = memory_frontier(peak, budget, input_bytes_per_token=inputs, output_bytes_per_token=output)
    assert free.length > budget / (inputs + output)  # the fitted peak alone: more tokens than inputs and output allow
    assert floored.length == pytest.approx(budget / (inputs + output), rel=1e-6) and floored.length_high <= floored.length * (1 + 1e-9)
    assert "its output alone outgrows the fitted peak, N^0.75" in floored.message
    assert "fits 23.5 GiB" in floored.message and "200.0 MiB" in memory_frontier(peak, 200 * 2**20, output_bytes_per_token=output).message


def test_two_curves_level_at_every_measured_length_do_not_cross_there():
    """SDPA and SDPA-flash run one CPU kernel (3.78/3.79, 15.05/15.02, 118.2/118.2 ms): no length told them apart,
    and their fitted lines, tilted by noise, "crossed in range" at 998 in one run and at 2564 in another."""
    lengths = np.array([512, 1024, 2048, 4096, 8192], dtype=float)
    wobble = np.array([1.004, 0.997, 1.0, 1.003, 0.996])
    spreads = np.full(5, 0.01)
    a = fit_power_law(lengths, 1e-6 * lengths**2 * wobble, metric="time", spreads=spreads)
    b = fit_power_law(lengths, 1e-6 * lengths**2 / wobble, metric="time", spreads=spreads)
    found = crossover(a, b, name_a="sdpa", name_b="sdpa-flash")
    assert found.kind == "none" and "level, within their spread + 1% at every measured length (512..8k)" in found.message, found.message


def test_a_crossing_where_the_last_medians_are_level_is_the_fits_not_none():
    """True crossing at 3800 over 256..4k, 5% noise, 30 samples a cell: the medians at 4k are 6% apart, under their two
    spreads, so 2k was the last length that told the two apart, and the fits' crossing between 2k and 4k read "none:
    softmax is cheaper at every measured length where the two differ; the fitted lines do not follow the medians" in
    99 of 200 seeds (a statistics audit). Two parallel lines tilted by noise still do not cross there."""
    lengths = 2.0 ** np.arange(8, 13)
    found = [
        crossover(fit_of(lambda n: 3.8e-3 * n, lengths, 0.05, seed, 30), fit_of(lambda n: 1e-6 * n**2, lengths, 0.05, seed + 99, 30),
                  name_a="cosformer", name_b="softmax")
        for seed in range(20)
    ]  # fmt: skip
    assert all(f.kind == "in range" and f.cheaper_above == "cosformer" for f in found), [f.message for f in found if f.kind != "in range"]
    assert all(abs(f.length / 3800 - 1) < 0.1 for f in found)
    fitted = [f for f in found if "fitted: the medians above 2k, where the fits cross, do not tell the two apart" in f.message]
    assert fitted and all((f.length_low, f.length_high) == (2048, 4096) for f in fitted)
    quadratic = lambda n: 1e-6 * n**2  # noqa: E731
    parallel = [crossover(fit_of(quadratic, lengths, 0.05, s, 10), fit_of(quadratic, lengths, 0.05, s + 99, 10)) for s in range(20)]
    assert sum(f.kind == "in range" for f in parallel) <= 1, [f.message for f in parallel if f.kind == "in range"]


def timed_pair(curve_a, curve_b, samples, seed, lengths=(256, 512, 1024, 2048, 4096, 8192), sigma=0.03):
    """Two impls timed `samples` times a cell with 3% lognormal noise: their fits from the raw samples."""
    rng = np.random.default_rng(seed)
    repeated = np.repeat(np.asarray(lengths, dtype=float), samples)
    return [fit_power_law(repeated, curve(repeated) * np.exp(rng.normal(0.0, sigma, repeated.size))) for curve in (curve_a, curve_b)]


def test_a_few_samples_a_cell_do_not_make_identical_curves_cross():
    """A spread of 3 samples understates how far their median may be off (1.58 times their half-IQR, 0.63 at 10): two
    identical curves timed 3 samples a cell "crossed in range" in 52 of 200 seeds, 5 samples in 21 (a statistics
    audit). A true crossing timed so is still found, where it is."""
    same = [crossover(*timed_pair(lambda n: n, lambda n: n, samples, seed)).kind for samples in (3, 5) for seed in range(40)]
    assert same.count("in range") <= 2, same.count("in range")
    for seed in range(20):
        a, b = timed_pair(lambda n: n * n / 1000, lambda n: 3.0 * n, 3, seed)
        assert a.counts == (3,) * 6
        found = crossover(a, b)
        assert found.kind == "in range" and found.length_low <= 3000 <= found.length_high, found.message


def test_medians_with_their_spreads_and_counts_cross_where_the_raw_samples_do():
    """The dashboard fits each cell's stored median with its spread and sample count; `fit` the raw samples."""
    for seed in range(10):
        raw = timed_pair(lambda n: n, lambda n: 1.01 * n, 3, seed)
        stored = [fit_power_law(f.lengths_measured, f.medians, spreads=f.spreads, counts=f.counts) for f in raw]
        assert stored[0].counts == raw[0].counts == (3,) * 6
        assert crossover(*stored).message == crossover(*raw).message


def test_exact_values_equal_at_the_short_lengths_do_not_cross_there():
    """sdpa's causal FLOPs equal softmax's at 128..512 and under them from 1k: the fits crossing at 218 read "in range:
    sdpa is cheaper above N = 218 (fitted: the medians below 1k ... do not tell the two apart), softmax below", though
    softmax is never cheaper (an analysis audit). Exact values level at a length are equal there."""
    lengths = np.array([128, 256, 512, 1024, 2048], dtype=float)
    sdpa = np.array([67108864, 268435456, 1073741824, 3221225472, 10737418240], dtype=float)
    softmax = np.array([67108864, 268435456, 1073741824, 4294967296, 17179869184], dtype=float)
    found = crossover(fit_power_law(lengths, sdpa, metric="flops"), fit_power_law(lengths, softmax, metric="flops"), name_a="sdpa",
                      name_b="softmax")  # fmt: skip
    assert found.kind == "none" and "softmax below" not in found.message, found.message
    assert (
        found.message == "none: sdpa is cheaper at every measured length where the two differ (1k..2k); at 128, 256, 512 the two are equal"
    )


def test_exact_values_a_few_bytes_apart_are_equal():
    """Two Nyströmformer option sets' CPU peaks, 2,112 bytes apart of 402,655,296 at 32k alone (equal at 512..16k),
    "crossed in range at N = 32757" (an analysis audit): a difference under EXACT_RESOLUTION is a tie."""
    lengths = np.array([256, 512, 1024, 2048, 16384, 32768], dtype=float)
    m64 = np.array([3407872, 6293568, 12585024, 25167936, 201328704, 402655296], dtype=float)
    m32 = np.array([3149952, 6293568, 12585024, 25167936, 201328704, 402657408], dtype=float)
    found = crossover(fit_power_law(lengths, m64, metric="peak_bytes"), fit_power_law(lengths, m32, metric="peak_bytes"), name_a="m64",
                      name_b="m32")  # fmt: skip
    assert found.kind != "in range" and "32757" not in found.message, found.message
    said = "m32 is cheaper at every measured length where the two differ (256); at 512, 1k, 2k, 16k, 32k the two are equal"
    assert said in found.message, found.message
