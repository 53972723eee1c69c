"""Test-only impls, loaded through ATTNPROF_PLUGINS (tests/conftest.py), so workers see them too.

`fault` computes exact softmax attention unless its `kind` option asks it to misbehave:
raise, sleep past any timeout, kill its own process, raise torch's OOM error, return wrong numbers
(everywhere, or in the last row only; or a wrong shape or dtype), or poison itself like a CUDA error
does. With the default kind it is harmless in `--impl all`.
"""

import os
import signal
import time

import torch

from attnprof.impls import register
from attnprof.impls.base import AttentionImpl
from attnprof.impls.softmax import softmax_attention


def fault_attention(q, k, v, *, causal=False, kind="ok", at_length=0):
    n = q.shape[-2]
    if kind == "ok" or n < at_length:
        return softmax_attention(q, k, v, causal=causal)
    if kind == "raise":
        raise ValueError("planted failure in the fault impl")
    if kind == "sleep":
        time.sleep(3600)
    if kind == "exit":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB (planted)")
    if kind == "wrong":
        return softmax_attention(q, k, v, causal=causal) * 1.5
    if kind == "last_row":  # a masked last block gone wrong: only the final query row is off
        out = softmax_attention(q, k, v, causal=causal)
        return torch.cat([out[..., :-1, :], out[..., -1:, :] * 0], dim=-2)
    if kind == "squeezed":  # (H, N, D): broadcasts against the (1, H, N, D) reference
        return softmax_attention(q, k, v, causal=causal)[0]
    if kind == "sdpa":  # a fused kernel on a GPU, the N x N math path on meta
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if kind == "float64":
        return softmax_attention(q.double(), k.double(), v.double(), causal=causal)
    if kind == "cuda_error":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (planted)")
    raise ValueError(f"unknown fault kind {kind!r}")


register(
    AttentionImpl(
        name="fault",
        family="test",
        fn=fault_attention,
        description="test-only: softmax, or a planted fault"
        " (kind=raise|sleep|exit|segv|oom|wrong|last_row|squeezed|float64|sdpa|cuda_error) from at_length on",
        options={"kind": "ok", "at_length": 0},
    )
)
