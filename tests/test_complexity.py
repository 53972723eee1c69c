"""Complexity classes y = c0 + c1 g(N): selection by AIC, ambiguity, the constrained least squares."""

import numpy as np
import pytest

from attnprof.complexity import CLASSES, fit_overhead, relative_nnls, select_complexity

LENGTHS = 2.0 ** np.arange(7, 17)


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("overhead", [0.0, 1.0])
def test_clean_data_pick_their_class(name, overhead):
    g = CLASSES[name](LENGTHS)
    choice = select_complexity(LENGTHS, overhead + 1e-3 * g / g[0])  # overhead equals the scaling part at 128
    assert choice.complexity == name
    assert choice.best == name
    assert choice.margin > 10


def test_noisy_quadratic_still_picks_quadratic():
    rng = np.random.default_rng(3)
    values = 0.5 * LENGTHS**2 * np.exp(rng.normal(0, 0.03, LENGTHS.size))
    choice = select_complexity(LENGTHS, values)
    assert choice.complexity == "quadratic"
    assert choice.runner_up == "n^1.5"


def test_three_nearly_identical_points_are_ambiguous():
    choice = select_complexity([1024, 2048, 4096], [1.0, 1.0004, 1.0009])
    assert choice.complexity == "ambiguous"
    assert choice.margin < 2
    assert {choice.best, choice.runner_up} <= set(CLASSES)


def test_residuals_below_the_measurements_own_spread_decide_nothing():
    """Three timings with 10% spreads around a wobbly line: linear won by dAIC 2.2 over residuals the noise hides
    (an audit saw a linear method labelled n^1.5 by dAIC 22.6 on 2-5% spreads)."""
    lengths, values = [1024, 2048, 4096], [1024.0, 1.04 * 2048, 0.97 * 4096]
    assert select_complexity(lengths, values).complexity == "linear"
    assert select_complexity(lengths, values, noise=0.1).complexity == "ambiguous"
    # a class the data tell apart beyond their spread is still chosen: clean quadratic over 10 lengths
    assert select_complexity(LENGTHS, 0.5 * LENGTHS**2, noise=0.05).complexity == "quadratic"


def test_classes_tied_at_the_noise_floor_name_the_two_that_fit_best():
    """Timings noisier than every class's misfit tie all four at the floor; the dictionary's order then named "linear or
    n log n" beside an exponent of 2.141 [1.645, 2.636] (a user audit). Ties rank by the residuals themselves."""
    lengths, values = [256, 512, 1024, 2048, 4096], [17.7, 43.6, 116.2, 554.2, 2236.9]
    tied = select_complexity(lengths, values, noise=0.5)
    assert tied.complexity == "ambiguous" and tied.margin == 0.0
    assert (
        (tied.best, tied.runner_up)
        == ("quadratic", "n^1.5")
        == (select_complexity(lengths, values).best, select_complexity(lengths, values).runner_up)
    )


def test_a_very_short_range_is_ambiguous():
    # N^1.5 over 1000..1200 with 1% timing noise: every class bends about as little as the noise.
    lengths = np.array([1000.0, 1100.0, 1200.0])
    choice = select_complexity(lengths, lengths**1.5 * np.array([1.01, 0.99, 1.005]))
    assert choice.complexity == "ambiguous"


def test_exact_data_over_a_short_range_still_tell_the_class():
    # Without noise the constraint c0 >= 0 decides: a linear model cannot bend upward without a negative overhead.
    lengths = np.array([1000.0, 1100.0, 1200.0])
    assert select_complexity(lengths, lengths**2).complexity == "quadratic"


def test_two_lengths_are_always_ambiguous():
    choice = select_complexity([1024, 2048], [1.0, 4.0])
    assert choice.complexity == "ambiguous"
    assert choice.best == "quadratic"  # still visible


def test_ranking_lists_every_class_best_first():
    choice = select_complexity(LENGTHS, LENGTHS**1.5)
    names = [name for name, _ in choice.aic]
    aics = [aic for _, aic in choice.aic]
    assert sorted(names) == sorted(CLASSES) and names[0] == "n^1.5"
    assert aics == sorted(aics)
    assert choice.margin == pytest.approx(aics[1] - aics[0])


def test_nnls_keeps_both_coefficients_non_negative():
    # y = N - 100 wants a negative intercept; the constrained fit pins c0 at 0 and pays for it in residual.
    y = LENGTHS - 100.0
    ssr, coef = relative_nnls(LENGTHS[None, :], y)
    assert coef[0, 0] == 0.0 and coef[0, 1] > 0
    assert ssr[0] > 1e-3
    falling = 10.0 - LENGTHS / LENGTHS.max()  # wants c1 < 0: pinned at 0, the constant is left
    ssr, coef = relative_nnls(LENGTHS[None, :], falling)
    assert coef[0, 1] == 0.0 and coef[0, 0] > 0


def test_nnls_recovers_exact_coefficients():
    ssr, coef = relative_nnls(np.stack([LENGTHS, LENGTHS**2]), 3.0 + 0.25 * LENGTHS**2)
    assert coef[1] == pytest.approx([3.0, 0.25], rel=1e-6)
    assert ssr[1] < 1e-12 < ssr[0]


def test_fit_overhead_finds_the_constant_and_the_exponent():
    found = fit_overhead(LENGTHS, 2.0 + 1e-6 * LENGTHS**1.5)
    assert found.overhead == pytest.approx(2.0, rel=1e-3)
    assert found.prefactor == pytest.approx(1e-6, rel=1e-3)
    assert found.exponent == pytest.approx(1.5, abs=1e-5)  # refined well past the 0.01 grid
    with pytest.raises(ValueError, match="at least 4 lengths"):
        fit_overhead(LENGTHS[:3], LENGTHS[:3])
