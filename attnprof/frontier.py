"""How long a sequence fits a memory budget: the fitted peak's frontier, checked against the measured lengths (pure).

Solved on the fitted power law with its overhead and the inputs added back; its 95% interval pivots the line about
its centre (see crossover.py). Beyond the measured lengths the class models bound the low end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from attnprof.crossover import class_model, exp_or_inf, leading_classes
from attnprof.fit import Fit, format_length
from attnprof.spec import MAX_SIZE


@dataclass(frozen=True)
class Frontier:
    length: float  # largest N whose fitted peak fits the budget; inf when the peak does not grow with N
    length_low: float  # 95% interval, from the exponent interval; extrapolated, also no longer than the class model's
    length_high: float
    budget_bytes: float
    kind: str  # "in range" (within the fit's measured lengths), "extrapolated", or "unbounded"
    consistent: bool  # no measured OOM at or below `length`, no measured success above it
    conflicts: tuple  # the measured lengths that contradict the prediction
    message: str


def memory_frontier(
    fit: Fit,
    budget_bytes: float,
    *,
    input_bytes_per_token: float = 0.0,
    output_bytes_per_token: float = 0.0,
    oom_lengths=(),
    ok_points=(),
    device_bytes: float | None = None,
) -> Frontier:
    """Largest N whose fitted peak, plus the inputs made before the call (input_bytes_per_token * N: q, k, v
    and, in fwd_bwd, grad_out; the measured peaks leave them out), stays within budget_bytes; checked against
    the lengths measured: OOM lengths, and ok_points (length, measured peak bytes) of cases that ran. A case
    that ran contradicts the frontier only if its peak with its inputs was within the budget: one that ran
    above it on a larger device (a what-if budget smaller than the machine's) says nothing against the fit.
    `device_bytes`, the memory of the device the OOMs happened on: within it, an OOM bounds the frontier too.
    `output_bytes_per_token`: what the call's peak holds at least (the output, and in fwd_bwd the input gradients):
    the fitted peak is taken as never below it. A workspace still fading at the measured lengths fits a power law
    below 1 (SDPA's CPU peak N^0.75), which extrapolated to 15.4M tokens in 23.5 GiB where the inputs and the
    output alone need 29.3 GiB."""
    if not budget_bytes > 0:
        raise ValueError(f"budget_bytes must be positive; got {budget_bytes}")
    floor = output_bytes_per_token
    length = _frontier_at(fit, budget_bytes, fit.exponent, input_bytes_per_token, floor)
    ends = [_frontier_at(fit, budget_bytes, e, input_bytes_per_token, floor) for e in (fit.exponent_low, fit.exponent_high)]
    low, high = (min(ends), max(ends)) if all(map(np.isfinite, (fit.exponent_low, fit.exponent_high))) else (0.0, math.inf)
    if _frontier_kind(fit, length) == "extrapolated":
        low = min([low, *(_class_frontier(fit, name, budget_bytes, input_bytes_per_token, floor) for name in leading_classes(fit))])
    within = lambda n, peak: peak + input_bytes_per_token * n <= budget_bytes  # noqa: E731
    kind, message = _frontier_kind(fit, length), ""
    bounding_ooms = oom_lengths if device_bytes is not None and budget_bytes <= device_bytes else ()
    below, above = _measured_bracket(ok_points, input_bytes_per_token, budget_bytes, bounding_ooms)
    if below is not None and not (length >= below[0] and (above is None or length < above[0])):
        # measured peaks outweigh the fitted curve: between two of them, or beyond the longest that fits
        fitted, length = length, _between(below, above, budget_bytes)
        kind = "in range" if above is not None else "extrapolated"  # between two measured lengths, or beyond them all
        inputs = " with its inputs" if input_bytes_per_token > 0 else ""
        measured = f"measured N = {format_length(below[0])} needs {_gib(below[1])}"
        if above is not None:
            measured += f", N = {format_length(above[0])} " + (f"needs {_gib(above[1])}" if above[1] is not None else "ran out of memory")
        bound = "about" if above is not None and above[1] is not None else "at least"  # interpolated, or the longest measured
        message = f"{kind}: {bound} N = {format_length(length)} fits {_gib(budget_bytes)}{inputs}: {measured}"
        message += f" (the fit alone said N = {format_length(fitted)})"
    if below is not None:
        low, high = max(low, below[0]), min(high, above[0] if above is not None else math.inf)
        if not low <= length <= high:  # the fit's interval missed the measured bracket altogether
            low, high = float(below[0]), float(above[0]) if above is not None else math.inf
    message = message or _frontier_message(fit, budget_bytes, length, (low, high), kind, input_bytes_per_token > 0)
    if floor > 0 and math.isfinite(length) and length > 0 and floor * length >= fit.predict(length):
        message += f" (there its output alone outgrows the fitted peak, N^{fit.exponent:.2f}: the peak is taken as at least its output)"
    wrong_oom = sorted(n for n in oom_lengths if n <= length)  # predicted to fit, yet ran out of memory
    wrong_ok = sorted(n for n, peak in ok_points if n > length and within(n, peak))  # predicted not to fit, yet fit
    wrong_over = sorted((n, peak + input_bytes_per_token * n) for n, peak in ok_points if n <= length and not within(n, peak))
    message += _conflict_message(fit, wrong_oom, wrong_ok, wrong_over)
    conflicts = tuple(sorted(wrong_oom + wrong_ok + [n for n, _ in wrong_over]))
    return Frontier(length, low, high, float(budget_bytes), kind, not conflicts, conflicts, message)


def _measured_bracket(ok_points, per_token: float, budget: float, oom_lengths=()):
    """((N, total) or None, (N, total or None) or None): the longest measured length whose peak with its inputs
    fits the budget, below the shortest that does not: a total over the budget, or an OOM (no total) when the
    caller says the budget lies within the device's memory. Measured peaks say so for any budget; an OOM does not
    for a what-if budget above the device (1 TiB learns nothing from an 80 GB GPU's). An accounting run's peaks are
    exact: cosFormer's causal fwd_bwd at 1 GiB fit at 16384 (1001.7 MiB) and not at 20480 (1065.9), where the fit
    said N = 14059."""
    totals = sorted((n, peak + per_token * n) for n, peak in ok_points)
    over = sorted([(n, None) for n in oom_lengths] + [(n, total) for n, total in totals if total > budget], key=lambda p: p[0])
    above = over[0] if over else None
    fitting = [(n, total) for n, total in totals if total <= budget and (above is None or n < above[0])]
    return (fitting[-1] if fitting else None), above


def _between(below: tuple, above: tuple | None, budget: float) -> float:
    """Where the budget falls between two measured totals, on the straight log-log line through them; the shorter
    length when there is no longer one or it ran out of memory (no total)."""
    if above is None or above[1] is None or not above[1] > below[1] > 0:
        return float(below[0])
    share = (math.log(budget) - math.log(below[1])) / (math.log(above[1]) - math.log(below[1]))
    return math.exp(math.log(below[0]) + share * (math.log(above[0]) - math.log(below[0])))


def _class_frontier(fit: Fit, name: str, budget_bytes: float, per_token: float, floor: float = 0.0) -> float:
    """The frontier of the complexity class model c0 + c1 g(N) fitted to the same medians.

    Far beyond the measured lengths a power law's interval says how well its slope is known, not whether the
    curve keeps that slope. It does not: at 80 GiB, N = 1k..64k, Combiner-Fixed's peak (blocks of sqrt(N): still
    bending upward) gave a 95% low end of N = 689728, where its accounted peak is 87 GiB (it fits up to about 640k);
    cosFormer's (a workspace still fading: fitted 0.74) put N = 11.6M, where its output and inputs alone need 89 GiB.
    The class models carry the constant term the power law lacks, so an extrapolated frontier's low end, what a
    gate's min_frontier relies on, is also no longer than the chosen class's (both leading classes' when the choice
    is ambiguous): 527k for Combiner-Fixed (n^1.5), 460k for -Axial (n log n or n^1.5), 6.5M for cosFormer (linear
    or n log n), and Nyströmformer's exact linear peak keeps its 5.24M."""
    model = class_model(fit, name)
    total = lambda x: max(model(x), floor * math.exp(x)) + per_token * math.exp(x)  # noqa: E731
    if total(math.log(MAX_SIZE)) <= budget_bytes:
        return math.inf
    return _longest_within(total, budget_bytes)  # the model only grows with N


def _frontier_at(fit: Fit, budget_bytes: float, exponent: float, per_token: float = 0.0, floor: float = 0.0) -> float:
    """Solve max(predict(N, exponent), floor * N) + per_token * N = budget for N. Without inputs or a floor a peak
    that does not grow never hits the budget; with them the total grows at least linearly, and N is found by
    bisection on ln N (the total only grows with N when the exponent is not negative: a shrinking peak counts as
    constant)."""
    center = fit.center_log_length
    log_peak_at_center = fit.intercept + fit.exponent * center  # the power-law part; the overhead is added below
    if per_token <= 0 and floor <= 0 and not fit.overhead:
        return math.inf if exponent <= 0 else exp_or_inf(center + (math.log(budget_bytes) - log_peak_at_center) / exponent)
    slope = max(exponent, 0.0)
    peak = lambda x: max(math.exp(log_peak_at_center + slope * (x - center)) + fit.overhead, floor * math.exp(x))  # noqa: E731
    total = lambda x: peak(x) + per_token * math.exp(x)  # noqa: E731
    if total(0.0) > budget_bytes:
        return 0.0  # not even one token fits
    if total(math.log(MAX_SIZE)) <= budget_bytes:  # up to the longest length a case may have
        return math.inf
    return _longest_within(total, budget_bytes)


def _longest_within(total, budget_bytes: float) -> float:
    """Largest N in 1..MAX_SIZE with total(ln N) <= budget_bytes, for a total that only grows with N and does not fit
    at MAX_SIZE (1 when even N = 1 does not fit): bisection on ln N to float precision. It stops when a step no longer moves the
    bracket (about 60 steps), where a fixed 200 steps spent two thirds of a 50k-cell `fit` frontier's time on
    steps that changed nothing; the answer is the same to the bit."""
    low, high = 0.0, math.log(MAX_SIZE)
    while True:
        middle = (low + high) / 2
        bracket = (middle, high) if total(middle) <= budget_bytes else (low, middle)
        if bracket == (low, high):
            return math.exp(low)
        low, high = bracket


def _frontier_kind(fit: Fit, length: float) -> str:
    if math.isinf(length):
        return "unbounded"
    return "in range" if fit.lengths_measured[0] <= length <= fit.lengths_measured[-1] else "extrapolated"


def _frontier_message(fit: Fit, budget_bytes: float, length: float, interval, kind: str, with_inputs: bool) -> str:
    if kind == "unbounded":
        return f"unbounded: peak does not grow with N (exponent {fit.exponent:.2f}), so no length exhausts {_gib(budget_bytes)}"
    inputs = " with its inputs" if with_inputs else ""
    if length < 1:  # "up to N = 0 (range 0..0) fits 1.0 MiB"
        return f"nothing fits: even one token's peak{inputs} exceeds {_gib(budget_bytes)}"
    low, high = (format_length(v) for v in interval)
    label = "range" if kind == "extrapolated" else "95%"  # an extrapolated low end also takes the class model's
    return f"{kind}: up to N = {format_length(length)} ({label} {low}..{high}) fits {_gib(budget_bytes)}{inputs}"


def _conflict_message(fit: Fit, wrong_oom: list, wrong_ok: list, wrong_over: list = ()) -> str:
    text = ""
    if wrong_oom:
        text += f"; inconsistent: OOM measured at N = {', '.join(map(format_length, wrong_oom))} where the fit predicts "
        text += f"{_gib(fit.predict(wrong_oom[0]))} (the fit underestimates the peak, or other memory was in use)"
    if wrong_ok:
        text += f"; inconsistent: N = {', '.join(map(format_length, wrong_ok))} ran within the budget where the fit predicts "
        text += f"{_gib(fit.predict(wrong_ok[-1]))} (the fit overestimates the peak there)"
    if wrong_over:
        lengths = ", ".join(format_length(n) for n, _ in wrong_over)
        text += f"; inconsistent: N = {lengths} measured {_gib(wrong_over[0][1])} with its inputs, over the budget"
    return text


def _gib(n_bytes: float) -> str:
    """A size in its own binary unit: a 200 MiB budget read "0.195 GiB"."""
    from attnprof.table import format_bytes

    return format_bytes(int(round(n_bytes)))
