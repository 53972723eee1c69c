"""The samples a scaling fit reads (fit.py): the valid values, one median per length, and each length's relative
spread, from the raw samples or given beside the medians. Pure: numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnprof.fit_range import MIN_KEPT


@dataclass(frozen=True)
class Samples:
    """One series' valid samples and their median per length: what every step of a fit reads."""

    all_lengths: np.ndarray  # every valid sample's length
    all_values: np.ndarray
    n_dropped: int
    lengths: np.ndarray  # distinct, sorted
    values: np.ndarray  # the median at each
    spreads: object  # None, or fit_power_law's `spreads` as a lookup (distinct lengths -> spreads)
    counts: object  # None (the samples' own, at each length), or a lookup of fit_power_law's `counts` (0 where not given)

    @classmethod
    def of(cls, lengths, values, spreads, counts=None) -> Samples:
        lookup = None if spreads is None else _given_spreads(lengths, values, spreads)
        if spreads is not None:  # medians: as many samples as given behind each (the fewest where several share a length)
            counts = _given_spreads(lengths, values, np.zeros(np.size(values)) if counts is None else counts, np.min, "counts")
        elif counts is not None:  # raw samples count themselves (a list here was called as the lookup: a TypeError)
            raise ValueError("counts go with spreads: the samples behind each given median; raw samples count themselves")
        all_lengths, all_values, n_dropped = _valid_samples(lengths, values)
        med_lengths, med_values = _medians(all_lengths, all_values)
        if len(med_lengths) < 2:
            raise ValueError(
                f"a scaling fit needs at least 2 distinct lengths with a positive value; got {len(med_lengths)} "
                f"({n_dropped} of {n_dropped + len(all_values)} values were NaN, inf or <= 0)"
            )
        return cls(all_lengths, all_values, n_dropped, med_lengths, med_values, lookup, counts)

    def counts_at(self, distinct) -> tuple:
        if self.counts is not None:
            return tuple(int(count) for count in self.counts(distinct))
        return tuple(int(count) for count in (self.all_lengths[:, None] == np.asarray(distinct)[None, :]).sum(axis=0))

    def needs_overhead(self, min_length) -> bool:
        """The range rule's overhead fit (a grid search, the costliest step) serves it and the subtraction both."""
        return min_length is None and len(self.lengths) >= MIN_KEPT


def _valid_samples(lengths, values):
    n = np.asarray(lengths, dtype=float).ravel()
    y = np.asarray(values, dtype=float).ravel()
    if n.shape != y.shape:
        raise ValueError(f"lengths and values differ in size ({n.size} vs {y.size})")
    bad = ~(np.isfinite(n) & (n > 0))
    if bad.any():
        raise ValueError(f"lengths must be positive and finite; got {n[bad][:5].tolist()}")
    ok = np.isfinite(y) & (y > 0)
    return n[ok], y[ok], int((~ok).sum())


def _medians(lengths: np.ndarray, values: np.ndarray):
    distinct = np.unique(lengths)  # sorted
    if len(distinct) == len(lengths):  # one value per length (a frame of cell medians): nothing to reduce
        order = np.argsort(lengths, kind="stable")
        return lengths[order], values[order]
    return distinct, np.array([np.median(values[lengths == n]) for n in distinct])


def relative_spreads(lengths: np.ndarray, values: np.ndarray, distinct: np.ndarray) -> list[float]:
    """Half the interquartile range over the median at each distinct length (numpy's linear quantiles, as
    records.timing_stats stores them: the dashboard derives the same figure from a cell's iqr_ms and median_ms)."""
    spreads = []
    for n in distinct:
        at = values[lengths == n]
        spreads.append(float(np.subtract(*np.percentile(at, [75, 25])) / (2 * np.median(at))) if len(at) > 1 else 0.0)
    return spreads


def _given_spreads(lengths, values, spreads, reduce=np.median, name: str = "spreads"):
    """length -> spread lookup over the valid values' given spreads (the median of those at one length; `reduce`);
    `name`: what they are, for the error."""
    n = np.asarray(lengths, dtype=float).ravel()
    y = np.asarray(values, dtype=float).ravel()
    s = np.nan_to_num(np.asarray(spreads, dtype=float).ravel(), nan=0.0)
    if s.shape != y.shape:
        raise ValueError(f"values and {name} differ in size ({y.size} vs {s.size})")
    ok = np.isfinite(y) & (y > 0)
    n, s = n[ok], s[ok]
    if len(np.unique(n)) == len(n):  # one value per length (the dashboard's cell medians): a lookup, no medians
        by_length = dict(zip(n.tolist(), s.tolist(), strict=True))
        return lambda distinct: [by_length[float(length)] for length in distinct]
    return lambda distinct: [float(reduce(s[n == length])) for length in distinct]
