"""How a fit's lengths are written: lengths as the length grammar writes them, a fitted metric's value with its unit."""

from __future__ import annotations

import math


def format_length(n: float) -> str:
    """1024 -> '1k', 65536 -> '64k', 3000 -> '3000', 3172.4 -> '3172', 2.4e13 -> '2.41e+13' (an
    extrapolation that far is an order of magnitude, not a length: its digits would be noise)."""
    if not math.isfinite(n):
        return str(n)
    if abs(n) >= 1e9:
        return f"{n:.3g}"
    rounded = round(n)
    if rounded >= 1024 and rounded % 1024 == 0:
        return f"{rounded // 1024}k"
    return str(rounded)


def span(lengths) -> str:
    return format_length(lengths[0]) if len(lengths) == 1 else f"{format_length(lengths[0])}..{format_length(lengths[-1])}"


def quantity(value: float, metric: str) -> str:
    """A value of a fitted metric with its unit, as the range sentences give an overhead ("0.409" read as nothing:
    a time in ms, bytes or FLOPs). Metrics are named by their frame columns or the gate's words."""
    from attnprof.table import format_bytes, format_ms

    if metric in ("time", "time_ms", "median_ms"):
        return format_ms(value)
    if "bytes" in metric:
        return format_bytes(int(round(value)))
    return f"{value:.3g} FLOPs" if metric == "flops" else f"{value:.3g}"
