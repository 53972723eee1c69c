"""An impl's declared counts (its `flops` and `min_bytes` formulas), read so that a broken formula costs only the
figure: one that raised ran after the timing and memory passes, and its `error` row kept neither (a robustness
audit), while a formula giving -5 FLOPs was stored as an ok count."""

from __future__ import annotations

import math
import numbers


def declared_count(formula, case, options, what: str) -> tuple[int | None, str]:
    """(count, "") from `formula(case, options)`, or (None, a note saying why there is none): it raised, or gave
    something that is not a finite count of 0 or more. `what`: the figure's name in the note ("FLOPs")."""
    from attnprof.failures import classify

    try:
        value = formula(case, options)
    except Exception as error:  # noqa: BLE001  (the impl's own code: only its figure is lost)
        return None, f"{what} not counted: its {what} formula raised ({classify(error)[1]})"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
        return None, f"{what} not counted: its {what} formula gave {value!r}, not a count"
    return int(value), ""
