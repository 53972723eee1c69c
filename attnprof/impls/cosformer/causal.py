"""The causal cosFormer: chunks of C positions, G chunks per step, a carried state between steps.

Forward, per step: the masked C x C weights W = (q' k'^T) * cos(a_i - a_j) [j <= i] of each chunk give the
intra-chunk numerator W v and row sums W 1; phi(q) S_<chunk and phi(q) . z_<chunk add every earlier chunk,
S_<chunk = sum phi(k_j)^T v_j ([2d, Dv]) and z_<chunk = sum phi(k_j) ([2d]) being the carried sums plus an
exclusive running sum over the step's chunks. The denominator is kept apart from the numerator rather than
widening v by a ones column: at Dv = 64 the products with 65 columns ran 15-20 % slower on the CPU (batched
64 x 64 x 64 products 148 GFLOP/s against 123 at 65 columns), and the forward as a whole took 7 % less
process CPU time (173.6 against 187.7 ms at N = 8192, B = 1, H = 16, fp32, one thread, median of 8 interleaved).

On the CPU with B H C >= 2^8 the forward takes one chunk of every head per step instead and advances the
carried sums in place (`sequential.py`): there the per-chunk states cost more memory traffic than the
extra steps cost dispatch.

The backward recomputes each step's pieces from q, k, v, the output and the denominators, with v widened
by a ones column so that one product carries the numerator's and the denominator's gradients: dq in a
forward sweep, dk and dv in a reverse sweep. On the CPU the backward takes one chunk of every head a step too
(`sequential_backward.py`, whose dv products leave the ones column out) from B H C >= 2^10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnprof.impls.autograd_guards import refuse_a_graph
from attnprof.impls.cosformer import common
from attnprof.impls.cosformer.common import (
    COSFORMER_BACKWARD,
    add_product_,
    bmm,
    causal_reweight,
    compute_dtype,
    empty_state,
    features_of,
    half_features,
    half_products,
    normalise_into,
    position_rotation,
    relu_grad,
    rounded_bmm,
    row_grads,
    unrotated,
    wide_bmm,
    widened,
)
from attnprof.impls.cosformer.sequential import sequential_forward, sequential_plan
from attnprof.impls.cosformer.sequential_backward import sequential_backward
from attnprof.impls.precision import tf32_products

ADDS_UP_TO = 8  # chunks per step summed by in-place adds; more go through torch.cumsum (_exclusive_cumsum)


class CausalCosformer(torch.autograd.Function):
    """Chunks of C positions, G chunks per step: masked C x C weights inside each chunk plus phi(q) S_<chunk,
    the sums over all earlier chunks (the carried sums plus an exclusive running sum over the step's chunks)."""

    @staticmethod
    def forward(ctx, q, k, v, eps: float, chunk: int):
        if half_products(q, k, v):
            out, denominator = _half_forward(q, k, v, eps, chunk)  # (B, H, N, Dv), (B, H, N, 1) in the compute dtype
        elif sequential_plan(q, chunk):  # the denominators only where a backward may read them
            out, denominator = sequential_forward(q, k, v, eps, chunk, denominators=any(ctx.needs_input_grad[:3]))
        else:
            out, denominator = _forward(q, k, v, eps, chunk)
        ctx.save_for_backward(q, k, v, out, denominator)
        ctx.eps, ctx.chunk = eps, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        refuse_a_graph(COSFORMER_BACKWARD)
        q, k, v, out, denominator = ctx.saved_tensors
        if sequential_plan(q, ctx.chunk, backward=True):  # on the CPU (where no TF32 applies); either forward saved the same
            return *sequential_backward(q, k, v, out, denominator, grad_out, ctx.eps, ctx.chunk), None, None
        with tf32_products(q.dtype, q.device):  # fp32 products of half inputs on CUDA (precision.py)
            steps = _causal_steps(q, ctx.chunk, denominator.dtype)
            grads_of = lambda step: row_grads(step.view(grad_out), step.view(out), step.view(denominator), ctx.eps, step.dtype)
            grad_q = _causal_query_grads(steps, q, k, v, grads_of)
            return grad_q, *_causal_key_grads(steps, q, k, v, grads_of), None, None


def _forward(q, k, v, eps: float, chunk: int):
    """Every operand upcast to the compute dtype (fp32 for halves)."""
    dtype = compute_dtype(q.dtype)
    state = q.new_zeros((*q.shape[:2], 2 * q.shape[-1], v.shape[-1]), dtype=dtype)  # (B, H, 2D, Dv): sum phi(k)^T v before the step
    key_sum = q.new_zeros((*q.shape[:2], 1, 2 * q.shape[-1]), dtype=dtype)  # (B, H, 1, 2D): sum phi(k) before the step
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))  # (B, H, N, Dv)
    denominator = q.new_empty((*q.shape[:-1], 1), dtype=dtype)  # (B, H, N, 1)
    for step in _causal_steps(q, chunk, dtype):
        (q_f, phi_q), (k_f, phi_k) = step.features(q), step.features(k)  # (B, H, G, C, D | 2D)
        values = step.view(v).to(dtype).contiguous()  # (B, H, G, C, Dv): one copy, read by two products
        weights = step.intra_weights(q_f, k_f)  # (B, H, G, C, C)
        numerator = bmm(weights, values)  # (B, H, G, C, Dv)
        past, state = _exclusive_cumsum(state, bmm(phi_k.transpose(-2, -1), values))  # (B, H, G, 2D, Dv)
        past_keys, key_sum = _exclusive_cumsum(key_sum, phi_k.sum(-2, keepdim=True))  # (B, H, G, 1, 2D)
        add_product_(numerator, phi_q, past)
        row_sums = add_product_(weights.sum(-1, keepdim=True), phi_q, past_keys.transpose(-2, -1))  # (B, H, G, C, 1)
        normalise_into(numerator, row_sums, eps, step.view(out), step.view(denominator))
    return out, denominator


def _half_forward(q, k, v, eps: float, chunk: int):
    """_forward from bf16 operands with fp32 sums (common.half_products): features, intra-chunk weights and the
    states read by the queries are rounded to bf16 once each; the running sums and carried states stay fp32."""
    state = q.new_zeros((*q.shape[:2], 2 * q.shape[-1], v.shape[-1]), dtype=torch.float32)  # (B, H, 2D, Dv)
    key_sum = q.new_zeros((*q.shape[:2], 1, 2 * q.shape[-1]), dtype=torch.float32)  # (B, H, 1, 2D)
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))  # (B, H, N, Dv)
    denominator = q.new_empty((*q.shape[:-1], 1), dtype=torch.float32)  # (B, H, N, 1)
    for step in _causal_steps(q, chunk, torch.float32):
        q_f, k_f = torch.relu(step.view(q)), torch.relu(step.view(k))  # (B, H, G, C, D), bf16
        phi_q, phi_k = half_features(q_f, step.rotation), half_features(k_f, step.rotation)  # (B, H, G, C, 2D)
        values = step.view(v).contiguous()  # (B, H, G, C, Dv), bf16: one copy (or none), read by two products
        weights = q_f.new_empty((*q_f.shape[:-1], q_f.shape[-2]))  # (B, H, G, C, C), bf16
        torch.mul(wide_bmm(q_f, k_f.transpose(-2, -1)), step.reweight, out=weights)
        numerator = wide_bmm(weights, values)  # (B, H, G, C, Dv), fp32
        past, state = _rounded_exclusive_sums(state, rounded_bmm(phi_k.transpose(-2, -1), values))  # (B, H, G, 2D, Dv), bf16
        past_keys, key_sum = _exclusive_cumsum(key_sum, phi_k.sum(-2, keepdim=True, dtype=torch.float32))  # (B, H, G, 1, 2D)
        numerator += wide_bmm(phi_q, past)
        row_sums = weights.sum(-1, keepdim=True, dtype=torch.float32)  # (B, H, G, C, 1)
        row_sums += wide_bmm(phi_q, past_keys.transpose(-2, -1).to(q.dtype))
        normalise_into(numerator, row_sums, eps, step.view(out), step.view(denominator))
    return out, denominator


@dataclass(frozen=True)
class _Step:
    """`count` consecutive chunks of `size` positions from `start`, processed as one batch of chunks."""

    start: int
    count: int
    size: int
    rotation: torch.Tensor  # (G, C, 2, 1): [sin a, cos a] of each position
    reweight: torch.Tensor  # (C, C): cos(a_i - a_j) for j <= i, else 0
    dtype: torch.dtype

    def view(self, x):
        return x[..., self.start : self.start + self.count * self.size, :].unflatten(-2, (self.count, self.size))  # (B, H, G, C, X)

    def features(self, x):
        """(relu(x), phi(x)) of the step, in the compute dtype."""
        return features_of(self.view(x), self.rotation, self.dtype)  # (B, H, G, C, D), (B, H, G, C, 2D)

    def load(self, q, k, v):
        """(relu(q), phi(q)), (relu(k), phi(k)), [v, 1] of the step, in the compute dtype (the backward's pieces)."""
        return self.features(q), self.features(k), widened(self.view(v), self.dtype)

    def intra_weights(self, q_f, k_f):
        return bmm(q_f, k_f.transpose(-2, -1)).mul_(self.reweight)  # (B, H, G, C, C)

    def unrotated(self, grad_phi):
        return unrotated(grad_phi, self.rotation)  # (B, H, G, C, D)


def _causal_steps(q, chunk: int, dtype) -> list[_Step]:
    n, chunk = q.shape[-2], min(chunk, q.shape[-2])
    rotation = position_rotation(n, n, dtype, q.device)  # (N, 2, 1)
    reweight = causal_reweight(chunk, n, dtype, q.device)  # (C, C)
    return [
        _Step(start, count, size, rotation[start : start + count * size].unflatten(0, (count, size)), reweight[:size, :size], dtype)
        for start, count, size in step_spans(n, chunk, q.shape[0] * q.shape[1], q.device)
    ]


def step_spans(n: int, chunk: int, batch_heads: int, device) -> list[tuple[int, int, int]]:
    """(first position, chunks G, chunk length) of every step: full chunks G at a time (G from step_rows(device)),
    then the remainder N mod C as a step of one short chunk. Also what cosformer_flops counts the scan GEMMs by."""
    chunk = min(chunk, n)
    # max(chunk, CAUSAL_CHUNK): a small chunk_size must not multiply the step's [G, 2D, Dv] chunk states
    # max(batch_heads, 1): an empty batch (B or H = 0) has its steps too, of no rows (it divided by zero)
    per_step = max(1, common.step_rows(device) // (max(batch_heads, 1) * max(chunk, common.CAUSAL_CHUNK)))
    # at most MAX_STEP_CHUNKS: the bf16 plan's triangular GEMM grows as G^2 (at B H = 1, G = 1024 it was 6.3 x
    # the call's own FLOPs; capped, at most 1.7 x, as at B H = 16, and cheap on tensor cores)
    per_step = min(per_step, common.MAX_STEP_CHUNKS)
    full = n // chunk
    spans = [(first * chunk, min(per_step, full - first), chunk) for first in range(0, full, per_step)]
    return spans + ([(full * chunk, 1, n - full * chunk)] if n % chunk else [])


def _exclusive_cumsum(carry, parts, reverse: bool = False):
    """For each of the G chunks (dim -3 of parts): carry + the parts of the chunks before it (after it, when
    reverse); and the total, the next carry. `parts` is the caller's temporary and may be overwritten.
    Up to ADDS_UP_TO chunks, G in-place adds: on the CPU torch.cumsum over a middle dim was ~5x slower at
    G = 4, and the result is contiguous so the matmul reading it makes no copy. Beyond, one torch.cumsum:
    a fixed handful of kernels however large G is (the device steps)."""
    if parts.shape[-3] > ADDS_UP_TO:
        return _scanned_exclusive_cumsum(carry, parts, reverse)
    order = list(range(parts.shape[-3]))[:: -1 if reverse else 1]
    sums = torch.empty_like(parts)  # (B, H, G, X, Y)
    sums[..., order[0], :, :] = carry
    for before, g in zip(order[:-1], order[1:], strict=True):
        torch.add(sums[..., before, :, :], parts[..., before, :, :], out=sums[..., g, :, :])
    return sums, sums[..., order[-1], :, :] + parts[..., order[-1], :, :]


def _rounded_exclusive_sums(carry, parts):
    """_exclusive_cumsum of bf16 chunk states `parts` (B, H, G, X, Y) and an fp32 carry (B, H, X, Y), the sums
    in bf16: one GEMM of a lower-triangular matrix of ones with [carry, parts of chunks 0..G-2] adds them in
    fp32 and rounds each sum once. (torch.cumsum in bf16 would round its running sum at every chunk; in fp32
    it writes every chunk's state three times in fp32: sums, shift, cast.) The next carry, the fp32 carry plus
    every part, is exactly the sum of what the queries of later steps read."""
    count = parts.shape[-3]
    shifted = torch.cat((carry.unsqueeze(-3).to(parts.dtype), parts[..., :-1, :, :]), dim=-3)  # (B, H, G, X, Y)
    lower = torch.ones(count, count, dtype=parts.dtype, device=parts.device).tril()  # (G, G): sum 0..g for chunk g
    sums = rounded_bmm(lower.expand(*parts.shape[:-3], count, count), shifted.flatten(-2))  # (B, H, G, X*Y)
    return sums.unflatten(-1, parts.shape[-2:]), carry + parts.sum(-3, dtype=carry.dtype)


def _scanned_exclusive_cumsum(carry, parts, reverse: bool):
    """_exclusive_cumsum by torch.cumsum: the carry folded into the first chunk's part (of `parts`, a
    temporary of the caller's, or of its flipped copy in reverse), the inclusive sums shifted by one chunk
    (no subtraction, so no cancellation). Two passes over the chunk states; reverse adds a flip in and out."""
    ordered = parts.flip(-3) if reverse else parts  # (B, H, G, X, Y)
    ordered[..., :1, :, :] += carry.unsqueeze(-3)
    inclusive = torch.cumsum(ordered, dim=-3)  # (B, H, G, X, Y): carry + chunks up to g
    sums = torch.cat((carry.unsqueeze(-3), inclusive[..., :-1, :, :]), dim=-3)  # (B, H, G, X, Y)
    return (sums.flip(-3) if reverse else sums), inclusive[..., -1, :, :].clone()


def _causal_query_grads(steps, q, k, v, grads_of):
    """dq, sweeping forwards: a chunk's queries need the state of the chunks before it."""
    state = empty_state(q, v.shape[-1], steps[0].dtype)  # (B, H, 2D, Dv+1)
    grad_q = torch.empty_like(q)  # (B, H, N, D)
    for step in steps:
        (_, phi_q), (k_f, phi_k), u = step.load(q, k, v)  # (B, H, G, C, 2D | D, 2D | Dv+1)
        grad_rows = grads_of(step)  # (B, H, G, C, Dv+1)
        grad_w = bmm(grad_rows, u.transpose(-2, -1)).mul_(step.reweight)  # (B, H, G, C, C)
        past, state = _exclusive_cumsum(state, bmm(phi_k.transpose(-2, -1), u))  # (B, H, G, 2D, Dv+1)
        grad_qf = bmm(grad_w, k_f) + step.unrotated(bmm(grad_rows, past.transpose(-2, -1)))  # (B, H, G, C, D)
        step.view(grad_q).copy_(relu_grad(grad_qf, step.view(q)))
    return grad_q


def _causal_key_grads(steps, q, k, v, grads_of):
    """dk and dv, sweeping backwards: a chunk's keys feed the state read by every later chunk."""
    later = empty_state(q, v.shape[-1], steps[0].dtype)  # (B, H, 2D, Dv+1): d loss / d state, later chunks
    grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)  # (B, H, N, D), (B, H, N, Dv)
    for step in reversed(steps):
        (q_f, phi_q), (k_f, phi_k), u = step.load(q, k, v)  # (B, H, G, C, D | 2D | Dv+1)
        grad_rows = grads_of(step)  # (B, H, G, C, Dv+1)
        grad_w = bmm(grad_rows, u.transpose(-2, -1)).mul_(step.reweight)  # (B, H, G, C, C)
        future, later = _exclusive_cumsum(later, bmm(phi_q.transpose(-2, -1), grad_rows), reverse=True)  # (B, H, G, 2D, Dv+1)
        grad_kf = bmm(grad_w.transpose(-2, -1), q_f) + step.unrotated(bmm(u, future.transpose(-2, -1)))
        grad_u = add_product_(bmm(step.intra_weights(q_f, k_f).transpose(-2, -1), grad_rows), phi_k, future)
        step.view(grad_k).copy_(relu_grad(grad_kf, step.view(k)))  # (B, H, G, C, D)
        step.view(grad_v).copy_(grad_u[..., :-1])  # (B, H, G, C, Dv)
    return grad_k, grad_v
