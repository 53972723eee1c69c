"""The Triton kernels of Combiner's backend="triton" (Fixed, Axial, Mixture): the fused softmax and values, from logits
or from queries and keys (launched by `triton_softmax.py`), and Mixture's running max (`triton_scan.py`)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softmax_values_kernel(
    logits_ptr, values_ptr, out_ptr, lse_ptr, rows, keys, width, inner_count, outer_stride, inner_stride, key_stride, column_stride,
    drop_from, drop_from_step, drop_to, drop_to_step, drop_divisor,
    STATIC_KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Program (row block, inner group, outer group), numbered in that order fastest first on one grid axis (the
    others take at most 65,535): for BLOCK_M rows of one group's logits (rows, keys), fp32 and contiguous, the online
    softmax over the keys in tiles of BLOCK_K applied to the group's values (keys, width), any strides; out
    (rows, width) and lse (rows, 1), contiguous. The band (triton_softmax.Band): row r drops the keys from
    drop_from + (drop_from_step r) // drop_divisor up to, not including, drop_to + (drop_to_step r) // drop_divisor;
    the steps are >= 0 (Band.drop_weights_ takes the band's span from its first and last rows). Dropped logits are
    read and replaced, not left out of the loads: compiled for sm_90 with the divisibility a launch gets, a load
    masked by the band takes 4 bytes at a time where the load masked by the edges alone takes 16. (A branch that
    skipped whole dropped tiles cost the loop its software pipelining: 33 instead of 99 KB of shared memory, the
    loads no longer staged ahead.) A row left with no key gives out 0 and lse -inf. STATIC_KEYS repeats `keys` as a
    constexpr for Triton's interpreter only (0 when compiled, so that every key count runs one compiled kernel): it
    takes no tensor as a loop bound."""
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
    drop_start = drop_from + (drop_from_step * row) // drop_divisor  # (BLOCK_M,)
    drop_end = drop_to + (drop_to_step * row) // drop_divisor
    for first in range(0, keys if STATIC_KEYS == 0 else STATIC_KEYS, BLOCK_K):
        acc, total, top = _add_tile(logits_ptr, values_at, acc, total, top, group, row, rows, keys, width, first, drop_start, drop_end,
                                    key_stride, column_stride, BLOCK_K, BLOCK_D, PRECISION, INTERPRETED)  # fmt: skip
    total = tl.where(total > 0, total, 1.0)  # rows past the end (never stored), and rows with every key dropped: out 0
    out = acc / total[:, None]
    inside = (row < rows)[:, None] & (column < width)[None, :]
    tl.store(out_ptr + group * rows * width + row[:, None] * width + column[None, :], out.to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(lse_ptr + group * rows + row, top + tl.log(total), mask=row < rows)


@triton.jit
def _add_tile(
    logits_ptr, values_at, acc, total, top, group, row, rows, keys, width, first, drop_start, drop_end, key_stride, column_stride,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """The online softmax's step over the keys [first, first + BLOCK_K): the state (acc, total, top) updated."""
    column = tl.arange(0, BLOCK_D)
    key = first + tl.arange(0, BLOCK_K)
    inside = (row < rows)[:, None] & (key < keys)[None, :]
    logits = tl.load(logits_ptr + group * rows * keys + row[:, None] * keys + key[None, :], mask=inside, other=float("-inf"))
    dropped = (key[None, :] >= drop_start[:, None]) & (key[None, :] < drop_end[:, None])  # (BLOCK_M, BLOCK_K)
    logits = tl.where(dropped, float("-inf"), logits)
    values = tl.load(values_at + key[:, None] * key_stride + column[None, :] * column_stride,
                     mask=(key < keys)[:, None] & (column < width)[None, :], other=0.0)  # fmt: skip
    return _online_step(logits, values, acc, total, top, PRECISION, INTERPRETED)


@triton.jit
def _online_step(logits, values, acc, total, top, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """The online softmax's update by one tile: logits (BLOCK_M, BLOCK_K) with the dropped keys at -inf, values
    (BLOCK_K, BLOCK_D) -> the state (acc, total, top) after it."""
    new_top = tl.maximum(top, tl.max(logits, axis=1))
    shift = tl.where(new_top == float("-inf"), 0.0, new_top)  # a tile of masked keys only: no inf - inf
    weights = tl.exp(logits - shift[:, None])  # (BLOCK_M, BLOCK_K)
    rescale = tl.exp(top - shift)
    product = _dot(weights, values.to(tl.float32), PRECISION, INTERPRETED)
    return acc * rescale[:, None] + product, total * rescale + tl.sum(weights, axis=1), new_top


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        return tl.dot(a, b)  # the interpreter computes in fp32 whatever the precision
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def softmax_values_qk_kernel(
    queries_ptr, keys_ptr, values_ptr, out_ptr, lse_ptr, rows, keys, width, depth, query_inner_count, query_outer_stride,
    query_inner_stride, query_row_stride, key_inner_count, key_outer_stride, key_inner_stride, key_row_stride, inner_count, outer_stride,
    inner_stride, key_stride, column_stride,
    drop_from, drop_from_step, drop_to, drop_to_step, drop_divisor,
    STATIC_KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
    PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """softmax_values_kernel with the logits formed in the kernel, queries @ keys^T, never written: queries (groups,
    rows, depth) and keys (groups, keys, depth), fp32, the depth contiguous, their groups at two levels each as the
    values' (group g = outer * inner_count + inner, at outer * outer_stride + inner * inner_stride: Axial's region
    part hands its queries and keys transposed, (B, H, m, rows, D) views of (B, H, rows, m, D) tensors, uncopied);
    values, out, lse, the band and the program numbering as softmax_values_kernel's."""
    program = tl.program_id(0)
    blocks = tl.cdiv(rows, BLOCK_M)
    block, group = program % blocks, (program // blocks).to(tl.int64)
    inner, outer = group % inner_count, group // inner_count
    row = block * BLOCK_M + tl.arange(0, BLOCK_M)
    column, channel = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_Q)
    queries_at = queries_ptr + (group // query_inner_count) * query_outer_stride + (group % query_inner_count) * query_inner_stride
    keys_at = keys_ptr + (group // key_inner_count) * key_outer_stride + (group % key_inner_count) * key_inner_stride
    queries = tl.load(queries_at + row[:, None] * query_row_stride + channel[None, :],
                      mask=(row < rows)[:, None] & (channel < depth)[None, :], other=0.0)  # fmt: skip
    values_at = values_ptr + outer * outer_stride + inner * inner_stride
    top = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    drop_start = drop_from + (drop_from_step * row) // drop_divisor  # (BLOCK_M,)
    drop_end = drop_to + (drop_to_step * row) // drop_divisor
    for first in range(0, keys if STATIC_KEYS == 0 else STATIC_KEYS, BLOCK_K):
        key = first + tl.arange(0, BLOCK_K)
        key_tile = tl.load(keys_at + key[:, None] * key_row_stride + channel[None, :],
                           mask=(key < keys)[:, None] & (channel < depth)[None, :], other=0.0)  # fmt: skip
        logits = _dot(queries, tl.trans(key_tile), PRECISION, INTERPRETED)  # (BLOCK_M, BLOCK_K)
        dropped = (key[None, :] >= keys) | ((key[None, :] >= drop_start[:, None]) & (key[None, :] < drop_end[:, None]))
        values = tl.load(values_at + key[:, None] * key_stride + column[None, :] * column_stride,
                         mask=(key < keys)[:, None] & (column < width)[None, :], other=0.0)  # fmt: skip
        acc, total, top = _online_step(tl.where(dropped, float("-inf"), logits), values, acc, total, top, PRECISION, INTERPRETED)
    total = tl.where(total > 0, total, 1.0)  # rows past the end (never stored), and rows with every key dropped: out 0
    inside = (row < rows)[:, None] & (column < width)[None, :]
    tl.store(out_ptr + group * rows * width + row[:, None] * width + column[None, :], (acc / total[:, None]).to(out_ptr.dtype.element_ty),
             mask=inside)  # fmt: skip
    tl.store(lse_ptr + group * rows + row, top + tl.log(total), mask=row < rows)


@triton.jit
def prefix_max_kernel(x_ptr, out_ptr, outers, length, inner, STATIC_LENGTH: tl.constexpr, REVERSE: tl.constexpr, BLOCK_O: tl.constexpr,
                      BLOCK_I: tl.constexpr):  # fmt: skip
    """Program (block of inner columns, block of BLOCK_O outer indices), numbered in that order fastest first on one
    grid axis: for x (outers, length, inner) contiguous, out[t] = the max of x[u] over u < t (u > t when REVERSE), 0
    where there is no such u or every such x[u] is -inf (padding). One step a position, in scan order: store the
    carried max, then raise it by x[t]; a step's load does not wait for the one before. (tl.associative_scan over
    tiles of positions took Triton's interpreter ~250 ms a program, its combine run element by element: Combiner's
    CPU tests spent minutes there.) STATIC_LENGTH: `length` as a constexpr, for the interpreter only (0 when
    compiled)."""
    program = tl.program_id(0)
    blocks = tl.cdiv(inner, BLOCK_I)
    block, outer_block = program % blocks, program // blocks
    outer = (outer_block * BLOCK_O + tl.arange(0, BLOCK_O)).to(tl.int64)  # (BLOCK_O,)
    column = block * BLOCK_I + tl.arange(0, BLOCK_I)  # (BLOCK_I,)
    at = (outer * length * inner)[:, None] + column[None, :]  # (BLOCK_O, BLOCK_I)
    inside = (outer < outers)[:, None] & (column < inner)[None, :]
    carry = tl.full((BLOCK_O, BLOCK_I), float("-inf"), dtype=x_ptr.dtype.element_ty)  # the max of the positions so far
    for step in range(0, length if STATIC_LENGTH == 0 else STATIC_LENGTH):
        t = length - 1 - step if REVERSE else step
        tl.store(out_ptr + at + t * inner, tl.where(carry == float("-inf"), 0.0, carry), mask=inside)
        carry = tl.maximum(carry, tl.load(x_ptr + at + t * inner, mask=inside, other=float("-inf")))
