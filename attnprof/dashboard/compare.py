"""Two runs side by side: per-cell time and memory ratios, and exponent changes, regressions first. Pure.

Cells are matched on their configuration, length and seed (the case key without the run). Ratios are candidate
over baseline, so above 1 is worse. A cell that ran in the baseline and failed in the candidate is the worst kind
of regression and sorts first; one that failed before and runs now sorts last.
"""

from __future__ import annotations

import math

import pandas as pd

from attnprof.analysis import CONFIG, timing_flags
from attnprof.dashboard.views import name_column, varying
from attnprof.fit import format_length

KEY = [*CONFIG, "seq_len", "seed"]
CELL_COLUMNS = ["config", "seq_len", "status_a", "status_b", "time_a_ms", "time_b_ms", "time_ratio", "peak_a_bytes", "peak_b_bytes",
                "peak_ratio", "change", "caveat"]  # fmt: skip
UNCHANGED = 0.02  # ratios within 2% of 1 read "unchanged": timing noise, not a change
EXPONENT_COLUMNS = ["config", "metric", "exponent_a", "exponent_b", "delta", "lengths_a", "lengths_b", "class_a", "class_b", "significant"]


def compare_cells(baseline: pd.DataFrame, candidate: pd.DataFrame) -> pd.DataFrame:
    """One row per cell both runs measured, worst first (`score`: status regression, then the larger ratio)."""
    a = baseline[[*KEY, "status", "median_ms", "peak_bytes"]].assign(timing=timing_flags(baseline))
    b = candidate[[*KEY, "status", "median_ms", "peak_bytes"]].assign(timing=timing_flags(candidate))
    both = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    if both.empty:
        return pd.DataFrame(columns=[*CELL_COLUMNS, "score"])
    both = both.assign(
        config=name_column(both, varying(pd.concat([baseline, candidate]), CONFIG[1:])),
        time_ratio=_ratio(both["median_ms_b"], both["median_ms_a"]),
        peak_ratio=_ratio(both["peak_bytes_b"], both["peak_bytes_a"]),
    )
    rows = list(zip(*(both[c].tolist() for c in ("status_a", "status_b", "time_ratio", "peak_ratio")), strict=False))
    both["change"] = [_change(*row) for row in rows]
    # a time ratio from a cell timed on a busy machine (or noisy) on either side: an audit's unchanged code read "x19 slower"
    both["caveat"] = [
        "; ".join(f"{flag} in the {side}" for flag, side in ((a_flag, "baseline"), (b_flag, "candidate")) if flag)
        for a_flag, b_flag in zip(both["timing_a"].fillna(""), both["timing_b"].fillna(""), strict=True)
    ]
    both["score"] = [_score(*row) for row in rows]
    both = both.rename(
        columns={"median_ms_a": "time_a_ms", "median_ms_b": "time_b_ms", "peak_bytes_a": "peak_a_bytes", "peak_bytes_b": "peak_b_bytes"}
    )
    return both.sort_values(["score", "config", "seq_len"], ascending=[False, True, True])[[*CELL_COLUMNS, "score"]].reset_index(drop=True)


def caveat_note(cells: pd.DataFrame) -> str:
    """'' or a sentence on the shared cells whose time ratio rests on a cell timed on a busy machine or noisy."""
    flagged = int((cells["caveat"] != "").sum()) if len(cells) else 0
    if not flagged:
        return ""
    return (f"Of the shared cells, {flagged} were timed on a busy machine or are noisy in one run or both (the caveat column): "
            "their time ratios may reflect the machine, not the code; time them again on a quiet one.")  # fmt: skip


def _ratio(new: pd.Series, old: pd.Series) -> pd.Series:
    new, old = new.astype(float), old.astype(float)
    return (new / old).where((old > 0) & (new > 0))


def _change(status_a: str, status_b: str, time_ratio: float, peak_ratio: float) -> str:
    if status_a == "ok" and status_b != "ok":
        return f"regressed: ok -> {status_b}"
    if status_a != "ok" and status_b == "ok":
        return f"fixed: {status_a} -> ok"
    if status_a != status_b:
        return f"{status_a} -> {status_b}"
    # each metric that moved, and which way: one "x0.006 worst" read a 170x speed-up as the worst change
    moved = [
        f"{name} x{ratio:.3g} ({better if ratio < 1 else worse})"
        for name, ratio, better, worse in (("time", time_ratio, "faster", "slower"), ("memory", peak_ratio, "less", "more"))
        if ratio == ratio and abs(ratio - 1) > UNCHANGED
    ]
    if moved:
        return "; ".join(moved)
    return "same (within 2%)" if time_ratio == time_ratio or peak_ratio == peak_ratio else ""


def _score(status_a: str, status_b: str, time_ratio: float, peak_ratio: float) -> float:
    """The sort key, worst first: a cell that fails now, then the larger ratio of a cell worse in either metric, then
    the cells within UNCHANGED (1), then the improved ones by their smaller ratio (the most improved last), then the
    fixed ones. The larger ratio alone ordered improved cells by their unchanged memory (0.646, 0.926, 0.425, 0.0337)
    and put some of the unchanged among the worse (a user audit)."""
    if status_a == "ok" and status_b != "ok":
        return math.inf
    if status_a != "ok" and status_b == "ok":
        return -math.inf
    ratios = [r for r in (time_ratio, peak_ratio) if r == r]
    if not ratios:
        return 0.0
    if max(ratios) > 1 + UNCHANGED:
        return max(ratios)
    return min(ratios) if min(ratios) < 1 - UNCHANGED else 1.0


def shared_configurations(baseline: pd.DataFrame, candidate: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames kept to the cells both ran (configuration and length, ok in both): exponents are compared only there, and
    over the same lengths. Fitting the other configurations cost a 50,000-row baseline 13.8 s against a 5,000-row
    candidate whose 500 configurations it shared; fitting each run over its own lengths (512..8k against 512..4k)
    called cosFormer's time exponent 1.105 -> 0.729 a significant change where every shared cell agreed within 0.5%."""
    keys = [*CONFIG, "seq_len"]
    ok = [frame[frame["status"] == "ok"] for frame in (baseline, candidate)]  # a cell failed on one side is no shared length
    shared = pd.MultiIndex.from_frame(ok[0][keys]).intersection(pd.MultiIndex.from_frame(ok[1][keys]))
    return tuple(frame[pd.MultiIndex.from_frame(frame[keys]).isin(shared)] for frame in ok)


def exponent_changes(frame: pd.DataFrame, fits_a: pd.DataFrame, fits_b: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and metric: both exponents, the lengths each was fitted over (two runs over 256..2k and
    512..4k gave 1.767 and 1.488 for one softmax, a change of range as much as of code), the change, and whether
    their 95% intervals are disjoint."""
    columns = [*CONFIG, "metric", "exponent", "exponent_low", "exponent_high", "complexity", "lengths_used"]
    usable = lambda fits: fits[fits["fit"].notna()][columns] if len(fits) else pd.DataFrame(columns=columns)
    both = usable(fits_a).merge(usable(fits_b), on=[*CONFIG, "metric"], suffixes=("_a", "_b"))
    if both.empty:
        return pd.DataFrame(columns=EXPONENT_COLUMNS)
    both = both.assign(
        config=name_column(both, varying(frame, CONFIG[1:])),
        delta=both["exponent_b"] - both["exponent_a"],  # unrounded: each output rounds as it shows (1.9175 read 1.917 here, 1.918 in fit)
        significant=(both["exponent_low_b"] > both["exponent_high_a"]) | (both["exponent_high_b"] < both["exponent_low_a"]),
        lengths_a=both["lengths_used_a"].map(_span),
        lengths_b=both["lengths_used_b"].map(_span),
        class_a=both["complexity_a"],
        class_b=both["complexity_b"],
    )
    # the changes beyond their intervals first, each group by the size of the change either way: the CLI showed its top
    # rows so and listed --all and JSON by the signed change, a drop of 2.389 last (a user audit)
    order = both.assign(size=both["delta"].abs()).sort_values(["significant", "size"], ascending=[False, False], kind="stable")
    return order[EXPONENT_COLUMNS].reset_index(drop=True)


def _span(lengths) -> str:
    return f"{format_length(min(lengths))}..{format_length(max(lengths))}"
