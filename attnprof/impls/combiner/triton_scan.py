"""Combiner-Mixture's running max through one Triton kernel (scan.prefix_max's method "triton", taken by
backend="triton"): each scan reads its input once and writes its output once.

Why: the blocked scan (scan.py), Mixture's GPU path in eager PyTorch, takes about sqrt(T) + 5 launches and
about five passes over its input per scan. Counted on meta at N = 65536, B = 1, H = 16, bf16, causal, forward:
its maxima were 7.9 of the 46.8 GB Mixture's backend=triton moved, in 51 launches; with this kernel, three
launches move 3.2 GB, and Mixture moves 41.4 GB in 109 ops (bidirectional: 54.8 -> 47.6 GB, 147 -> 67 ops). The
backward is the other methods' (scan._ScannedMax: recomputed through torch.cummax).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnprof.impls import triton_support

BLOCK_O = 8  # outer indices per program: Mixture's scans have many short groups (at N = 65536, 8192 of 256
# positions); 8 x 64 columns make a step's load 2 KB, and 1024 programs cover such a scan
WARPS = 4


def prefix_max(x: Tensor, dim: int, reverse: bool) -> Tensor:
    """The exclusive running max of x along `dim` (strictly before t; after t when reverse), 0 where nothing
    precedes or everything preceding is -inf: scan.prefix_max's result, without autograd (see _ScannedMax)."""
    outer = x.shape[:dim].numel()
    inner = x.shape[dim + 1 :].numel()
    scanned = torch.ops.attnprof.prefix_max(x.contiguous().view(outer, x.shape[dim], inner), reverse)  # (outer, T, inner)
    return scanned.view(x.shape)


@torch.library.custom_op("attnprof::prefix_max", mutates_args=())
def _prefix_max(x: Tensor, reverse: bool) -> Tensor:
    from triton.runtime.interpreter import InterpretedFunction

    from attnprof.impls.combiner import triton_kernels

    outer, length, inner = x.shape
    out = torch.empty_like(x)  # (outer, T, inner)
    kernel = triton_kernels.prefix_max_kernel
    interpreted = isinstance(kernel, InterpretedFunction)
    constants = launch_constants(inner, reverse, length if interpreted else 0)
    grid = (-(-inner // constants["BLOCK_I"]) * -(-outer // BLOCK_O),)
    with triton_support.on_device_of(x):
        kernel[grid](x, out, outer, length, inner, **constants)
    return out


def launch_constants(inner: int, reverse: bool, static_length: int = 0) -> dict:
    """The constexprs of a launch over `inner` columns (also what benchmarks/triton_resources.py compiles)."""
    from triton import next_power_of_2

    block_inner = min(64, max(16, next_power_of_2(inner)))
    return {"STATIC_LENGTH": static_length, "REVERSE": reverse, "BLOCK_O": BLOCK_O, "BLOCK_I": block_inner, "num_warps": WARPS}


@_prefix_max.register_fake
def _(x, reverse):
    return torch.empty_like(x)
