"""The Triton kernel of Combiner-Mixture's backend="triton" (launched by `triton_softmax.py`)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softmax_values_kernel(
    logits_ptr, values_ptr, out_ptr, lse_ptr, rows, keys, width, inner_count, outer_stride, inner_stride, key_stride, column_stride,
    STATIC_KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Program (row block, inner group, outer group), numbered in that order fastest first on one grid axis (the
    others take at most 65,535): for BLOCK_M rows of one group's logits (rows, keys), fp32 and contiguous, the online
    softmax over the keys in tiles of BLOCK_K applied to the group's values (keys, width), any strides; out
    (rows, width) and lse (rows, 1), contiguous. STATIC_KEYS repeats `keys` as a constexpr for Triton's
    interpreter only (0 when compiled, so that every key count runs one compiled kernel): it takes no tensor as a
    loop bound."""
    program = tl.program_id(0)
    blocks = tl.cdiv(rows, BLOCK_M)
    block, group = program % blocks, (program // blocks).to(tl.int64)
    inner, outer = group % inner_count, group // inner_count
    row = block * BLOCK_M + tl.arange(0, BLOCK_M)
    column = tl.arange(0, BLOCK_D)
    values_at = values_ptr + outer * outer_stride + inner * inner_stride
    top = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running row maximum
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp(logit - top)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for first in range(0, keys if STATIC_KEYS == 0 else STATIC_KEYS, BLOCK_K):
        key = first + tl.arange(0, BLOCK_K)
        inside = (row < rows)[:, None] & (key < keys)[None, :]
        logits = tl.load(logits_ptr + group * rows * keys + row[:, None] * keys + key[None, :], mask=inside, other=float("-inf"))
        new_top = tl.maximum(top, tl.max(logits, axis=1))
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)  # a tile of masked keys only: no inf - inf
        weights = tl.exp(logits - shift[:, None])  # (BLOCK_M, BLOCK_K)
        rescale = tl.exp(top - shift)
        values = tl.load(values_at + key[:, None] * key_stride + column[None, :] * column_stride,
                         mask=(key < keys)[:, None] & (column < width)[None, :], other=0.0)  # fmt: skip
        if INTERPRETED:
            product = tl.dot(weights, values.to(tl.float32))  # the interpreter computes in fp32 whatever the precision
        else:
            product = tl.dot(weights, values.to(tl.float32), input_precision=PRECISION)
        acc = acc * rescale[:, None] + product
        total = total * rescale + tl.sum(weights, axis=1)
        top = new_top
    total = tl.where(row < rows, total, 1.0)  # rows past the end (never stored) summed nothing
    out = acc / total[:, None]
    inside = (row < rows)[:, None] & (column < width)[None, :]
    tl.store(out_ptr + group * rows * width + row[:, None] * width + column[None, :], out.to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(lse_ptr + group * rows + row, top + tl.log(total), mask=row < rows)
