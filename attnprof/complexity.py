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

import math
from dataclasses import dataclass

import numpy as np

AMBIGUOUS_MARGIN = 2.0  # AIC difference below which the data do not prefer one class
RELATIVE_RESOLUTION = 1e-3  # relative residual RMS treated as a perfect fit (timer and allocator granularity)
OVERHEAD_EXPONENTS = np.linspace(0.1, 4.0, 391)  # grid for b in y = c0 + a N^b; 0.01 steps are finer than any CI

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
    n = np.asarray(lengths, dtype=float)
    y = np.asarray(values, dtype=float)
    ssr, _ = relative_nnls(np.stack([g(n) for g in CLASSES.values()]), y)
    mean_square = np.maximum(ssr / len(n), max(RELATIVE_RESOLUTION, noise) ** 2)
    aic = dict(zip(CLASSES, (len(n) * np.log(mean_square) + 4).tolist(), strict=True))
    ranked = sorted(aic, key=aic.get)  # stable: on a tie the simpler class (earlier in CLASSES) ranks first
    margin = aic[ranked[1]] - aic[ranked[0]]
    # Two lengths leave no residual to judge a two-parameter model by, whatever the margin says.
    complexity = ranked[0] if margin >= AMBIGUOUS_MARGIN and len(n) >= 3 else "ambiguous"
    return ComplexityChoice(complexity, ranked[0], ranked[1], margin, tuple((name, aic[name]) for name in ranked))


def fit_overhead(lengths, values) -> Overhead:
    """The best y = c0 + a N^b (b by nested grids); needs at least 4 lengths (3 parameters and 1 to spare)."""
    n = np.asarray(lengths, dtype=float)
    y = np.asarray(values, dtype=float)
    if len(n) < 4:
        raise ValueError(f"fit_overhead needs at least 4 lengths; got {len(n)}")
    # Zoomed 20x around the best, three times (step 0.01 -> ~1e-6): an exponent between grid points would
    # otherwise be mimicked by a spurious overhead, and the range rule would drop lengths for it.
    grid = OVERHEAD_EXPONENTS
    for _ in range(4):
        ssr, coef = relative_nnls(n[None, :] ** grid[:, None], y)
        best = int(np.argmin(ssr))
        exponent, step = float(grid[best]), grid[1] - grid[0]
        grid = np.linspace(exponent - step, exponent + step, 41)
    scatter = max(math.sqrt(ssr[best] / (len(n) - 3)), RELATIVE_RESOLUTION)
    return Overhead(float(coef[best, 0]), float(coef[best, 1]), exponent, scatter)


def relative_nnls(g: np.ndarray, y: np.ndarray):
    """For each row of g (models, points): least sum ((y - c0 - c1 g) / y)^2 over c0, c1 >= 0.

    Returns (ssr per model, coefficients (models, 2)). Each candidate's SSR comes from the normal-equation sums,
    SSR = P - 2 c.r + c'Sc, not from its residuals: 40% less time in the fits, which dominate a cold dashboard view.
    The cancellation leaves an absolute error of ~1e-15 (P ~ 10 terms of order 1), so an exact series reads 0
    instead of 1e-31, far below RELATIVE_RESOLUTION^2, the floor every use of an SSR applies.
    """
    scale = g.max(axis=1, keepdims=True)  # g up to N^4 ~ 1e19: scaled to 1 so the normal equations stay tame
    w = 1.0 / y  # (points,)
    a1 = g / scale * w  # (models, points): the c1 column of the weighted design
    s00, s01, s11 = w @ w, a1 @ w, (a1 * a1).sum(axis=1)
    r0, r1 = w.sum(), a1.sum(axis=1)
    points = len(y)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # collinear columns: infeasible below
        det = s00 * s11 - s01 * s01
        c0 = np.stack([(s11 * r0 - s01 * r1) / det, np.zeros_like(r1), np.full_like(r1, r0 / s00)])  # (3, models): free, c0 = 0, c1 = 0
        c1 = np.stack([(s00 * r1 - s01 * r0) / det, r1 / s11, np.zeros_like(r1)])  # only_c1 is always >= 0: y and g are positive
        ssr = points - 2 * (c0 * r0 + c1 * r1) + c0 * c0 * s00 + 2 * c0 * c1 * s01 + c1 * c1 * s11  # (3, models)
    feasible = np.isfinite(ssr) & (c0 >= 0) & (c1 >= 0)
    ssr = np.where(feasible, np.maximum(ssr, 0.0), np.inf)
    pick = ssr.argmin(axis=0)  # (models,): ties go to the first (free, then c0 = 0), as before
    models = np.arange(len(g))
    coef = np.stack([c0[pick, models], c1[pick, models] / scale[:, 0]], axis=1)
    return ssr[pick, models], coef
