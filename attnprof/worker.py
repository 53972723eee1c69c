"""Child side: measure one Case and return its Measurement, whatever happens.

Order of work for a case: refusals, the check against the reference (once per configuration and
worker), a host-memory guard on the CPU, inputs, the memory pass (one call), the spot check of an
exact impl at the case's length (on an untimed call's output), the timing pass, FLOPs and bytes.
`CaseMeasurer.measure` never raises for a problem of the case; the process around it, the loop the parent talks
to over a pipe (runner.py), is worker_process.py.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

from attnprof import cpu_heap, impls, torch_state
from attnprof.checks import CheckResult, check_key, run_check
from attnprof.failures import NOT_RUN, classify
from attnprof.impls.base import AttentionImpl, checking_the_accounted_plan, io_bytes
from attnprof.inputs import make_call, make_inputs
from attnprof.records import Measurement, Status, join_notes
from attnprof.spec import Case
from attnprof.spot_check import SpotCheck
from attnprof.table import format_bytes
from attnprof.trackers.host_contention import host_contention
from attnprof.work_figures import modelled_peak

HOST_MEMORY_FRACTION = 0.8  # refuse a CPU case predicted to need more than this share of free RAM


@dataclass(frozen=True)
class Settings:
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 3
    accounting: bool = False  # measure FLOPs and live bytes on `meta` only, no timing


class CaseMeasurer:
    """Holds what a worker keeps between cases: the check results per configuration."""

    def __init__(self):
        self.checks: dict[tuple, CheckResult] = {}
        self.poisoned = False  # a CUDA error left the context unusable: the parent restarts us
        self.stage = ""  # the step of the case under way: an error row says which one raised
        self.announce = None  # tells the parent each step too, for a timeout's or a crash's row (worker_process sets it)
        self.torch_settings: dict = {}  # torch's global settings as the worker started: put back after each case

    def keep_torch_settings(self) -> None:
        self.torch_settings = torch_state.snapshot()

    def at(self, stage: str) -> None:
        self.stage = stage
        if self.announce is not None:
            self.announce(stage)

    def measure(self, case: Case, settings: Settings) -> Measurement:
        started = time.perf_counter()
        self.at("its refusals")
        try:
            measurement = self._measure(case, settings)
        except BaseException as error:  # any failure of the case becomes its row (an impl's sys.exit, KeyboardInterrupt or
            # own BaseException too: each killed the worker, leaving "exited with status 1" and a traceback on the terminal,
            # and a fresh worker crashed again at every further length)
            status, reason, poisoned = classify(error)
            self.poisoned = self.poisoned or poisoned
            # which step: an out-of-memory in the timing pass (the heap held for it) is not one in the memory pass
            measurement = Measurement(case=case, status=status, reason=f"{reason}; during {self.stage}")
        if measurement.status in (Status.ERROR, Status.OOM):
            # A traceback keeps the failed call's tensors alive through reference cycles; collected here, past every
            # except block (the check's too): inside one the exception being handled still held them, and a collect
            # there freed nothing (200 MB in a cycle stayed allocated through the cache release into the next cases: a
            # GPU-path review)
            gc.collect()
        try:
            _release_cached_memory(case.device)
        except Exception as error:  # noqa: BLE001 - a dead CUDA context raises here too (sticky errors): the worker is done
            measurement = self._after_a_dead_context(measurement, error)
        note = torch_state.changed_note(torch_state.restore(self.torch_settings))
        _add_note(measurement, note)
        measurement.wall_s = time.perf_counter() - started
        return measurement

    def _after_a_dead_context(self, measurement: Measurement, error: BaseException) -> Measurement:
        """The device failed after the case (its release of cached memory raised): a fault of this case's kernels seen
        late (CUDA reports them asynchronously) or the case's own error leaving the context dead. It raised out of
        measure() and killed the worker: a `crashed` row without the CUDA message (a GPU-path review). Now the case
        keeps its own failure, or an ok one becomes that error, and the parent starts a fresh worker."""
        self.poisoned = True
        status, reason, _ = classify(error)
        if measurement.status == Status.OK:
            return Measurement(case=measurement.case, status=status, reason=f"{reason}; after the case (the device reported it late)")
        _add_note(measurement, f"then the device failed ({reason}): the next case gets a fresh worker")
        return measurement

    def warm_up(self, device: str) -> None:
        """Measure one tiny case and forget it, before the worker says "ready": torch's first-use costs then
        fall in start-up, not in the first case's timeout. On the CPU the first op on `meta` (the host-memory
        guard's) imports torch._dynamo, 1.3-1.7 s here, which timed a 2 ms case out under --timeout 1; on a
        GPU the first op creates the CUDA context and the cuBLAS handle."""
        tiny = Case(impl="softmax", seq_len=16, batch=1, heads=1, head_dim=16, dtype="float32", device=device, causal=False, mode="fwd")
        self.measure(tiny, Settings(warmup_ms=0.0, rep_ms=0.0, min_reps=1, accounting=device == "meta"))  # meta only accounts
        self.checks.clear()  # the tiny case's check is no real case's

    def _measure(self, case: Case, settings: Settings) -> Measurement:
        impl = impls.get(case.impl)
        refused = refusal_of(impl, case)
        if refused is not None:
            return refused
        if settings.accounting:
            return self._accounted(impl, case)
        self.at("its check against the reference")
        check = self._check(impl, case)
        if check.failure:
            return Measurement(case=case, status=Status.ERROR, reason=check.failure, check_error=check.check_error)
        self.at("the host-memory guard's prediction")
        refusal, guard_note = _host_memory_refusal(impl, case)
        if refusal:
            return Measurement(case=case, status=Status.OOM, reason=refusal)
        measurement = _measure_passes(impl, case, settings, self.at)
        _add_note(measurement, guard_note)
        measurement.check_error, measurement.fidelity_error = check.check_error, check.fidelity_error
        return measurement

    def _accounted(self, impl: AttentionImpl, case: Case) -> Measurement:
        """An accounting row, after the impl's check against the reference on the CPU where it runs there: an impl
        without its 1/sqrt(d) scale was accounted ok, and a gate on its exponents passed. A CUDA-only impl (a
        Triton backend, a pinned SDPA backend) is checked by a GPU session's tests instead."""
        from attnprof.accounting_runs import account_case

        on_cpu = case.resized(device="cpu")
        self.at("its check against the reference")
        with checking_the_accounted_plan():  # the plan meta counts: backend=compile compiled first, 16 s a configuration
            check = None if impl.not_supported(on_cpu) else self._check(impl, on_cpu)
        if check is not None and check.failure:
            return Measurement(case=case, status=Status.ERROR, reason=check.failure, check_error=check.check_error)
        self.at("the accounting on meta")
        measurement = account_case(impl, case)
        if check is not None and measurement.status == Status.OK:
            measurement.check_error, measurement.fidelity_error = check.check_error, check.fidelity_error
        return measurement

    def _check(self, impl: AttentionImpl, case: Case) -> CheckResult:
        key = check_key(case)
        if key not in self.checks:
            try:
                self.checks[key] = run_check(impl, case)
            except BaseException as error:  # the check itself raising is a failed check (whatever the impl raised)
                status, reason, poisoned = classify(error)
                # the memory of the moment, not a wrong impl: an `oom` row (larger lengths skipped), not kept; a kernel
                # refused at run time ("No viable backend") an `unsupported` row, not an `error` for every length
                if status in (Status.OOM, Status.UNSUPPORTED):
                    raise
                self.poisoned = self.poisoned or poisoned
                self.checks[key] = CheckResult(float("nan"), float("nan"), f"raised during its check against the reference: {reason}")
        return self.checks[key]


def refusal_of(impl: AttentionImpl, case: Case) -> Measurement | None:
    """The impl's refusal of `case` as its row (`unsupported`), None when it runs it; a refuse hook that raises is an
    `error` row saying so, whatever it raised. One answer wherever it is asked: the sweep's process for built-in impls
    (runner.refusal), a worker for plugins', whose MemoryError there became an `oom` row with skips after it where the
    dry run said error (a review)."""
    try:
        reasons = impl.not_supported(case)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM where this runs in the user's process (a dry run, the sweep's own): a stop
        raise
    except BaseException as error:  # noqa: BLE001  (the impl's own code, whatever else it raises)
        _, reason, _ = classify(error)
        return Measurement(case=case, status=Status.ERROR, reason=f"{reason}; during its refusals (the impl's refuse hook)")
    return Measurement(case=case, status=Status.UNSUPPORTED, reason="; ".join(reasons)) if reasons else None


def _measure_passes(impl: AttentionImpl, case: Case, settings: Settings, at=lambda stage: None) -> Measurement:
    """The passes of a case that was checked and fits; `at(stage)` names each step as it starts (an error row's "during")."""
    from attnprof.timing import bench, energy_per_call

    at("making its inputs")
    inputs = make_inputs(case)
    call = make_call(impl.bind(case), inputs)
    spot = SpotCheck(impl, case, inputs)  # the first untimed call's output and the gradients, at the case's own length
    measurement = Measurement(case=case, status=Status.OK)
    memory_started = time.perf_counter()
    at("the memory pass (its first call)")
    if case.device.startswith("cuda"):
        _memory_pass_cuda(spot.watching(call), case, measurement)
        at("the check at its own length")
        if wrong := spot.failure():
            return Measurement(case=case, status=Status.ERROR, reason=wrong)
    else:
        _memory_pass_cpu(call, measurement)
    memory_pass_ms = (time.perf_counter() - memory_started) * 1e3
    if case.device.startswith("cuda"):
        at("the timing pass")
        measurement.times_ms = bench(call, case.device, settings.warmup_ms, settings.rep_ms, settings.min_reps)
        energy = _energy_counter(case)
        if energy is not None:
            at("the energy reading (calls after timing)")
            measurement.energy_j = energy_per_call(call, case.device, energy.energy_mj, min(measurement.times_ms))
    else:
        with cpu_heap.retained():
            at("the untimed calls before timing")
            cpu_heap.reserve(measurement.peak_bytes)  # resident memory for the calls, however the heap fragments (cpu_heap.py)
            cpu_heap.prime(spot.watching(call), settings.rep_ms)  # grows the retained heap to the case's working set; not timed
            at("the check at its own length")
            if wrong := spot.failure():
                return Measurement(case=case, status=Status.ERROR, reason=wrong)
            # The memory pass was the first, warm-making call and counts against the warm-up budget
            # (its duration overstates a call's: the trackers slow it 1.3-6x), so a slow case costs 2 + min_reps calls.
            budget = (settings.warmup_ms, settings.rep_ms, settings.min_reps)
            at("the timing pass")
            with host_contention() as contention:  # a busy machine inflates every sample alike: the spread misses it
                measurement.times_ms = bench(call, case.device, *budget, warm_ms=memory_pass_ms)
            measurement.reason = contention.note()
    _add_note(measurement, spot.note)
    at("counting its FLOPs and bytes")
    _add_work_figures(impl, case, measurement)
    return measurement


def _memory_pass_cpu(call, measurement: Measurement) -> None:
    from attnprof.accounting import live_bytes_mode
    from attnprof.trackers.cpu_allocator import CpuAllocatorTracker
    from attnprof.trackers.host_rss import rss_tracker

    # The profiler starts before the RSS baseline: its buffers read as the call's RSS (Combiner-Mixture fwd-bwd at
    # N = 256: 11.4 MB of RSS for 6.2 MB allocated, 7.3 MB with this order).
    with cpu_heap.returned(), CpuAllocatorTracker() as allocator, rss_tracker() as rss, live_bytes_mode() as live:
        call()
    measurement.peak_live_bytes = int(live.peak_bytes)
    measurement.peak_rss_bytes = rss.peak_above_start
    if allocator.peak_bytes is None:  # no profiler here: the live tensors, which miss a kernel's own workspace
        measurement.peak_bytes, measurement.peak_source = measurement.peak_live_bytes, "live_tensors"
    else:
        measurement.peak_alloc_bytes = allocator.peak_bytes
        measurement.peak_bytes, measurement.peak_source = allocator.peak_bytes, "allocator"


def _memory_pass_cuda(call, case: Case, measurement: Measurement) -> None:
    from attnprof.trackers.host_rss import rss_tracker
    from attnprof.trackers.nvml import NvmlDevice
    from attnprof.trackers.torch_allocator import AllocatorTracker

    call()  # first-call work (kernel selection, cuBLAS workspace) is not the steady-state peak
    # Its blocks back to the device, or the tracked call would find them cached: the reserved and NVML peaks, which
    # measure growth, read about 0 for nearly every case (the allocated peak, counted from live blocks, did not).
    _release_cached_memory(case.device)
    nvml = NvmlDevice(case.device)
    with rss_tracker() as rss, nvml.memory_tracker() as device_memory, AllocatorTracker(case.device) as allocator:
        call()
    measurement.peak_alloc_bytes = allocator.reading.peak_alloc_bytes
    measurement.peak_reserved_bytes = allocator.reading.peak_reserved_bytes
    measurement.peak_device_bytes = device_memory.peak_above_start
    measurement.peak_rss_bytes = rss.peak_above_start
    measurement.peak_bytes, measurement.peak_source = measurement.peak_alloc_bytes, "allocator"


def _energy_counter(case: Case):
    if not case.device.startswith("cuda"):
        return None
    from attnprof.trackers.nvml import NvmlDevice

    device = NvmlDevice(case.device)
    return device if device.available else None


def _add_work_figures(impl: AttentionImpl, case: Case, measurement: Measurement) -> None:
    """FLOPs (the impl's formula, else counted on meta) and the minimum bytes moved."""
    from attnprof.work_figures import declared_count

    options = impl.resolve_options(case.options)
    if impl.flops is not None:
        measurement.flops, note = declared_count(impl.flops, case, options, "FLOPs")
        measurement.flops_source = "formula" if note == "" else None
        _add_note(measurement, note)
    elif impl.meta_exact:
        from attnprof.accounting_runs import account_on_meta

        try:
            measurement.flops, measurement.flops_source = account_on_meta(impl, case).flops, "counted"
        except Exception as error:  # noqa: BLE001  (it ran on the device and was checked: only the count is lost)
            note = f"FLOPs not counted: it does not run on meta ({classify(error)[1]})"
            _add_note(measurement, note)
    if impl.min_bytes is None:
        measurement.min_bytes = io_bytes(case)
    else:
        measurement.min_bytes, note = declared_count(impl.min_bytes, case, options, "min_bytes")
        _add_note(measurement, note)


def _host_memory_refusal(impl: AttentionImpl, case: Case) -> tuple[str | None, str]:
    """On the CPU a case far beyond free RAM would bring in the kernel's OOM killer (or swap the
    machine to a halt); the exact meta accounting predicts its peak in milliseconds instead."""
    if case.device != "cpu":
        return None, ""
    import psutil

    available = psutil.virtual_memory().available
    limit = HOST_MEMORY_FRACTION * available
    inputs = make_inputs(case, device="meta")
    share = f"{HOST_MEMORY_FRACTION:.0%} of available host memory ({format_bytes(available)})"
    # Inputs that alone overflow are refused before the call is accounted: accounting a chunked impl at
    # millions of tokens takes longer than running out of memory (cosFormer at N = 16M: over a minute).
    if inputs.nbytes > limit:
        return f"its inputs alone need {format_bytes(inputs.nbytes)}, over {share}{NOT_RUN}", ""
    note = ""
    try:
        call_peak, model_note = _predicted_call_peak(impl, case, inputs.q)
    except Exception as error:  # an impl that runs here but not on meta (a tensor made without q's device) is no error
        status, reason, _ = classify(error)
        if status == Status.OOM:
            raise
        call_peak, model_note = _output_bytes(inputs.q), ""
        note = f"the host-memory guard could not run it on meta ({reason}): its peak was predicted as its output only"
    if model_note:
        note = f"the host-memory guard predicted its peak as its output only ({model_note})"
    predicted = inputs.nbytes + call_peak
    if predicted > limit:
        return f"predicted peak {format_bytes(predicted)} exceeds {share}{NOT_RUN}", ""
    return None, note


def _predicted_call_peak(impl: AttentionImpl, case: Case, query) -> tuple[int, str]:
    """(the call's peak above its inputs, "") exact on meta where the impl runs there as it would here, else from its
    analytic model, else at least its output (a fused kernel writes that much whatever else it needs); a model that
    gives no count leaves the output, and the note says why."""
    if impl.meta_exact:
        from attnprof.accounting_runs import account_on_meta

        return account_on_meta(impl, case).peak_bytes, ""
    if impl.memory_model is not None:
        peak, note = modelled_peak(impl, case, impl.resolve_options(case.options))
        if peak is not None:
            return peak, ""
        return _output_bytes(query), note
    return _output_bytes(query), ""


def _output_bytes(query) -> int:
    """At least what any impl's call needs: its output, of the queries' shape and dtype."""
    return query.numel() * query.element_size()


def _add_note(measurement: Measurement, note: str) -> None:
    """`note` after the row's reason (one "; " between, none for an empty part)."""
    measurement.reason = join_notes(measurement.reason, note)


def _release_cached_memory(device: str) -> None:
    """Give cached blocks back so the next case's reserved-memory figure starts from the same floor.
    (A full gc.collect costs ~0.1-0.3 s with torch loaded; ok cases free their tensors by reference
    counting, so it runs only after a failure.)"""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)  # an asynchronous fault of the case's kernels raises here, not in the next case
        torch.cuda.empty_cache()
