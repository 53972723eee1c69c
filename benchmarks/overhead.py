"""Per-case overhead of the tool on a warm worker: wall time per case seen by the parent, minus the
time spent inside the measured calls (memory pass + warm-up + timed repetitions).

Tiny cases (N=64, 1 head, head dim 16) make the measured work negligible, so what is left is the
tool's own cost: IPC, the reference check (first case of a configuration only), the host-memory
guard, the memory pass bookkeeping, FLOP accounting and the SQLite commit.

    python benchmarks/overhead.py [--cases 40]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from attnprof.api import run_sweep
from attnprof.runner import Progress
from attnprof.spec import Sweep, parse_impls


class Clock(Progress):
    def __init__(self):
        self.walls, self.works = [], []

    def start(self, case):
        self.started = time.perf_counter()

    def done(self, case, measurement):
        self.walls.append(time.perf_counter() - self.started)
        median_s = (measurement.median_ms or 0) / 1e3
        # calls made: memory pass 1, bench's first + estimate 2, warm-up >= 0, repetitions len(times)
        self.works.append(median_s * (3 + len(measurement.times_ms)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=40)
    args = parser.parse_args()
    lengths = tuple(64 + 8 * i for i in range(args.cases // 2))
    sweep = Sweep(impls=parse_impls("softmax,sdpa"), lengths=lengths, heads=(1,), head_dim=(16,), device=("cpu",), dtype=("float32",),
                  causal=(False,), warmup_ms=1.0, rep_ms=5.0)  # fmt: skip
    clock = Clock()
    with tempfile.TemporaryDirectory() as folder:
        run_sweep(sweep, Path(folder) / "overhead.db", progress=clock)
    warm = [w - k for w, k in zip(clock.walls[1:], clock.works[1:], strict=False)]  # the first case pays the worker start
    print(f"cases: {len(clock.walls)}; first case (worker start + checks): {clock.walls[0]:.2f} s")
    print(f"overhead per case on a warm worker: median {statistics.median(warm) * 1e3:.1f} ms, max {max(warm) * 1e3:.1f} ms")
    print(f"budgets per case: warmup 1 ms + timing 5 ms; measured work median {statistics.median(clock.works[1:]) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
