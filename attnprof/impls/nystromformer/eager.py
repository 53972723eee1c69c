"""Nyströmformer's eager plan (PyTorch operators): the reference backend=triton is tested against, and the plan its
backward recomputes. Formulas and deviations from mlpen's code: the package docstring."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmaxes and the pseudo-inverse run in float32 for half inputs, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def exact_softmax(q, k, v):
    """softmax(q k^T / sqrt(d)) v: Nyström with N <= m landmarks has nothing to approximate (in float32 for half
    inputs, as nystrom_core)."""
    work = work_dtype(q.dtype)
    logits = q.to(work) @ (k.to(work) * q.shape[-1] ** -0.5).transpose(-2, -1)  # (B, H, N, N), N <= m
    return (torch.softmax(logits, dim=-1) @ v.to(work)).to(q.dtype)  # (B, H, N, D)


def nystrom_core(q, k, v, m, iterations, pinv_init):
    """F @ (Z @ (Bk @ V)) with the d^-1/2 of q . k put on the landmark side of each product.
    No N-sized temporary is bound to a local, so each dies as soon as the next one is made.

    Half inputs are multiplied as float32 copies, the logits, weights and products in float32, the output rounded
    once (a numerics audit, CPU, N = 4096): logits rounded to bf16 lost a share of each logit's size, 1.2e-2 off
    float64 at a logit spread of 16 and 2.8e-2 at 100 (past the check's 2e-2), against 1.7e-3, the rounding of the
    output alone, in float32; and with fp16 inputs, the backward of Bk @ V formed dBk = dW V^T in fp16, which
    overflowed (83,468) under a loss-scaled output gradient (2^11) where the true Bk-logit gradients reached 56:
    every dk NaN. Bytes (meta, N = 65536, B 1, H 16, d 64, bf16): see README."""
    work, scale = work_dtype(q.dtype), q.shape[-1] ** -0.5
    q_land, k_land = segment_means(q, m, work), segment_means(k, m, work)  # (B, H, m, D) each
    z = iterative_pinv(landmark_kernel(q_land, k_land), iterations, pinv_init)  # (B, H, m, m)
    bk_v = torch.softmax((q_land * scale) @ k.to(work).transpose(-2, -1), dim=-1) @ v.to(work)  # (B, H, m, D) via Bk (B, H, m, N)
    w = z @ bk_v  # (B, H, m, D)
    return (torch.softmax(q.to(work) @ (k_land * scale).transpose(-2, -1), dim=-1) @ w).to(q.dtype)  # (B, H, N, D) via F (B, H, N, m)


def landmark_kernel(q_land, k_land):
    """A = softmax(Ql Kl^T / sqrt(d)) (B, H, m, m), in the landmarks' (work) precision."""
    return torch.softmax(q_land @ (k_land * q_land.shape[-1] ** -0.5).transpose(-2, -1), dim=-1)  # (B, H, m, m)


def segment_means(x, m, work):
    """Contiguous segment means in `work` precision: n_short segments of s = N // m tokens, then
    m - n_short of s + 1. Both groups are plain reshapes, so this runs on meta (shapes only)."""
    n, s = x.shape[-2], x.shape[-2] // m
    n_short = (s + 1) * m - n
    lead = x.shape[:-2]
    short = x[..., : n_short * s, :].reshape(*lead, n_short, s, x.shape[-1]).mean(-2, dtype=work)  # (B, H, n_short, D)
    if n_short == m:
        return short  # N % m == 0: all segments have s tokens
    rest = x[..., n_short * s :, :].reshape(*lead, m - n_short, s + 1, x.shape[-1])  # (B, H, m - n_short, s + 1, D)
    return torch.cat([short, rest.mean(-2, dtype=work)], dim=-2)  # (B, H, m, D)


def iterative_pinv(a, iterations, pinv_init):
    """Z <- Z (13 I - AZ (15 I - AZ (7 I - AZ))) / 4, multiplied out so that no identity is formed: with P = AZ,
    X1 = 7 P - P P, X3 = 15 P - P X1 and Z <- (13 Z - Z X3) / 4, one bmm and three baddbmm an iteration (4 kernels,
    where the bracketed form took 5 and four constant matrices a call; tiny ops cost launches on a GPU, dispatches on a CPU)."""
    m = a.shape[-1]
    a3 = a.reshape(-1, m, m)  # (B*H, m, m)
    z = (a.transpose(-2, -1) / pinv_scale(a, pinv_init)).reshape(-1, m, m)  # (B*H, m, m)
    for _ in range(iterations):
        az = torch.bmm(a3, z)  # (B*H, m, m)
        x1 = torch.baddbmm(az, az, az, beta=7, alpha=-1)  # (B*H, m, m) AZ (7 I - AZ)
        x3 = torch.baddbmm(az, az, x1, beta=15, alpha=-1)  # (B*H, m, m) AZ (15 I - X1)
        z = torch.baddbmm(z, z, x3, beta=3.25, alpha=-0.25)  # (B*H, m, m) Z (13 I - X3) / 4
    return z.reshape(a.shape)  # (B, H, m, m)


def pinv_scale(a, pinv_init):
    """A is a row-softmax (non-negative), so its column/row sums are its 1-/inf-norm sums."""
    col_max = a.sum(dim=-2).amax(dim=-1, keepdim=True)  # (B, H, 1) largest column sum per (b, h)
    if pinv_init == "reference":
        # () one scalar over all batch items and heads, as mlpen does (an empty batch has none: any scale serves)
        return col_max.amax() if col_max.numel() else col_max.new_ones(())
    return (col_max * a.sum(dim=-1).amax(dim=-1, keepdim=True))[..., None]  # (B, H, 1, 1)


def conv_skip(v, weight):
    """Depthwise conv along N, one filter per head shared by its D channels (mlpen's Conv2d)."""
    pad = weight.shape[2] // 2
    return F.conv2d(v, weight.to(device=v.device, dtype=v.dtype), padding=(pad, 0), groups=v.shape[1])  # (B, H, N, D)


def eager_attention(q, k, v, num_landmarks, pinv_iterations, conv_weight, pinv_init):
    """The whole eager operator: the core (or exact softmax for N <= m) plus the conv skip."""
    if q.shape[-2] <= num_landmarks:
        out = exact_softmax(q, k, v)  # (B, H, N, D)
    else:
        out = nystrom_core(q, k, v, num_landmarks, pinv_iterations, pinv_init)  # (B, H, N, D)
    if conv_weight is not None:
        out = out.add_(conv_skip(v, conv_weight))  # (B, H, N, D); matmul's backward does not need its output
    return out
