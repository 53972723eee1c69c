"""Naive softmax attention: materialises the N x N matrix. The correctness reference for all others."""

from __future__ import annotations

import math

import torch

from attnprof.impls import register
from attnprof.impls.base import AttentionImpl
from attnprof.impls.operator_inputs import check_flag, check_qkv


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, computed the plain way; softmax in fp32 for half inputs. q may have another length
    than k and v (causal: top-left aligned). The reference is checked as the others are: a meta k beside cpu q and v
    gave a cpu tensor of NaN, int64 inputs int64 zeros, and causal="no" the causal answer (an API audit's)."""
    check_qkv("softmax", q, k, v, cross_length=True)
    check_flag("softmax", "causal", causal)
    n_q, n_k = q.shape[-2], k.shape[-2]
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Nq, Nk)
    if causal:
        # Query i sees keys j <= i (top-left aligned, as SDPA is_causal is).
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()  # (Nq, Nk)
        scores = scores.masked_fill(~mask, float("-inf"))
    # fp32 softmax for half inputs; float64 stays float64 (this is the reference everyone is checked against)
    weights = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(v.dtype)  # (B, H, Nq, Nk)
    return torch.matmul(weights, v)  # (B, H, Nq, D)


register(
    AttentionImpl(
        name="softmax",
        family="exact",
        fn=softmax_attention,
        description="naive softmax attention (materialises N x N); the reference for every other impl",
    )
)
