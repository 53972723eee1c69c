"""cosFormer written the plain way: the dense N x N "left product" the reference repo tests itself with.

W_ij = (relu(q_i) . relu(k_j)) * cos(pi/2 * (i - j) / M), positions i, j = 1..N, M = max(Nq, Nk);
causal keeps j <= i (top-left aligned); out_i = sum_j W_ij v_j / clamp_min(sum_j W_ij, eps).
No 1/sqrt(d) scaling. Quadratic in time and memory: it is the oracle, not an operator to profile.
"""

from __future__ import annotations

import math

import torch


def cosformer_reference(q, k, v, *, causal: bool = False, eps: float = 1e-6, chunk_size=None, backend=None) -> torch.Tensor:
    """Dense cosFormer attention. `chunk_size` and `backend` are accepted (the operator's options) and ignored."""
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs: compute in fp32 at least
    n_q, n_k = q.shape[-2], k.shape[-2]
    m = max(n_q, n_k)
    i = torch.arange(1, n_q + 1, dtype=dtype, device=q.device)  # (Nq,)
    j = torch.arange(1, n_k + 1, dtype=dtype, device=q.device)  # (Nk,)
    reweight = torch.cos((math.pi / 2) * (i[:, None] - j[None, :]) / m)  # (Nq, Nk)
    if causal:
        reweight = reweight.tril()  # key j is seen by query i only when j <= i
    q_f, k_f = torch.relu(q.to(dtype)), torch.relu(k.to(dtype))  # (B, H, N, D)
    weights = torch.matmul(q_f, k_f.transpose(-2, -1)) * reweight  # (B, H, Nq, Nk)
    numerator = torch.matmul(weights, v.to(dtype))  # (B, H, Nq, Dv)
    denominator = weights.sum(dim=-1, keepdim=True).clamp_min(eps)  # (B, H, Nq, 1)
    return (numerator / denominator).to(q.dtype)  # (B, H, Nq, Dv)
