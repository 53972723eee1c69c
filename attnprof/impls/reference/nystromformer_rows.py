"""Sampled rows of the plain Nyströmformer (reference/nystromformer.py), for the check at the measured length.

A Nyström row needs every token: the landmarks are segment means of all queries and keys, and under mlpen's
default pinv_init="reference" the pseudo-inverse of every head starts from one scale, the largest column sum over
all batch items and heads. So the rows of a head come from the whole inputs, but cheaply:
- landmarks and their m x m kernels A for every head, O(B H N D) (the segment means as one index_add: the
  reference's loop of slices costs O(m N D) a head in its backward, 55 s at N = 64k, B1 H16 on 2 cores);
- the pseudo-inverse Z of every head from the reference's own iteration, O(B H m^3);
- for the sampled heads only, gathered at once: F's sampled rows (R x m), Bk (m x N) @ V, and the conv skip's taps
  of those rows.
Computed in the inputs' dtype (float64 in the check), so gradients flow to every head through the shared scale.
"""

from __future__ import annotations

import torch

from attnprof.impls.reference.nystromformer import iterative_pinv, segment_lengths


def nystrom_rows(q, k, v, heads, rows, *, num_landmarks=64, pinv_iterations=6, conv_weight=None, pinv_init="reference"):
    """The reference's output rows `rows` of the heads `heads` [(b, h)] from q, k, v (B, H, N, D): (heads, R, D)."""
    scale = q.shape[-1] ** -0.25
    # The sampled heads gathered at once: a gather's backward is one scatter, where a select a head, each filling a
    # zero (B, H, N, D) gradient, took 1.1 of 1.8 s at N = 8192, H 16
    b, h = (torch.tensor([head[i] for head in heads], device=q.device) for i in (0, 1))  # (S,) each
    q_h, k_h, v_h = q[b, h], k[b, h] * scale, v[b, h]  # (S, N, D) each
    if q.shape[-2] <= num_landmarks:  # exact softmax attention, as the reference
        out = torch.softmax(q_h[:, rows] * scale @ k_h.transpose(-2, -1), dim=-1) @ v_h  # (S, R, D)
    else:
        q_land, k_land = (segment_means(x, num_landmarks) * scale for x in (q, k))  # (B, H, m, D) each
        a = torch.softmax(q_land @ k_land.transpose(-2, -1), dim=-1)  # (B, H, m, m)
        z = iterative_pinv(a, pinv_iterations, pinv_init)[b, h]  # (S, m, m): every head's A sets the scale
        f = torch.softmax(q_h[:, rows] * scale @ k_land[b, h].transpose(-2, -1), dim=-1)  # (S, R, m)
        bk = torch.softmax(q_land[b, h] @ k_h.transpose(-2, -1), dim=-1)  # (S, m, N)
        out = (f @ z) @ (bk @ v_h)  # (S, R, D)
    if conv_weight is not None:
        out = out + conv_rows(v_h, conv_weight[h, 0, :, 0], rows)
    return out  # (S, R, D)


def segment_means(x, num_landmarks: int):
    """The reference's segment means (B, H, N, D) -> (B, H, m, D), each token added to its segment's sum at once."""
    lengths = torch.tensor(segment_lengths(x.shape[-2], num_landmarks))  # (m,)
    segment_of = torch.repeat_interleave(torch.arange(num_landmarks), lengths).to(x.device)  # (N,)
    sums = x.new_zeros(*x.shape[:-2], num_landmarks, x.shape[-1]).index_add(-2, segment_of, x)  # (B, H, m, D)
    return sums / lengths.to(x)[:, None]


def conv_rows(v, taps, rows):
    """Rows `rows` of the depthwise conv skip of heads' v (S, N, D) with their k taps (S, k), zero padding k // 2:
    (S, R, D)."""
    n, k = v.shape[-2], taps.shape[-1]
    at = torch.as_tensor(rows)[:, None] + torch.arange(k)[None, :] - k // 2  # (R, k) the tokens each row's taps read
    inside = ((at >= 0) & (at < n)).to(v)  # (R, k) zero padding outside
    return torch.einsum("sk,rk,srkd->srd", taps.to(v), inside, v[:, at.clamp(0, n - 1).to(v.device)])  # (S, R, D)
