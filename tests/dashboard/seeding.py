"""Small, known databases for the dashboard tests: written through Store like a sweep would, in milliseconds.

Two CPU runs of three impls (one with options) over 256..8k, both causal settings, with every failure status and
its reason: softmax runs out of memory at 4k bidir (8k then skipped), sdpa times out at 8k causal, nystromformer
crashes at 2k bidir and refuses causal. The candidate run is sdpa 1.6x slower from 2k on and softmax out of memory
one length earlier: the regressions the Compare view must put first.
"""

from __future__ import annotations

from attnprof.records import Measurement, RunInfo, Status
from attnprof.spec import Case
from attnprof.store import Store

LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
HEADS, HEAD_DIM = 4, 64
NYSTROM = (("num_landmarks", 32),)
ENV = {"torch_version": "2.13.0+cpu", "cuda_version": None, "python_version": "3.11.7", "cpu": "Test CPU", "cpu_threads": 2,
       "gpu_name": None, "gpu_count": 0, "gpu_total_bytes": None, "gpu_driver": None, "host": "test"}  # fmt: skip
BASE, CANDIDATE = "20260101-000000-base", "20260102-000000-cand"
OOM_REASON = "out of memory: tried to allocate 1.00 GiB"
TIMEOUT_REASON = "ran past --timeout 60 s; the worker was killed"
CRASH_REASON = "worker process died (SIGSEGV)"
UNSUPPORTED_REASON = "nystromformer has no causal form"


def sweep_dict(lengths=LENGTHS, causal=(False, True), impls=(("softmax", {}), ("sdpa", {}), ("nystromformer", dict(NYSTROM)))) -> dict:
    labels = [name + (f"[{','.join(f'{k}={v}' for k, v in opts.items())}]" if opts else "") for name, opts in impls]
    return {"impls": labels, "impl_specs": [[n, o] for n, o in impls], "lengths": list(lengths), "batch": [1], "heads": [HEADS],
            "head_dim": [HEAD_DIM], "dtype": ["float32"], "device": ["cpu"], "causal": list(causal), "mode": ["fwd"], "warmup_ms": 1.0,
            "rep_ms": 5.0, "timeout": 60.0, "seed": 0, "name": "", "accounting": False}  # fmt: skip


def run_info(run_id: str, created: str, sweep: dict | None = None, command: str = "", state: str = "complete") -> RunInfo:
    return RunInfo(run_id, created, sweep or sweep_dict(), dict(ENV), "0.1.0", "", command, state)


def cell(
    impl: str, n: int, causal: bool = False, *, status=Status.OK, reason="", time_ms=None, peak=None, options=(), flops=None
) -> Measurement:
    case = Case(impl=impl, seq_len=n, heads=HEADS, head_dim=HEAD_DIM, causal=causal, options=options)
    if status != Status.OK:
        return Measurement(case, status, reason)
    samples = [time_ms * f for f in (0.97, 0.99, 1.0, 1.01, 1.04)]  # median time_ms, p20-p80 about +-1%
    flops = flops or 4 * HEADS * n * n * HEAD_DIM  # exact attention: two N x N x D matmuls per head
    return Measurement(case, Status.OK, reason, times_ms=samples, peak_bytes=peak, peak_source="live_tensors", peak_live_bytes=peak,
                       peak_rss_bytes=int(peak * 1.1), flops=flops, flops_source="formula",
                       min_bytes=4 * HEADS * n * HEAD_DIM * 4)  # fmt: skip


def run_cells(candidate: bool = False) -> list[Measurement]:
    cells = []
    for causal in (False, True):
        cells += _softmax(causal, candidate) + _sdpa(causal, candidate) + _nystrom(causal, candidate)
    return cells


def _softmax(causal: bool, candidate: bool) -> list[Measurement]:
    oom_at = 2048 if candidate else 4096
    out = []
    for n in LENGTHS:
        if not causal and n == oom_at:
            out.append(cell("softmax", n, causal, status=Status.OOM, reason=OOM_REASON))
        elif not causal and n > oom_at:
            out.append(cell("softmax", n, causal, status=Status.SKIPPED, reason=f"softmax ran out of memory at N={oom_at}"))
        else:
            out.append(cell("softmax", n, causal, time_ms=1e-5 * n * n, peak=4 * HEADS * n * n * 4))
    return out


def _sdpa(causal: bool, candidate: bool) -> list[Measurement]:
    out = []
    for n in LENGTHS:
        if causal and n == 8192:
            out.append(cell("sdpa", n, causal, status=Status.TIMEOUT, reason=TIMEOUT_REASON))
            continue
        slower = 1.6 if candidate and n >= 2048 else 1.0
        out.append(cell("sdpa", n, causal, time_ms=6e-6 * n * n * slower, peak=3 * HEADS * n * HEAD_DIM * 4))
    return out


def _nystrom(causal: bool, candidate: bool) -> list[Measurement]:
    out = []
    for n in LENGTHS:
        if causal:
            out.append(cell("nystromformer", n, causal, status=Status.UNSUPPORTED, reason=UNSUPPORTED_REASON, options=NYSTROM))
        elif n == 2048 and not candidate:
            out.append(cell("nystromformer", n, causal, status=Status.CRASHED, reason=CRASH_REASON, options=NYSTROM))
        else:
            flops = 3 * 4 * HEADS * n * 32 * HEAD_DIM  # three N x 32 x D products instead of N x N
            out.append(cell("nystromformer", n, causal, time_ms=1e-3 * n, peak=6 * HEADS * n * HEAD_DIM * 4, options=NYSTROM, flops=flops))
    return out


def write_run(path, info: RunInfo, cells: list[Measurement]) -> str:
    store = Store.open(path)
    try:
        store.add_run(info)
        for m in cells:
            store.add_measurement(info.run_id, m, info.created_at)
    finally:
        store.close()
    return info.run_id


def seed_two_runs(path) -> tuple[str, str]:
    """The base run (older) and the candidate run (newer); the command is stored on the base only."""
    write_run(path, run_info(BASE, "2026-01-01T00:00:00+00:00", command="attnprof sweep --impl softmax,sdpa --device cpu"), run_cells())
    write_run(path, run_info(CANDIDATE, "2026-01-02T00:00:00+00:00"), run_cells(candidate=True))
    return BASE, CANDIDATE


def seed_all_failed(path) -> str:
    cells = [cell("softmax", n, status=Status.OOM, reason=OOM_REASON) for n in (1024, 2048)]
    return write_run(path, run_info("20260103-000000-fail", "2026-01-03T00:00:00+00:00", sweep_dict((1024, 2048), (False,))), cells)


def seed_one_length(path) -> str:
    cells = [cell("softmax", 1024, time_ms=10.0, peak=2**24), cell("sdpa", 1024, time_ms=2.0, peak=2**20)]
    return write_run(path, run_info("20260104-000000-one", "2026-01-04T00:00:00+00:00", sweep_dict((1024,), (False,))), cells)
