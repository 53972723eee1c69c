"""Exponent fits: recovery on synthetic power laws, the asymptotic-range rule, intervals, bad inputs, frames."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnprof.fit import Fit, fit_power_law, fit_power_laws, format_length, kept_every_length, t_quantile_975
from attnprof.fit_groups import fit_frame

LENGTHS = 2 ** np.arange(7, 17)  # 128 .. 64k, as a default sweep would measure
CLASS_OF = {1.0: "linear", 1.5: "n^1.5", 2.0: "quadratic"}


def noisy(values, sigma, seed, repeats=1):
    """Each value repeated `repeats` times with multiplicative log-normal noise; returns (lengths, values)."""
    rng = np.random.default_rng(seed)
    lengths = np.repeat(LENGTHS, repeats)
    return lengths, np.repeat(values, repeats) * np.exp(rng.normal(0.0, sigma, lengths.size))


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
def test_clean_power_law_is_recovered_with_a_thin_interval(p):
    fit = fit_power_law(LENGTHS, 3e-5 * LENGTHS**p)
    assert fit.exponent == pytest.approx(p, abs=1e-9)
    assert fit.exponent_low <= p <= fit.exponent_high
    assert fit.exponent_high - fit.exponent_low < 0.01
    assert fit.lengths_used == tuple(int(n) for n in LENGTHS)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.complexity == CLASS_OF[p]
    assert fit.predict(1000) == pytest.approx(3e-5 * 1000**p)


def coverage(curve, p, sigma, repeats, trials=120):
    """Share of seeded noisy draws whose interval holds p, and the median interval width."""
    fits = [fit_power_law(*noisy(curve, sigma, seed, repeats)) for seed in range(trials)]
    covered = np.mean([f.exponent_low <= p <= f.exponent_high for f in fits])
    return covered, np.median([f.exponent_high - f.exponent_low for f in fits])


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
def test_noisy_power_law_intervals_cover_the_true_exponent_about_95_percent_of_the_time(p):
    covered, width = coverage(1e-4 * LENGTHS**p, p, sigma=0.05, repeats=5)
    assert 0.88 <= covered <= 0.995  # a 95% interval: neither overconfident nor padded
    assert width < 0.1


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
def test_noisy_fit_recovers_exponent_and_counts_samples(p):
    fit = fit_power_law(*noisy(1e-4 * LENGTHS**p, sigma=0.05, seed=1, repeats=5))
    assert fit.exponent == pytest.approx(p, abs=0.05)
    assert fit.n_samples == 5 * fit.n_points  # medians of 5 repetitions per used length
    assert fit.complexity == CLASS_OF[p]


def overhead_curve(p):
    # Fixed cost equal to the scaling part at N = 256: it dominates below 256 and is 0.4%..0.0015% of 64k.
    return 1.0 + (LENGTHS / 256.0) ** p


@pytest.mark.parametrize("p", [1.5, 2.0])
def test_range_rule_drops_overhead_bound_lengths(p):
    fit = fit_power_law(LENGTHS, overhead_curve(p))
    assert min(fit.lengths_used) > 512  # the overhead is 25% or more of the value up to 512
    assert fit.range_rule.startswith("dropped 128..")
    assert fit.exponent == pytest.approx(p, abs=0.02)
    everything = fit_power_law(LENGTHS, overhead_curve(p), min_length=128)
    assert everything.exponent < p - 0.1  # what the rule protects against


@pytest.mark.parametrize("workspace, slope", [(12.5e6, 2_500.0), (1.0, 1 / 256)])
def test_an_overhead_still_visible_at_the_largest_length_is_subtracted(workspace, slope):
    # A constant workspace beside a linear term (exact accounting of a linear-memory impl): 7% and 0.4% at the top.
    values = workspace + slope * LENGTHS
    fit = fit_power_law(LENGTHS, values)
    assert "subtracted" in fit.range_rule
    assert fit.exponent == pytest.approx(1.0, abs=1e-3) and fit.exponent_low <= 1.0 <= fit.exponent_high
    if workspace > 1e6:
        raw_top = fit_power_law(LENGTHS, values, min_length=LENGTHS[-3])
        assert raw_top.exponent < 0.97  # the raw log-log slope at the top is far from the asymptotic 1


def test_four_exact_lengths_have_their_overhead_subtracted_and_four_noisy_ones_keep_the_plain_slope():
    """Nyströmformer's FLOPs at 256..2k (a formula: linear plus 2.2e8, 15% at 2k) were fitted 0.652 [0.448, 0.856],
    because the overhead was looked for only from 5 lengths on. With 4 it is trusted only when the curve fits exactly."""
    four = np.array([256, 512, 1024, 2048])
    exact = fit_power_law(four, 2.2e8 + 6e5 * four)
    assert "subtracted" in exact.range_rule and exact.exponent_low <= 1.0 <= exact.exponent_high
    assert exact.exponent == pytest.approx(1.0, abs=1e-3)
    rng = np.random.default_rng(3)
    plain = [fit_power_law(four, (1e-3 * four) * np.exp(rng.normal(0.0, 0.03, 4))) for _ in range(200)]
    assert sum("subtracted" in f.range_rule for f in plain) <= 6  # 3 of 200 fit within 0.1% by chance (seed 3)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
def test_noisy_overhead_curve_intervals_cover_the_true_exponent(p):
    covered, _ = coverage(overhead_curve(p), p, sigma=0.03, repeats=3)
    assert 0.88 <= covered <= 0.995
    fit = fit_power_law(*noisy(overhead_curve(p), sigma=0.03, seed=0, repeats=3))
    # dropped, or (still over its limit where 4 lengths are left: p = 1, 0.8% at 8k) subtracted beside a wider interval
    assert min(fit.lengths_used) > 512 or "subtracted, and ln(y - overhead) fitted" in fit.range_rule, fit.range_rule


@pytest.mark.parametrize(("p", "share"), [(2.0, 4.0), (1.0, 1 / 3)])
def test_an_overhead_the_range_rule_cannot_drop_enough_of_is_subtracted_from_noisy_times(p, share):
    """N^p + c over 256..16k, c `share` x the work at 256, 3% noise, 10 samples a length: the rule stopped dropping with
    4 lengths left where c was still 6% of the value (p = 2), and the intervals held p in 156 (p = 1: 168) of 200
    seeds (a statistics audit). The overhead is now subtracted there, with the three-parameter interval."""
    lengths = 2 ** np.arange(8, 15)
    curve = 1e-6 * lengths**p + share * 1e-6 * 256.0**p
    rng = np.random.default_rng(5)
    fits = [fit_power_law(np.repeat(lengths, 10), np.repeat(curve, 10) * np.exp(rng.normal(0.0, 0.03, 70))) for _ in range(100)]
    covered = np.mean([f.exponent_low <= p <= f.exponent_high for f in fits])
    assert 0.9 <= covered <= 0.995, covered


@pytest.mark.parametrize("share", [0.1, 0.33])
def test_an_overhead_too_large_to_subtract_is_fitted_with_the_curve_not_left_to_flatten_the_slope(share):
    """N^2 + c over 64..8k, c `share` of the value at 8k (under 75% of it at fewer than 4 lengths), 3% noise, 5 samples:
    the top 4 lengths' raw slope was reported, 1.05 and 0.51, with intervals holding 2 in 0 of 200 seeds, and a
    max_exponent = 1.5 gate passed a quadratic at 33% in all of them (a statistics audit)."""
    lengths = 2 ** np.arange(6, 14)
    curve = lengths**2.0 + share / (1 - share) * 8192.0**2
    rng = np.random.default_rng(7)
    fits = [fit_power_law(np.repeat(lengths, 5), np.repeat(curve, 5) * np.exp(rng.normal(0.0, 0.03, 40))) for _ in range(60)]
    assert all("fitted to every length" in f.range_rule for f in fits), fits[0].range_rule
    covered = np.mean([f.exponent_low <= 2.0 <= f.exponent_high for f in fits])
    assert 0.88 <= covered <= 1.0, covered
    assert np.median([f.exponent for f in fits]) == pytest.approx(2.0, abs=0.03)
    assert not any(f.exponent_high <= 1.5 for f in fits)  # no max_exponent = 1.5 gate passes a quadratic


def test_an_exact_peak_with_a_large_workspace_keeps_its_exponent_and_frontier():
    """16 N^2 + 1.07e9 bytes over 1k..16k (the workspace 20% of the peak at 16k): fitted 0.739 over 2k..16k, and its
    frontier at 64 GiB read 579k where the peak alone reaches 64 GiB at 65.5k (a statistics audit)."""
    from attnprof.frontier import memory_frontier

    lengths = 2 ** np.arange(10, 15)
    fit = fit_power_law(lengths, 16.0 * lengths**2 + 1.07e9)
    assert fit.exponent == pytest.approx(2.0, abs=1e-4) and fit.exponent_low <= 2.0 <= fit.exponent_high < 2.05, fit.range_rule
    assert fit.complexity == "quadratic"
    found = memory_frontier(fit, 64 * 2**30)
    assert found.length == pytest.approx(math.sqrt((64 * 2**30 - 1.07e9) / 16), rel=1e-4), found.message
    assert found.length_low <= found.length <= found.length_high < 70_000


def test_a_constant_dominated_exact_peak_takes_its_interval_from_all_three_parameters():
    """N^2 + 2e4 N + 3.16e10 bytes over 1k..64k (the constant 86% of the peak at 64k): c0 + a N^b fits it within the
    resolution with b = 1.70, and the plain interval at the resolution floor read [1.698, 1.700], where b is fitted to
    the 14% the constant leaves: its 80 GiB frontier's low end, 249,946, passed a min_frontier of 240,000 that the true
    frontier, 223,238, fails (a review)."""
    from attnprof.frontier import memory_frontier

    lengths = 1024 * 2 ** np.arange(7)
    fit = fit_power_law(lengths, lengths**2.0 + 2e4 * lengths + 3.16e10)
    true = (-2e4 + math.sqrt(4e8 + 4 * (80 * 2**30 - 3.16e10))) / 2
    found = memory_frontier(fit, 80 * 2**30)
    assert "fitted to every length" in fit.range_rule and fit.exponent_high - fit.exponent_low > 0.1, fit
    assert found.length_low <= true <= found.length_high, found.message


def test_counts_without_spreads_are_refused_naming_them():
    lengths = np.array([256, 512, 1024, 2048.0])  # raw samples count themselves: a list of counts was called, a TypeError
    with pytest.raises(ValueError, match="counts go with spreads"):
        fit_power_law(lengths, lengths**2, counts=[5] * 4)
    with pytest.raises(ValueError, match=r"values and counts differ in size \(4 vs 3\)"):
        fit_power_law(lengths, lengths**2, spreads=[0.01] * 4, counts=[5] * 3)


def test_range_rule_cuts_a_fading_linear_term_under_a_quadratic_one():
    # Softmax peak memory: q, k, v, out grow as N, the score matrix as N^2; they are equal at N = 256.
    fit = fit_power_law(LENGTHS, 256.0 * LENGTHS + LENGTHS**2.0)
    assert "bends upward" in fit.range_rule
    assert fit.exponent == pytest.approx(2.0, abs=0.03)
    assert fit.complexity == "quadratic"


def test_range_rule_keeps_everything_for_a_concave_n_log_n():
    fit = fit_power_law(LENGTHS, LENGTHS * np.log(LENGTHS))
    assert fit.n_points == len(LENGTHS)
    assert fit.range_rule.startswith("all 10 lengths kept")
    assert fit.complexity == "n log n"


def test_values_that_fall_with_n_keep_every_length_and_fit_a_negative_exponent():
    fit = fit_power_law(LENGTHS, 100.0 / LENGTHS**0.5)  # e.g. a per-token cost that amortises
    assert fit.n_points == len(LENGTHS)
    assert "do not grow" in fit.range_rule
    assert fit.exponent == pytest.approx(-0.5, abs=1e-9)
    assert fit.complexity == "ambiguous"  # no growing class fits: all tie at the constant


@settings(max_examples=60, deadline=None)
@given(
    p=st.floats(0.5, 3.0),
    prefactor=st.floats(1e-6, 1e6),
    first=st.integers(4, 10),
    count=st.integers(2, 10),
)
def test_exact_power_laws_are_recovered_exactly(p, prefactor, first, count):
    lengths = 2.0 ** np.arange(first, first + count)
    fit = fit_power_law(lengths, prefactor * lengths**p)
    assert fit.exponent == pytest.approx(p, abs=1e-9)
    assert fit.n_points == count  # no overhead: nothing to drop
    assert fit.exponent_low <= p <= fit.exponent_high
    assert fit.predict(lengths) == pytest.approx(prefactor * lengths**p, rel=1e-8)


def test_min_length_replaces_the_rule():
    fit = fit_power_law(LENGTHS, overhead_curve(2.0), min_length=1000)
    assert fit.lengths_used == tuple(int(n) for n in LENGTHS if n >= 1000)
    assert "min_length=1000" in fit.range_rule
    with pytest.raises(ValueError, match="min_length=65536 leaves 1"):
        fit_power_law(LENGTHS, overhead_curve(2.0), min_length=65536)


def test_repeats_are_reduced_to_medians_so_one_wild_repetition_does_not_move_the_fit():
    lengths = np.repeat(LENGTHS, 3)
    values = 2.0 * lengths**1.5
    values[4] *= 50  # one repetition at N = 256 hit a stall
    fit = fit_power_law(lengths, values)
    assert fit.exponent == pytest.approx(1.5, abs=1e-9)
    assert fit.n_samples == 30


def test_nan_and_non_positive_values_are_dropped_and_counted():
    values = 5.0 * LENGTHS.astype(float)
    values[[0, 3, 7]] = [np.nan, 0.0, -1.0]
    fit = fit_power_law(LENGTHS, values)
    assert fit.n_dropped == 3
    assert {128, 1024, 16384}.isdisjoint(fit.lengths_measured)  # each lost its only value
    assert any("3 value(s) dropped" in note for note in fit.notes)
    assert fit.exponent == pytest.approx(1.0, abs=1e-9)


def test_two_lengths_give_an_infinite_flagged_interval():
    fit = fit_power_law([1024, 2048], [1.0, 4.0])
    assert fit.exponent == pytest.approx(2.0)
    assert (fit.exponent_low, fit.exponent_high) == (-math.inf, math.inf)
    assert any("no confidence interval" in note for note in fit.notes)
    assert fit.complexity == "ambiguous"


@pytest.mark.parametrize(
    ("lengths", "values", "match"),
    [
        ([1024], [1.0], "at least 2 distinct lengths"),
        ([1024, 1024, 1024], [1.0, 1.1, 0.9], "at least 2 distinct lengths"),
        ([256, 512, 1024], [np.nan, np.nan, np.nan], r"got 0 \(3 of 3 values were NaN"),
        ([256, 512, 1024], [0.0, -2.0, np.nan], "at least 2 distinct lengths"),
        ([256, 512], [1.0, 2.0, 3.0], "differ in size"),
        ([0, 512, 1024], [1.0, 2.0, 3.0], "lengths must be positive"),
    ],
)
def test_bad_inputs_raise_a_clear_value_error(lengths, values, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(lengths, values)


def test_local_slopes_show_where_the_curve_bends():
    lengths = np.array([256, 512, 1024, 2048])
    values = np.array([1.0, 2.0, 8.0, 32.0])  # slope 1, then 2, then 2
    slopes = fit_power_law(lengths, values).local_slopes
    assert [(low, high) for low, high, _ in slopes] == [(256, 512), (512, 1024), (1024, 2048)]
    assert [s for _, _, s in slopes] == pytest.approx([1.0, 2.0, 2.0])


def test_predict_with_another_exponent_pivots_about_the_centre():
    fit = fit_power_law(LENGTHS, 7.0 * LENGTHS**2.0)
    center = math.exp(fit.center_log_length)
    assert fit.predict(center, exponent=1.0) == pytest.approx(fit.predict(center))
    assert fit.predict(2 * center, exponent=1.0) == pytest.approx(2 * fit.predict(center))


def test_t_quantile_matches_tables_and_joins_the_expansion_smoothly():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(10) == pytest.approx(2.228, abs=1e-3)
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=2e-4)
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=2e-4)
    assert t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)
    assert t_quantile_975(0) == math.inf
    values = [t_quantile_975(d) for d in range(1, 200)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_format_length():
    assert [format_length(n) for n in (1024, 65536, 3000, 3172.4, math.inf)] == ["1k", "64k", "3000", "3172", "inf"]
    assert [format_length(n) for n in (24088554876327, 3.8e32)] == ["2.41e+13", "3.8e+32"]  # not 23524760621k


def measurement_frame():
    rows = []
    for impl, p in (("softmax", 2.0), ("linear", 1.0)):
        for heads in (4, 8):
            rows += [{"impl": impl, "heads": heads, "seq_len": n, "median_ms": 1e-3 * heads * n**p} for n in LENGTHS]
    rows += [{"impl": "broken", "heads": 4, "seq_len": n, "median_ms": np.nan} for n in LENGTHS]
    rows += [{"impl": "nodevice", "heads": None, "seq_len": n, "median_ms": 2.0 * n} for n in LENGTHS]
    return pd.DataFrame(rows)


def test_fit_frame_has_one_row_per_group_and_keeps_failures():
    frame = fit_frame(measurement_frame(), "median_ms", ["impl", "heads"])
    assert len(frame) == 6  # 2 impls x 2 head counts, the broken one, the one with a missing key
    assert frame.attrs["group_cols"] == ("impl", "heads")
    softmax = frame[(frame.impl == "softmax") & (frame.heads == 8)].iloc[0]
    assert softmax.exponent == pytest.approx(2.0)
    assert softmax.complexity == "quadratic"
    assert isinstance(softmax.fit, Fit) and softmax.metric == "median_ms"
    broken = frame[frame.impl == "broken"].iloc[0]
    assert broken.fit is None and "at least 2 distinct lengths" in broken.error
    assert math.isnan(broken.exponent)
    assert frame[frame.impl == "nodevice"].iloc[0].exponent == pytest.approx(1.0)  # NaN key kept, not dropped


def test_fit_frame_names_missing_columns():
    with pytest.raises(ValueError, match=r"\['peak_bytes'\] not in the frame"):
        fit_frame(measurement_frame(), "peak_bytes", ["impl"])


def test_medians_with_their_spreads_fit_as_the_raw_samples_do():
    """The dashboard fits cell medians with each cell's stored spread (iqr / 2 median): the same Fit as the samples'."""
    rng = np.random.default_rng(3)
    lengths = np.repeat([256, 512, 1024, 2048, 4096], 9)
    samples = 1e-4 * lengths**1.5 * rng.lognormal(0.0, 0.05, lengths.size)
    raw = fit_power_law(lengths, samples)
    distinct = np.unique(lengths)
    medians = np.array([np.median(samples[lengths == n]) for n in distinct])
    iqr = np.array([np.subtract(*np.percentile(samples[lengths == n], [75, 25])) for n in distinct])
    from_medians = fit_power_law(distinct, medians, spreads=iqr / (2 * medians))
    assert from_medians.spreads == pytest.approx(raw.spreads, rel=1e-12) and min(raw.spreads) > 0
    assert from_medians.medians == raw.medians and from_medians.exponent == pytest.approx(raw.exponent, rel=1e-12)
    assert fit_power_law(distinct, medians).spreads == (0.0,) * 5  # one value a length, no spreads given: exact


def test_a_fits_class_is_judged_against_its_lengths_own_spread():
    """The spreads of the samples reach the class choice (complexity.select_complexity's noise)."""
    lengths = [n for n in (1024, 2048, 4096) for _ in range(3)]
    medians = [1024.0, 1.04 * 2048, 0.97 * 4096]
    values = [m * f for m in medians for f in (0.9, 1.0, 1.1)]
    assert fit_power_law(lengths, values, metric="time").complexity == "ambiguous"
    assert fit_power_law(lengths, [m for m in medians for _ in range(3)], metric="time").complexity == "linear"


def test_fits_found_together_are_the_fits_found_one_at_a_time():
    """fit_power_laws batches the overhead search and the class selection across series sharing their lengths: each
    result must be that series' own fit_power_law, whatever shares its batch (lengths, overheads, spreads, errors)."""
    rng = np.random.default_rng(7)
    series = []
    for index in range(40):
        lengths = LENGTHS if index % 4 else LENGTHS[: 2 + index % 7]  # most share a grid; some stop early
        values = 1e-4 * lengths ** (1.0 + index / 40) * rng.lognormal(0.0, 0.03, lengths.size) + (index % 3) * 0.05
        spreads = None if index % 2 else rng.uniform(0.0, 0.05, lengths.size)
        series.append((lengths, values, spreads))
    series.append((LENGTHS[:1], [1.0], None))  # one length: an error, in its place
    series.append((LENGTHS, 1e-3 + 1e-6 * LENGTHS, None))  # exact data with a persistent overhead (subtracted)
    for min_length in (None, 1024):
        together = fit_power_laws(series, min_length=min_length, metric="time")
        for (lengths, values, spreads), fit in zip(series, together, strict=True):
            try:
                alone = fit_power_law(lengths, values, min_length=min_length, metric="time", spreads=spreads)
            except ValueError as error:
                assert isinstance(fit, ValueError) and str(fit) == str(error)
                continue
            assert fit.range_rule == alone.range_rule and fit.complexity == alone.complexity and fit.notes == alone.notes
            assert fit.exponent == pytest.approx(alone.exponent, rel=1e-12) and fit.margin == pytest.approx(alone.margin, abs=1e-6)
            assert fit.overhead == pytest.approx(alone.overhead, rel=1e-12) and fit.spreads == alone.spreads
        assert sum(isinstance(fit, ValueError) for fit in together) >= 1  # refused series kept their place
        assert together[-1].overhead == (pytest.approx(1e-3, rel=1e-6) if min_length is None else 0.0)  # no search with a min_length


def test_an_interval_beside_a_subtracted_overhead_counts_the_overheads_own_uncertainty():
    """The overhead c0 is estimated from the points it is subtracted from: an interval treating it as known held
    the true exponent in about half of the fits of y = c0 + a N with 3% noise at 6 lengths (a helper's audit:
    159-164 of 300). With the three-parameter model's standard error it holds it about 95% of the time."""
    rng = np.random.default_rng(1)
    lengths = np.array([256, 512, 1024, 2048, 3000, 4096.0])
    fits = [fit_power_law(lengths, (0.4 + 1.3e-3 * lengths) * rng.lognormal(0.0, 0.03, lengths.size), metric="time") for _ in range(200)]
    subtracted = [fit for fit in fits if fit.overhead > 0]
    assert len(subtracted) == 200 and all("subtracted" in fit.range_rule for fit in subtracted)
    covered = sum(fit.exponent_low <= 1.0 <= fit.exponent_high for fit in subtracted)
    assert covered >= 0.88 * len(subtracted), covered  # measured 0.94 (281 of 300); 0.49 before
    for count in (4, 5, 6):  # exact data keep a hair-thin interval, at any number of lengths (it was +-0.044 at 4)
        exact = fit_power_law(LENGTHS[:count] * 2, 1e5 + 1e3 * LENGTHS[:count] * 2, metric="flops")
        assert exact.overhead > 0 and exact.exponent_high - exact.exponent_low < 0.01, (count, exact.exponent_low, exact.exponent_high)


def test_an_overhead_is_said_in_its_metrics_unit():
    """'the fixed overhead 0.409' was a time in ms, '8.62e+04' a count of bytes: nothing said which."""
    times = fit_power_law(LENGTHS, 0.409 + 1e-4 * LENGTHS, metric="time")
    assert "fixed overhead 0.409 ms" in times.range_rule, times.range_rule
    peaks = fit_power_law(LENGTHS, 86_200 + 64.0 * LENGTHS, metric="peak_bytes")
    assert "fixed overhead 84.2 KiB" in peaks.range_rule, peaks.range_rule


def test_exact_values_still_steepening_at_the_top_say_so_however_many_lengths_are_kept():
    """The range rule's convexity test reads every length kept: cosFormer's accounted peak over 4k..1M (its plan changing
    with N) fitted 0.731 [0.650, 0.812] "no upward bend", its slopes at the top 0.59, 0.74, 0.85 on the way to 1; and
    Combiner-Fixed's, its block rounded to a power of two, 1.400 [1.362, 1.437] beside slopes zig-zagging towards 1.5
    (a numbers audit). Both now say the asymptotic exponent is above the fitted one; a pure power law does not."""
    from attnprof.fit_range import still_bends

    lengths = np.array([4096 * 2**i for i in range(9)], dtype=float)
    cosformer = np.array([16.3, 32.4, 64.8, 129.4, 194.6, 260.1, 391.1, 653.1, 1177.1]) * 2**20  # the audit's MiB
    fit = fit_power_law(lengths, cosformer, metric="peak_bytes")
    assert fit.exponent < 0.85 and still_bends(fit.range_rule) and "no upward bend" not in fit.range_rule, fit.range_rule
    # Combiner-Fixed's accounted forward peaks there (B 1, H 4, D 64, fp32, meta), bytes
    fixed = [21237760, 50872320, 118112256, 303366144, 740098048, 2017198080, 5106302976, 14508097536, 37601935360]
    fitted = fit_power_law(lengths, np.array(fixed, dtype=float), metric="peak_bytes")
    assert fitted.exponent_high < 1.5 and still_bends(fitted.range_rule), (fitted.exponent, fitted.range_rule)
    plain = fit_power_law(lengths, 3.0 * lengths**1.5, metric="peak_bytes")
    assert not still_bends(plain.range_rule) and plain.exponent == pytest.approx(1.5, abs=1e-9)


def test_flat_noisy_times_get_no_exponent_from_the_overhead_grids_edge():
    """Launch-bound times that do not grow (0.05 ms, 2% noise, 5 samples, 128..2k) read 4.011 [-133.9, 141.9] in 56 of
    200 seeds: c0 + a N^b's b, fitted to the noise of a term under a quarter of every value, sat at the grid's top and
    the report's legend said N^4.01 (an analysis audit). They are fitted as they are: an exponent near 0."""
    lengths = np.repeat([128.0, 256, 512, 1024, 2048], 5)
    exponents = [fit_power_law(lengths, 0.05 * np.random.default_rng(seed).lognormal(0.0, 0.02, lengths.size), metric="time").exponent
                 for seed in range(50)]  # fmt: skip
    assert max(abs(e) for e in exponents) < 0.1, sorted(exponents)[-3:]


def test_a_subtracted_timing_overhead_is_said_where_it_tilts():
    """Timings subtract an overhead still over its limit where the range rule stops (4th largest length), and the
    sentence gave its share at the largest: "0.00447 ms is still 0.0% of the value at N=256: subtracted" read as a
    contradiction (an analysis audit)."""
    lengths = np.repeat([256.0, 512, 1024, 2048, 3000, 4096], 3)
    values = (0.4 + 1.3e-3 * lengths) * np.random.default_rng(1).lognormal(0.0, 0.03, lengths.size)
    fit = fit_power_law(lengths, values, metric="time")
    assert "is still 23% of the value at N=1k: subtracted" in fit.range_rule, fit.range_rule


def test_exact_values_that_change_regime_are_not_given_an_overhead_they_lack():
    """Nyströmformer's CPU peak, 2112 + 12288 N exactly from 512 on and another plan below it, fitted 1.151 [0.907,
    1.395] "n log n": c0 + a N^b fitted over 128..2k said a 1.3 MiB overhead, and subtracting it bent the top lengths
    (an analysis audit). Exact values c0 + a N^b does not reproduce keep their raw slope; one it fits keeps the
    subtraction (cosFormer's causal 2,924,544 + 4,104 N: exactly 1)."""
    lengths = [128, 256, 512, 1024, 2048]
    nystrom = fit_power_law(lengths, [2361408, 3407872, 6293568, 12585024, 25167936], metric="peak_bytes")
    assert nystrom.overhead == 0 and nystrom.exponent_low < 1.0 < nystrom.exponent_high < 1.1, nystrom
    cosformer = fit_power_law(lengths, [3449856, 3975168, 5025792, 7127040, 11329536], metric="peak_bytes")
    assert cosformer.overhead > 0 and cosformer.exponent == pytest.approx(1.0, abs=0.003), cosformer


def test_a_peak_growing_slower_than_its_output_says_why():
    """cosFormer's accounted peak over 1k..64k read 0.743 [0.589, 0.896], "no upward bend": memory that grows slower
    than the output it holds does only while a fixed workspace dominates, and the fit read as sub-linear memory (an
    analysis audit). FLOPs have no such floor."""
    lengths = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
    peaks = [11423744, 22048768, 43298816, 85798912, 137244672, 171978752, 241446912]
    fit = fit_power_law(lengths, peaks, metric="peak_bytes")
    assert fit.exponent_high < 1 and fit.range_rule.endswith("the output alone grows linearly (the exponent beyond them is at least 1)")
    assert "no upward bend" not in fit.range_rule and not kept_every_length(fit.range_rule)
    assert fit_power_law(lengths, peaks, metric="flops").range_rule.endswith("no upward bend")
    assert "under 1" not in fit_power_law(lengths, [n * 1000 for n in lengths], metric="peak_bytes").range_rule
