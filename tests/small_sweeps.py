"""Sweeps small enough for the 2-core CI machine, shared by the runner tests."""

import contextlib


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's thread count for a block (a sweep's workers take the caller's): a test that reads per-thread effects
    is then the same on CI's machine, whatever its core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def process_gone(pid: int) -> bool:
    """No process `pid`, or only its zombie (killed, not yet reaped). /proc/PID can go between two reads of it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # the state follows the command name, which may hold spaces
    except FileNotFoundError:  # reaped
        return True


def assert_gone_soon(pid: int, outlived: str) -> None:
    """Process `pid` is gone within 5 s; else it is killed and the test fails saying it outlived `outlived`."""
    import os
    import signal
    import time

    for _ in range(50):
        if process_gone(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"process {pid}, started by the impl, outlived {outlived}")


def small_sweep(impl: str, lengths=(64, 128, 256), **changes):
    """A sweep small enough for the 2-core CI machine: 2 heads, head dim 16, tiny time budgets."""
    from attnprof.spec import Sweep, parse_impls

    settings = dict(impls=parse_impls(impl), lengths=tuple(lengths), heads=(2,), head_dim=(16,), device=("cpu",), dtype=("float32",),
                    causal=(False,), warmup_ms=1.0, rep_ms=5.0, timeout=60.0)  # fmt: skip
    settings.update(changes)
    return Sweep(**settings)
