"""Which lengths a fit uses (the range rule of fit.py's docstring), the overhead it may subtract, and the
statistics the rule and the interval share: the Student-t quantile, the convexity test, the slope's standard error
beside an estimated overhead. Pure: numpy only."""

from __future__ import annotations

import math

import numpy as np

from attnprof.complexity import OVERHEAD_EXPONENTS, RELATIVE_RESOLUTION
from attnprof.fit_text import format_length, quantity, span

MIN_KEPT = 4  # the range rule never leaves fewer lengths: 3 would leave 1 degree of freedom (t = 12.7), an interval too wide to judge
SUBTRACTABLE_SHARE = 0.75  # a persistent overhead is subtracted only where it is under 75% of the value
OVERHEAD_SHARE_OF_SCATTER = 0.5  # drop lengths whose fixed-overhead share exceeds this fraction of the scatter


# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30.
_T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
          2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
          2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)  # fmt: skip
_Z_975 = 1.959963984540054


def choose_range(lengths: np.ndarray, values: np.ndarray, min_length, found, metric: str = ""):
    """Index of the first length to fit, and the sentence saying why."""
    if min_length is None:
        return _asymptotic_start(lengths, values, found, metric)
    start = int(np.searchsorted(lengths, min_length, side="left"))
    kept = len(lengths) - start
    if kept < 2:
        raise ValueError(f"min_length={min_length} leaves {kept} of the lengths {span(lengths)}; a fit needs at least 2")
    return start, f"min_length={min_length} given: fit uses N = {span(lengths[start:])} ({kept} lengths)"


def _asymptotic_start(lengths: np.ndarray, values: np.ndarray, found, metric: str = ""):
    count = len(lengths)
    if count <= MIN_KEPT:
        return 0, f"all {count} lengths kept ({span(lengths)}): too few to leave any out"
    if found.prefactor == 0:
        return 0, f"all {count} lengths kept ({span(lengths)}): the values do not grow with N, so none is overhead-bound"
    limit = max(OVERHEAD_SHARE_OF_SCATTER * found.scatter, RELATIVE_RESOLUTION)
    by_overhead = 0
    while count - by_overhead > MIN_KEPT and found.overhead > limit * values[by_overhead]:
        by_overhead += 1
    x, y = np.log(lengths), np.log(values)
    start = by_overhead
    while count - start > MIN_KEPT and _bends_up(x[start:], y[start:]):
        start += 1
    return start, _range_sentence(lengths, by_overhead, start, quantity(found.overhead, metric), limit)


# How a range sentence ends when exact values kept at MIN_KEPT lengths still bend upward: their slope is under the
# asymptotic exponent. An exact 4 N^2 + 16384 N fitted 1.836 [1.712, 1.959] over 8k..64k, and a min_exponent = 1.9
# rule failed a quadratic (a statistics audit); the gate then judges the local slope at the largest lengths, a lower
# bound on the asymptotic exponent. (The convexity test has one degree of freedom left there: t = 12.7.)
STILL_BENDING = "; still bending upward there (the asymptotic exponent is above the fitted one)"


def bending_at_the_top(lengths: np.ndarray, values: np.ndarray) -> bool:
    """Exact values whose log-log slope rises at every step of the lengths kept, each by more than the resolution."""
    slopes = np.diff(np.log(values)) / np.diff(np.log(lengths))
    return len(slopes) >= 2 and bool(np.all(np.diff(slopes) > RELATIVE_RESOLUTION))


def rising_at_the_top(lengths: np.ndarray, values: np.ndarray, fitted: float) -> bool:
    """Exact values whose slope over two steps of the lengths rises at the last three such slopes, each by more than the
    resolution, to above the fitted exponent: the range rule's convexity test, over every length kept, misses a curve
    that flattens and then steepens (cosFormer's accounted peak over 4k..1M, its plan changing with N: 0.731 [0.650,
    0.812], "no upward bend", its slopes at the top 0.59, 0.74, 0.85 on the way to 1), and a step's own slope zig-zags
    where a size is rounded to a power of two (Combiner-Fixed's blocks: 1.29, 1.45, 1.34, 1.51, 1.37 towards 1.5;
    over two steps 1.37, 1.40, 1.43, 1.44). A numbers audit."""
    if len(values) < 5:
        return False
    x, y = np.log(lengths), np.log(values)
    top = ((y[2:] - y[:-2]) / (x[2:] - x[:-2]))[-3:]
    return bool(np.all(np.diff(top) > RELATIVE_RESOLUTION) and top[-1] > fitted)


def said_still_bending(rule: str) -> str:
    """A range rule with STILL_BENDING said once, in place of its "no upward bend" (which read the whole range)."""
    if still_bends(rule):
        return rule
    return rule.removesuffix(f", {_NOTHING_TO_DROP}") + STILL_BENDING


# How a peak-memory fit whose whole interval is under 1 ends: memory that grows slower than its own output does only
# while a fixed workspace dominates. cosFormer's accounted peak over 1k..64k read 0.743 [0.589, 0.896], "no upward bend",
# its plan changing at 16k (local slopes 0.95, 0.97, 0.99, 0.68, 0.33, 0.49): an impl that read as sub-linear (an audit).
BELOW_LINEAR = (
    "; under 1: a fixed workspace dominates these lengths, and the output alone grows linearly (the exponent beyond them is at least 1)"
)


def said_below_linear(rule: str) -> str:
    """A peak-memory fit's range rule with BELOW_LINEAR said, in place of its "no upward bend"."""
    return rule.removesuffix(f", {_NOTHING_TO_DROP}") + BELOW_LINEAR


def still_bends(rule: str) -> bool:
    """Whether a fit's range rule says its lengths still bend upward (STILL_BENDING), read beside the sentence."""
    return rule.endswith(STILL_BENDING)


_NOTHING_TO_DROP = "no upward bend"  # how the sentence of a fit that kept every length, with nothing to drop, ends


def kept_every_length(rule: str) -> bool:
    """Whether a fit's range rule says it kept every length because none was overhead-bound or bending (the `fit`
    listing counts those fits instead of listing them); read here, beside the sentence it reads."""
    return rule.startswith("all ") and rule.endswith(_NOTHING_TO_DROP)


def _range_sentence(lengths, by_overhead: int, start: int, overhead: str, limit: float) -> str:
    if start == 0:
        return f"all {len(lengths)} lengths kept ({span(lengths)}): fixed overhead under {limit:.1%} of every value, {_NOTHING_TO_DROP}"
    reasons = []
    if by_overhead:
        reasons.append(f"{by_overhead} where the fixed overhead {overhead} is over {limit:.1%} of the value")
    if start > by_overhead:
        reasons.append(f"{start - by_overhead} where log-log still bends upward (a fading cost)")
    return f"dropped {span(lengths[:start])}: {'; then '.join(reasons)}; fit uses N = {span(lengths[start:])}"


def _bends_up(x: np.ndarray, y: np.ndarray) -> bool:
    """Is y convex in x, significantly at 95% (one-sided t-test on a quadratic term)?"""
    centered = x - x.mean()  # keeps the 3-column design well conditioned
    design = np.column_stack([np.ones_like(x), centered, centered**2])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    dof = len(x) - 3
    residual = y - design @ coef
    sigma = max(math.sqrt(residual @ residual / dof), RELATIVE_RESOLUTION)  # bends below resolution do not count
    se = sigma * math.sqrt(np.linalg.inv(design.T @ design)[2, 2])
    return coef[2] / se > t_quantile_975(dof)


def without_persistent_overhead(lengths, values, found, metric: str = "", *, sampled_noise: bool = False):
    """When a fixed overhead is still visible at the largest length (an exact accounting run: a constant
    workspace beside a linear term never fades in range), the log-log slope of the raw values is no
    asymptotic exponent at all. Then the overhead c0 of y = c0 + a N^b is subtracted and ln(y - c0) is
    fitted over every length where c0 is under SUBTRACTABLE_SHARE of the value (the relative noise of
    y - c0 is at most 4x that of y there); the slope estimates b. Returns
    (index of the first length used, values to fit, range sentence), or None when the overhead fades."""
    # Values with sampled noise (timings: `sampled_noise`, several samples a length that differ): still over its limit
    # where the range rule has to stop dropping (MIN_KEPT lengths left), not only at the largest, the kept lengths
    # carry it and tilt the slope. Tested at the largest length alone, N^2 + c with c 4x the work at N = 256 (6% of the
    # value at 2k, 3% noise) fitted 1.964 [1.949, 1.978] over 2k..16k, and such intervals held the true 2 in 156 of
    # 200 seeds (a statistics audit; 197 now). Single exact values keep the largest length's test: their "overhead" is
    # as often a lower-order growing term (Combiner's linear bytes beside its N^1.5), which a subtracted constant does
    # not remove, and the drop's steeper top lengths keep extrapolated frontiers within the budget.
    if not overhead_tilts(values, found, sampled_noise=sampled_noise):
        return None
    if len(values) == MIN_KEPT and found.scatter > RELATIVE_RESOLUTION:
        # 4 lengths leave y = c0 + a N^b one degree of freedom: only a curve that fits them exactly (FLOPs,
        # accounted bytes) says the overhead is real, and noisy times keep their plain log-log slope.
        return None
    keep = found.overhead < SUBTRACTABLE_SHARE * values
    first = int(np.argmax(keep))
    if not keep[first:].all() or len(values) - first < MIN_KEPT:
        return None
    # its share where it tilts (overhead_tilts): for timings where the range rule stops, not at the largest length, where
    # "0.00447 ms is still 0.0% of the value at N=256: subtracted" read as a contradiction (an analysis audit)
    at = max(len(values) - MIN_KEPT, 0) if sampled_noise else len(values) - 1
    share = found.overhead / values[at]
    sentence = (f"a fixed overhead {quantity(found.overhead, metric)} is still {share * 100:.2g}% of the value at "
                f"N={format_length(lengths[at])}: subtracted, and ln(y - overhead) fitted over N = {span(lengths[first:])}")  # fmt: skip
    return first, values[first:] - found.overhead, sentence


def overhead_tilts(values, found, *, sampled_noise: bool) -> bool:
    """Whether the fixed overhead is still over its limit where the range rule has to stop dropping lengths (timings),
    or at the largest length (exact values): see without_persistent_overhead."""
    limit = max(OVERHEAD_SHARE_OF_SCATTER * found.scatter, RELATIVE_RESOLUTION)
    at = max(len(values) - MIN_KEPT, 0) if sampled_noise else len(values) - 1
    return found.prefactor > 0 and found.overhead > limit * values[at]


MIN_MODELLED = 5  # c0 + a N^b's exponent is reported only with 2 degrees of freedom left (t = 4.3, not 12.7)


def overhead_model_exponent(lengths, values, found, metric: str = ""):
    """When the overhead tilts the lengths the range rule keeps and cannot be subtracted (fewer than MIN_KEPT lengths
    where it is under SUBTRACTABLE_SHARE of the value), the exponent b of y = c0 + a N^b fitted to every length, with
    its standard error from all three parameters (slope_se_beside_overhead): (intercept ln a, b, se, degrees of
    freedom, r2 of ln y, range sentence), or None with fewer than MIN_MODELLED lengths. The log-log slope of the raw values was reported
    instead, with an interval for an asymptotic exponent it is not: a constant beside N^2, 20% of the value at the
    largest of 64..8k, fitted 0.74 [95% ..., 1.1] and passed a max_exponent = 1.5 gate in 140 of 200 seeds, and an
    exact 16 N^2 + 1.07e9 bytes fitted 0.739 over 2k..16k, its frontier 9x too long (a statistics audit)."""
    n, y = np.asarray(lengths, dtype=float), np.asarray(values, dtype=float)
    if len(n) < MIN_MODELLED or not (found.prefactor > 0 and found.overhead > 0):
        return None
    # Noisy values the overhead is over SUBTRACTABLE_SHARE of at every length barely grow: b is then fitted to their
    # noise, and sat at the grid's top (flat 0.05 ms timings, 2% noise: 4.011 [-133.9, 141.9] in 56 of 200 seeds,
    # "quadratic" in the report's legend; an analysis audit). Exact ones keep it (N^2 + 2e4 N + 3.16e10 over 1k..64k,
    # the constant 88% of the top value, has b = 2). A b on the grid's edge is the search's bound, no estimate.
    barely_grows = not (found.overhead < SUBTRACTABLE_SHARE * y).any() and found.scatter > RELATIVE_RESOLUTION
    if barely_grows or not OVERHEAD_EXPONENTS[0] < found.exponent < OVERHEAD_EXPONENTS[-1]:
        return None
    intercept = math.log(found.prefactor)
    model = found.overhead + found.prefactor * n**found.exponent
    residual, centred = np.log(y) - np.log(model), np.log(y) - np.log(y).mean()
    r2 = 1.0 - float(residual @ residual) / float(centred @ centred) if centred @ centred > 0 else 1.0
    # From all three parameters, exact values too (their residuals floored at the resolution): b is fitted to y - c0,
    # a few percent of y where c0 dominates, so y's own floor made intervals far too narrow there (an exact
    # N^2 + 2e4 N + 3.16e10 over 1k..64k read 1.699 [1.698, 1.700], and its frontier's low end passed a min_frontier
    # that its true frontier fails; a review)
    se, dof = slope_se_beside_overhead(n, y, found), len(n) - 3
    under = int((found.overhead < SUBTRACTABLE_SHARE * y).sum())
    # not its share at the largest length: where the rule stops on timings that is the 4th largest, and "still 0.2% of
    # the value at N=1k" beside "too few to subtract" read as a contradiction (a review)
    sentence = (f"a fixed overhead {quantity(found.overhead, metric)} tilts the lengths a fit would keep, and is under "
                f"{SUBTRACTABLE_SHARE:.0%} of the value at {under} of {len(n)} lengths, too few to subtract it: the exponent "
                f"is that of overhead + a N^b fitted to every length, N = {span(n)}")  # fmt: skip
    return intercept, float(found.exponent), se, dof, r2, sentence


def slope_se_beside_overhead(lengths, values, found) -> float:
    """The standard error of b in y = c0 + a N^b with all three estimated (relative residuals, as found): the
    covariance sigma^2 (J'J)^-1 at the fitted parameters. Treating the subtracted c0 as known gave intervals that
    held the true exponent in 53-71% of simulated fits (6 lengths, 3% noise) instead of 95% (a helper's audit)."""
    n, y = np.asarray(lengths, dtype=float), np.asarray(values, dtype=float)
    if len(n) <= 3:
        return math.inf
    grown = n**found.exponent
    residual = (y - found.overhead - found.prefactor * grown) / y
    sigma = max(math.sqrt(residual @ residual / (len(n) - 3)), RELATIVE_RESOLUTION)
    scale = np.log(n).mean()  # ln N centred in b's column keeps J'J well conditioned; b's variance is unchanged
    jacobian = np.column_stack([1 / y, grown / y, found.prefactor * grown * (np.log(n) - scale) / y])
    jacobian[:, 1] *= found.prefactor  # a's column in relative units (d/d ln a): the three columns of one order
    try:
        covariance = np.linalg.inv(jacobian.T @ jacobian)
    except np.linalg.LinAlgError:
        return math.inf
    return float(sigma * math.sqrt(max(covariance[2, 2], 0.0)))


def t_quantile_975(dof: int) -> float:
    """Student-t 97.5% quantile (two-sided 95%); inf for dof < 1."""
    if dof < 1:
        return math.inf
    if dof <= len(_T_975):
        return _T_975[dof - 1]
    z = _Z_975  # Cornish-Fisher expansion in 1/dof: within 1e-4 of the exact value for dof > 30
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3
