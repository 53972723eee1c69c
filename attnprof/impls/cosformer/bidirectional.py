"""The bidirectional cosFormer: one pass over keys builds S = sum_j phi(k_j)^T [v_j, 1], one pass over queries reads it."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from attnprof.impls.cosformer.common import (
    bmm,
    chunk_slices,
    compute_dtype,
    empty_state,
    features_of,
    normalise_into,
    position_rotation,
    relu_grad,
    row_grads,
    unrotated,
    widened,
)


class BidirectionalCosformer(torch.autograd.Function):
    """out = phi(q) S / clamp_min(phi(q) S_den, eps), S = sum_j phi(k_j)^T [v_j, 1] over all keys."""

    @staticmethod
    def forward(ctx, q, k, v, eps: float, chunk: int):
        dtype, m = compute_dtype(q.dtype), max(q.shape[-2], k.shape[-2])
        state = _key_state(k, v, position_rotation(k.shape[-2], m, dtype, k.device), chunk)  # (B, H, 2D, Dv+1)
        out, denominator = _query_pass(q, state, position_rotation(q.shape[-2], m, dtype, q.device), chunk, eps)
        ctx.save_for_backward(q, k, v, out, denominator, state)
        ctx.eps, ctx.chunk = eps, chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, denominator, state = ctx.saved_tensors
        m, dtype = max(q.shape[-2], k.shape[-2]), state.dtype
        rotation_q, rotation_k = position_rotation(q.shape[-2], m, dtype, q.device), position_rotation(k.shape[-2], m, dtype, k.device)
        grad_q, grad_state = _query_grads(q, grad_out, out, denominator, state, rotation_q, ctx.chunk, ctx.eps)
        grad_k, grad_v = _key_grads(k, v, grad_state, rotation_k, ctx.chunk)
        return grad_q, grad_k, grad_v, None, None


def _key_state(k, v, rotation, chunk: int):
    state = empty_state(k, v.shape[-1], rotation.dtype)  # (B, H, 2D, Dv+1)
    for rows in chunk_slices(k.shape[-2], chunk):
        _, phi_k = features_of(k[..., rows, :], rotation[rows], state.dtype)  # (B, H, L, 2D)
        state += bmm(phi_k.transpose(-2, -1), widened(v[..., rows, :], state.dtype))
    return state


def _query_pass(q, state, rotation, chunk: int, eps: float):
    out = q.new_empty((*q.shape[:-1], state.shape[-1] - 1))  # (B, H, Nq, Dv)
    denominator = q.new_empty((*q.shape[:-1], 1), dtype=state.dtype)  # (B, H, Nq, 1)
    for rows in chunk_slices(q.shape[-2], chunk):
        _, phi_q = features_of(q[..., rows, :], rotation[rows], state.dtype)  # (B, H, L, 2D)
        products = bmm(phi_q, state)  # (B, H, L, Dv+1): numerators | row sums
        normalise_into(products[..., :-1], products[..., -1:], eps, out[..., rows, :], denominator[..., rows, :])
    return out, denominator  # (B, H, Nq, Dv), (B, H, Nq, 1)


def _query_grads(q, grad_out, out, denominator, state, rotation, chunk: int, eps: float):
    """dq, and d loss / d state (the sum over all queries) for the key pass."""
    grad_q, grad_state = torch.empty_like(q), torch.zeros_like(state)  # (B, H, Nq, D), (B, H, 2D, Dv+1)
    for rows in chunk_slices(q.shape[-2], chunk):
        _, phi_q = features_of(q[..., rows, :], rotation[rows], state.dtype)  # (B, H, L, 2D)
        grad_rows = row_grads(grad_out[..., rows, :], out[..., rows, :], denominator[..., rows, :], eps, state.dtype)  # (B, H, L, Dv+1)
        grad_phi = bmm(grad_rows, state.transpose(-2, -1))  # (B, H, L, 2D)
        grad_q[..., rows, :] = relu_grad(unrotated(grad_phi, rotation[rows]), q[..., rows, :])
        grad_state += bmm(phi_q.transpose(-2, -1), grad_rows)
    return grad_q, grad_state


def _key_grads(k, v, grad_state, rotation, chunk: int):
    grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)  # (B, H, Nk, D), (B, H, Nk, Dv)
    for rows in chunk_slices(k.shape[-2], chunk):
        _, phi_k = features_of(k[..., rows, :], rotation[rows], grad_state.dtype)  # (B, H, L, 2D)
        u = widened(v[..., rows, :], grad_state.dtype)  # (B, H, L, Dv+1)
        grad_phi = bmm(u, grad_state.transpose(-2, -1))  # (B, H, L, 2D)
        grad_k[..., rows, :] = relu_grad(unrotated(grad_phi, rotation[rows]), k[..., rows, :])
        grad_v[..., rows, :] = bmm(phi_k, grad_state)[..., :-1]
    return grad_k, grad_v
