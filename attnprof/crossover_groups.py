"""Impls whose measured curves are identical, listed once in the fits table and the crossover listing (pure).

Exact attentions share their FLOPs (softmax and the four SDPA entries: 4 N^2 d each), and the SDPA backends'
modelled peaks are one formula. Each crossing with such a set used to be printed once per member: on an accounting
run of every impl over 1k..64k, "cosformer vs sdpa", "vs sdpa-efficient", "vs sdpa-flash", "vs sdpa-math", "vs
softmax", five lines with one answer. Here the set is one name, "sdpa = sdpa-efficient = ... = softmax", and each
crossing with it one line; the fits table gives their one fit one row. The DataFrames (`attnprof fit --format json`,
`analyse`) keep every impl and every pair.
"""

from __future__ import annotations

import pandas as pd

from attnprof.crossover import crossover

EQUALS = " = "


def curve_key(fit) -> tuple:
    """What makes two curves the same: the lengths and the median (and spread) at each. Two impls with the same
    values there have the same fit, so every crossing with a third impl is the same too."""
    return (tuple(fit.lengths_measured), tuple(fit.medians), tuple(fit.spreads))


def equal_curve_names(fits: pd.DataFrame, config_cols, impl_col: str = "label") -> dict:
    """(configuration values..., metric, impl) -> the sorted impls (itself included) whose curve is identical."""
    names = {}
    fitted = fits[fits["fit"].notna()]
    for config, group in fitted.groupby([*config_cols, "metric"], dropna=False, sort=False):
        members: dict[tuple, list[str]] = {}
        for impl, fit in zip(group[impl_col].tolist(), group["fit"].tolist(), strict=True):
            members.setdefault(curve_key(fit), []).append(str(impl))
        for same in members.values():
            for impl in same:
                names[(*config, impl)] = tuple(sorted(same))
    return names


def merged_fits(fits: pd.DataFrame, config_cols, impl_col: str = "label") -> pd.DataFrame:
    """`fits` with one row per set of equal curves, its impl named "a = b = c"; failed fits stay as they are."""
    names = equal_curve_names(fits, config_cols, impl_col)
    keep, renamed = [], []
    for _, row in fits.iterrows():
        same = names.get((*(row[c] for c in config_cols), row["metric"], str(row[impl_col])))
        if same is None or same[0] == str(row[impl_col]):
            keep.append(True)
            renamed.append(EQUALS.join(same) if same else row[impl_col])
        else:
            keep.append(False)
    out = fits[keep].copy()
    out[impl_col] = renamed
    return out


def merged_crossovers(crossovers: pd.DataFrame, fits: pd.DataFrame, config_cols, impl_col: str = "label") -> pd.DataFrame:
    """`crossovers` with one row per pair of sets of equal curves: a row stays when both its impls are the first of
    their set, and when a set has more than one member its names become "a = b = c" in impl_a, impl_b, the
    cheaper sides and the message. Pairs within one set (they never cross) are dropped."""
    if not len(crossovers):
        return crossovers
    names = equal_curve_names(fits, config_cols, impl_col)
    columns = [*config_cols, "metric"]
    # plain tuples, not iterrows: a Series per row took 10 s of a 50k-cell run's 167,704 pairs
    fit_of = {(*config, str(impl)): fit for *config, impl, fit in _tuples(fits, [*columns, impl_col, "fit"])}
    keep, renames = [], {}
    for index, (*config, impl_a, impl_b) in enumerate(_tuples(crossovers, [*columns, "impl_a", "impl_b"])):
        impl_a, impl_b = str(impl_a), str(impl_b)
        set_a, set_b = names.get((*config, impl_a), (impl_a,)), names.get((*config, impl_b), (impl_b,))
        keep.append(set_a != set_b and set_a[0] == impl_a and set_b[0] == impl_b)
        if keep[-1] and (len(set_a) > 1 or len(set_b) > 1):
            renames[index] = (EQUALS.join(set_a), EQUALS.join(set_b), fit_of[(*config, impl_a)], fit_of[(*config, impl_b)])
    out = crossovers.reset_index(drop=True)
    # edited as lists and put back whole: a .loc write per renamed row took 7.6 ms (14 s for 1,804 rows)
    edited = {name: out[name].tolist() for name in ("impl_a", "impl_b", "cheaper_below", "cheaper_above", "message")}
    for index, (name_a, name_b, fit_a, fit_b) in renames.items():  # solved anew with the sets' names (the message is built from them)
        found = crossover(fit_a, fit_b, name_a=name_a, name_b=name_b)
        for name, value in zip(edited, (name_a, name_b, found.cheaper_below, found.cheaper_above, found.message), strict=True):
            edited[name][index] = value
    return out.assign(**edited)[keep].reset_index(drop=True)


def _tuples(frame: pd.DataFrame, columns: list[str]):
    return zip(*(frame[c] for c in columns), strict=True)
