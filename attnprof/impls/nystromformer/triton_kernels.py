"""The Triton kernels of Nyströmformer's backend="triton" (launched by `triton_plan.py`): Bk @ V in parts of the keys,
the parts merged with the pseudo-inverse and W = Z @ (Bk @ V) in one program per head, and the output rows with the
conv skip. Products of fp32 operands take "tf32x3" (three TF32 products, about fp32's precision) when compiled; Triton's
interpreter computes them in fp32 whatever the precision, and is handed none (INTERPRETED)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, EXACT: tl.constexpr, INTERPRETED: tl.constexpr):
    """a @ b accumulated in fp32; EXACT: fp32 operands, taken as "tf32x3" (half operands multiply natively). The
    interpreter is handed fp32 operands (products of halves are exact in fp32): its dot of bf16 operands is wrong."""
    if INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    if EXACT:
        return tl.dot(a, b, input_precision="tf32x3")
    return tl.dot(a, b)


@triton.jit
def landmark_values_kernel(
    q_land_ptr, k_ptr, v_ptr, acc_ptr, top_ptr, total_ptr, keys, landmarks, width, width_v, parts, scale,
    KEYS_PER_PART: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    EXACT: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Program (part, group), part fastest: softmax(Ql K^T / sqrt(d)) V over the part's keys [part KEYS_PER_PART, ...)
    as flash attention's online softmax leaves it, unnormalised: acc (landmarks, width_v) = sum_j exp(l_j - top) v_j,
    top (landmarks,) = the max logit, total = sum_j exp(l_j - top). Every part holds a key; its tiles past the last one add nothing.
    q_land (groups, landmarks, width) fp32 unscaled; k (groups, keys, width), v (groups, keys, width_v), contiguous;
    acc, top, total (groups, parts, landmarks[, width_v]) fp32. Ql is scaled and rounded to k's dtype as the eager
    plan's (q_land * scale).to(q.dtype)."""
    program = tl.program_id(0)
    part, group = program % parts, (program // parts).to(tl.int64)
    row, column, column_v = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    q_land = tl.load(q_land_ptr + group * landmarks * width + row[:, None] * width + column[None, :],
                     mask=(row < landmarks)[:, None] & (column < width)[None, :], other=0.0)  # fmt: skip
    q_land = (q_land * scale).to(k_ptr.dtype.element_ty)  # (BLOCK_M, BLOCK_D)
    top = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    for first in range(0, KEYS_PER_PART, BLOCK_K):
        key = part * KEYS_PER_PART + first + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        k_tile = tl.load(k_ptr + group * keys * width + key[:, None] * width + column[None, :],
                         mask=(key < keys)[:, None] & (column < width)[None, :], other=0.0)  # fmt: skip
        logits = _dot(q_land, tl.trans(k_tile), EXACT, INTERPRETED)  # (BLOCK_M, BLOCK_K)
        logits = tl.where((key < keys)[None, :], logits, float("-inf"))
        new_top = tl.maximum(top, tl.max(logits, axis=1))
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)  # a tile past the last key: no inf - inf
        weights = tl.exp(logits - shift[:, None])  # (BLOCK_M, BLOCK_K)
        rescale = tl.exp(top - shift)
        v_tile = tl.load(v_ptr + group * keys * width_v + key[:, None] * width_v + column_v[None, :],
                         mask=(key < keys)[:, None] & (column_v < width_v)[None, :], other=0.0)  # fmt: skip
        acc = acc * rescale[:, None] + _dot(weights.to(v_tile.dtype), v_tile, EXACT, INTERPRETED)
        total = total * rescale + tl.sum(weights, axis=1)
        top = new_top
    at = (group * parts + part) * landmarks + row  # (BLOCK_M,)
    tl.store(acc_ptr + at[:, None] * width_v + column_v[None, :], acc, mask=(row < landmarks)[:, None] & (column_v < width_v)[None, :])
    tl.store(top_ptr + at, top, mask=row < landmarks)
    tl.store(total_ptr + at, total, mask=row < landmarks)


@triton.jit
def pinv_values_kernel(
    a_ptr, scale_ptr, scale_stride, acc_ptr, top_ptr, total_ptr, w_ptr, landmarks, width_v, parts,
    STATIC_PARTS: tl.constexpr, ITERATIONS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Program = group (one per batch item and head): merges the parts of landmark_values_kernel into Bk @ V, runs the
    pseudo-inverse's iterations from Z = A^T / scale (the eager plan's form: P = AZ, X1 = 7 P - P P, X3 = 15 P - P X1,
    Z <- (13 Z - Z X3) / 4) and stores W = Z @ (Bk @ V) (landmarks, width_v) in w's dtype. A (groups, landmarks,
    landmarks) fp32 contiguous; scale at scale_ptr + group scale_stride (0: one scalar for all). Landmarks padded to
    BLOCK_M stay zero through the iterations: A's padding is zero and no identity is added. STATIC_PARTS: `parts` as a
    constexpr, for the interpreter only (0 when compiled)."""
    group = tl.program_id(0).to(tl.int64)
    row, column, column_v = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_DV)
    top = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    inside_v = (row < landmarks)[:, None] & (column_v < width_v)[None, :]
    for part in range(0, parts if STATIC_PARTS == 0 else STATIC_PARTS):
        at = (group * parts + part) * landmarks + row  # (BLOCK_M,)
        part_top = tl.load(top_ptr + at, mask=row < landmarks, other=float("-inf"))
        new_top = tl.maximum(top, part_top)
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)  # padded landmarks, and parts with no key so far
        old, new = tl.exp(top - shift), tl.exp(part_top - shift)
        acc = acc * old[:, None] + tl.load(acc_ptr + at[:, None] * width_v + column_v[None, :], mask=inside_v, other=0.0) * new[:, None]
        total = total * old + tl.load(total_ptr + at, mask=row < landmarks, other=0.0) * new
        top = new_top
    bk_v = acc / tl.where(total > 0, total, 1.0)[:, None]  # (BLOCK_M, BLOCK_DV); padded landmarks 0, not 0 / 0
    inside = (row < landmarks)[:, None] & (column < landmarks)[None, :]
    a_at = a_ptr + group * landmarks * landmarks
    a = tl.load(a_at + row[:, None] * landmarks + column[None, :], mask=inside, other=0.0)  # (BLOCK_M, BLOCK_M)
    z = tl.load(a_at + column[None, :] * landmarks + row[:, None], mask=inside, other=0.0)  # A^T
    z = z / tl.load(scale_ptr + group * scale_stride)
    for _ in tl.static_range(ITERATIONS):
        az = _dot(a, z, True, INTERPRETED)
        x1 = 7.0 * az - _dot(az, az, True, INTERPRETED)
        x3 = 15.0 * az - _dot(az, x1, True, INTERPRETED)
        z = 3.25 * z - 0.25 * _dot(z, x3, True, INTERPRETED)
    w = _dot(z, bk_v, True, INTERPRETED)  # (BLOCK_M, BLOCK_DV)
    tl.store(w_ptr + group * landmarks * width_v + row[:, None] * width_v + column_v[None, :], w.to(w_ptr.dtype.element_ty), mask=inside_v)


@triton.jit
def nystrom_out_kernel(
    q_ptr, k_land_ptr, w_ptr, v_ptr, conv_ptr, out_ptr, length, landmarks, width, width_v, heads, taps, scale,
    HAS_CONV: tl.constexpr, CONV_CHUNKS: tl.constexpr, CONV_CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, EXACT: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Program (row block, group), row block fastest: out = softmax(Q Kl^T / sqrt(d)) W (+ the conv skip) for BLOCK_N
    rows. q (groups, length, width), v and out (groups, length, width_v), w (groups, landmarks, width_v), contiguous;
    k_land fp32 unscaled (groups, landmarks, width), scaled and rounded to q's dtype as the eager plan does. The conv
    (taps odd, zero padding taps // 2, filter conv[head] of `taps` values in v's dtype) as a banded product: for
    CONV_CHUNKS chunks of CONV_CHUNK rows of v from the block's first row - taps // 2 on, out += T v_chunk with
    T[i, r] = conv[chunk CONV_CHUNK + r - i] (0 outside the taps), gathered from the small filter: the sum runs on
    the tensor cores, and a block loads BLOCK_N + taps - 1 rows of v rounded up to chunks (96 for 64 rows and 33
    taps), so each row of v is loaded 1.5 times over; the accounting counts one read, the halo's repeat being likely
    to come from L2."""
    program = tl.program_id(0)
    blocks = tl.cdiv(length, BLOCK_N)
    block, group = program % blocks, (program // blocks).to(tl.int64)
    row = block * BLOCK_N + tl.arange(0, BLOCK_N)
    landmark, column, column_v = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    q_tile = tl.load(q_ptr + group * length * width + row[:, None] * width + column[None, :],
                     mask=(row < length)[:, None] & (column < width)[None, :], other=0.0)  # fmt: skip
    k_land = tl.load(k_land_ptr + group * landmarks * width + landmark[:, None] * width + column[None, :],
                     mask=(landmark < landmarks)[:, None] & (column < width)[None, :], other=0.0)  # fmt: skip
    k_land = (k_land * scale).to(q_tile.dtype)  # (BLOCK_M, BLOCK_D)
    logits = _dot(q_tile, tl.trans(k_land), EXACT, INTERPRETED)  # (BLOCK_N, BLOCK_M)
    logits = tl.where((landmark < landmarks)[None, :], logits, float("-inf"))
    weights = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    weights = weights / tl.sum(weights, axis=1)[:, None]
    inside_w = (landmark < landmarks)[:, None] & (column_v < width_v)[None, :]
    w = tl.load(w_ptr + group * landmarks * width_v + landmark[:, None] * width_v + column_v[None, :], mask=inside_w, other=0.0)
    out = _dot(weights.to(w.dtype), w, EXACT, INTERPRETED)  # (BLOCK_N, BLOCK_DV)
    if HAS_CONV:
        head = group % heads
        first = block * BLOCK_N - taps // 2  # the v row that tap 0 of the block's first row reads
        for chunk in tl.static_range(CONV_CHUNKS):
            source = first + chunk * CONV_CHUNK + tl.arange(0, CONV_CHUNK)  # (CONV_CHUNK,) rows of v
            v_tile = tl.load(v_ptr + group * length * width_v + source[:, None] * width_v + column_v[None, :],
                             mask=((source >= 0) & (source < length))[:, None] & (column_v < width_v)[None, :], other=0.0)  # fmt: skip
            tap = chunk * CONV_CHUNK + tl.arange(0, CONV_CHUNK)[None, :] - tl.arange(0, BLOCK_N)[:, None]  # (BLOCK_N, CONV_CHUNK)
            band = tl.load(conv_ptr + head * taps + tap, mask=(tap >= 0) & (tap < taps), other=0.0)
            out += _dot(band, v_tile, EXACT, INTERPRETED)
    tl.store(out_ptr + group * length * width_v + row[:, None] * width_v + column_v[None, :], out.to(out_ptr.dtype.element_ty),
             mask=(row < length)[:, None] & (column_v < width_v)[None, :])  # fmt: skip
