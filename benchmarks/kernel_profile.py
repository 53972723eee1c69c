"""Where a GPU call's time goes. For each impl at one shape (default: N = 65536, B = 1, H = 16, d = 64, bf16,
forward, both causalities), one line with the CUDA-event time (attnprof.timing.bench, the sweep's timer), the
exact counts on `meta` (aten ops, bytes written, bytes moved: read and written op by op, FLOPs) and what they
imply (GB/s moved, to hold against the device's memory bandwidth, and TFLOP/s); then,
with --kernels, torch.profiler's table of the call's CUDA kernels by total time. The counts say how far an impl
is from its memory and compute bounds; the kernel table says which op to work on next.

    python benchmarks/kernel_profile.py [--impl cosformer,combiner-mixture] [--causal both] [--length 64k]
                                        [--dtype bfloat16] [--mode fwd] [--kernels 12] [--device cuda]

Without CUDA, `--device meta` prints the counts alone. `*`: a fused kernel (sdpa-flash), whose counts on meta
are those of the unfused math path, not its own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnprof import impls  # noqa: E402
from attnprof.accounting import account_call, op_tally  # noqa: E402
from attnprof.errors import UsageError  # noqa: E402
from attnprof.impls.base import meta_stands_for  # noqa: E402
from attnprof.inputs import make_call, make_inputs  # noqa: E402
from attnprof.spec import Case, parse_devices, parse_dtypes, parse_impls, parse_length, parse_modes, parse_sizes  # noqa: E402
from attnprof.timing import bench  # noqa: E402

DEFAULT_IMPLS = ",".join(
    ("sdpa-flash", "cosformer", "cosformer:backend=triton", "nystromformer", "nystromformer:backend=triton", "combiner-fixed",
     "combiner-fixed:backend=triton", "combiner-axial", "combiner-axial:backend=triton", "combiner-logsparse", "combiner-mixture",
     "combiner-mixture:backend=triton")
)  # fmt: skip


def main() -> int:
    args = parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("kernel_profile: no CUDA device here (use --device meta for the counts alone)", file=sys.stderr)
        return 2
    print(f"N={args.length} B=1 H={args.heads} d={args.head_dim} {args.dtype} {args.mode} on {args.device}")
    width = max(20, *(len(spec.label) + 2 for _, spec in args.impl))  # labels with options run long
    print(
        f"{'impl':<{width}} {'causal':<6} {'ms':>8} {'ops':>5} {'GB written':>10} {'GB moved':>8} {'GFLOP':>8} {'GB/s':>7} {'TFLOP/s':>8}"
    )
    for impl, spec in args.impl:
        for causal in args.causal:
            case = Case(impl=impl.name, seq_len=args.length, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
                        causal=causal, mode=args.mode, device=args.device, options=spec.options)  # fmt: skip
            reasons = impl.not_supported(case)
            if reasons:
                print(f"{spec.label:<{width}} {causal!s:<6} unsupported: {reasons[0]}")
                continue
            profile_case(impl, spec.label, case, args.kernels, width)
    if any(not impl.meta_exact for impl, _ in args.impl):
        print("*: a fused kernel; its counts on meta are those of the unfused math path, not its own")
    return 0


def profile_case(impl, label: str, case: Case, kernels: int, width: int = 20) -> None:
    with meta_stands_for(case.device):  # the counts of the plan the impl takes on case.device
        counted = make_call(impl.bind(case), make_inputs(case, device="meta"))
        counted()  # untallied: what a first call sets up once (Nyström's seeded conv filter) is not in the timed calls
        with op_tally() as tally:
            counted()
        # the impl's own formula where it has one, as the sweep reports it; else counted (FlopCounterMode)
        formula = impl.flops(case, impl.resolve_options(case.options)) if impl.flops else None
        flops = formula if formula is not None else account_call(make_call(impl.bind(case), make_inputs(case, device="meta"))).flops
    line = f"{label + ('' if impl.meta_exact else ' *'):<{width}} {case.causal!s:<6}"
    moved = tally.bytes_written + tally.bytes_read  # read and written, op by op (no cache): against the HBM bandwidth
    counts = f"{tally.ops:>5} {tally.bytes_written / 1e9:>10.2f} {moved / 1e9:>8.2f} {flops / 1e9:>8.3g}"
    if case.device == "meta":
        print(f"{line} {'-':>8} {counts}")
        return
    call = make_call(impl.bind(case), make_inputs(case))
    ms = statistics.median(bench(call, case.device))
    print(f"{line} {ms:>8.3f} {counts} {moved / ms / 1e6:>7.0f} {flops / ms / 1e9:>8.3g}", flush=True)
    if kernels:
        print_kernels(call, kernels, on_cuda=case.device.startswith("cuda"))


def print_kernels(call, rows: int, on_cuda: bool) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if on_cuda else lambda: None
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])) as prof:
        call()
        sync()
    sort_by = "cuda_time_total" if on_cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows), flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default=DEFAULT_IMPLS, help="impls as the sweep takes them, options too (default: %(default)s)")
    parser.add_argument("--causal", default="both", choices=("both", "yes", "no"))
    parser.add_argument("--length", default="64k", help="one sequence length, e.g. 8k or 65536 (default: %(default)s)")
    parser.add_argument("--heads", default="16", help="(default: %(default)s)")
    parser.add_argument("--head-dim", default="64", help="(default: %(default)s)")
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16, float16 or float32 (default: %(default)s)")
    parser.add_argument("--mode", default="fwd", help="fwd or fwd-bwd (default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="cuda[:N]; meta for the counts alone; cpu to try it here")
    parser.add_argument("--kernels", type=int, default=0, help="print this many top kernels (CUDA; CPU ops on the CPU) per call")
    args = parser.parse_args()
    try:
        args.length = parse_length(args.length)
        (args.heads,), (args.head_dim,) = parse_sizes(args.heads, "heads"), parse_sizes(args.head_dim, "head dim")
        (args.dtype,), (args.mode,), (args.device,) = parse_dtypes(args.dtype), parse_modes(args.mode), parse_devices(args.device)
        args.impl = [(impls.get(spec.name), spec) for spec in parse_impls(args.impl)]
        if args.kernels < 0:
            raise UsageError(f"bad --kernels {args.kernels}: must be 0 or more")
    except UsageError as error:
        parser.error(str(error))
    args.causal = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    return args


if __name__ == "__main__":
    sys.exit(main())
