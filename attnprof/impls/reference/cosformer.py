"""cosFormer written the plain way: the dense N x N "left product" the reference repo tests itself with.

W_ij = (relu(q_i) . relu(k_j)) * cos(pi/2 * (i - j) / M), positions i, j = 1..N, M = max(Nq, Nk);
causal keeps j <= i (top-left aligned); out_i = sum_j W_ij v_j / clamp_min(sum_j W_ij, eps).
No 1/sqrt(d) scaling. Quadratic in time and memory: it is the oracle, not an operator to profile.
A row of it needs only its own query and position: cosformer_rows gives sampled rows at any length.
"""

from __future__ import annotations

import math

import torch


def cosformer_reference(q, k, v, *, causal: bool = False, eps: float = 1e-6, chunk_size=None, backend=None) -> torch.Tensor:
    """Dense cosFormer attention. `chunk_size` and `backend` are accepted (the operator's options) and ignored."""
    positions = torch.arange(q.shape[-2], device=q.device)  # (Nq,)
    return _attend(q, positions, k, v, causal, eps, m=max(q.shape[-2], k.shape[-2]))  # (B, H, Nq, Dv)


def cosformer_rows(q, k, v, rows, *, causal: bool = False, eps: float = 1e-6, chunk_size=None, backend=None) -> torch.Tensor:
    """Rows `rows` (0-based query positions) of cosformer_reference over one head's q, k, v (N, D) -> (R, Dv), in
    R x N x D work: a row needs only its own query (the spot check's rows at any length)."""
    positions = torch.as_tensor(rows, device=q.device)  # (R,)
    m = max(q.shape[-2], k.shape[-2])  # cosformer_reference's M: more queries than keys (cross-attention) read Nk, 0.24 off
    return _attend(q[..., positions, :], positions, k, v, causal, eps, m=m)  # (R, Dv)


def _attend(q, positions, k, v, causal: bool, eps: float, m: int) -> torch.Tensor:
    """The weights of queries at `positions` over every key, then the normalised sum: q (..., R, D) -> (..., R, Dv)."""
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs: compute in fp32 at least
    i = positions.to(dtype) + 1  # (R,): positions count from 1
    j = torch.arange(1, k.shape[-2] + 1, dtype=dtype, device=k.device)  # (Nk,)
    reweight = torch.cos((math.pi / 2) * (i[:, None] - j[None, :]) / m)  # (R, Nk)
    if causal:
        reweight = reweight * (j[None, :] <= i[:, None])  # key j is seen by query i only when j <= i
    q_f, k_f = torch.relu(q.to(dtype)), torch.relu(k.to(dtype))  # (..., R, D), (..., Nk, D)
    weights = torch.matmul(q_f, k_f.transpose(-2, -1)) * reweight  # (..., R, Nk)
    numerator = torch.matmul(weights, v.to(dtype))  # (..., R, Dv)
    denominator = weights.sum(dim=-1, keepdim=True).clamp_min(eps)  # (..., R, 1)
    return (numerator / denominator).to(q.dtype)  # (..., R, Dv)
