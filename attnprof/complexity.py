"""Models y = c0 + c1 * g(N) with a constant overhead c0 >= 0: complexity class selection and overhead estimates.

Pure numpy. Fitted by least squares on relative residuals (y - model) / y: values span orders of magnitude across
N, so absolute residuals would let the largest length decide alone, and relative error is how timing noise
behaves (multiplicative). With both coefficients >= 0 the two-parameter non-negative least squares has three
cases (both free, c0 = 0, c1 = 0); the feasible one with the least residual wins.

Class selection ranks g in CLASSES by AIC = n ln(SSR / n) + 2k. Every model has k = 2, so the penalty (and the
small-sample AICc correction) cancels and the margin is n ln(SSR_runner_up / SSR_best). SSR / n is floored at
RELATIVE_RESOLUTION^2: agreement finer than a measurement can resolve must not decide a class. A margin below 2
(the usual line below which AIC gives no real support), or fewer than 3 lengths, makes the class "ambiguous";
best and runner-up stay visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AMBIGUOUS_MARGIN = 2.0  # AIC difference below which the data do not prefer one class
RELATIVE_RESOLUTION = 1e-3  # relative residual RMS treated as a perfect fit (timer and allocator granularity)
OVERHEAD_EXPONENTS = np.linspace(0.1, 4.0, 391)  # grid for b in y = c0 + a N^b; 0.01 steps are finer than any CI
OVERHEAD_BATCH = 128  # series searched at once: (128, 391, points) arrays, ~4 MB each at 10 lengths

CLASSES = {
    "linear": lambda n: n,
    "n log n": lambda n: n * np.log(n),
    "n^1.5": lambda n: n**1.5,
    "quadratic": lambda n: n**2,
}


@dataclass(frozen=True)
class ComplexityChoice:
    complexity: str  # best class, or "ambiguous" when margin < AMBIGUOUS_MARGIN or fewer than 3 lengths
    best: str
    runner_up: str
    margin: float  # AIC(runner_up) - AIC(best), >= 0
    aic: tuple  # (class, AIC) pairs, best first


@dataclass(frozen=True)
class Overhead:
    """The best y = c0 + a N^b: the constant part and how far the points scatter about the curve."""

    overhead: float  # c0, in the metric's unit
    prefactor: float  # a; 0 when a constant fits best (the values do not grow)
    exponent: float  # b
    scatter: float  # relative residual RMS, floored at RELATIVE_RESOLUTION


def select_complexity(lengths, values, noise: float = 0.0) -> ComplexityChoice:
    """Rank y = c0 + c1 g(N) over CLASSES by AIC on relative residuals.

    `noise`: the values' own relative spread. A residual below it is noise, so each model's mean square is floored
    there: two classes fitting three timings with 2-5% spreads to 1e-3 and 1e-6 were told apart by a dAIC of 22.6
    (a linear method labelled n^1.5), a difference the measurements cannot carry."""
    return select_complexities(lengths, np.asarray(values, dtype=float)[None, :], [noise])[0]


def select_complexities(lengths, values, noises) -> list[ComplexityChoice]:
    """select_complexity for each series of values (series, points) over the same lengths, with its own noise."""
    n = np.asarray(lengths, dtype=float)
    ssr, _ = relative_nnls(np.stack([g(n) for g in CLASSES.values()]), np.asarray(values, dtype=float))  # (series, classes)
    floor = np.maximum(RELATIVE_RESOLUTION, np.asarray(noises, dtype=float)) ** 2  # (series,)
    aic = len(n) * np.log(np.maximum(ssr / len(n), floor[:, None])) + 4  # (series, classes)
    names = list(CLASSES)
    choices = []
    # Classes tied at the noise floor rank by their own residuals (then the simpler first): all four tie when the noise
    # exceeds every misfit, and the dictionary's order named "linear or n log n" for softmax timed 2.141 [1.645, 2.636]
    # (a user audit). The margin stays 0: "ambiguous", now between the two that fit best.
    orders = np.lexsort((np.broadcast_to(np.arange(len(names)), aic.shape), ssr, aic), axis=1)  # (series, classes)
    for row, order in zip(aic.tolist(), orders.tolist(), strict=True):
        ranked = [names[i] for i in order]
        margin = row[order[1]] - row[order[0]]
        # Two lengths leave no residual to judge a two-parameter model by, whatever the margin says.
        complexity = ranked[0] if margin >= AMBIGUOUS_MARGIN and len(n) >= 3 else "ambiguous"
        choices.append(ComplexityChoice(complexity, ranked[0], ranked[1], margin, tuple((names[i], row[i]) for i in order)))
    return choices


def fit_overhead(lengths, values):
    """The best y = c0 + a N^b (b by nested grids); needs at least 4 lengths (3 parameters and 1 to spare).

    `values` (points,) gives one Overhead; (series, points), several series over the same lengths, gives a list of
    them, found together: a dashboard view fits a thousand configurations on one grid of lengths, and one batched
    search costs about what ten single ones did (the search is most of a fit)."""
    n = np.asarray(lengths, dtype=float)
    y = np.asarray(values, dtype=float)
    if len(n) < 4:
        raise ValueError(f"fit_overhead needs at least 4 lengths; got {len(n)}")
    series = np.atleast_2d(y)  # (series, points)
    found = []
    for start in range(0, len(series), OVERHEAD_BATCH):
        found.extend(_overhead_search(n, series[start : start + OVERHEAD_BATCH]))
    return found[0] if y.ndim == 1 else found


def _overhead_search(n: np.ndarray, y: np.ndarray) -> list[Overhead]:
    """fit_overhead for the series y (series, points) over the lengths n (points,)."""
    # Zoomed 20x around the best, three times (step 0.01 -> ~1e-6): an exponent between grid points would
    # otherwise be mimicked by a spurious overhead, and the range rule would drop lengths for it.
    grid = np.broadcast_to(OVERHEAD_EXPONENTS, (len(y), len(OVERHEAD_EXPONENTS)))  # (series, models)
    g = n ** OVERHEAD_EXPONENTS[:, None]  # (models, points): the first grid is the same for every series
    rows = np.arange(len(y))
    for _ in range(4):
        ssr, coef = relative_nnls(g, y)  # (series, models), (series, models, 2)
        best = ssr.argmin(axis=-1)  # (series,)
        exponent, step = grid[rows, best], grid[:, 1] - grid[:, 0]
        grid = np.linspace(exponent - step, exponent + step, 41, axis=-1)  # (series, 41)
        g = n ** grid[:, :, None]  # (series, 41, points)
    scatter = np.maximum(np.sqrt(ssr[rows, best] / (len(n) - 3)), RELATIVE_RESOLUTION)
    c0, a = coef[rows, best, 0], coef[rows, best, 1]
    return [Overhead(*map(float, found)) for found in zip(c0, a, exponent, scatter, strict=True)]


def relative_nnls(g: np.ndarray, y: np.ndarray):
    """For each model row of g (..., models, points): least sum ((y - c0 - c1 g) / y)^2 over c0, c1 >= 0, with y
    (..., points) broadcast against g's leading axes (one series, or one per leading index).

    Returns (ssr (..., models), coefficients (..., models, 2)). Each candidate's SSR comes from the normal-equation
    sums, SSR = P - 2 c.r + c'Sc, not from its residuals: 40% less time in the fits, which dominate a cold dashboard
    view. The cancellation leaves an absolute error of ~1e-15 (P ~ 10 terms of order 1), so an exact series reads 0
    instead of 1e-31, far below RELATIVE_RESOLUTION^2, the floor every use of an SSR applies.
    """
    scale = g.max(axis=-1, keepdims=True)  # g up to N^4 ~ 1e19: scaled to 1 so the normal equations stay tame
    w = 1.0 / np.asarray(y, dtype=float)  # (..., points)
    a1 = g / scale * w[..., None, :]  # (..., models, points): the c1 column of the weighted design
    s00, r0 = (w * w).sum(axis=-1)[..., None], w.sum(axis=-1)[..., None]  # (..., 1)
    s01, s11, r1 = (a1 * w[..., None, :]).sum(axis=-1), (a1 * a1).sum(axis=-1), a1.sum(axis=-1)  # (..., models)
    points = w.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # collinear columns: infeasible below
        det = s00 * s11 - s01 * s01
        candidates = (  # (c0, c1) of the three cases: both free, c0 = 0, c1 = 0 (only_c1 is >= 0: y and g are positive)
            ((s11 * r0 - s01 * r1) / det, (s00 * r1 - s01 * r0) / det),
            (np.zeros_like(r1), r1 / s11),
            (r0 / s00, np.zeros_like(r1)),
        )
        best = coef0 = coef1 = None
        for c0, c1 in candidates:  # the feasible case with the least SSR; a tie keeps the earlier case
            ssr = points - 2 * (c0 * r0 + c1 * r1) + c0 * c0 * s00 + 2 * c0 * c1 * s01 + c1 * c1 * s11  # (..., models)
            ssr = np.where(np.isfinite(ssr) & (c0 >= 0) & (c1 >= 0), np.maximum(ssr, 0.0), np.inf)
            if best is None:
                best, coef0, coef1 = ssr, c0, c1
                continue
            better = ssr < best
            best, coef0, coef1 = np.where(better, ssr, best), np.where(better, c0, coef0), np.where(better, c1, coef1)
    coef = np.stack([coef0, coef1 / scale[..., 0]], axis=-1)
    return best, coef
