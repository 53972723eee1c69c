"""Where two implementations' fitted curves cross (pure); how long a sequence fits a memory budget is frontier.py.

Both questions are solved on the fitted power laws (`fit.Fit`), with the fixed overhead a fit subtracted added back
(then numerically, else in closed form): the power law is what the fit reports and what its interval describes.
Beyond the measured lengths the class models (c0 + c1 g(N)) are asked too, and an answer's range spans theirs.

Intervals. The exponent's 95% interval is propagated by pivoting each fitted line about its centre (mean ln N of
the lengths it used), where the intercept is known best, and re-solving with the interval's end exponents; for a
crossover the four corner combinations give the range. The intercept's own (small) uncertainty at the centre is
left out, so the intervals are slightly narrow close to the measured lengths and dominated by the exponent when
extrapolating, which is where they matter.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnprof.fit import Fit, format_length
from attnprof.spec import MAX_SIZE

PARALLEL_TOLERANCE = 1e-9  # exponents closer than this are the same line slope: no crossing
NEAR_SPAN = 16  # an extrapolated crossing is near when its 95% interval stays within this factor of the measured lengths


@dataclass(frozen=True)
class Crossover:
    length: float  # where the fitted curves cross; NaN when parallel
    length_low: float  # 95% interval; 0 / inf when the exponents are not distinguishable
    length_high: float
    kind: str  # "in range" (lo <= length <= hi), "extrapolated", or "none" (parallel, or crossing below N = 1)
    cheaper_below: str  # the impl with the smaller fitted value below the crossing ("" when kind == "none")
    cheaper_above: str
    lo: float  # the measured range the kind refers to
    hi: float
    message: str


def crossover(fit_a: Fit, fit_b: Fit, lo: float | None = None, hi: float | None = None, *, name_a="a", name_b="b") -> Crossover:
    """Length where fit_a's and fit_b's power laws cross; lo..hi (default: both fits' shared measured lengths)."""
    lo = max(fit_a.lengths_measured[0], fit_b.lengths_measured[0]) if lo is None else lo
    hi = min(fit_a.lengths_measured[-1], fit_b.lengths_measured[-1]) if hi is None else hi
    same_slope = abs(fit_a.exponent - fit_b.exponent) < PARALLEL_TOLERANCE
    parallel = same_slope and fit_a.overhead == fit_b.overhead  # with different overheads (c0 + a N^e) they cross once
    length = math.nan if parallel else _crossing(fit_a, fit_b, fit_a.exponent, fit_b.exponent)
    measured = _measured_crossover(fit_a, fit_b, (lo, hi), (name_a, name_b), length)
    if measured is not None:
        return measured
    if parallel:
        ratio = fit_a.predict(lo) / fit_b.predict(lo)
        if math.isclose(ratio, 1.0, rel_tol=1e-9):
            message = f"none: equal exponents ({fit_a.exponent:.2f}) and equal values: {name_a} and {name_b} cost the same at every length"
        else:
            cheaper = name_a if ratio < 1 else name_b
            message = (
                f"none: equal exponents ({fit_a.exponent:.2f}); {cheaper} is cheaper at every length ({name_a}/{name_b} = {ratio:.3g})"
            )
        return Crossover(math.nan, math.nan, math.nan, "none", "", "", lo, hi, message)
    low, high = _crossing_interval(fit_a, fit_b)
    # The one dearer far out is cheaper below the crossing: the steeper one, or with equal exponents the larger prefactor.
    steeper_a = fit_a.predict(MAX_SIZE) > fit_b.predict(MAX_SIZE) if same_slope else fit_a.exponent > fit_b.exponent
    below, above = (name_a, name_b) if steeper_a else (name_b, name_a)
    if length < 1:
        message = f"none: the curves cross only below N = 1; {above} is cheaper at every length"
        return Crossover(length, low, high, "none", "", "", lo, hi, message)
    kind = "in range" if lo <= length <= hi else "extrapolated"
    where = "within" if kind == "in range" else "outside"
    label = "95%"
    if kind == "extrapolated":
        classes = _class_crossings(fit_a, fit_b)
        widened = min(low, *classes), max(high, *classes)
        label = "range" if widened != (low, high) else label  # the interval then also spans the class models' answer
        low, high = widened
    message = (
        f"{kind}: {above} is cheaper above N = {format_length(length)} ({label} {format_length(low)}..{format_length(high)}), "
        f"{below} below; {where} the measured {format_length(lo)}..{format_length(hi)}"
    )
    return Crossover(length, low, high, kind, below, above, lo, hi, message)


MEASURED_RESOLUTION = 0.01  # ln-ratio two medians must differ by, beyond their spreads, to say which is cheaper
# The same for two exact curves (no spread anywhere: FLOPs, bytes): 0.01%, finer than any formula's difference worth a
# crossing (Combiner-Fixed's FLOPs 0.04% over cosFormer's at 8k are one) and coarser than an allocator's bookkeeping: at
# float rounding, two Nyströmformer option sets whose CPU peaks differed by 2,112 bytes of 402,655,296 at 32k alone
# (equal at 512..16k) "crossed in range at N = 32757" (an analysis audit).
EXACT_RESOLUTION = 1e-4
# How far a median of n samples may be off, over the spread of those n samples (half their interquartile range,
# numpy's linear quantiles), relative to that ratio at 10 samples, where a spread is a fair measure of it: the median of
# 3 normal samples has a standard deviation 1.58 times their mean half-IQR, of 10 0.63 times (simulated, 200,000 draws
# each). Unscaled, two identical curves timed 3 samples a cell "crossed in range" in 52 of 200 seeds, 5 samples in 21,
# 10 in none (a statistics audit). 10 samples and more, and an unknown count (0), keep the spread as it is.
FEW_SAMPLES_FACTOR = {2: 3.94, 3: 2.50, 4: 1.80, 5: 1.71, 6: 1.38, 7: 1.30, 8: 1.14, 9: 1.07}


def _median_error(point) -> float:
    """How far the median of a (median, spread, samples) point may be off, as a ln-ratio."""
    _, spread, count = point
    return median_error(spread, count)


def median_error(spread: float, count: int) -> float:
    """How far a median may be off, as a ln-ratio: its samples' spread (half their IQR over the median), scaled up for
    fewer than 10 samples (FEW_SAMPLES_FACTOR). The gate's time rules read it too."""
    return spread * FEW_SAMPLES_FACTOR.get(count, 1.0)


def _measured_crossover(fit_a: Fit, fit_b: Fit, span, names, fitted_length: float) -> Crossover | None:
    """Within the measured lengths the medians decide, the fitted lines only beyond them. A power law bends
    neither with an overhead nor with a cap, and one noisy length can tilt it: an audit found fitted lines that
    "crossed" at N = 1141 where the medians at 1024 already had the order reversed. A length speaks when its two
    medians differ by more than their spreads (half the interquartile range over the median each) plus
    MEASURED_RESOLUTION (EXACT_RESOLUTION when neither curve has any spread: exact values differ when they
    differ, and Combiner-Fixed's FLOPs 0.6% under cosFormer's at 4k were "level", widening the bracket to 2k..8k
    around an order that changes at 4040..4104). The last change of order among those lengths is the crossing, interpolated on log-log
    (exact for two power laws), its interval the two lengths around it. Without one, a "none" naming the impl
    the medians find cheaper when the fits put a crossing inside the range or the other impl first there; else
    None: the fits' answer (a crossing beyond the measured lengths) stands."""
    (lo, hi), (name_a, name_b) = span, names
    a, b = fit_a.measured_points, fit_b.measured_points
    exact = not any(fit_a.spreads) and not any(fit_b.spreads)
    resolution = EXACT_RESOLUTION if exact else MEASURED_RESOLUTION
    clear = []  # (N, ln(a / b)) where the medians say which is cheaper
    for n in sorted(set(a) & set(b)):
        gap = math.log(a[n][0] / b[n][0])
        if lo <= n <= hi and abs(gap) > _median_error(a[n]) + _median_error(b[n]) + resolution:
            clear.append((n, gap))
    flips = [i for i in range(len(clear) - 1) if (clear[i][1] < 0) != (clear[i + 1][1] < 0)]
    shared = [n for n in sorted(set(a) & set(b)) if lo <= n <= hi]
    if not clear and shared and lo <= fitted_length <= hi:
        # Level at every length (SDPA and SDPA-flash, one CPU kernel: 3.78/3.79, 15.05/15.02, 118.2/118.2 ms): their
        # fitted lines, tilted by noise, "crossed" at 998 in one run and 2564 in another.
        level = "equal" if exact else f"level, within their spread + {MEASURED_RESOLUTION:.0%}"
        message = f"none: the two are {level} at every measured length ({format_length(shared[0])}..{format_length(shared[-1])})"
        return Crossover(math.nan, math.nan, math.nan, "none", "", "", lo, hi, message)
    if not flips:
        at = np.array([n for n, _ in clear], dtype=float)  # both fits at every clear length in one call each
        fitted_a_cheaper = (fit_a.predict(at) < fit_b.predict(at)).tolist() if clear else []
        contradicted = any((gap < 0) != cheaper for (_, gap), cheaper in zip(clear, fitted_a_cheaper, strict=True))
        if not clear or not (contradicted or lo <= fitted_length <= hi):
            return None
        # the fits cross where the medians are level, past the last clear length (or before the first): a crossing if
        # their exponents differ (two parallel lines tilted by noise "crossed" there in 12-24 of 200 seeds otherwise)
        # Exact values level at a length are equal there, no crossing hidden in their noise: sdpa's FLOPs equal to
        # softmax's at 128..512 and under them from 1k read "softmax below N = 218" (an analysis audit)
        if not exact and not contradicted and math.isfinite(_crossing_interval(fit_a, fit_b)[1]):
            return _crossing_where_level(clear, fitted_length, (lo, hi), names)
        cheaper = name_a if clear[0][1] < 0 else name_b
        where_fits_cross = f", which cross at N = {format_length(fitted_length)}," if math.isfinite(fitted_length) else ""
        first, last = format_length(clear[0][0]), format_length(clear[-1][0])
        differ = (
            f"none: {cheaper} is cheaper at every measured length where the two differ ({first if len(clear) == 1 else f'{first}..{last}'})"
        )
        differing = {length for length, _ in clear}
        equal = [n for n in shared if n not in differing]
        if exact:
            message = f"{differ}; at {', '.join(map(format_length, equal))} the two are equal" if equal else differ
        else:
            message = f"{differ}; the fitted lines{where_fits_cross} do not follow the medians"
        return Crossover(math.nan, math.nan, math.nan, "none", "", "", lo, hi, message)
    (before, gap_before), (after, gap_after) = clear[flips[-1]], clear[flips[-1] + 1]
    below, above = (name_a, name_b) if gap_before < 0 else (name_b, name_a)
    x0, x1 = math.log(before), math.log(after)
    length = math.exp(x0 + (x1 - x0) * gap_before / (gap_before - gap_after))
    between = f"measured: between {format_length(before)} and {format_length(after)}"
    ties = [n for n in sorted(set(a) & set(b)) if before < n < after]  # lengths whose medians did not tell the two apart
    if ties:  # said: at 8k Combiner-Fixed was still 0.04% cheaper, where the crossing "at 5353" read as the reverse
        level = "equal" if exact else f"level, within their spread + {MEASURED_RESOLUTION:.0%}"
        between += f"; at {', '.join(map(format_length, ties))} the two are {level}"
    message = f"in range: {above} is cheaper above N = {format_length(length)} ({between}), {below} below"
    if len(flips) > 1:
        message += f"; the measured order changes {len(flips)} times in {format_length(lo)}..{format_length(hi)}"
    return Crossover(length, before, after, "in range", below, above, lo, hi, message)


def _crossing_where_level(clear, fitted_length: float, span, names) -> Crossover:
    """The fits follow the medians at every length where these tell the two apart, and cross in the measured range
    beyond those lengths, where the medians are level within their spreads: the fitted crossing, bracketed by the
    last clear length and the range's end. A spread does not shrink with more samples, so a reversal 6% wide at the
    last length, under two spreads of 3.4%, was "none: softmax is cheaper at every measured length where the two
    differ (256..2k); the fitted lines, which cross at N = 3813, do not follow the medians" for a true crossing at
    3800 (a statistics audit: 99 of 200 seeds at 30 samples a cell, 66 at 10)."""
    (lo, hi), (name_a, name_b) = span, names
    first_a_cheaper = clear[0][1] < 0
    if fitted_length > clear[-1][0]:  # the order of the clear lengths holds below the crossing
        before, after, level = clear[-1][0], hi, f"above {format_length(clear[-1][0])}"
        below, above = (name_a, name_b) if first_a_cheaper else (name_b, name_a)
    else:
        before, after, level = lo, clear[0][0], f"below {format_length(clear[0][0])}"
        below, above = (name_b, name_a) if first_a_cheaper else (name_a, name_b)
    message = (
        f"in range: {above} is cheaper above N = {format_length(fitted_length)} (fitted: the medians {level}, where the fits "
        f"cross, do not tell the two apart), {below} below"
    )
    return Crossover(fitted_length, before, after, "in range", below, above, lo, hi, message)


def is_near(found: Crossover) -> bool:
    """Worth listing by default: a crossing inside the measured lengths, or one outside them whose whole 95%
    interval lies within NEAR_SPAN of them. Two nearly parallel power laws also "cross", at N = 1e+80 with an
    interval of 0..inf, and a curve that is a constant plus a linear term, fitted as a power law, "crosses"
    its neighbours at N = 4504 with an interval reaching 9e+30: artefacts of the fit, not predictions."""
    if found.kind == "in range":
        return True
    low, high = found.lo / NEAR_SPAN, found.hi * NEAR_SPAN
    return found.kind == "extrapolated" and low <= found.length_low and found.length_high <= high


def _crossing(fit_a: Fit, fit_b: Fit, exponent_a: float, exponent_b: float) -> float:
    """N where the two curves, their lines pivoted about their centres to the given exponents, meet (the last
    meeting when an overhead makes them meet twice: the one that decides which is cheaper above)."""
    center_a, center_b = fit_a.center_log_length, fit_b.center_log_length
    value_a = fit_a.intercept + fit_a.exponent * center_a  # ln of each fitted line at its centre
    value_b = fit_b.intercept + fit_b.exponent * center_b
    if fit_a.overhead or fit_b.overhead:
        with np.errstate(over="ignore"):
            curve_a = lambda x: np.exp(value_a + exponent_a * (x - center_a)) + fit_a.overhead  # noqa: E731
            curve_b = lambda x: np.exp(value_b + exponent_b * (x - center_b)) + fit_b.overhead  # noqa: E731
            far = math.log(MAX_SIZE)
            equal = abs(exponent_a - exponent_b) < PARALLEL_TOLERANCE  # then the prefactors decide
            return _last_meeting(curve_a, curve_b, a_grows_faster=curve_a(far) > curve_b(far) if equal else exponent_a > exponent_b)
    # value_a + e_a (x - center_a) = value_b + e_b (x - center_b), solved for x = ln N
    x = (value_b - value_a + exponent_a * center_a - exponent_b * center_b) / (exponent_a - exponent_b)
    return exp_or_inf(x)


MEETING_GRID = np.linspace(math.log(2), math.log(MAX_SIZE), 513)  # ln N from N = 2: an n log n model is 0 at N = 1
CUTS = np.linspace(0.0, 1.0, 65)  # a bracket's 64 parts
REFINE_ROUNDS = 8  # a grid step of ln N (0.08) cut by 64^8: to float precision, as 60 bisections were (4 rounds moved N = 4e8 by 2)


def _last_meeting(curve_a, curve_b, *, a_grows_faster: bool) -> float:
    """Last N in 1..MAX_SIZE where two cost curves (functions of ln N) meet, by a grid on ln N, refined: an
    overhead can make them meet twice, and the last meeting decides which is cheaper above. Without a meeting: 0
    when the faster-growing curve is the dearer one at every length (they meet below N = 1), inf when it is the
    cheaper one at every length (they meet beyond MAX_SIZE)."""
    log_ratio = lambda x: np.log(curve_a(x)) - np.log(curve_b(x))  # noqa: E731
    grid = MEETING_GRID
    signs = np.sign(log_ratio(grid))
    changes = np.flatnonzero(signs[:-1] * signs[1:] < 0)
    if not len(changes):
        return 0.0 if (signs[0] > 0) == a_grows_faster else math.inf
    low, high, side = grid[changes[-1]], grid[changes[-1] + 1], signs[changes[-1]]
    for _ in range(REFINE_ROUNDS):  # the bracket cut in 64 at once, where bisection evaluated one point a step
        points = low + (high - low) * CUTS
        beyond = np.flatnonzero(np.sign(log_ratio(points[1:-1])) != side)  # first interior point past the meeting
        end = beyond[0] + 1 if len(beyond) else 64
        low, high = points[end - 1], points[end]
    return math.exp(low)


def _class_crossings(fit_a: Fit, fit_b: Fit) -> list[float]:
    """Where the complexity class models c0 + c1 g(N) of the two fits (both leading classes of an ambiguous
    one) last meet. Beyond the measured lengths the power laws' interval says how well their slopes are known,
    not whether the curves keep those slopes: over N = 1k..64k of accounted peaks, Combiner-Fixed's power law
    (fitted over 8k..64k, its 5 MiB of fixed workspace left out) put "Nyströmformer cheaper above N = 258
    (95% 137..476), Combiner-Fixed below", where Nyströmformer is cheaper at every length from 16 on."""
    crossings = []
    for name_a, name_b in itertools.product(leading_classes(fit_a), leading_classes(fit_b)):
        model_a, model_b = class_model(fit_a, name_a), class_model(fit_b, name_b)
        grows_a = model_a(math.log(MAX_SIZE)) > model_b(math.log(MAX_SIZE))  # the dearer one at the far end grows faster
        crossings.append(_last_meeting(model_a, model_b, a_grows_faster=grows_a))
    return crossings


def _crossing_interval(fit_a: Fit, fit_b: Fit) -> tuple[float, float]:
    bounds_a = (fit_a.exponent_low, fit_a.exponent_high)
    bounds_b = (fit_b.exponent_low, fit_b.exponent_high)
    if not all(map(math.isfinite, bounds_a + bounds_b)):
        return 0.0, math.inf  # a 2-point fit has no interval
    if bounds_a[0] <= bounds_b[1] and bounds_b[0] <= bounds_a[1]:
        return 0.0, math.inf  # equal exponents are possible: the crossing may lie anywhere, or nowhere
    # With no pole inside the rectangle the crossing is monotone in each exponent, so the corners bound it.
    corners = [_crossing(fit_a, fit_b, ea, eb) for ea, eb in itertools.product(bounds_a, bounds_b)]
    return min(corners), max(corners)


def class_model(fit: Fit, name: str):
    """ln N -> c0 + c1 g(N): complexity class `name`'s model fitted to the medians at the fit's lengths."""
    from attnprof.complexity import CLASSES

    c0, c1 = fit.class_coefficients(name)
    g = CLASSES[name]
    return lambda x: c0 + c1 * g(np.exp(x))


def leading_classes(fit: Fit) -> tuple[str, ...]:
    return (fit.best_class, fit.runner_up) if fit.complexity == "ambiguous" else (fit.best_class,)


def exp_or_inf(x: float) -> float:
    return math.exp(x) if x < 709 else math.inf  # beyond float range: as good as never


# --- DataFrames -------------------------------------------------------------------------------------------------

CROSSOVER_COLUMNS = ("impl_a", "impl_b", "length", "length_low", "length_high", "kind", "cheaper_below", "cheaper_above", "message")


def crossover_frame(fits_df: pd.DataFrame, *, impl_col: str = "impl", config_cols=None) -> pd.DataFrame:
    """One row per pair of impls sharing a configuration (and metric) in a `fit_groups.fit_frame` result; `near` says
    whether the crossing is worth listing by default (`is_near`).

    config_cols defaults to fit_frame's group columns without impl_col. Rows whose fit failed (`fit` is None)
    have their error in fits_df already and pair with nothing here.
    """
    if config_cols is None:
        if "group_cols" not in fits_df.attrs:
            raise ValueError("crossover_frame: fits_df has no group columns recorded; pass config_cols")
        config_cols = [c for c in fits_df.attrs["group_cols"] if c != impl_col]
    keys = [*config_cols, "metric"] if "metric" in fits_df.columns else list(config_cols)
    missing = [c for c in (impl_col, "fit", *keys) if c not in fits_df.columns]
    if missing:
        raise ValueError(f"crossover_frame: column(s) {missing} not in the frame; it has {list(fits_df.columns)}")
    fitted = fits_df[fits_df["fit"].notna()]
    groups = fitted.groupby(keys, dropna=False, sort=True) if keys else [((), fitted)]
    rows = [row for config, group in groups for row in _pair_rows(dict(zip(keys, config, strict=True)), group, impl_col)]
    return pd.DataFrame(rows, columns=[*keys, *CROSSOVER_COLUMNS, "near"])


def _pair_rows(config: dict, group: pd.DataFrame, impl_col: str) -> list[dict]:
    # (impl, fit) pairs as plain tuples: iterrows builds a Series per row, most of the time at 25 impls (300 pairs)
    ordered = group.sort_values(impl_col, kind="stable")
    rows = []
    pairs = zip(ordered[impl_col].tolist(), ordered["fit"].tolist(), strict=True)
    for (impl_a, fit_a), (impl_b, fit_b) in itertools.combinations(pairs, 2):
        found = crossover(fit_a, fit_b, name_a=str(impl_a), name_b=str(impl_b))
        fields = {name: getattr(found, name) for name in CROSSOVER_COLUMNS[2:]}
        rows.append({**config, "impl_a": impl_a, "impl_b": impl_b, **fields, "near": is_near(found)})
    return rows
