"""Combiner-Mixture's plans timed against each other on one device, for the choice `mixture.plan` and
`scan.default_method` make: the logit parts' own eager softmaxes merged by log-normalisers (the GPU plan) against
the fused CPU flash kernel (the CPU plan, CPU only), and the blocked running max against torch.cummax and the steps.
B = 1, H = 16, d = 64, bf16, forward, both causalities; each plan's output is first checked against the
default plan's on fp32 inputs (relative error within Combiner's bf16 tolerance), then timed with the sweep's
timer. Exit status 1 when a plan's output is past the tolerance.

    python benchmarks/mixture_plans.py [--length 64k] [--device cuda]   (gpu_session.sh part 3)

--device cpu runs it here (at --length 8k, say); the CPU's default is the flash plan and the steps scan.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnprof.errors import UsageError  # noqa: E402
from attnprof.spec import parse_devices, parse_length  # noqa: E402
from attnprof.timing import bench  # noqa: E402

PLANS = {  # name -> (mixture.plan, running-max method)
    "merged + blocked": ("merged", "blocked"),  # CUDA's default
    "merged + cummax": ("merged", "cummax"),
    "merged + steps": ("merged", "steps"),
    "flash + steps": ("flash", "steps"),  # the CPU's default; its kernel is the CPU's only
}


def main() -> int:
    args = parse_args()
    import torch

    from attnprof.impls.combiner import TOLERANCE, combiner_attention
    from attnprof.impls.combiner.mixture import plan
    from attnprof.impls.combiner.scan import default_method

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("mixture_plans: no CUDA device here (try --device cpu)", file=sys.stderr)
        return 2
    default = (plan(args.device), default_method(torch.device(args.device)))
    runnable = {name: choice for name, choice in PLANS.items() if choice[0] != "flash" or args.device == "cpu"}
    plans = [name for name, choice in runnable.items() if choice == default] + [
        name for name, choice in runnable.items() if choice != default
    ]
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 16, args.length, 64, generator=generator).to(args.device) for _ in range(3)]  # fp32
    print(f"combiner-mixture N={args.length} B=1 H=16 d=64 bfloat16 fwd on {args.device}; error: against the default plan on fp32 inputs")
    print(f"{'plan':<18} {'causal':<6} {'ms':>8} {'vs default':>10} {'rel. error':>10}")
    failed = False
    for causal in (False, True):
        reference = combiner_attention(*inputs, variant="mixture", causal=causal)  # (1, 16, N, 64) fp32
        base_ms = None
        for name in plans:
            with forced(*PLANS[name]):
                call = functools.partial(combiner_attention, *(x.to(torch.bfloat16) for x in inputs), variant="mixture", causal=causal)
                out = call().float()
                error = float((out - reference).norm() / reference.norm())
                ms = statistics.median(bench(call, args.device)) if error < TOLERANCE["bfloat16"] else float("nan")
            failed |= error >= TOLERANCE["bfloat16"]
            base_ms = base_ms or ms
            print(
                f"{name + (' *' if PLANS[name] == default else ''):<18} {causal!s:<6} {ms:>8.3f} {ms / base_ms:>10.3f} {error:>10.2e}",
                flush=True,
            )
    print("*: the plan this device takes by default; nan: not timed, its error is past the bf16 tolerance")
    return 1 if failed else 0


@contextlib.contextmanager
def forced(name, method):
    """The plan's choices patched in for the duration."""
    import attnprof.impls.combiner.mixture as mixture
    import attnprof.impls.combiner.scan as scan

    saved = mixture.plan, scan.default_method
    mixture.plan, scan.default_method = (lambda device: name), (lambda device: method)
    try:
        yield
    finally:
        mixture.plan, scan.default_method = saved


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", default="64k", help="one sequence length, e.g. 8k or 65536 (default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="cuda[:N], or cpu (default: %(default)s)")
    args = parser.parse_args()
    try:
        args.length = parse_length(args.length)
        (args.device,) = parse_devices(args.device)
        if args.device == "meta":
            raise UsageError("bad device 'meta': this benchmark times, choose cuda or cpu")
    except UsageError as error:
        parser.error(str(error))
    return args


if __name__ == "__main__":
    sys.exit(main())
