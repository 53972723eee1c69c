"""The causal cosFormer's CPU forward for many heads: one chunk of every head a step, the carried sums advanced in place.

On the CPU with B H C >= common.SEQUENTIAL_ROWS the forward takes one chunk of every head per step instead of G chunks
(causal._forward): the carried sums are the chunk's past, read by its queries and then advanced in place, so no per-chunk
states are written, summed or read back. It makes the same sums in the same order as causal._forward: equal outputs for
contiguous inputs at C = 64 and N a multiple of it (B H = 16), within fp32 rounding where a GEMM blocks differently or
the G-chunk plan's steps split otherwise (up to 9e-8: transposed inputs, C = 100, B H = 4 at N = 150).

Every step writes into one set of buffers (`_Workspace`), allocated once a call, instead of into fresh tensors: the
step's ~2 MB of temporaries then stay where the previous step left them in cache, and no allocation is made per step.
Measured on the CPU (2 cores, N = 8192, B = 1, H = 16, D = 64, fp32, 11 interleaved calls, the heap retained as the
timing pass retains it, `cpu_heap`): 63.6 -> 50.4 ms median (1 thread: 113.3 -> 95.8 ms; default glibc heap: 73.9 ->
61.0 ms), outputs equal bit for bit. The views the steps read the buffers through are made once too: 53.4 -> 51.1 ms
(15 interleaved calls). One mul for the features of q and k together was slower (53.4 -> 55.0 ms), so each has its own.
"""

from __future__ import annotations

import torch

from attnprof.impls.base import planning_device_type
from attnprof.impls.cosformer import common
from attnprof.impls.cosformer.common import causal_reweight, compute_dtype, load_relu, normalise_into, position_rotation
from attnprof.impls.cosformer.step_workspace import StepWorkspace, feature_shapes


def sequential_plan(q, chunk: int, backward: bool = False) -> bool:
    """Whether the forward takes sequential_forward (the backward: sequential_backward): on the CPU (or meta standing
    for it), when one chunk of every head fills a step, B H C >= common.SEQUENTIAL_ROWS (SEQUENTIAL_BACKWARD_ROWS)."""
    return sequential_case(q.shape[0] * q.shape[1], chunk, q.shape[-2], q.device, backward)


def sequential_case(batch_heads: int, chunk: int, n: int, device, backward: bool = False) -> bool:
    """sequential_plan for B H = `batch_heads` and N = `n` on `device` (a torch.device or a name): what cosformer_flops
    counts by."""
    rows = common.SEQUENTIAL_BACKWARD_ROWS if backward else common.SEQUENTIAL_ROWS
    return planning_device_type(device) == "cpu" and batch_heads * min(chunk, n) >= rows


def sequential_forward(q, k, v, eps: float, chunk: int, denominators: bool = True):
    """(out (B, H, N, Dv), denominators (B, H, N, 1)) of the causal cosFormer, one chunk of every head a step, with
    3-d operands (B H, C, X): the step's slices of q and k are read once each, into the workspace. Without
    `denominators` (no input needs a gradient, so no backward reads them) the second is None: 1.3 ms less of 50
    (B H = 16, N = 8192, D = 64, fp32, 2 cores, 11 interleaved calls).
    Measured on the CPU before the workspace (2 cores, fp32, N = 2^17 / (B H), D = 64, C = 64, median of 5, two
    rounds; ms, causal._forward against this): B H = 16: 75-82 / 68-69; 32: 77-81 / 64-65; 64: 87-94 / 62;
    128: 67-70 / 59-60; 12 (N = 8192): 45-49 / 46-47 (a tie); 8: 80-83 / 98-100;
    4: 105-116 / 114; 1: 119-121 / 228-229. With the workspace: common.SEQUENTIAL_ROWS."""
    dtype, (batch, heads, n, d), dv = compute_dtype(q.dtype), q.shape, v.shape[-1]
    state = q.new_zeros((batch * heads, 2 * d, dv), dtype=dtype)  # (BH, 2D, Dv): sum phi(k)^T v so far
    key_sum = q.new_zeros((batch * heads, 2 * d, 1), dtype=dtype)  # (BH, 2D, 1): sum phi(k) so far
    out = q.new_empty((batch, heads, n, dv))  # (B, H, N, Dv)
    denominator = q.new_empty((batch, heads, n, 1), dtype=dtype) if denominators else None  # (B, H, N, 1)
    rotation = position_rotation(n, n, dtype, q.device)  # (N, 2, 1)
    reweight = causal_reweight(min(chunk, n), n, dtype, q.device)  # (C, C)
    flat_values = v.flatten(0, 1) if v.dtype == dtype and _heads_merge(v) else None  # (BH, N, Dv): a view of v
    full = _Workspace(batch, heads, min(chunk, n), d, dv, dtype, q.device, reweight)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        work = full.sized(rows.stop - rows.start)  # a last chunk of N mod C: views of the same buffers
        work.load_features(q[..., rows, :], k[..., rows, :], rotation[rows])
        values = flat_values[:, rows] if flat_values is not None else work.load_values(v[..., rows, :])  # (BH, C, Dv)
        torch.bmm(work.q_f, work.k_f_t, out=work.weights).mul_(work.reweight)
        torch.bmm(work.weights, values, out=work.numerator)
        torch.baddbmm(work.numerator, work.phi_q, state, out=work.numerator)
        torch.sum(work.weights, -1, keepdim=True, out=work.row_sums)
        torch.baddbmm(work.row_sums, work.phi_q, key_sum, out=work.row_sums)
        torch.baddbmm(state, work.phi_k_t, values, out=state)
        key_sum += torch.sum(work.phi_k, -2, keepdim=True, out=work.key_part).transpose(-2, -1)
        denominator_rows = denominator[..., rows, :] if denominators else None
        normalise_into(work.numerator_heads, work.row_sums_heads, eps, out[..., rows, :], denominator_rows)
    return out, denominator


def _heads_merge(x) -> bool:
    """Whether x (B, H, N, X) flattens to (B H, N, X) as a view."""
    return x.shape[0] == 1 or x.shape[1] == 1 or x.stride(0) == x.shape[1] * x.stride(1)


class _Workspace(StepWorkspace):
    """The forward's step buffers, and the views its steps read them through."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        per_head = self.per_head
        self.q_f_heads, self.k_f_heads, self.values_heads = per_head(self.q_f), per_head(self.k_f), per_head(self.values)
        self.q_f_column, self.k_f_column = self.q_f.unsqueeze(-2), self.k_f.unsqueeze(-2)  # (BH, C, 1, D)
        self.phi_q, self.phi_k = self.phi_q_parts.flatten(-2), self.phi_k_parts.flatten(-2)  # (BH, C, 2D)
        self.k_f_t, self.phi_k_t = self.k_f.transpose(-2, -1), self.phi_k.transpose(-2, -1)  # (BH, D | 2D, C)
        self.numerator_heads, self.row_sums_heads = per_head(self.numerator), per_head(self.row_sums)  # (B, H, C, Dv | 1)

    @staticmethod
    def shapes(d: int, dv: int) -> dict:
        return {
            **feature_shapes(d),
            "values": ("C", dv),  # (BH, C, Dv): v of the step when it is not a view of v
            "weights": ("C", "C"),  # (BH, C, C)
            "numerator": ("C", dv),  # (BH, C, Dv)
            "row_sums": ("C", 1),  # (BH, C, 1)
            "key_part": (1, 2 * d),  # (BH, 1, 2D): the step's sum of phi(k)
        }

    def load_features(self, q, k, rotation):
        """relu and phi of the step's rows q, k (B, H, C, D) into the buffers, cast to their dtype; as common.features_of
        computes them."""
        load_relu(q, self.q_f_heads)
        load_relu(k, self.k_f_heads)
        torch.mul(self.q_f_column, rotation, out=self.phi_q_parts)  # (BH, C, 2, D)
        torch.mul(self.k_f_column, rotation, out=self.phi_k_parts)

    def load_values(self, v):
        """v of the step (B, H, C, Dv), cast to the compute dtype, as (BH, C, Dv)."""
        self.values_heads.copy_(v)
        return self.values
