"""Test-only impls, loaded through ATTNPROF_PLUGINS (tests/conftest.py), so workers see them too.

`fault` computes exact softmax attention unless its `kind` option asks it to misbehave:
raise, sleep past any timeout, kill its own process, raise torch's OOM error, return wrong numbers
(everywhere, or in the last row only; or a wrong shape or dtype), or poison itself like a CUDA error
does. With the default kind it is harmless in `--impl all`.
"""

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch

from attnprof.impls import register
from attnprof.impls.base import AttentionImpl
from attnprof.impls.softmax import softmax_attention
from attnprof.spot_check_exact import softmax_rows

HELD_IN_A_CYCLE: list = []  # weak references to the tensors kind=cycle_raise left in a cycle


def planted_raise_at() -> str:
    """Where kind=raise raises, as a row says it ("fake_impls.py:27"): the tests need not change with this file's lines."""
    lines = Path(__file__).read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip().startswith('raise ValueError("planted failure'))
    return f"fake_impls.py:{line}"


REFUSE_KINDS = ("refuse_raises", "refuse_segv", "refuse_hangs", "refuse_memory")  # faults of the refuse hook: the call itself is softmax


class PlantedBaseException(BaseException):
    pass


class UnreadableError(RuntimeError):
    def __str__(self):
        raise ValueError("no message here")


def fault_attention(q, k, v, *, causal=False, kind="ok", at_length=0, on_data=False, pid_file=""):
    n = q.shape[-2]
    if kind in ("ok", *REFUSE_KINDS) or n < at_length or (on_data and q.is_meta):  # on_data: a kernel's fault, not one of its plan
        return softmax_attention(q, k, v, causal=causal)
    if kind == "raise":
        raise ValueError("planted failure in the fault impl")
    if kind == "sleep":
        time.sleep(3600)
    if kind == "exit":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "exit_while_file":  # a transient kill: only while pid_file exists (what `--retry` measures again)
        if os.path.exists(pid_file):
            os.kill(os.getpid(), signal.SIGKILL)
        return softmax_attention(q, k, v, causal=causal)
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB (planted)")
    if kind == "wrong":
        return softmax_attention(q, k, v, causal=causal) * 1.5
    if kind == "last_row":  # a masked last block gone wrong: only the final query row is off
        out = softmax_attention(q, k, v, causal=causal)
        return torch.cat([out[..., :-1, :], out[..., -1:, :] * 0], dim=-2)
    if kind == "nan_head":  # one head's values lost (a wrong head stride into unwritten memory)
        out = softmax_attention(q, k, v, causal=causal)
        return torch.cat([out[:, :1], out[:, 1:2] * float("nan"), out[:, 2:]], dim=1)
    if kind == "off":  # every value 0.5% high: over float32's rounding, under a 1% bound
        return softmax_attention(q, k, v, causal=causal) * 1.005
    if kind in ("bad_dq", "no_dv", "dk_last"):  # a backward kernel of its own: dq doubled, no dv, or the last key block's dk 0
        return _OwnBackward.apply(q, k, v, causal, kind)
    if kind == "squeezed":  # (H, N, D): broadcasts against the (1, H, N, D) reference
        return softmax_attention(q, k, v, causal=causal)[0]
    if kind == "sdpa":  # a fused kernel on a GPU, the N x N math path on meta
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if kind == "float64":
        return softmax_attention(q.double(), k.double(), v.double(), causal=causal)
    if kind == "cpu_only":  # a value read back to Python (a tile size from the data): fine on the CPU, an error on meta
        float(q.abs().max())
        return softmax_attention(q, k, v, causal=causal)
    if kind == "threads1":  # global state the next impls in this worker would inherit
        torch.set_num_threads(1)
        return softmax_attention(q, k, v, causal=causal)
    if kind == "threads_file":  # says the worker's thread count
        with open(pid_file, "w") as file:
            file.write(str(torch.get_num_threads()))
        return softmax_attention(q, k, v, causal=causal)
    if kind == "pid_file":  # says which process ran it
        with open(pid_file, "w") as file:
            file.write(str(os.getpid()))
        return softmax_attention(q, k, v, causal=causal)
    if kind == "print":  # a line to standard output, left in Python's buffer (a pipe or file: block-buffered)
        print(f"fault impl ran at N = {n}")
        return softmax_attention(q, k, v, causal=causal)
    if kind == "nograd":
        torch.set_grad_enabled(False)
        return softmax_attention(q, k, v, causal=causal)
    if kind == "sys_exit":
        sys.exit("planted sys.exit")
    if kind == "keyboard":
        raise KeyboardInterrupt
    if kind == "mutate":  # a right output, then q scaled in place (a buffer reused as scratch)
        out = softmax_attention(q, k, v, causal=causal)
        with torch.no_grad():
            q.mul_(2)
        return out
    if kind == "base_raise":  # a BaseException of the impl's own, neither Exception nor a stop
        raise PlantedBaseException("planted BaseException")
    if kind == "bad_str":  # an exception whose message cannot be read
        raise UnreadableError()
    if kind in ("spawn", "spawn_session"):  # a child process that outlives the call, then a hang: the timeout kills the worker
        # spawn_session: the child leaves the worker's process group (a daemon-like helper, a server an impl starts)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=kind == "spawn_session")
        with open(pid_file, "w") as file:
            file.write(str(child.pid))
        time.sleep(3600)
    if kind == "spawn_and_return":  # a helper process in a session of its own, left running by a call that succeeds
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        with open(pid_file, "w") as file:
            file.write(str(child.pid))
        return softmax_attention(q, k, v, causal=causal)
    if kind == "cycle_raise":  # its tensors held in a reference cycle, which the traceback's frames reach
        held = {"tensor": torch.ones(1 << 16)}
        held["self"] = held
        HELD_IN_A_CYCLE.append(weakref.ref(held["tensor"]))
        raise ValueError("planted failure with a cycle")
    if kind == "no_kernel":  # a fused kernel torch refuses at run time (SDPA pinned to a backend that cannot take the case)
        raise RuntimeError("No available kernel. Aborting execution. (planted)")
    if kind == "cuda_error":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (planted)")
    raise ValueError(f"unknown fault kind {kind!r}")


def _refuse_hook(case, options) -> list[str]:
    if options["kind"] == "refuse_raises" and case.seq_len >= options["at_length"]:
        return [f"{case.seq_len % 0}"]  # a plugin's refuse hook with a bug: ZeroDivisionError
    if options["kind"] == "refuse_memory" and case.seq_len >= options["at_length"]:
        raise MemoryError("planted: the hook's table did not fit")
    if options["kind"] == "refuse_segv" and case.seq_len >= options["at_length"] and case.device != "meta":
        os.kill(os.getpid(), signal.SIGSEGV)  # a hook calling into a C library that crashes
    if options["kind"] == "refuse_hangs" and case.seq_len >= options["at_length"] and case.device != "meta":
        time.sleep(3600)
    return []


class _OwnBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, kind):
        ctx.save_for_backward(q, k, v)
        ctx.causal, ctx.kind = causal, kind
        return softmax_attention(q, k, v, causal=causal)

    @staticmethod
    def backward(ctx, grad):
        q, k, v = (t.detach().requires_grad_() for t in ctx.saved_tensors)
        with torch.enable_grad():
            dq, dk, dv = torch.autograd.grad(softmax_attention(q, k, v, causal=ctx.causal), (q, k, v), grad)
        if ctx.kind == "no_dv":
            return dq, dk, None, None, None
        if ctx.kind == "dk_last":  # a masked last key block gone wrong in the backward
            return dq, torch.cat([dk[..., :-64, :], dk[..., -64:, :] * 0], dim=-2), dv, None, None
        return dq * 2, dk, dv, None, None


def scaled_attention(q, k, v, *, causal=False, scale=1.0, wrong_from=0, ref_fails_from=0, batch_masked=False):
    """Softmax of scale-times-larger logits: an exact attention with an option, so it has its own reference; from
    `wrong_from` on its last 64 rows are 5% high. `batch_masked`: batch element b leaves out its last 16 b keys (as
    padding does): right, and its reference only holds over the whole batch."""
    if batch_masked:
        scores = (q * scale) @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, H, N, N)
        index = lambda n: torch.arange(n, device=q.device)  # noqa: E731
        keep = index(k.shape[-2])[None, :] < k.shape[-2] - 16 * index(q.shape[0])[:, None]  # (B, N)
        if causal:
            scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        out = torch.softmax(scores.masked_fill(~keep[:, None, None, :], float("-inf")), dim=-1) @ v
        return out.nan_to_num()  # a causal row with no key left: 0
    out = softmax_attention(q * scale, k, v, causal=causal)
    if wrong_from and q.shape[-2] >= wrong_from:
        return torch.cat([out[..., :-64, :], out[..., -64:, :] * 1.05], dim=-2)
    return out


def scaled_reference(q, k, v, *, causal, scale, wrong_from, ref_fails_from, batch_masked):
    if ref_fails_from and q.shape[-2] >= ref_fails_from:
        raise ValueError(f"reference tables only go to {ref_fails_from}")
    return scaled_attention(q, k, v, causal=causal, scale=scale, ref_fails_from=0, batch_masked=batch_masked)


SCALED_OPTIONS = {"scale": 1.0, "wrong_from": 0, "ref_fails_from": 0, "batch_masked": False}  # scaled's, and approx's


register(
    AttentionImpl(
        name="scaled",
        family="test",
        fn=scaled_attention,
        description="test-only: exact attention of scaled logits, with its own reference",
        options=dict(SCALED_OPTIONS),
        reference=scaled_reference,
    )
)


register(
    AttentionImpl(
        name="approx",
        family="test",
        fn=scaled_attention,
        description="test-only: an approximation with a reference of its own (scaled's) and its rows, wrong from wrong_from on",
        options=dict(SCALED_OPTIONS),
        reference=scaled_reference,
        row_reference=lambda q, k, v, rows, *, causal, scale, **_: softmax_rows(q * scale, k, v, rows, causal=causal),
        exact=False,
    )
)


register(
    AttentionImpl(
        name="fault",
        family="test",
        fn=fault_attention,
        description="test-only: softmax, or a planted fault (kind=raise|sleep|exit|segv|oom|wrong|last_row|nan_head|off"
        "|bad_dq|no_dv|dk_last|squeezed|float64|sdpa|cuda_error|cpu_only|threads1|threads_file|nograd|sys_exit|keyboard|spawn"
        "|spawn_session|spawn_and_return|cycle_raise|no_kernel"
        "|refuse_raises|refuse_segv|refuse_hangs|refuse_memory) from at_length on"
        " (with on_data=1, not on meta)",
        options={"kind": "ok", "at_length": 0, "on_data": False, "pid_file": ""},
        refuse=_refuse_hook,
    )
)


def _broken_count(case, options):
    """A declared FLOP or byte count with a bug: raises, or gives what is no count."""
    broken = options["broken"]
    if broken == "raise":
        return case.seq_len // 0
    return {"negative": -5, "nan": float("nan"), "text": "many"}.get(broken, 4 * case.seq_len**2 * case.head_dim)


register(
    AttentionImpl(
        name="badcount",
        family="test",
        fn=lambda q, k, v, *, causal=False, broken="none": softmax_attention(q, k, v, causal=causal),
        description="test-only: softmax whose flops and min_bytes formulas are broken (broken=raise|negative|nan|text; none: right)",
        options={"broken": "none"},
        flops=_broken_count,
        min_bytes=_broken_count,
    )
)


register(
    AttentionImpl(
        name="badmodel",
        family="test",
        fn=lambda q, k, v, *, causal=False, broken="none": softmax_attention(q, k, v, causal=causal),
        description="test-only: softmax said to be fused (meta_exact=False), its memory_model broken (broken=raise|negative|nan|text)",
        options={"broken": "none"},
        meta_exact=False,
        memory_model=_broken_count,
        flops=lambda case, options: 4 * case.seq_len**2 * case.head_dim,
    )
)

register(
    AttentionImpl(
        name="nomodel",
        family="test",
        fn=lambda q, k, v, *, causal=False: softmax_attention(q, k, v, causal=causal),
        description="test-only: softmax said to be fused (meta_exact=False) with no memory_model",
        meta_exact=False,
        flops=lambda case, options: 4 * case.seq_len**2 * case.head_dim,
    )
)
