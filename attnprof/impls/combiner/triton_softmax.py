"""Combiner's softmaxes through one Triton kernel each (the option backend="triton": Fixed, Axial, Mixture):
softmax(logits) applied to the values, and the log-normaliser, in one pass over the masked logits, as flash
attention does over its key blocks; for each variant's two logit parts, Axial's row attention and Mixture's
summaries. softmax_values_qk forms the logits in the kernel from queries and keys, where a Band is all a part's
masking (the region parts of Fixed and Axial; Fixed's direct part, Axial's row attention and direct part when nothing
needs a gradient, and Mixture's summaries, where no padding is filled): the logits are never written nor read back.

Why: on a GPU each eager softmax (mixture._part_softmax, mixture._summaries) writes fp32 weights as large as
its logits, and reads them again for the product with the values (the parts also read the logits once more
for the row maximum). Here the kernel reads the logits once and writes only the output and the
log-normaliser; the causal triangles are dropped in the kernel (Band), not filled in the logits. Counted on meta at
N = 65536, B = 1, H = 16, bf16, forward, bytes moved: 72.2 -> 46.8 GB causal, 85.0 -> 54.8 GB bidirectional (53.7
and 59.1 with the triangles filled; 41.4 and 47.6 with the running max in a kernel too, triton_scan.py; 36.6 and 41.2
with the summaries' logits formed in the kernel, softmax_values_qk). Forward +
backward move 2-3% more than the eager plan (414 -> 425 GB, 440 -> 453, both kernels): the backward recomputes
the weights, and drops the band from them.

The backward (eager PyTorch) recomputes the weights as exp(logits - lse), one pass, from the saved logits (softmax_values_qk
forms them again)
(where the eager plan saves the weights: the same bytes), and uses FlashAttention's identity
sum_j w_j dW_j = dout . out for the softmax's backward.
Checked on the CPU through Triton's interpreter, and compiled for sm_90 by benchmarks/triton_resources.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List  # noqa: UP035  (custom_op's schema inference reads list[int] from torch 2.7 on, List[int] from 2.5, the floor)

import torch
from torch import Tensor

from attnprof.impls import triton_support
from attnprof.impls.autograd_guards import refuse_a_graph
from attnprof.impls.precision import tf32_products

BLOCK_M, BLOCK_K = 64, 64  # query rows and keys per tile
MAX_HEAD_DIM = 128  # the accumulator (BLOCK_M, head dim) in registers; at 128 fp32, 193 KiB of shared memory
# Compiled for sm_90 (benchmarks/triton_resources.py), bf16 inputs, d = 64: 4 warps spill 888 bytes a thread, 8 spill 32
# (512 and 0 before the kernel took the band)
WARPS = 8
TRITON_BACKWARD = "backend=triton's fused softmax kernels of the Combiner plans have a backward written by hand, with no derivative"


@dataclass(frozen=True)
class Band:
    """Keys dropped in the kernel instead of by a fill of the logits: row r of a group's logits (M, K) drops the
    keys from `start + (start_step r) // divisor` up to, not including, `end + (end_step r) // divisor`. A causal
    triangle over the first m keys is Band(1, 1, m); Combiner's own-region diagonal over grid rows of s queries
    (M = L, K = the regions) is Band(0, 1, 1, 1, s).

    Why: a masked fill reads and writes the whole logits tensor (at N = 65536, causal Mixture's triangles were
    7.0 of the 53.7 GB its forward moved, counted on meta); the kernel reads each logit once anyway, and drops these."""

    start: int
    start_step: int
    end: int
    end_step: int = 0
    divisor: int = 1

    def __post_init__(self):
        if min(self.start_step, self.end_step) < 0 or self.divisor < 1:
            raise ValueError(f"a band's steps must be >= 0 and its divisor >= 1: {self}")

    def drop_weights_(self, weights: Tensor) -> None:
        """Zero the weights (..., M, K) the band drops, in place: the backward's, recomputed from logits it never
        filled. Only the keys some row drops are touched: the band's span, [start, the last row's end)."""
        rows, keys = weights.shape[-2:]
        low = min(self.start, keys)
        high = min(max(low, self.end + self.end_step * (rows - 1) // self.divisor), keys)
        row = torch.arange(rows, device=weights.device)[:, None]  # (M, 1)
        key = torch.arange(low, high, device=weights.device)  # (span,)
        dropped = (key >= self.start + self.start_step * row // self.divisor) & (key < self.end + self.end_step * row // self.divisor)
        weights[..., low:high].masked_fill_(dropped, 0.0)  # (..., M, span)

    def as_ints(self) -> list[int]:
        return [self.start, self.start_step, self.end, self.end_step, self.divisor]


NO_BAND = Band(0, 0, 0)


def softmax_values(logits: Tensor, values: Tensor, exact: bool, band: Band | None = None) -> tuple[Tensor, Tensor]:
    """softmax(logits) @ values and logsumexp(logits), over the last axis of logits (..., M, K) and the
    keys of values (..., K, D), with autograd; `band`: keys dropped as if their logits were -inf (see Band). A row
    with no key left gives out 0 and lse -inf, which weighs 0 in a merge by log-normalisers.
    exact: fp32 inputs, whose products the eager plan takes in fp32 (here "tf32x3": three TF32 products); half
    inputs take TF32, as their eager plan does on CUDA (precision.py)."""
    return SoftmaxValues.apply(logits, values, exact, band or NO_BAND)


def fused_attend(dtype: torch.dtype, from_queries: bool = False):
    """softmax_values for inputs of `dtype` (fp32 inputs take the exact products): (logits, values, band=None) ->
    (out, lse); from_queries: softmax_values_qk, (queries, keys, values, band=None) -> (out, lse)."""
    return functools.partial(softmax_values_qk if from_queries else softmax_values, exact=dtype == torch.float32)


class SoftmaxValues(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, values, exact: bool, band: Band):
        out, lse = torch.ops.attnprof.softmax_values(logits, values, exact, band.as_ints())
        ctx.save_for_backward(logits, values, out, lse)
        ctx.band = band
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        refuse_a_graph(TRITON_BACKWARD)
        logits, values, out, lse = ctx.saved_tensors
        return *_softmax_backward(logits, values, out, lse, ctx.band, grad_out, grad_lse, own_logits=False), None, None


def softmax_values_qk(queries: Tensor, keys: Tensor, values: Tensor, exact: bool, band: Band | None = None) -> tuple[Tensor, Tensor]:
    """softmax_values(queries @ keys^T, values, exact, band) with the logits formed in the kernel and never written:
    queries (..., M, E), keys (..., K, E) of the same groups. Where a plan's masks are a Band alone (no padding to fill),
    this saves writing the logits and reading them back, and keeps q and k for the backward instead of the logits; the
    backward forms them again (one product)."""
    return SoftmaxValuesQK.apply(queries, keys, values, exact, band or NO_BAND)


class SoftmaxValuesQK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, keys, values, exact: bool, band: Band):
        _check_qk_shapes(queries, keys, values)
        # a layout the kernel cannot address (groups past two stride levels, strided channels) is copied here, outside the
        # custom op, so that the accounting on meta counts the copy (inside, only the op's fake kernel runs)
        queries, keys = _addressed(queries)[0], _addressed(keys.expand(*queries.shape[:-2], *keys.shape[-2:]))[0]
        out, lse = torch.ops.attnprof.softmax_values_qk(queries, keys, values, exact, band.as_ints())
        ctx.save_for_backward(queries, keys, values, out, lse)
        ctx.band, ctx.exact = band, exact
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        refuse_a_graph(TRITON_BACKWARD)
        queries, keys, values, out, lse = ctx.saved_tensors
        queries, keys = _one_group_stride(queries), _one_group_stride(keys)
        # formed with the forward's products (TF32 for half inputs on CUDA, as the kernel's): else exp(logits - lse) is
        # off by the two roundings' difference (~|logit| 2^-11), not by the sums' order alone
        with tf32_products(torch.float32 if ctx.exact else torch.bfloat16, queries.device):
            logits = queries @ keys.transpose(-2, -1)  # (..., M, K)
        grad_logits, grad_values = _softmax_backward(logits, values, out, lse, ctx.band, grad_out, grad_lse, own_logits=True)
        return grad_logits @ keys, grad_logits.transpose(-2, -1) @ queries, grad_values, None, None


def _softmax_backward(logits, values, out, lse, band: Band, grad_out, grad_lse, own_logits: bool) -> tuple[Tensor, Tensor]:
    """The gradients of the logits and of the values, from the forward's output and log-normaliser. own_logits: the
    logits are the backward's own (formed again), turned into the weights in place; else saved ones, left as they are
    (Axial's row attention and direct part share theirs). autograd hands an unused output's gradient in as zeros
    (materialised), never None."""
    # A row with no key (lse -inf) holds only -inf logits and dropped ones: shifted by 0, not by -inf (inf - inf),
    # the first exponentiate to 0, and the band's fill zeroes the others (whatever exp made of them).
    shift_by = lse.masked_fill(torch.isneginf(lse), 0.0)  # (..., M, 1)
    weights = (logits.sub_(shift_by) if own_logits else torch.sub(logits, shift_by)).exp_()  # (..., M, K)
    if band != NO_BAND:
        band.drop_weights_(weights)
    grad_values = weights.transpose(-2, -1) @ grad_out  # (..., K, D)
    grad_weights = grad_out @ values.transpose(-2, -1)  # (..., M, K)
    # sum_j w_j dW_j = dout . out (out = w @ values); the normaliser's gradient w g_lse joins softmax's backward
    shift = (grad_out * out).sum(-1, keepdim=True) - grad_lse  # (..., M, 1)
    return grad_weights.sub_(shift).mul_(weights), grad_values  # w (dW - shift): two passes over the weights' size


def _buffers(logits, values):
    out = values.new_empty((*logits.shape[:-1], values.shape[-1]))  # (..., M, D)
    return out, logits.new_empty((*logits.shape[:-1], 1))  # (..., M, 1)


@torch.library.custom_op("attnprof::softmax_values", mutates_args=())
def _softmax_values(logits: Tensor, values: Tensor, exact: bool, band: List[int]) -> tuple[Tensor, Tensor]:  # noqa: UP006
    from triton.runtime.interpreter import InterpretedFunction

    from attnprof.impls.combiner import triton_kernels

    logits = logits.contiguous()
    out, lse = _buffers(logits, values)
    values, (outer, inner) = _value_layout(values, logits.shape[:-2])
    rows, width = logits.shape[-2], values.shape[-1]
    grid = (-(-rows // BLOCK_M) * inner[0] * outer[0],)
    kernel = triton_kernels.softmax_values_kernel
    keys = logits.shape[-1]
    constants = launch_constants(keys, width, exact, isinstance(kernel, InterpretedFunction))
    with triton_support.on_device_of(logits):
        kernel[grid](logits, values, out, lse, rows, keys, width, inner[0], outer[1], inner[1], values.stride(-2), values.stride(-1),
                     *band, **constants)  # fmt: skip
    return out, lse


@torch.library.custom_op("attnprof::softmax_values_qk", mutates_args=())
def _softmax_values_qk(queries: Tensor, keys: Tensor, values: Tensor, exact: bool, band: List[int]) -> tuple[Tensor, Tensor]:  # noqa: UP006
    from triton.runtime.interpreter import InterpretedFunction

    from attnprof.impls.combiner import triton_kernels

    _check_qk_shapes(queries, keys, values)
    groups = queries.shape[:-2]
    queries, query_strides = _addressed(queries)
    keys, key_strides = _addressed(keys.expand(*groups, *keys.shape[-2:]))
    out, lse = _buffers(queries, values)
    values, (outer, inner) = _value_layout(values, groups)
    rows, width, depth = queries.shape[-2], values.shape[-1], queries.shape[-1]
    grid = (-(-rows // BLOCK_M) * inner[0] * outer[0],)
    kernel = triton_kernels.softmax_values_qk_kernel
    constants = launch_constants(keys.shape[-2], width, exact, isinstance(kernel, InterpretedFunction), depth=depth)
    with triton_support.on_device_of(queries):
        kernel[grid](queries, keys, values, out, lse, rows, keys.shape[-2], width, depth, *query_strides, *key_strides, inner[0], outer[1],
                     inner[1], values.stride(-2), values.stride(-1), *band, **constants)  # fmt: skip
    return out, lse


@_softmax_values_qk.register_fake
def _(queries, keys, values, exact, band):
    return _buffers(queries, values)


def launch_constants(keys: int, width: int, exact: bool, interpreted: bool = False, depth: int | None = None) -> dict:
    """The constexprs of a launch over `keys` keys of `width`-wide values (also what benchmarks/triton_resources.py
    compiles); exact: fp32 inputs ("tf32x3" products), else TF32; depth: the queries' and keys' width, for the kernel
    that forms the logits (softmax_values_qk_kernel)."""
    from triton import next_power_of_2

    constants = {"STATIC_KEYS": keys if interpreted else 0, "BLOCK_M": BLOCK_M, "BLOCK_K": BLOCK_K,
                 "BLOCK_D": max(16, next_power_of_2(width)), "PRECISION": "tf32x3" if exact else "tf32", "INTERPRETED": interpreted,
                 "num_warps": WARPS}  # fmt: skip
    if depth is None:
        return constants
    # the key tiles staged 3 deep beside the value tiles took 256 KiB of shared memory at a depth of 128 (fp32 inputs; an
    # H100 gives a block 227 KiB), and 224 KiB with bf16 inputs: 2 deep there
    stages = {"num_stages": 2} if depth > 64 else {}
    return constants | {"BLOCK_Q": max(16, next_power_of_2(depth)), **stages}


@_softmax_values.register_fake
def _(logits, values, exact, band):
    return _buffers(logits, values)


def _check_qk_shapes(queries: Tensor, keys: Tensor, values: Tensor) -> None:
    """The kernel reads `depth` channels of every key row and a value row per key: a mismatch would read past them."""
    if keys.shape[-1] != queries.shape[-1] or values.shape[-2] != keys.shape[-2] or queries.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"softmax_values_qk needs queries (..., M, E), keys (..., K, E) and values (..., K, D) with E <= {MAX_HEAD_DIM}, "
                         f"not {tuple(queries.shape)}, {tuple(keys.shape)}, {tuple(values.shape)}")  # fmt: skip


def _addressed(x: Tensor) -> tuple[Tensor, tuple[int, int, int, int]]:
    """x (..., R, E) and how the kernel reaches its rows: (inner count, outer stride, inner stride) of its groups at two
    levels (see _two_levels) and the row stride, E contiguous. Mixture's summaries (slices of positions) and Axial's
    region part (transposed rows) stay views; another layout is copied once."""
    levels = _two_levels(x)
    if x.stride(-1) != 1 or levels is None:
        x = x.contiguous()
        levels = _two_levels(x)
    (_, outer_stride), (inner_count, inner_stride) = levels
    return x, (inner_count, outer_stride, inner_stride, x.stride(-2))


def _one_group_stride(x: Tensor) -> Tensor:
    """x, or a copy where its groups take two strides (Axial's region part): bmm merges the groups into one stride, and
    each of the backward's three products would copy such a view (counted at N = 65536, Axial forward + backward 86.8 GB
    against 85.7 copied once). Mixture's summaries, slices of one group stride, stay views (copied: +2.4 GB causal, +3.2 bidirectional)."""
    levels = _two_levels(x)
    return x if levels is not None and levels[0][0] == 1 else x.contiguous()


def _value_layout(values: Tensor, groups) -> tuple[Tensor, tuple[tuple[int, int], tuple[int, int]]]:
    """values expanded to the logits' groups, and their groups as (outer, inner) levels of one stride each (see
    _two_levels): Mixture's views stay views; a layout Mixture does not make is copied once."""
    values = values.expand(*groups, *values.shape[-2:])
    levels = _two_levels(values)
    if levels is None:
        values = values.contiguous()
        levels = _two_levels(values)
    return values, levels


def _two_levels(values: Tensor) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(count, stride) of an outer and an inner group level such that group g = outer * count_inner + inner
    sits at outer * stride_outer + inner * stride_inner: the leading dims merged where their strides chain
    (B, H, blocks of rows: a slice of rows breaks the chain between H and the rows); None past two levels."""
    dims = [(size, stride) for size, stride in zip(values.shape[:-2], values.stride()[:-2], strict=True) if size != 1]
    merged: list[tuple[int, int]] = []
    for size, stride in dims:
        if merged and merged[-1][1] == size * stride:  # the previous dim steps over this whole one
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    while len(merged) < 2:
        merged.insert(0, (1, 0))
    return (merged[0], merged[1]) if len(merged) == 2 else None
