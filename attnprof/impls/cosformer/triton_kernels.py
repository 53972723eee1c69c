"""Triton kernels of cosFormer's forward (the option backend="triton"; launched by `triton_plan.py`).

Every tensor is contiguous, (B*H, rows, width) flattened to one base pointer per head; positions past the
sequence and columns past the head dim are loaded as zeros (relu(0) = 0: they add nothing to any sum) and
never stored. Sums are fp32. For bf16 inputs the dot operands are bf16, each rounded once from its fp32
value as the eager bf16 plan rounds them (features, intra-chunk weights, the states the queries read); other
inputs take fp32 operands (PRECISION "tf32x3" for fp32 inputs, "tf32" for fp16: `triton_plan.dot_precision`).
Part sizes are runtime ints, so a sweep's lengths compile no new kernels; STATIC_ROWS repeats one as a
constexpr for Triton's interpreter only (0 when compiled), which takes no tensor as a loop bound.
INTERPRETED: Triton's interpreter, which runs these kernels in the CPU tests, computes bf16 dots wrongly and
does not round to nearest when it casts to bf16; there a rounded operand stays in fp32, rounded to nearest
even by its bits (the same value, and the same products, as the GPU's bf16 operand).
`benchmarks/triton_resources.py` compiles them for a GPU on any machine and prints registers and spills.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _operand(x, ROUND_HALF: tl.constexpr, INTERPRETED: tl.constexpr):
    """x (fp32) as a dot operand: rounded to bf16 once for bf16 inputs, else fp32."""
    if ROUND_HALF:
        if INTERPRETED:
            x = _nearest_bf16(x)
        else:
            x = x.to(tl.bfloat16)
    return x


@triton.jit
def _nearest_bf16(x):
    """fp32 x rounded to the nearest bf16 value (ties to even), kept in fp32: the low 16 bits rounded off."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _split(program, count):
    """(program mod count, program div count as int64): a one-axis grid's (fast, slow) indices."""
    return program % count, (program // count).to(tl.int64)


@triton.jit
def _rows(ptr, base, rows, cols, n, width):
    """Rows `rows` x columns `cols` of one head's (n, width) block at ptr + base, zero outside it, in its dtype."""
    inside = (rows < n)[:, None] & (cols < width)[None, :]
    return tl.load(ptr + base + rows[:, None] * width + cols[None, :], mask=inside, other=0.0)  # (R, BLOCK)


@triton.jit
def _features(x_ptr, base, rows, cols, n, d, rotation_ptr):
    """relu(x) and its two halves relu(x) sin a, relu(x) cos a (fp32, (R, BLOCK_D) each), and sin a, cos a."""
    x = tl.maximum(_rows(x_ptr, base, rows, cols, n, d).to(tl.float32), 0.0)  # (R, BLOCK_D)
    sin = tl.load(rotation_ptr + rows * 2, mask=rows < n, other=0.0)  # (R,)
    cos = tl.load(rotation_ptr + rows * 2 + 1, mask=rows < n, other=0.0)  # (R,)
    return x, x * sin[:, None], x * cos[:, None], sin, cos


@triton.jit
def _values(v_ptr, base, rows, vcols, n, dv, ROUND_HALF: tl.constexpr, INTERPRETED: tl.constexpr):
    values = _rows(v_ptr, base, rows, vcols, n, dv)  # (R, BLOCK_DV), the input dtype
    if INTERPRETED or not ROUND_HALF:
        values = values.to(tl.float32)
    return values


@triton.jit
def _store_normalised(out_ptr, denominator_ptr, bh, rows, vcols, n, dv, numerator, row_sums, eps, ROUND_HALF: tl.constexpr,
                      INTERPRETED: tl.constexpr):  # fmt: skip
    """out = numerator / clamp_min(row sums, eps) in out's dtype; the raw row sums (fp32) for the backward."""
    out = numerator / tl.maximum(row_sums, eps)[:, None]  # (R, BLOCK_DV)
    if ROUND_HALF and INTERPRETED:
        out = _nearest_bf16(out)  # the cast below is then exact
    inside = (rows < n)[:, None] & (vcols < dv)[None, :]
    tl.store(out_ptr + bh * n * dv + rows[:, None] * dv + vcols[None, :], out.to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(denominator_ptr + bh * n + rows, row_sums, mask=rows < n)


@triton.jit
def key_states_kernel(
    k_ptr, v_ptr, rotation_ptr, states_ptr, sums_ptr, n, d, dv, slots, first_slot, rows_per_part,
    STATIC_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ROUND_HALF: tl.constexpr, INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Program (part, head), numbered part-fastest: the sums over the part's keys of phi(k)^T v, as its sin and cos
    halves, into slot first_slot + part of the head's (slots, 2, d, dv) states, and of phi(k), into its (slots, 2, d)
    sums. (One grid axis: the second and third take at most 65,535 programs, fewer than B H can be.)"""
    part, bh = _split(tl.program_id(0), slots - first_slot)
    cols, vcols = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    state_sin = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    state_cos = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    sum_sin = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sum_cos = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for offset in range(0, rows_per_part if STATIC_ROWS == 0 else STATIC_ROWS, BLOCK_N):  # see STATIC_ROWS above
        rows = part * rows_per_part + offset + tl.arange(0, BLOCK_N)  # the last part's rows past n load as zeros
        _, k_sin, k_cos, _, _ = _features(k_ptr, bh * n * d, rows, cols, n, d, rotation_ptr)  # (BLOCK_N, BLOCK_D)
        k_sin, k_cos = _operand(k_sin, ROUND_HALF, INTERPRETED), _operand(k_cos, ROUND_HALF, INTERPRETED)
        values = _values(v_ptr, bh * n * dv, rows, vcols, n, dv, ROUND_HALF, INTERPRETED)  # (BLOCK_N, BLOCK_DV)
        state_sin, state_cos, sum_sin, sum_cos = _add_keys(state_sin, state_cos, sum_sin, sum_cos, k_sin, k_cos, values, PRECISION)
    inside = (cols < d)[:, None] & (vcols < dv)[None, :]
    slot = bh * slots + first_slot + part
    state_at = states_ptr + slot * 2 * d * dv + cols[:, None] * dv + vcols[None, :]
    tl.store(state_at, state_sin, mask=inside)
    tl.store(state_at + d * dv, state_cos, mask=inside)
    sum_at = sums_ptr + slot * 2 * d + cols
    tl.store(sum_at, sum_sin, mask=cols < d)
    tl.store(sum_at + d, sum_cos, mask=cols < d)


@triton.jit
def _add_keys(state_sin, state_cos, sum_sin, sum_cos, k_sin, k_cos, values, PRECISION: tl.constexpr):
    """S += phi(k)^T v and z += sum phi(k), halves apart: S's (BLOCK_D, BLOCK_DV), z's (BLOCK_D,)."""
    state_sin += tl.dot(tl.trans(k_sin), values, input_precision=PRECISION)
    state_cos += tl.dot(tl.trans(k_cos), values, input_precision=PRECISION)
    return state_sin, state_cos, sum_sin + tl.sum(k_sin.to(tl.float32), axis=0), sum_cos + tl.sum(k_cos.to(tl.float32), axis=0)


@triton.jit
def _read_state(q_sin, q_cos, state_sin, state_cos, sum_sin, sum_cos, ROUND_HALF: tl.constexpr, INTERPRETED: tl.constexpr,
                PRECISION: tl.constexpr):  # fmt: skip
    """phi(q) S (the state rounded once to the operand dtype) and phi(q) . z (fp32): (R, BLOCK_DV), (R,)."""
    numerator = tl.dot(q_sin, _operand(state_sin, ROUND_HALF, INTERPRETED), input_precision=PRECISION)
    numerator += tl.dot(q_cos, _operand(state_cos, ROUND_HALF, INTERPRETED), input_precision=PRECISION)
    row_sums = tl.sum(q_sin.to(tl.float32) * sum_sin[None, :], axis=1) + tl.sum(q_cos.to(tl.float32) * sum_cos[None, :], axis=1)
    return numerator, row_sums


@triton.jit
def _state_halves(states_ptr, sums_ptr, index, cols, vcols, d, dv):
    """The sin and cos halves of state number `index` of (..., 2, d, dv) states and (..., 2, d) sums (fp32)."""
    inside = (cols < d)[:, None] & (vcols < dv)[None, :]
    state_at = states_ptr + index * 2 * d * dv + cols[:, None] * dv + vcols[None, :]
    state_sin = tl.load(state_at, mask=inside, other=0.0)  # (BLOCK_D, BLOCK_DV)
    state_cos = tl.load(state_at + d * dv, mask=inside, other=0.0)
    sum_sin = tl.load(sums_ptr + index * 2 * d + cols, mask=cols < d, other=0.0)  # (BLOCK_D,)
    sum_cos = tl.load(sums_ptr + index * 2 * d + d + cols, mask=cols < d, other=0.0)
    return state_sin, state_cos, sum_sin, sum_cos


@triton.jit
def bidirectional_out_kernel(
    q_ptr, rotation_ptr, states_ptr, sums_ptr, out_ptr, denominator_ptr, n, d, dv, eps,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ROUND_HALF: tl.constexpr, INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Program (query block, head), numbered block-fastest: out = phi(q) S / clamp_min(phi(q) z, eps), S and z
    summed over all keys (states (B*H, 2, d, dv), sums (B*H, 2, d)); the state is rounded once to the operand dtype."""
    block, bh = _split(tl.program_id(0), tl.cdiv(n, BLOCK_M))
    cols, vcols = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    _, q_sin, q_cos, _, _ = _features(q_ptr, bh * n * d, rows, cols, n, d, rotation_ptr)  # (BLOCK_M, BLOCK_D)
    q_sin, q_cos = _operand(q_sin, ROUND_HALF, INTERPRETED), _operand(q_cos, ROUND_HALF, INTERPRETED)
    state_sin, state_cos, sum_sin, sum_cos = _state_halves(states_ptr, sums_ptr, bh, cols, vcols, d, dv)
    numerator, row_sums = _read_state(q_sin, q_cos, state_sin, state_cos, sum_sin, sum_cos, ROUND_HALF, INTERPRETED, PRECISION)
    _store_normalised(out_ptr, denominator_ptr, bh, rows, vcols, n, dv, numerator, row_sums, eps, ROUND_HALF, INTERPRETED)


@triton.jit
def causal_out_kernel(
    q_ptr, k_ptr, v_ptr, rotation_ptr, states_ptr, sums_ptr, out_ptr, denominator_ptr, n, d, dv, parts, eps, rows_per_part,
    STATIC_ROWS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ROUND_HALF: tl.constexpr, INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Program (part, head): the part's chunks in order, carrying S and z from the sums over every earlier
    part (states (B*H, parts, 2, d, dv), sums (B*H, parts, 2, d), exclusive). Per chunk: the masked C x C
    weights (q' k'^T) cos(a_i - a_j) [j <= i] times v, plus phi(q) S and phi(q) . z; then the chunk's keys
    join S and z. cos(a_i - a_j) = cos a_i cos a_j + sin a_i sin a_j, from the fp32 rotation table. Numbered
    part-fastest."""
    part, bh = _split(tl.program_id(0), parts)
    cols, vcols, offsets = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV), tl.arange(0, CHUNK)
    state_sin, state_cos, sum_sin, sum_cos = _state_halves(states_ptr, sums_ptr, bh * parts + part, cols, vcols, d, dv)
    for offset in range(0, rows_per_part if STATIC_ROWS == 0 else STATIC_ROWS, CHUNK):
        rows = part * rows_per_part + offset + offsets  # the last part's rows past n are masked
        q_relu, q_sin, q_cos, sin, cos = _features(q_ptr, bh * n * d, rows, cols, n, d, rotation_ptr)  # (C, BLOCK_D)
        k_relu, k_sin, k_cos, _, _ = _features(k_ptr, bh * n * d, rows, cols, n, d, rotation_ptr)
        q_sin, q_cos = _operand(q_sin, ROUND_HALF, INTERPRETED), _operand(q_cos, ROUND_HALF, INTERPRETED)
        k_sin, k_cos = _operand(k_sin, ROUND_HALF, INTERPRETED), _operand(k_cos, ROUND_HALF, INTERPRETED)
        values = _values(v_ptr, bh * n * dv, rows, vcols, n, dv, ROUND_HALF, INTERPRETED)  # (C, BLOCK_DV)
        # relu of a half input is exact in it: these operands are the inputs' own values
        logits = tl.dot(
            _operand(q_relu, ROUND_HALF, INTERPRETED), tl.trans(_operand(k_relu, ROUND_HALF, INTERPRETED)), input_precision=PRECISION
        )
        reweight = cos[:, None] * cos[None, :] + sin[:, None] * sin[None, :]  # (C, C)
        weights = _operand(tl.where(offsets[:, None] >= offsets[None, :], logits * reweight, 0.0), ROUND_HALF, INTERPRETED)
        numerator, row_sums = _read_state(q_sin, q_cos, state_sin, state_cos, sum_sin, sum_cos, ROUND_HALF, INTERPRETED, PRECISION)
        numerator += tl.dot(weights, values, input_precision=PRECISION)  # (C, BLOCK_DV)
        row_sums += tl.sum(weights.to(tl.float32), axis=1)  # (C,)
        _store_normalised(out_ptr, denominator_ptr, bh, rows, vcols, n, dv, numerator, row_sums, eps, ROUND_HALF, INTERPRETED)
        state_sin, state_cos, sum_sin, sum_cos = _add_keys(state_sin, state_cos, sum_sin, sum_cos, k_sin, k_cos, values, PRECISION)
