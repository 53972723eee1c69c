"""Combiner-Mixture's plans timed against each other on one device, for the choice `separate_softmaxes` and
`scan.default_method` make by counts alone: the logit parts' own softmaxes merged by log-normalisers (the GPU
plan) against one joint softmax in place (the CPU plan), and the blocked running max against torch.cummax.
B = 1, H = 16, d = 64, bf16, forward, both causalities; each plan's output is first checked against the
default plan's (relative error below 1e-2, the bf16 plans round differently), then timed with the sweep's timer.

    python benchmarks/mixture_plans.py [--length 64k] [--device cuda]   (gpu_session.sh part 3)

--device cpu runs it here (at --length 8k; on the CPU the default plan is the joint softmax and the steps scan).
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
from attnprof.spec import parse_devices, parse_lengths  # noqa: E402
from attnprof.timing import bench  # noqa: E402

PLANS = {  # name -> (separate softmaxes, running-max method); None: the device's default
    "default": (None, None),
    "merged + blocked": (True, "blocked"),
    "joint + blocked": (False, "blocked"),
    "merged + cummax": (True, "cummax"),
}


def main() -> int:
    args = parse_args()
    import torch

    from attnprof.impls.combiner import combiner_attention

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("mixture_plans: no CUDA device here (try --device cpu)", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 16, args.length, 64, generator=generator).to(torch.bfloat16).to(args.device) for _ in range(3))
    print(f"combiner-mixture N={args.length} B=1 H=16 d=64 bfloat16 fwd on {args.device}")
    print(f"{'plan':<18} {'causal':<6} {'ms':>8} {'vs default':>10} {'rel. error':>10}")
    for causal in (False, True):
        reference, base_ms = None, None
        for name, plan in PLANS.items():
            with forced(*plan):
                call = functools.partial(combiner_attention, q, k, v, variant="mixture", causal=causal)
                out = call().float()
                reference = out if reference is None else reference
                error = float((out - reference).norm() / reference.norm())
                ms = statistics.median(bench(call, args.device)) if error < 1e-2 else float("nan")
            base_ms = base_ms or ms
            print(f"{name:<18} {causal!s:<6} {ms:>8.3f} {ms / base_ms:>10.3f} {error:>10.2e}", flush=True)
    return 0


@contextlib.contextmanager
def forced(separate, method):
    """The plan's choices patched in for the duration (None: left as the device picks)."""
    import attnprof.impls.combiner.mixture as mixture
    import attnprof.impls.combiner.scan as scan

    saved = mixture.separate_softmaxes, scan.default_method
    if separate is not None:
        mixture.separate_softmaxes = lambda device: separate
    if method is not None:
        scan.default_method = lambda device: method
    try:
        yield
    finally:
        mixture.separate_softmaxes, scan.default_method = saved


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", default="64k", help="one sequence length, e.g. 8k or 65536 (default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="cuda[:N], or cpu (default: %(default)s)")
    args = parser.parse_args()
    try:
        lengths = parse_lengths(args.length)
        if len(lengths) != 1:
            raise UsageError(f"bad length {args.length!r}: give one length, not {len(lengths)}")
        args.length = lengths[0]
        (args.device,) = parse_devices(args.device)
        if args.device == "meta":
            raise UsageError("bad device 'meta': this benchmark times, choose cuda or cpu")
    except UsageError as error:
        parser.error(str(error))
    return args


if __name__ == "__main__":
    sys.exit(main())
