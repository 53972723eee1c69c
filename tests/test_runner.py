"""Every status path through a real worker process, skipping after oom/timeout, restarts, resume."""

import itertools
import os
import re
import subprocess
import sys

import pytest
from fake_impls import planted_raise_at
from small_sweeps import assert_gone_soon, small_sweep, torch_threads

from attnprof.api import run_sweep
from attnprof.records import Status
from attnprof.store import Store


def measure(db, impl, **changes):
    run_id = run_sweep(small_sweep(impl, **changes), db)
    store = Store.open(db, create=False)
    rows = {(m.case.label, m.case.seq_len): m for m in store.measurements(run_id)}
    store.close()
    return rows


def statuses(rows, label):
    return [rows[key].status.value for key in sorted(rows) if key[0] == label]


def test_ok_cases_have_samples_memory_and_flops(db):
    rows = measure(db, "softmax,sdpa", lengths=(64, 128))
    for m in rows.values():
        assert m.status == Status.OK, m.reason
        assert len(m.times_ms) >= 3 and all(t > 0 for t in m.times_ms)
        assert m.peak_source == "allocator" and m.peak_bytes == m.peak_alloc_bytes >= m.peak_live_bytes > 0
        assert m.peak_rss_bytes is not None
        assert m.peak_reserved_bytes is None and m.peak_device_bytes is None  # no CUDA here: unavailable, never 0
        assert m.flops > 0 and m.check_error < 1e-5
    # the naive impl materialises N x N: 4x the bytes per doubling, SDPA's CPU flash kernel only 2x
    soft = rows[("softmax", 128)].peak_bytes / rows[("softmax", 64)].peak_bytes
    flash = rows[("sdpa", 128)].peak_bytes / rows[("sdpa", 64)].peak_bytes
    assert 3.0 < soft < 4.1 and 1.5 < flash < 2.5


def test_the_cpu_peak_counts_what_a_kernel_allocates_inside_one_op(db):
    """Nystromformer's depthwise convolution (oneDNN) takes blocks of its own, no tensor of the call: its live tensors
    read 1.16 MiB at N = 1024 (B1 H2 D64) where the allocator handed out 4.50 and the RSS rose 4.88, and the table
    ranked it the leanest approximation. The peak is now the allocator's; without a workspace the two agree."""
    # at N = 4096 (18 MiB) the workspace lives long enough for the 1 ms RSS sampler: at 1024 (4.5 MiB) it read 1.6 once
    rows = measure(db, "nystromformer,softmax", lengths=(4096,), head_dim=(64,))
    nystrom, softmax = rows[("nystromformer", 4096)], rows[("softmax", 4096)]
    assert nystrom.status == softmax.status == Status.OK
    assert nystrom.peak_source == "allocator" and nystrom.peak_bytes > 2 * nystrom.peak_live_bytes
    assert 0.75 < nystrom.peak_rss_bytes / nystrom.peak_bytes < 1.35  # the sampled RSS saw the same blocks
    assert softmax.peak_bytes == softmax.peak_live_bytes


def test_the_cpu_allocator_tracker_reads_the_peak_or_says_it_cannot(monkeypatch):
    """The allocator's peak comes from torch.profiler's memory events. Where a profiler cannot start, the tracker says
    None and the worker keeps the live tensors (peak_source says which): a profiler that fails to start is replaced
    by one that raises, since no real one can be made to fail here."""
    import torch
    import torch.profiler

    from attnprof.trackers.cpu_allocator import CpuAllocatorTracker

    with CpuAllocatorTracker() as tracker:
        kept = torch.ones(1000)  # 4,000 bytes, kept
        passing = torch.ones(2000)  # 8,000 bytes, freed: the peak held both
        del passing
    assert tracker.peak_bytes == 12000 and kept.sum() == 1000
    with CpuAllocatorTracker():
        earlier = torch.ones(1 << 20)  # 4 MiB, allocated under an earlier profiled call
    with CpuAllocatorTracker() as later:
        del earlier  # c10 reports this free (it saw the block): counted, it left a 2 MiB allocation at a peak of 0
        now = torch.ones(1 << 19)
    assert later.peak_bytes == 2 << 20 and now.numel() == 1 << 19

    def unavailable(*args, **kwargs):
        raise RuntimeError("profiler unavailable")

    monkeypatch.setattr(torch.profiler, "profile", unavailable)
    with CpuAllocatorTracker() as tracker:
        torch.ones(1000)
    assert tracker.peak_bytes is None


def test_the_allocator_profiler_adds_nothing_to_the_host_rss(db):
    """The profiler started inside the RSS tracker, and its buffers read as the call's: Combiner-Mixture fwd-bwd at
    N = 256 (B1 H2 D64) read 11.4 MB of RSS for 6.2 MB allocated; it starts first now (7.3 MB)."""
    rows = measure(db, "combiner-mixture", lengths=(256,), head_dim=(64,), mode=("fwd_bwd",))
    mixture = rows[("combiner-mixture", 256)]
    assert mixture.status == Status.OK and mixture.peak_rss_bytes < 1.4 * mixture.peak_bytes, (mixture.peak_rss_bytes, mixture.peak_bytes)


def test_host_rss_follows_live_tensors_after_a_larger_case_in_the_same_worker(db):
    """A timing pass leaves the heap full of free chunks, which glibc hands out before it mmaps: after larger cases
    softmax's causal 1k read 248 MiB of RSS for 133 MiB of live tensors, Combiner-Fixed's 0 for 16 MiB."""
    sweep = small_sweep("softmax,combiner-fixed,sdpa", lengths=(1024, 2048), heads=(16,), head_dim=(64,), causal=(False, True), rep_ms=20.0)
    with torch_threads(2):  # SDPA's CPU kernel takes scratch per thread, in RSS but no tensor: off by 6 MiB at 4 threads
        run_id = run_sweep(sweep, db)
    rows = Store.open(db, create=False).measurements(run_id)
    off = {(m.case.label, m.case.causal, m.case.seq_len): (m.peak_rss_bytes >> 20, m.peak_live_bytes >> 20) for m in rows
           if abs(m.peak_rss_bytes - m.peak_live_bytes) > max(0.25 * m.peak_live_bytes, 2 << 20)}  # fmt: skip
    assert not off, off  # (RSS MiB, live MiB) of each case they disagree on


def test_raise_is_an_error_row_and_the_sweep_goes_on(db):
    # past the check length (256): a fault from 128 on raises in the check at 128 already
    rows = measure(db, "fault:kind=raise,at_length=300,softmax", lengths=(64, 300, 512))
    assert statuses(rows, "fault[at_length=300,kind=raise]") == ["ok", "error", "error"]
    # where it was raised too: a kernel's author had only the first line of the message
    assert rows[("fault[at_length=300,kind=raise]", 300)].reason.endswith(
        f"planted failure in the fault impl (raised at {planted_raise_at()} in fault_attention); during the memory pass (its first call)"
    )
    assert statuses(rows, "softmax") == ["ok", "ok", "ok"]


def test_a_reason_names_the_class_of_a_foreign_error_but_not_of_our_own_sentence():
    """A row read "UsageError: unknown impl 'mine'; known: ...": the class name is noise on a sentence written for
    the user, while for an impl's own RuntimeError it says what kind of failure it was."""
    from attnprof.errors import UsageError
    from attnprof.failures import classify

    assert classify(UsageError("unknown impl 'mine'; known: softmax"))[:2] == (Status.ERROR, "unknown impl 'mine'; known: softmax")
    assert classify(RuntimeError("shape mismatch"))[1] == "RuntimeError: shape mismatch"


def test_an_error_row_names_the_plugins_own_line_whatever_called_it():
    """The innermost frame outside torch, Triton and attnprof, by module: a plugin installed in site-packages was
    passed over for attnprof's bind lambda ('base.py:142 in call', which reads as our bug), and a Windows path
    printed whole."""
    from attnprof.failures import classify

    def raised(module: str, filename: str):
        code = compile("def boom(q):\n    raise RuntimeError('tile config')\n", filename, "exec")
        namespace = {"__name__": module}
        exec(code, namespace)
        try:
            (lambda q: namespace["boom"](q))(None)  # noqa: PLC3002  a caller's frame (this test's module) outside it
        except RuntimeError as error:
            return classify(error)[1]

    windows = raised("mykern", r"C:\Users\me\venv\Lib\site-packages\mykern.py")
    assert windows == "RuntimeError: tile config (raised at mykern.py:2 in boom)", windows
    ours = raised("attnprof.impls.base", "/x/attnprof/impls/base.py")  # only framework frames below the test's own
    assert ours.startswith("RuntimeError: tile config (raised at test_runner.py:"), ours


def test_oom_skips_larger_lengths_of_that_configuration(db):
    rows = measure(db, "fault:kind=oom,at_length=128")
    label = "fault[at_length=128,kind=oom]"
    assert statuses(rows, label) == ["ok", "oom", "skipped"]
    assert "N=128" in rows[(label, 256)].reason and "out of memory" in rows[(label, 256)].reason
    assert not rows[(label, 256)].reason.startswith("skipped")  # the status already says so: "skipped: skipped: ..." in lists


def test_timeout_kills_the_worker_and_skips_larger_lengths(db):
    rows = measure(db, "fault:kind=sleep,at_length=300,softmax", lengths=(64, 300, 512), timeout=3.0)
    label = "fault[at_length=300,kind=sleep]"
    assert statuses(rows, label) == ["ok", "timeout", "skipped"]
    # the check of N = 300 ran at 256; at 300 the first call is the host-memory guard's, on meta
    assert "3 s timeout during the host-memory guard's prediction" in rows[(label, 300)].reason
    assert statuses(rows, "softmax") == ["ok", "ok", "ok"]  # measured by a fresh worker


def test_the_timeout_counts_the_case_not_the_start_of_its_worker(db):
    """A fresh worker pays torch's first-use costs before it says "ready" (on the CPU, importing torch._dynamo
    on the first meta op: 1.3-1.7 s here), so a case of a few milliseconds, the first of its worker, passes
    under a 1 s timeout."""
    m = measure(db, "cosformer", lengths=(64,), timeout=1.0)[("cosformer", 64)]
    assert m.status == Status.OK, m.reason


def test_a_worker_that_dies_is_crashed_and_replaced(db):
    """SIGKILL, the kernel's OOM killer's signal, also skips the larger lengths of its line, as an OOM does: each one
    was killed in turn (a robustness audit), on a shared host maybe taking other users' jobs with it."""
    rows = measure(db, "fault:kind=exit,at_length=128,softmax,fault:kind=segv,at_length=128", lengths=(64, 128, 256))
    label = "fault[at_length=128,kind=exit]"
    assert statuses(rows, label) == ["ok", "crashed", "skipped"]
    assert "SIGKILL" in rows[(label, 128)].reason
    assert rows[(label, 256)].reason == "the same configuration had its worker killed (SIGKILL, the OOM killer's signal) at N=128"
    assert statuses(rows, "softmax") == ["ok", "ok", "ok"]
    assert statuses(rows, "fault[at_length=128,kind=segv]") == ["ok", "crashed", "crashed"]  # any other crash: each length its own


def test_a_segfault_is_crashed(db):
    rows = measure(db, "fault:kind=segv,at_length=128", lengths=(128,))
    assert rows[("fault[at_length=128,kind=segv]", 128)].status == Status.CRASHED
    assert "SIGSEGV" in rows[("fault[at_length=128,kind=segv]", 128)].reason


def test_a_failure_row_says_which_step_of_the_case_failed(db):
    """Past the check at N=256, a fault at 512 is in the memory pass: a row said only "killed by SIGSEGV", and a
    kernel's author could not tell a crash of the reference check from one of the kernel, nor an OOM of the memory
    pass from one of the timing pass's retained heap."""
    rows = measure(db, "fault:kind=segv,at_length=512,on_data=1,fault:kind=raise,at_length=512,on_data=1", lengths=(512,))
    crashed, raised = (rows[(f"fault[at_length=512,kind={kind},on_data=true]", 512)] for kind in ("segv", "raise"))
    assert crashed.status == Status.CRASHED and crashed.reason.endswith("SIGSEGV, during the memory pass (its first call)"), crashed.reason
    assert raised.status == Status.ERROR and raised.reason.endswith("; during the memory pass (its first call)"), raised.reason


def test_an_impl_that_misbehaves_beyond_raising_costs_no_other_cell(db):
    """An audit's plugins: one setting torch's grad mode off made softmax's later fwd-bwd checks fail (the worker is
    shared); sys.exit or KeyboardInterrupt killed the worker ("exited with status 1", a traceback on the terminal); an
    out-of-memory in the reference check was an `error` for every length; a refuse hook raising ended the sweep with a
    traceback, and every resume the same way."""
    impls = ("fault:kind=nograd,softmax,fault:kind=sys_exit,fault:kind=keyboard,fault:kind=oom,fault:kind=refuse_raises,at_length=128,"
             "fault:kind=base_raise,fault:kind=bad_str")  # fmt: skip
    rows = measure(db, impls, lengths=(64, 128), mode=("fwd_bwd",))
    assert statuses(rows, "softmax") == ["ok", "ok"], [rows["softmax", n].reason for n in (64, 128)]
    assert "changed torch's global settings (grad mode True -> False); put back after this case" in rows["fault[kind=nograd]", 64].reason
    # an impl's own BaseException crashed the worker, its name only in a traceback on stderr; an unreadable message
    # named the __str__'s error instead of the exception (a robustness audit)
    unreadable = "UnreadableError: (its message could not be read: ValueError: no message here)"
    for kind, raised in (("sys_exit", "SystemExit: planted sys.exit"), ("keyboard", "KeyboardInterrupt"),
                         ("base_raise", "PlantedBaseException: planted BaseException"), ("bad_str", unreadable)):  # fmt: skip
        assert statuses(rows, f"fault[kind={kind}]") == ["error", "error"]
        assert raised in rows[f"fault[kind={kind}]", 64].reason
    assert statuses(rows, "fault[kind=oom]") == ["oom", "skipped"]
    assert rows["fault[kind=oom]", 64].reason.endswith("; during its check against the reference")
    assert statuses(rows, "fault[at_length=128,kind=refuse_raises]") == ["ok", "error"]
    assert "ZeroDivisionError" in rows["fault[at_length=128,kind=refuse_raises]", 128].reason


def test_a_plugins_refuse_hook_that_crashes_or_hangs_costs_only_its_cells(db):
    """The hook ran in the sweep's own process: a segfault there ended the sweep (and every resume the same way), and a
    hang ignored --timeout (a robustness audit). It runs in the worker now, under the case's timeout."""
    impls = "fault:kind=refuse_segv,at_length=128,fault:kind=refuse_hangs,at_length=128,softmax,fault:kind=refuse_memory,at_length=128"
    rows = measure(db, impls, lengths=(64, 128, 256), timeout=5.0)
    # the same row the sweep's process gave and the dry run says: an error of the hook, no oom with skips after it (a review)
    memory = [rows["fault[at_length=128,kind=refuse_memory]", n] for n in (128, 256)]
    assert [m.status for m in memory] == [Status.ERROR] * 2, [m.reason for m in memory]
    assert memory[0].reason.endswith("; during its refusals (the impl's refuse hook)"), memory[0].reason
    crashed, hung = rows["fault[at_length=128,kind=refuse_segv]", 128], rows["fault[at_length=128,kind=refuse_hangs]", 128]
    assert crashed.status == Status.CRASHED and crashed.reason.endswith("SIGSEGV, during its refusals"), crashed.reason
    assert hung.status == Status.TIMEOUT and "during its refusals" in hung.reason, hung.reason
    assert statuses(rows, "softmax") == ["ok"] * 3 and rows["fault[at_length=128,kind=refuse_segv]", 64].status == Status.OK


def test_a_broken_flops_or_min_bytes_formula_costs_only_its_figure(db):
    """The formulas run after the timing and memory passes: one that raised made the case an `error` row with neither
    (a robustness audit), and -5 FLOPs was stored as an ok count. Now the figure is left out and said; the accounting
    path keeps the count meta took."""
    rows = measure(db, "badcount:broken=raise,badcount:broken=negative,badcount:broken=nan,badcount", lengths=(64,))
    for broken, said in (("raise", "raised (ZeroDivisionError"), ("negative", "gave -5, not a count"), ("nan", "gave nan, not a count")):
        row = rows[f"badcount[broken={broken}]", 64]
        assert row.status == Status.OK and len(row.times_ms) >= 3 and row.peak_bytes > 0, row.reason
        assert row.flops is None and row.flops_source is None and row.min_bytes is None
        assert f"FLOPs not counted: its FLOPs formula {said}" in row.reason
        assert f"min_bytes not counted: its min_bytes formula {said}" in row.reason
    right = rows["badcount", 64]
    assert right.flops == 4 * 64**2 * 16 and right.flops_source == "formula" and "not counted" not in right.reason
    accounted = measure(db, "badcount:broken=text", lengths=(64,), device=("meta",), accounting=True, dtype=("bfloat16",))
    row = accounted["badcount[broken=text]", 64]
    assert row.status == Status.OK and row.flops_source == "counted" and row.flops > 0 and row.min_bytes is None, row
    assert "FLOPs not counted: its FLOPs formula gave 'many', not a count; counted on meta instead" in row.reason


def test_a_broken_memory_model_is_said_and_never_a_peak(db):
    """A fused kernel's memory_model giving -5 was an ok accounting row peaking at "-5 B", one giving None an error naming
    neither the model nor its line (a plugin author's audit). Now its accounting row is an error saying so, and the
    CPU's host-memory guard predicts the output only, with a note."""
    impls = "badmodel:broken=raise,badmodel:broken=negative,badmodel:broken=text,badmodel"
    accounted = measure(db, impls, lengths=(64,), device=("meta",), accounting=True, dtype=("bfloat16",))
    said_for = {"raise": "raised (ZeroDivisionError", "negative": "gave -5, not a count", "text": "gave 'many', not a count"}
    for broken, said in said_for.items():
        row = accounted[f"badmodel[broken={broken}]", 64]
        assert row.status == Status.ERROR and row.peak_bytes is None, (row.status, row.peak_bytes)
        assert f"peak not counted: its memory_model {said}" in row.reason, row.reason
    right = accounted["badmodel", 64]
    assert right.status == Status.OK and right.peak_bytes == 4 * 64**2 * 16 and right.peak_source == "model", right.reason
    none = measure(db, "nomodel", lengths=(64,), device=("meta",), accounting=True, dtype=("bfloat16",))["nomodel", 64]
    assert none.status == Status.UNSUPPORTED and none.reason.endswith("the unfused math path, and it declares no memory_model"), none.reason
    timed = measure(db, "badmodel:broken=negative", lengths=(64,))["badmodel[broken=negative]", 64]
    assert timed.status == Status.OK and len(timed.times_ms) >= 3, timed.reason
    guard = "the host-memory guard predicted its peak as its output only (peak not counted: its memory_model gave -5, not a count)"
    assert guard in timed.reason, timed.reason


def test_a_rows_check_figures_do_not_depend_on_the_sweeps_other_lengths(db):
    """The check ran once per configuration at its first length: cosFormer's N = 300 row stored the fidelity of a check
    at N = 64 when 64 came first, and of one at 256 alone (a window plugin's read 3.4e-7 against 0.63; an audit)."""
    with_short = measure(db, "cosformer", lengths=(64, 300))["cosformer", 300]
    alone = measure(db, "cosformer", lengths=(300,))["cosformer", 300]
    assert with_short.status == alone.status == Status.OK, (with_short.reason, alone.reason)
    assert with_short.fidelity_error == alone.fidelity_error and with_short.check_error == alone.check_error
    short = measure(db, "cosformer", lengths=(64,))["cosformer", 64]
    assert short.fidelity_error != alone.fidelity_error  # the two lengths' checks differ: the test can tell


def test_workers_time_with_the_thread_count_the_run_records(db, tmp_path):
    """A notebook's torch.set_num_threads(1) before run_sweep: the run recorded cpu_threads 1, its worker timed with
    every core (a harness audit)."""

    said = tmp_path / "threads.txt"
    with torch_threads(1):
        measure(db, f"fault:kind=threads_file,pid_file={said}", lengths=(64,))
    store = Store.open(db, create=False)
    recorded = store.resolve_run("latest").env["cpu_threads"]
    store.close()
    assert recorded == 1 and said.read_text() == "1"


def test_an_impl_that_runs_here_but_not_on_meta_is_measured_with_a_note(db):
    """A plugin making a tensor without q's device runs on the CPU, but the host-memory guard and the FLOP count run it
    on meta first: every cell was an error "during the host-memory guard's prediction"."""
    rows = measure(db, "fault:kind=cpu_only", lengths=(128,))
    m = rows["fault[kind=cpu_only]", 128]
    assert m.status == Status.OK and len(m.times_ms) >= 3 and m.flops is None, m.reason
    assert "the host-memory guard could not run it on meta (" in m.reason and "its peak was predicted as its output only" in m.reason
    assert "FLOPs not counted: it does not run on meta (" in m.reason


@pytest.mark.parametrize("kind", ["spawn", "spawn_session"])
def test_a_killed_worker_takes_the_processes_its_impl_started_along(db, tmp_path, kind):
    """A process an impl spawned outlived its timed-out worker, burning a core beside the next cases' timing; one in a
    session of its own escaped the kill of the worker's process group."""
    pid_file = tmp_path / "child.pid"
    rows = measure(db, f"fault:kind={kind},pid_file={pid_file},on_data=1", lengths=(64,), timeout=3.0)
    assert [m.status for m in rows.values()] == [Status.TIMEOUT]
    child = int(pid_file.read_text())
    assert_gone_soon(child, "its killed worker")  # killed with the worker; reaped by init


def test_a_finished_sweep_takes_along_what_its_impl_left_running_in_a_session_of_its_own(db, tmp_path):
    """Stopped at the end of a sweep, a worker's child in a session of its own outlived it: a piped sweep's reader waited
    for it (125 s; a review)."""
    pid_file = tmp_path / "child.pid"
    rows = measure(db, f"fault:kind=spawn_and_return,pid_file={pid_file},on_data=1", lengths=(64,))
    assert [m.status for m in rows.values()] == [Status.OK]
    child = int(pid_file.read_text())
    assert_gone_soon(child, "the finished sweep")


def test_a_kernel_refused_at_run_time_in_the_check_is_unsupported_not_an_error(db):
    """torch's "No available kernel" in the check against the reference was turned into the check's failure: an `error`
    row, kept for every length of the configuration (a GPU-path review: sdpa-efficient in fp32 at a head dim torch
    refuses)."""
    rows = measure(db, "fault:kind=no_kernel", lengths=(64, 128))
    assert statuses(rows, "fault[kind=no_kernel]") == ["unsupported", "unsupported"], [m.reason for m in rows.values()]
    assert "No available kernel" in rows["fault[kind=no_kernel]", 64].reason


@pytest.mark.parametrize(("dtype", "head_dim", "alignment"), [("float32", 6, 4), ("bfloat16", 12, 8)])
def test_sdpa_efficient_declares_the_head_dims_torch_refuses_on_a_gpu(dtype, head_dim, alignment):
    """torch's minimum_gemm_alignment on sm_80 and later: only the half types' rule was declared, so fp32 at head dim 6
    would have been refused at run time (a GPU-path review)."""
    from attnprof import impls
    from attnprof.spec import Case

    efficient = impls.get("sdpa-efficient")
    case = Case(impl="sdpa-efficient", seq_len=64, head_dim=head_dim, dtype=dtype, device="cuda")
    assert efficient.not_supported(case) == [f"efficient backend needs head_dim a multiple of {alignment} for {dtype}, not {head_dim}"]
    assert efficient.not_supported(case.resized(head_dim=2 * alignment)) == []


def test_an_impl_failing_its_reference_check_is_never_timed(db):
    rows = measure(db, "fault:kind=wrong", lengths=(64,))
    m = rows[("fault[kind=wrong]", 64)]
    assert m.status == Status.ERROR and "failed its check against the reference" in m.reason
    assert m.times_ms == [] and m.check_error == pytest.approx(0.5, rel=1e-3)


def test_an_exact_impl_wrong_only_beyond_the_check_length_is_caught_at_its_own_length(db):
    """The check runs at N <= 256: an impl wrong from 512 on (a tile loop, a masked last block, a NaN head, a
    backward kernel of its own, 0.5% off in float32, or an impl with its own reference) was timed as ok. The first
    untimed output and one more call's gradients are now checked at the case's own length; right impls pass."""
    kinds = ("wrong", "last_row", "nan_head", "off", "bad_dq", "no_dv", "dk_last")
    faults = ",".join(f"fault:kind={kind},at_length=512" for kind in kinds)
    impls = f"{faults},scaled:scale=0.5,scaled:scale=0.5,wrong_from=512,softmax"
    sweep = small_sweep(impls, lengths=(256, 512), causal=(False, True), mode=("fwd", "fwd_bwd"), heads=(4,))
    run_id = run_sweep(sweep, db)
    by_case = {(m.case.label, m.case.seq_len, m.case.causal, m.case.mode): m for m in Store.open(db, create=False).measurements(run_id)}
    at = "failed its check at the measured length N=512: "
    for causal, mode in itertools.product((False, True), ("fwd", "fwd_bwd")):
        row = lambda label, n=512: by_case[(label, n, causal, mode)]  # noqa: B023, E731
        right_forward = tuple(f"fault[at_length=512,kind={kind}]" for kind in ("bad_dq", "no_dv", "dk_last")) if mode == "fwd" else ()
        for label in ("softmax", "scaled[scale=0.5]", *right_forward):
            assert row(label).status == Status.OK, (label, causal, mode, row(label).reason)
        for kind in kinds:
            assert row(f"fault[at_length=512,kind={kind}]", 256).status == Status.OK  # the check at N <= 256 passes them all
            wrong = row(f"fault[at_length=512,kind={kind}]")
            if kind not in ("bad_dq", "no_dv", "dk_last") or mode == "fwd_bwd":
                assert wrong.status == Status.ERROR and wrong.times_ms == [], (kind, causal, mode, wrong.reason)
                assert wrong.reason.startswith(at)
        reason = lambda kind: row(f"fault[at_length=512,kind={kind}]").reason  # noqa: B023, E731
        assert reason("wrong").startswith(at + "query row 0 of batch 0, head 0 has relative error 0.5 > 0.001 against exact attention")
        assert "query row 511 of batch 0, head 0 has relative error 1 > 0.001" in reason("last_row")  # the one wrong row of 512
        assert reason("nan_head") == at + "8,192 of 32,768 values are NaN or inf, the first in query row 0 of batch 0, head 1"
        assert "relative error 0.005 > 0.001" in reason("off")
        if mode == "fwd_bwd":
            assert re.search(r"dq row \d+ of batch 0, head 0 has relative error [\d.]+ > 0.002", reason("bad_dq")), reason("bad_dq")
            assert reason("no_dv") == at + "dv: no gradient reached it"
            # key by key: in one norm over the head, a wrong last key block passed in bf16 and fp16
            assert re.search(r"dk row 4(4[89]|[5-9]\d)|dk row 5(0\d|1[01]) of batch 0, head 0 has relative error", reason("dk_last"))
            assert "of 512 key rows over; the check at N<=256 passed)" in reason("dk_last"), reason("dk_last")
        own = row("scaled[scale=0.5,wrong_from=512]")  # checked against its own reference, not plain softmax
        last_64 = r"query row (4[4-9]\d|50\d|51[01]) of batch 0, head 0 has relative error 0.05 > 0.001"
        assert own.status == Status.ERROR and re.search(last_64, own.reason), own.reason


def test_an_own_reference_is_run_on_the_whole_batch_and_one_that_raises_is_said_not_blamed(db):
    """A reference that depends on the batch (padding) was run one batch element at a time: a right kernel failed
    ("query row 0 of batch 1 ... the check at N<=256 passed", at N = 256). A reference that raised past its own
    limit made the impl's row an error."""
    impls = "scaled:batch_masked=true,scaled:ref_fails_from=512"
    sweep = small_sweep(impls, lengths=(256, 512), causal=(False, True), mode=("fwd", "fwd_bwd"), batch=(2,), dtype=("bfloat16",))
    run_id = run_sweep(sweep, db)
    for m in Store.open(db, create=False).measurements(run_id):
        assert m.status == Status.OK, (m.case.label, m.case.seq_len, m.case.causal, m.case.mode, m.reason)
        if m.case.label == "scaled[ref_fails_from=512]" and m.case.seq_len == 512:
            said = "not checked against its reference at N=512: its reference raised ValueError: reference tables only go to 512"
            assert said in m.reason, m.reason


def test_an_impl_returning_the_wrong_shape_or_dtype_is_never_timed(db):
    """A (H, N, D) output broadcast against the (1, H, N, D) reference and passed the check (error 3.7e-7 in an
    audit), and a float64 output for float32 inputs passed too: both were timed as ok."""
    rows = measure(db, "fault:kind=squeezed,fault:kind=float64", lengths=(64,))
    squeezed, wider = rows[("fault[kind=squeezed]", 64)], rows[("fault[kind=float64]", 64)]
    assert squeezed.status == wider.status == Status.ERROR and squeezed.times_ms == wider.times_ms == []
    shape = "it returned shape (2, 64, 16) for inputs (1, 2, 64, 16); an impl returns [batch, heads, seq_len, head_dim]"
    assert squeezed.reason == f"failed its check at N=64: {shape}"
    assert wider.reason == "failed its check at N=64: it returned float64 for float32 inputs; an impl returns its inputs' dtype"


def test_an_accounting_run_checks_the_impl_against_its_reference_first(db):
    """An impl without its 1/sqrt(d) scale was accounted ok, and a gate on its exponents passed. Now its accounting
    rows are errors naming the failed check, and a correct impl's rows carry its check error."""
    rows = measure(db, "fault:kind=wrong,fault,fault:kind=sdpa", lengths=(64, 1024), device=(), accounting=True)
    wrong, right, fused = rows[("fault[kind=wrong]", 1024)], rows[("fault", 1024)], rows[("fault[kind=sdpa]", 1024)]
    assert wrong.status == Status.ERROR and wrong.reason.startswith("failed its check against the reference at N=256")
    assert wrong.peak_bytes is None and wrong.flops is None
    assert right.status == Status.OK and right.case.device == "meta" and right.check_error < 1e-6 and right.flops > 0
    # an impl calling SDPA (fused on a GPU) was accounted its unfused N x N path on meta without a word
    assert (
        fused.status == Status.OK
        and right.reason == ""
        and fused.reason.startswith(
            "it calls scaled_dot_product_attention, which meta runs unfused (N x N) and a GPU fused: this peak is not a GPU's"
        )
    )


def test_poisoned_worker_is_restarted(db):
    rows = measure(db, "fault:kind=cuda_error,at_length=128,softmax", lengths=(64, 128))
    assert rows[("fault[at_length=128,kind=cuda_error]", 128)].status == Status.ERROR
    assert statuses(rows, "softmax") == ["ok", "ok"]


def test_a_device_that_fails_after_the_case_keeps_the_worker_honest(monkeypatch):
    """A dead CUDA context raises from empty_cache too (sticky errors), which ran outside measure()'s try: the worker
    died and the row read "crashed ... exited with status 1" without the CUDA message (a GPU-path review). The release
    is made to raise as a dead context's does (no GPU here): the case keeps its failure, an ok one becomes the late
    error, and the worker asks to be replaced."""
    from attnprof import worker
    from attnprof.spec import Case
    from attnprof.worker import CaseMeasurer, Settings

    late = RuntimeError("CUDA error: an illegal memory access was encountered")

    def dead(device):
        raise late

    monkeypatch.setattr(worker, "_release_cached_memory", dead)
    quick = Settings(warmup_ms=0.0, rep_ms=0.0, min_reps=1)
    ok = CaseMeasurer().measure(Case(impl="softmax", seq_len=16, heads=1, head_dim=16), quick)
    assert ok.status == Status.ERROR and ok.reason.startswith("RuntimeError: CUDA error: an illegal memory access"), ok.reason
    assert ok.reason.endswith("after the case (the device reported it late)")
    measurer = CaseMeasurer()
    failed = measurer.measure(Case(impl="fault", seq_len=16, heads=1, head_dim=16, options=(("kind", "raise"),)), quick)
    assert failed.status == Status.ERROR and "then the device failed (RuntimeError: CUDA error" in failed.reason and measurer.poisoned


def test_triton_wordings_of_a_dead_context_are_poison():
    """Triton says "Triton Error [CUDA]: misaligned address": kept as a healthy worker, the next (correct) impl got
    the error row, sdpa-flash perhaps, every GPU rule's denominator (a GPU-path review)."""
    from attnprof.failures import classify

    for said in ("Triton Error [CUDA]: misaligned address", "Triton Error [CUDA]: an illegal instruction was encountered",
                 "CUDA error: the launch timed out and was terminated", "CUDA error: misaligned address"):  # fmt: skip
        assert classify(RuntimeError(said))[2], said
    assert not classify(RuntimeError("shape mismatch"))[2]


def test_one_gpu_is_not_swept_twice_under_two_names():
    """`cuda` and `cuda:0` (and `cuda:01` and `cuda:1`) were two devices of one sweep: two workers with a context each
    on one card (a GPU-path review). Each spelling is kept as given otherwise: stored runs and baselines use them."""
    from attnprof.errors import UsageError
    from attnprof.spec import parse_devices

    assert parse_devices("cuda:0,CUDA:01,cuda:1,cpu") == ("cuda:0", "cuda:1", "cpu") and parse_devices("cuda") == ("cuda",)
    with pytest.raises(UsageError, match="cuda and cuda:0 name one GPU"):
        parse_devices("cuda,cuda:0")
    for bad in ("cpu:0", "meta:1", "cuda:", "cuda:x"):
        with pytest.raises(UsageError, match=f"unknown device '{bad}'"):
            parse_devices(bad)


def test_unsupported_is_a_row_with_the_reason(db):
    rows = measure(db, "sdpa-efficient", lengths=(64,))
    m = rows[("sdpa-efficient", 64)]
    assert m.status == Status.UNSUPPORTED and "cuda" in m.reason


def test_fwd_bwd_mode_checks_gradients_and_counts_backward_flops(db):
    fwd = measure(db, "softmax", lengths=(128,))[("softmax", 128)]
    both = measure(db, "softmax", lengths=(128,), mode=("fwd_bwd",))[("softmax", 128)]
    assert both.status == Status.OK, both.reason
    assert both.flops == 3 * fwd.flops  # two matmuls forward, four backward
    assert both.peak_bytes > fwd.peak_bytes


def test_host_memory_guard_refuses_a_case_beyond_free_ram(db):
    rows = measure(db, "softmax", lengths=(1 << 17,), heads=(16,), head_dim=(64,))
    m = rows[("softmax", 1 << 17)]
    assert m.status == Status.OOM and "predicted peak" in m.reason and "not run" in m.reason


def test_host_memory_guard_refuses_inputs_beyond_free_ram_before_accounting_the_call(db):
    """At N = 128M the inputs alone need 1.5 TiB. Accounting cosFormer's chunked call there would run past
    the timeout; sdpa's fused CPU kernel has no exact meta accounting at all."""
    length = 1 << 27
    rows = measure(db, "cosformer,sdpa", lengths=(length,), heads=(16,), head_dim=(64,), timeout=20.0)
    for label in ("cosformer", "sdpa"):
        m = rows[(label, length)]
        assert m.status == Status.OOM and "inputs alone need 1.5 TiB" in m.reason and "not run" in m.reason, m.reason


def test_a_fused_kernel_is_guarded_by_its_memory_model():
    from attnprof import impls
    from attnprof.inputs import make_inputs
    from attnprof.spec import Case
    from attnprof.worker import _predicted_call_peak

    sdpa = impls.get("sdpa")
    case = Case(impl="sdpa", seq_len=1 << 20, heads=16, head_dim=64)
    expected = sdpa.memory_model(case, sdpa.resolve_options(case.options))
    assert _predicted_call_peak(sdpa, case, make_inputs(case, device="meta").q) == (expected, "")
    assert expected >= 4 * (1 << 20) * 16 * 64


def _rows_of_script(tmp_path, text: str) -> tuple[list, list]:
    """Run `text` as a script in tmp_path (it sweeps into x.db) and return (runs, the first run's rows)."""
    script = tmp_path / "script.py"
    script.write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, timeout=240, check=True)
    store = Store.open(tmp_path / "x.db", create=False)
    try:
        runs = store.runs()
        return runs, store.measurements(runs[0].run_id)
    finally:
        store.close()


def test_an_unguarded_script_gets_rows_that_say_how_to_fix_it(tmp_path):
    """Workers are spawned and import the calling script first; without a `__main__` guard its run_sweep
    would run again in every worker. Each row then says why the worker could not start, and no worker
    writes a run of its own."""
    runs, rows = _rows_of_script(
        tmp_path,
        "import attnprof\n"
        "run_id = attnprof.run_sweep(attnprof.Sweep(impls=attnprof.parse_impls('softmax'), lengths=(64,), causal=(False,)), db='x.db')\n",
    )
    assert len(runs) == 1
    assert [m.status for m in rows] == [Status.CRASHED]
    assert 'if __name__ == "__main__":' in rows[0].reason


def test_a_worker_that_hangs_while_starting_is_tried_twice_not_for_every_case(tmp_path):
    """CUDA init on a GPU in a bad state can hang a worker's start: each case then waited the whole start-up limit
    (300 s) for a new worker, hours for a sweep. After two failed starts the device's remaining cases get their rows
    at once, saying why; a resume tries again."""
    _, rows = _rows_of_script(
        tmp_path,
        "import multiprocessing, time\n"
        "import attnprof, attnprof.runner\n"
        "if multiprocessing.current_process().name.startswith(attnprof.runner.WORKER_NAME_PREFIX):\n"
        "    time.sleep(600)  # the worker imports this script first: its start hangs here\n"
        "if __name__ == '__main__':\n"
        "    attnprof.runner.WORKER_START_TIMEOUT_S = 3.0\n"
        "    sweep = attnprof.Sweep(impls=attnprof.parse_impls('softmax'), lengths=(64, 128, 256, 512), causal=(False,))\n"
        "    attnprof.run_sweep(sweep, db='x.db')\n",
    )
    assert [m.status for m in rows] == [Status.CRASHED] * 4
    tried = "could not start a worker: worker for cpu did not start within 3 s"
    assert [m.reason.startswith(tried) for m in rows] == [True, True, False, False]
    assert all(m.reason.startswith("not run: the worker for cpu failed to start 2 times in this sweep (worker for cpu") for m in rows[2:])
    # the rows say "resume the run once fixed": a resume (here from the command, whose workers start) measures them
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    resumed = subprocess.run([sys.executable, "-m", "attnprof", "sweep", "--resume", "latest", "--db", "x.db"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=240)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    store = Store.open(tmp_path / "x.db", create=False)
    assert [m.status for m in store.measurements(store.runs()[0].run_id)] == [Status.OK] * 4
    store.close()


def test_a_message_whose_first_line_only_introduces_the_cause_keeps_the_cause():
    """torch.compile's error rows read "BackendCompilerFailed: backend='inductor' raised:" and nothing of why (found
    running the tests on torch 2.4)."""
    from attnprof.failures import classify

    said = "backend='inductor' raised:\nAssertionError: Please convert all Tensors to FakeTensors first\n\nSet TORCH_LOGS=..."
    assert "raised: AssertionError: Please convert all Tensors to FakeTensors first" in classify(RuntimeError(said))[1]
    assert classify(RuntimeError("shape mismatch\nmore detail"))[1].endswith("shape mismatch")  # a whole first line alone


def test_an_impl_that_changes_its_inputs_is_told_so(db):
    """An impl returning the right output and then scaling q in place read "query row 0 ... has relative error 0.619 >
    0.001 against exact attention" at its measured length (a robustness audit): its maths blamed, the real fault
    unsaid. Caught in the check at N <= 256, and at the measured length when it starts past it."""
    rows = measure(db, "fault:kind=mutate,fault:kind=mutate,at_length=512", lengths=(256, 512))
    said = "it changed its inputs in place (q): an impl must leave q, k and v as it found them"
    early, late = rows["fault[kind=mutate]", 256], rows["fault[at_length=512,kind=mutate]", 512]
    assert early.status == Status.ERROR and said in early.reason and "relative error" not in early.reason, early.reason
    assert late.status == Status.ERROR and late.reason.startswith(f"failed its check at the measured length N=512: {said}"), late.reason
    assert rows["fault[at_length=512,kind=mutate]", 256].status == Status.OK


def test_a_stop_in_a_refuse_hook_stops_whoever_runs_it():
    """refusal_of runs plugin hooks in the user's own process too (a dry run, api.plan): catching every BaseException
    there made Ctrl-C a row, "error: KeyboardInterrupt ... during its refusals", and a hanging hook unstoppable (a
    review). A stop goes through; anything else the hook raises is the row's error."""
    import dataclasses

    from attnprof import impls
    from attnprof.spec import Case
    from attnprof.worker import refusal_of

    def stopped(case, options):
        raise KeyboardInterrupt

    def odd(case, options):
        raise GeneratorExit("odd")

    softmax = impls.get("softmax")
    with pytest.raises(KeyboardInterrupt):
        refusal_of(dataclasses.replace(softmax, refuse=stopped), Case("softmax", 64))
    row = refusal_of(dataclasses.replace(softmax, refuse=odd), Case("softmax", 64))
    assert row.status == Status.ERROR and row.reason.startswith("GeneratorExit: odd"), row.reason
