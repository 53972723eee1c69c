"""An impl's declared counts (its `flops` and `min_bytes` formulas), read so that a broken formula costs only the
figure: one that raised ran after the timing and memory passes, and its `error` row kept neither (a robustness
audit), while a formula giving -5 FLOPs was stored as an ok count."""

from __future__ import annotations

import math
import numbers


def declared_count(formula, case, options, what: str, named: str = "") -> tuple[int | None, str]:
    """(count, "") from `formula(case, options)`, or (None, a note saying why there is none): it raised, or gave
    something that is not a finite count of 0 or more. `what`: the figure's name in the note ("FLOPs"); `named`: the
    formula's (default "its FLOPs formula")."""
    from attnprof.failures import classify

    named = named or f"its {what} formula"
    try:
        value = formula(case, options)
    except Exception as error:  # noqa: BLE001  (the impl's own code: only its figure is lost)
        return None, f"{what} not counted: {named} raised ({classify(error)[1]})"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
        return None, f"{what} not counted: {named} gave {value!r}, not a count"
    return int(value), ""


def modelled_peak(impl, case, options) -> tuple[int | None, str]:
    """The peak bytes above the inputs from the impl's memory_model, as declared_count reads a formula: a model giving
    -5 was an ok row peaking at "-5 B", one giving None an error naming neither the model nor its line."""
    return declared_count(impl.memory_model, case, options, "peak", "its memory_model")
