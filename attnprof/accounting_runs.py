"""Accounting a Case: exact FLOPs and peak live bytes on the `meta` device (`sweep --accounting`).

Cached per case: the same numbers come out every time, so the worker's host-memory guard and the
FLOP count share one accounting run.
"""

from __future__ import annotations

import functools

from attnprof.accounting import AccountingReading, account_call
from attnprof.impls.base import AttentionImpl, io_bytes, meta_stands_for
from attnprof.inputs import make_call, make_inputs
from attnprof.records import Measurement, Status, join_notes
from attnprof.spec import Case
from attnprof.work_figures import declared_count, modelled_peak


@functools.lru_cache(maxsize=256)
def _account_cached(impl_name: str, case: Case) -> AccountingReading:
    from attnprof import impls

    impl = impls.get(impl_name)
    # a CPU case (the host-memory guard) is accounted with the CPU's work sizes, an accounting case as a GPU's
    with meta_stands_for("cuda" if case.device == "meta" else case.device):
        return account_call(make_call(impl.bind(case), make_inputs(case, device="meta")))


def account_on_meta(impl: AttentionImpl, case: Case) -> AccountingReading:
    return _account_cached(impl.name, case)


def account_case(impl: AttentionImpl, case: Case) -> Measurement:
    """The Measurement of an accounting run: no times, peak_source "accounting" (or "model")."""
    options = impl.resolve_options(case.options)
    min_bytes, min_bytes_note = declared_count(impl.min_bytes, case, options, "min_bytes") if impl.min_bytes else (io_bytes(case), "")
    work = dict(min_bytes=min_bytes)
    if not impl.meta_exact:
        if impl.memory_model is None or impl.flops is None:
            missing = [what for what, given in (("memory_model", impl.memory_model), ("flops formula", impl.flops)) if given is None]
            lacks = "neither a memory_model nor a flops formula" if len(missing) == 2 else f"no {missing[0]}"  # not "no a ..."
            reason = f"{impl.name} is a fused kernel (meta_exact=False): meta runs the unfused math path, and it declares {lacks}"
            return Measurement(case=case, status=Status.UNSUPPORTED, reason=reason)
        peak, peak_note = modelled_peak(impl, case, options)
        if peak is None:  # the row's one figure
            return Measurement(case=case, status=Status.ERROR, reason=f"{impl.name} is a fused kernel (meta_exact=False): {peak_note}")
        flops, flops_note = declared_count(impl.flops, case, options, "FLOPs")
        return Measurement(
            case=case, status=Status.OK, reason=join_notes("modelled: analytic formula, unverified on a GPU", flops_note, min_bytes_note),
            peak_bytes=peak, peak_source="model",
            flops=flops, flops_source="formula" if flops is not None else None, **work,
        )  # fmt: skip
    reading = account_on_meta(impl, case)
    flops, source, flops_note = reading.flops, "counted", ""
    if impl.flops:  # a formula that fails leaves the count meta took
        formula, flops_note = declared_count(impl.flops, case, options, "FLOPs")
        flops, source = (formula, "formula") if formula is not None else (flops, source)
        flops_note = flops_note and f"{flops_note}; counted on meta instead"
    note = ""
    if reading.fused_calls:  # meta ran it unfused: the peak is the N x N math path's, not the fused kernel's
        note = (f"it calls {', '.join(reading.fused_calls)}, which meta runs unfused (N x N) and a GPU fused: this peak is "
                "not a GPU's; declare meta_exact=False and a memory_model")  # fmt: skip
    return Measurement(
        case=case, status=Status.OK, reason=join_notes(note, flops_note, min_bytes_note), peak_bytes=reading.peak_bytes,
        peak_source="accounting", peak_live_bytes=reading.peak_bytes, flops=flops, flops_source=source, **work,
    )  # fmt: skip
