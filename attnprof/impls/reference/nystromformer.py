"""Plain Nyströmformer, written the way the paper and mlpen's `LRA/code/attention_nystrom.py` do it.

It is the check for the fast operator in `attnprof.impls.nystromformer`, so it avoids its tricks:
q and k are scaled by d^-1/4 each up front, landmarks are built one segment at a time in a Python
loop (segment lengths depend on shapes only), the pseudo-inverse starts from the chosen rule and
runs the plain iteration, and the product is taken in the paper's order (F @ Z) @ (Bk @ V).
Everything is computed in float64 for float64 inputs and in float32 otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_lengths(seq_len: int, num_landmarks: int) -> list[int]:
    """mlpen's extended segment means (T2T-ViT code): the first n_short segments have s = N // m
    tokens, the remaining m - n_short have s + 1, contiguous, covering all N tokens."""
    s = seq_len // num_landmarks
    n_short = (s + 1) * num_landmarks - seq_len
    return [s] * n_short + [s + 1] * (num_landmarks - n_short)


def segment_means(x: torch.Tensor, num_landmarks: int) -> torch.Tensor:
    """Mean of each contiguous segment along N: (B, H, N, D) -> (B, H, m, D)."""
    means, start = [], 0
    for length in segment_lengths(x.shape[-2], num_landmarks):
        means.append(x[..., start : start + length, :].mean(dim=-2))  # (B, H, D)
        start += length
    return torch.stack(means, dim=-2)  # (B, H, m, D)


def pinv_start(a: torch.Tensor, pinv_init: str) -> torch.Tensor:
    """Z0 = A^T / c. "reference": c = the largest column sum over the whole tensor (mlpen default);
    "per-head": c = max column sum x max row sum of each (b, h) matrix (the paper's ||A||_1 ||A||_inf)."""
    col_sums = a.abs().sum(dim=-2)  # (B, H, m)
    if pinv_init == "reference":
        c = col_sums.max()  # () one scalar for all batch items and heads
    elif pinv_init == "per-head":
        row_sums = a.abs().sum(dim=-1)  # (B, H, m)
        c = (col_sums.max(dim=-1).values * row_sums.max(dim=-1).values)[..., None, None]  # (B, H, 1, 1)
    else:
        raise ValueError(f"unknown pinv_init {pinv_init!r}: choose 'reference' or 'per-head'")
    return a.transpose(-2, -1) / c  # (B, H, m, m)


def iterative_pinv(a: torch.Tensor, iterations: int, pinv_init: str) -> torch.Tensor:
    """Razavi et al.'s iteration Z <- 1/4 Z (13 I - A Z (15 I - A Z (7 I - A Z)))."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)  # (m, m)
    z = pinv_start(a, pinv_init)  # (B, H, m, m)
    for _ in range(iterations):
        az = a @ z  # (B, H, m, m)
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))  # (B, H, m, m)
    return z


def conv_skip(v: torch.Tensor, conv_weight: torch.Tensor | None) -> torch.Tensor | float:
    """Depthwise conv along N with one k-tap filter per head, zero padding k // 2, no bias."""
    if conv_weight is None:
        return 0.0
    pad = conv_weight.shape[2] // 2
    return F.conv2d(v, conv_weight.to(v.dtype), padding=(pad, 0), groups=v.shape[1])  # (B, H, N, D)


def nystrom_reference(q, k, v, *, num_landmarks=64, pinv_iterations=6, conv_weight=None, pinv_init="reference"):
    """Nyström attention of q, k, v (B, H, N, D); exact softmax (+ conv) when N <= num_landmarks."""
    out_dtype = q.dtype
    work = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(work), k.to(work), v.to(work)
    scale = q.shape[-1] ** -0.25
    q, k = q * scale, k * scale  # (B, H, N, D) each, so that q . k carries d^-1/2
    if q.shape[-2] <= num_landmarks:
        out = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v  # (B, H, N, D)
        return (out + conv_skip(v, conv_weight)).to(out_dtype)
    q_land, k_land = segment_means(q, num_landmarks), segment_means(k, num_landmarks)  # (B, H, m, D)
    f = torch.softmax(q @ k_land.transpose(-2, -1), dim=-1)  # (B, H, N, m)
    a = torch.softmax(q_land @ k_land.transpose(-2, -1), dim=-1)  # (B, H, m, m)
    bk = torch.softmax(q_land @ k.transpose(-2, -1), dim=-1)  # (B, H, m, N)
    z = iterative_pinv(a, pinv_iterations, pinv_init)  # (B, H, m, m)
    out = (f @ z) @ (bk @ v)  # (B, H, N, D)
    return (out + conv_skip(v, conv_weight)).to(out_dtype)
