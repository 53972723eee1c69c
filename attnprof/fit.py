"""Scaling of a metric (time, peak bytes, FLOPs) with sequence length N: the exponent, its interval, its range.

Pure: numpy only, no files, no exits. The samples it reads are prepared in `fit_samples.py`; class models live in
`complexity.py`; crossovers and memory frontiers in `crossover.py`; a fit per group of a DataFrame (`fit_frame`) in
`fit_groups.py`.

The method, written once:

* Samples. Values that are NaN, infinite or <= 0 are dropped and counted (`n_dropped`). Repeated samples at one
  length are reduced to their median and the fit runs on one point per length: repetitions of a timing share the
  length's systematic error, so fitting raw points would shrink the interval without adding information, and the
  median ignores the odd slow repetition.
* Exponent. Least squares of ln(y) = intercept + exponent * ln(N) over the asymptotic range.
* Range rule (`min_length` replaces it). Small lengths are launch-overhead bound, which flattens the curve and
  biases the slope low. Two steps, always keeping at least MIN_KEPT = 4 lengths (2 degrees of freedom):
  1. Overhead: fit y = c0 + a N^b (c0, a >= 0; b on a grid) on relative residuals. Drop the smallest lengths
     while c0 is more than half the relative scatter about that curve (at least 0.1%) of their value. Why half
     the scatter: an overhead share below the noise cannot be seen point by point, yet the points carrying it
     tilt the fitted slope by a fraction of a standard error that grows with share / scatter; under half the
     scatter the interval keeps its 95% coverage (simulated, 3-10% noise, overhead up to 1/16 of the range:
     93-96%). Values that do not grow at all (a = 0) have no overhead to find: all lengths are kept.
  A fixed overhead still visible at the largest length (exact accounting: a constant workspace beside a
     linear term) never fades in range, and in timings (samples that differ) one still over its limit where only
     MIN_KEPT lengths are left tilts them; then it is subtracted instead and ln(y - c0) is fitted (see
     `_without_persistent_overhead`), because the raw slope there is no asymptotic exponent. With exactly 4
     lengths (one degree of freedom left) only when c0 + a N^b fits them within RELATIVE_RESOLUTION: exact
     data such as FLOPs or accounted bytes, never noisy times. Where c0 is under 75% of the value at fewer than 4
     lengths, too few to subtract it, and at least 5 were measured, the exponent is b of c0 + a N^b fitted to every
     length, its interval from all three parameters (`overhead_model_exponent`): the raw slope there is no estimate.
     Not for noisy values c0 is over 75% of at every length (b would fit their noise), nor for a b on its grid's edge.
     Neither subtracted nor modelled for exact values (peak_bytes, flops) that c0 + a N^b does not fit within the
     resolution: their curve changes regime with N, and its c0 is no overhead.
  2. Bend: then drop the smallest length while ln(y) is still significantly convex in ln(N) (one-sided t-test
     at 95% on a quadratic term), which catches fading costs that are not constant (e.g. a linear term under a
     quadratic one). A concave curve such as N log N is never cut.
* Interval. 95% CI: exponent +- t(0.975, n - 2) * se, with se the regression standard error of the slope (its
  residual RMS floored at 0.1%, so exact data get a hair-thin interval, never a zero-width one) and the Student-t
  quantile from a table (df 1..30) or its Cornish-Fisher expansion (df > 30). With 2 lengths no degree of freedom
  is left: the interval is (-inf, inf) and a note says so.
* Class: `complexity.select_complexity` on the same lengths as the exponent.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from attnprof.complexity import RELATIVE_RESOLUTION, ComplexityChoice, fit_overhead, select_complexities
from attnprof.fit_range import (
    MIN_KEPT,
    STILL_BENDING,
    bending_at_the_top,
    choose_range,
    kept_every_length,
    overhead_model_exponent,
    overhead_tilts,
    rising_at_the_top,
    said_below_linear,
    said_still_bending,
    slope_se_beside_overhead,
    still_bends,
    t_quantile_975,
    without_persistent_overhead,
)
from attnprof.fit_samples import Samples, relative_spreads
from attnprof.fit_text import format_length, quantity

__all__ = ["Fit", "fit_power_law", "fit_power_laws", "format_length", "kept_every_length", "local_slopes", "quantity", "t_quantile_975"]


EXACT_METRICS = ("peak_bytes", "flops")  # one value a cell, the same every run: no noise, only the curve's own shape


@dataclass(frozen=True)
class Fit:
    """A power law ln(y) = intercept + exponent * ln(N) fitted to one metric of one configuration."""

    exponent: float
    exponent_low: float  # 95% CI; -inf / inf with 2 lengths
    exponent_high: float
    exponent_se: float
    intercept: float  # natural log, in the metric's unit
    r2: float  # on the log scale, over lengths_used
    n_points: int  # lengths used (one median each)
    n_samples: int  # raw valid samples at those lengths
    n_dropped: int  # samples dropped as NaN, inf or <= 0
    lengths_used: tuple
    lengths_measured: tuple  # every length with a valid sample, used or not
    range_rule: str
    local_slopes: tuple  # (N_low, N_high, slope) between neighbouring measured lengths
    complexity: str  # a class name from complexity.CLASSES, or "ambiguous"
    best_class: str
    runner_up: str
    margin: float  # AIC(runner_up) - AIC(best)
    metric: str = ""
    notes: tuple = ()
    medians: tuple = ()  # the median value at each of lengths_measured: what crossovers are checked against
    spreads: tuple = ()  # half the interquartile range over the median there (0 for one value): how far a median may be off
    overhead: float = 0.0  # a persistent fixed overhead c0 subtracted before the log-log fit; predict adds it back
    counts: tuple = ()  # samples behind each median (0: not known): a spread of 3 says less than one of 30

    @functools.cached_property
    def center_log_length(self) -> float:
        """Mean ln(N) of the fitted lengths: where the fitted line is pinned down best (cached: crossovers ask
        for it thousands of times in one view)."""
        return float(np.mean(np.log(self.lengths_used)))

    @functools.cached_property
    def measured_points(self) -> dict:
        """{N: (median, spread, samples)} at lengths_measured (cached: a crossover listing reads each fit once per pair)."""
        counts = self.counts or (0,) * len(self.lengths_measured)
        return dict(zip(self.lengths_measured, zip(self.medians, self.spreads, counts, strict=False), strict=False))

    def class_coefficients(self, name: str) -> tuple[float, float]:
        """(c0, c1) of complexity class `name`'s model c0 + c1 g(N) fitted to the medians at lengths_used. Kept on the
        fit (in its __dict__, as cached_property keeps its values; not a field): crossovers ask for it once per pair,
        and a dashboard view of 451 pairs fitted 998 models for some 200 fits, a third of its time."""
        from attnprof.complexity import CLASSES, relative_nnls

        cache = self.__dict__.setdefault("_class_coefficients", {})
        if name not in cache:
            measured = dict(zip(self.lengths_measured, self.medians, strict=True))
            lengths = np.asarray(self.lengths_used, dtype=float)
            _, coef = relative_nnls(CLASSES[name](lengths)[None, :], np.array([measured[n] for n in self.lengths_used], dtype=float))
            cache[name] = (float(coef[0, 0]), float(coef[0, 1]))
        return cache[name]

    def predict(self, length, exponent: float | None = None):
        """Fitted value at `length`; with `exponent`, the line pivoted about the fit's centre (for CI bounds). The
        subtracted overhead is added back: without it Nyströmformer's FLOPs (2.2e8 + 5.9e5 N) extrapolated to N = 145
        crossed softmax's there, where the true crossing is near 314."""
        x = np.log(np.asarray(length, dtype=float))
        center = self.center_log_length
        slope = self.exponent if exponent is None else exponent
        with np.errstate(over="ignore"):
            value = np.exp(self.intercept + self.exponent * center + slope * (x - center))
        value = value + self.overhead
        return float(value) if np.ndim(value) == 0 else value


def fit_power_law(lengths, values, *, min_length: float | None = None, metric: str = "", spreads=None, counts=None) -> Fit:
    """Fit y ~ N^exponent over the asymptotic range of (lengths, values); repeated lengths are allowed.

    `spreads`, one per value: each value's own relative spread (half its samples' IQR over their median), for
    values that are already medians (the dashboard fits the cells' stored medians). Without them a length's
    spread is that of its values, so a fit of the raw samples and one of the medians with their spreads agree.
    `counts`, with `spreads`: how many samples each value is the median of (a crossover trusts a spread of few less)."""
    (fit,) = fit_power_laws([(lengths, values, spreads, counts)], min_length=min_length, metric=metric)  # one code path for both
    if isinstance(fit, ValueError):
        raise fit
    return fit


def fit_power_laws(series, *, min_length: float | None = None, metric: str = "") -> list:
    """fit_power_law for each (lengths, values, spreads or None[, counts or None]) of `series`, in order: a Fit, or the ValueError that
    fit_power_law would raise. The same fits, found faster: the steps that search or rank models (the overhead
    search, the class selection) run together for the series that share their lengths (a sweep's configurations,
    usually), where one at a time they were most of the time a dashboard view spent."""
    prepared = [_or_error(Samples.of, lengths, values, spreads, *rest) for lengths, values, spreads, *rest in series]
    searched = [i for i, samples in enumerate(prepared) if isinstance(samples, Samples) and samples.needs_overhead(min_length)]
    found: dict = {}
    for indices in _by_lengths(searched, lambda i: prepared[i].lengths):
        values = np.stack([prepared[i].values for i in indices])  # (series, lengths)
        found.update(zip(indices, fit_overhead(prepared[indices[0]].lengths, values), strict=True))
    shapes = [s if isinstance(s, ValueError) else _or_error(_Shape.of, s, found.get(i), min_length, metric) for i, s in enumerate(prepared)]
    fits = list(shapes)
    for indices in _by_lengths([i for i, shape in enumerate(shapes) if isinstance(shape, _Shape)], lambda i: shapes[i].used_lengths):
        values = np.stack([shapes[i].used_values for i in indices])  # (series, used lengths)
        choices = select_complexities(shapes[indices[0]].used_lengths, values, [shapes[i].noise for i in indices])
        for i, choice in zip(indices, choices, strict=True):
            fits[i] = shapes[i].fit(choice, metric)
    return fits


def _or_error(step, *args):
    try:
        return step(*args)
    except ValueError as error:  # e.g. fewer than 2 lengths, or a min_length leaving fewer
        return error


def _by_lengths(indices, lengths_of) -> list[list]:
    """The indices grouped by the lengths they are fitted over (exactly equal arrays), in first-seen order."""
    groups: dict = {}
    for index in indices:
        groups.setdefault(lengths_of(index).tobytes(), []).append(index)
    return list(groups.values())


@dataclass(frozen=True)
class _Shape:
    """A fit up to its class: the range kept, the log-log line, the spreads (what the class selection needs)."""

    samples: Samples
    start: int  # index in samples.lengths of the first length used
    rule: str
    intercept: float
    slope: float
    se: float
    r2: float
    spreads: tuple  # at each of samples.lengths
    overhead: float  # subtracted before the log-log fit
    dof: int  # degrees of freedom of the interval: lengths used less the parameters estimated from them

    @classmethod
    def of(cls, samples: Samples, found, min_length, metric: str = "") -> _Shape:
        med_lengths, med_values = samples.lengths, samples.values
        start, rule = choose_range(med_lengths, med_values, min_length, found, metric)
        fitted_values = med_values[start:]
        if samples.spreads is None:
            spreads = relative_spreads(samples.all_lengths, samples.all_values, med_lengths)
        else:
            spreads = samples.spreads(med_lengths)
        noisy = bool(np.any(np.asarray(spreads, dtype=float) > 0))  # samples that differ: timings
        # Exact values (bytes, FLOPs) that c0 + a N^b does not reproduce change regime with N (a plan, a chunk size): its
        # c0 is no fixed overhead, and subtracting it bent the top lengths. Nyströmformer's CPU peak, 2112 + 12288 N
        # exactly from 512 on and another plan below, fitted 1.151 [0.907, 1.395] "n log n" with a "1.3 MiB overhead"
        # subtracted over 128..2k (an analysis audit); its raw slope over the lengths the range rule keeps is 0.965.
        unmodelled = metric in EXACT_METRICS and found is not None and found.scatter > RELATIVE_RESOLUTION
        subtracted = (
            None
            if found is None or unmodelled
            else without_persistent_overhead(med_lengths, med_values, found, metric, sampled_noise=noisy)
        )
        modelled = None
        if subtracted is None and found is not None and not unmodelled and overhead_tilts(med_values, found, sampled_noise=noisy):
            modelled = overhead_model_exponent(med_lengths, med_values, found, metric)
        if modelled is not None:
            intercept, slope, se, dof, r2, rule = modelled
            return cls(samples, 0, rule, intercept, slope, se, r2, tuple(spreads), float(found.overhead), dof)
        if subtracted is not None:
            start, fitted_values, rule = subtracted
        elif not noisy and min_length is None and len(med_values) - start == MIN_KEPT < len(med_values):
            if bending_at_the_top(med_lengths[start:], fitted_values):  # the range rule stopped, the curve did not
                rule += STILL_BENDING
        intercept, slope, se, r2 = _least_squares(np.log(med_lengths[start:]), np.log(fitted_values))
        if subtracted is None and not noisy and min_length is None and rising_at_the_top(med_lengths[start:], fitted_values, slope):
            rule = said_still_bending(rule)
        dof = len(fitted_values) - 2
        if subtracted is not None and found.scatter > RELATIVE_RESOLUTION:
            # The overhead was estimated from these same noisy points: its uncertainty is the slope's too. Exact data
            # (FLOPs, accounted bytes: c0 + a N^b within the resolution) keep the plain interval: with sigma at the
            # resolution floor the three-parameter one widened Nystromformer's FLOP exponent 1.000 to [0.956, 1.044]
            # over 4 lengths, and a max_exponent = 1.03 gate failed an unchanged formula.
            se, dof = max(se, slope_se_beside_overhead(med_lengths[start:], med_values[start:], found)), dof - 1
        overhead = 0.0 if subtracted is None else float(found.overhead)
        return cls(samples, start, rule, intercept, slope, se, r2, tuple(spreads), overhead, dof)

    @property
    def used_lengths(self) -> np.ndarray:
        return self.samples.lengths[self.start :]

    @property
    def used_values(self) -> np.ndarray:
        return self.samples.values[self.start :]

    @property
    def noise(self) -> float:
        """The RMS of the used lengths' relative spreads: the class selection's floor."""
        used = np.asarray(self.spreads[self.start :], dtype=float)
        return float(np.sqrt(np.mean(used**2)))

    def fit(self, choice: ComplexityChoice, metric: str) -> Fit:
        samples, used_lengths = self.samples, self.used_lengths
        half = t_quantile_975(self.dof) * self.se
        below_linear = metric == "peak_bytes" and self.slope + half < 1 and not still_bends(self.rule)
        return Fit(
            exponent=self.slope,
            exponent_low=self.slope - half,
            exponent_high=self.slope + half,
            exponent_se=self.se,
            intercept=self.intercept,
            r2=self.r2,
            n_points=len(used_lengths),
            n_samples=int(np.isin(samples.all_lengths, used_lengths).sum()),
            n_dropped=samples.n_dropped,
            lengths_used=_as_numbers(used_lengths),
            lengths_measured=_as_numbers(samples.lengths),
            range_rule=said_below_linear(self.rule) if below_linear else self.rule,
            local_slopes=local_slopes(samples.lengths, samples.values),
            complexity=choice.complexity,
            best_class=choice.best,
            runner_up=choice.runner_up,
            margin=choice.margin,
            metric=metric,
            notes=_notes(samples.n_dropped, len(used_lengths), choice),
            medians=_as_numbers(samples.values),
            spreads=self.spreads,
            overhead=self.overhead,
            counts=samples.counts_at(samples.lengths),
        )


def local_slopes(lengths, values) -> tuple:
    """(N_low, N_high, slope) for each pair of neighbouring lengths (sorted, distinct): where the curve bends."""
    slopes = np.diff(np.log(values)) / np.diff(np.log(lengths))
    return tuple(zip(_as_numbers(lengths[:-1]), _as_numbers(lengths[1:]), slopes.tolist(), strict=True))


def _least_squares(x: np.ndarray, y: np.ndarray):
    """Ordinary least squares y = a + b x: (a, b, standard error of b, r2)."""
    x_mean, y_mean = x.mean(), y.mean()
    sxx = float(((x - x_mean) ** 2).sum())
    slope = float(((x - x_mean) * (y - y_mean)).sum() / sxx)
    intercept = float(y_mean - slope * x_mean)
    ssr = float(((y - intercept - slope * x) ** 2).sum())
    syy = float(((y - y_mean) ** 2).sum())
    r2 = 1.0 - ssr / syy if syy > 0 else 1.0
    dof = len(x) - 2
    if dof < 1:
        return intercept, slope, math.inf, r2
    sigma = max(math.sqrt(ssr / dof), RELATIVE_RESOLUTION)  # exact data: claim no more than measurements resolve
    return intercept, slope, sigma / math.sqrt(sxx), r2


def _notes(n_dropped: int, n_points: int, choice: ComplexityChoice) -> tuple:
    notes = []
    if n_dropped:
        notes.append(f"{n_dropped} value(s) dropped: NaN, inf or <= 0")
    if n_points == 2:
        notes.append("only 2 lengths: no confidence interval (no degree of freedom left)")
    if choice.complexity == "ambiguous":
        notes.append(f"class ambiguous: {choice.best} vs {choice.runner_up}, AIC margin {choice.margin:.2f}")
    return tuple(notes)


def _as_numbers(array) -> tuple:
    # Lengths are integers in practice; ints read "1024" in tables and hover text, not "1024.0".
    return tuple(int(v) if v.is_integer() else v for v in np.asarray(array, dtype=float).tolist())
