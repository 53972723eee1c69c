"""The bidirectional cosFormer: one pass over keys builds S = sum_j phi(k_j)^T [v_j, 1], one pass over queries reads it."""

from __future__ import annotations

import torch

from attnprof.impls.autograd_guards import refuse_a_graph
from attnprof.impls.cosformer.common import (
    COSFORMER_BACKWARD,
    bmm,
    chunk_slices,
    compute_dtype,
    empty_state,
    features_of,
    half_features,
    half_products,
    normalise_into,
    position_rotation,
    relu_grad,
    row_grads,
    unrotated,
    wide_bmm,
    widened,
)
from attnprof.impls.precision import tf32_products


class BidirectionalCosformer(torch.autograd.Function):
    """out = phi(q) S / clamp_min(phi(q) S_den, eps), S = sum_j phi(k_j)^T [v_j, 1] over all keys."""

    @staticmethod
    def forward(ctx, q, k, v, eps: float, chunk: int):
        dtype, m = compute_dtype(q.dtype), max(q.shape[-2], k.shape[-2])
        halves = half_products(q, k, v)
        key_state = _half_key_state if halves else _key_state
        state = key_state(k, v, position_rotation(k.shape[-2], m, dtype, k.device), chunk)  # (B, H, 2D, Dv+1), fp32
        out, denominator = _query_pass(q, state, position_rotation(q.shape[-2], m, dtype, q.device), chunk, eps, halves)
        ctx.save_for_backward(q, k, v, out, denominator, state)
        ctx.eps, ctx.chunk = eps, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        refuse_a_graph(COSFORMER_BACKWARD)
        q, k, v, out, denominator, state = ctx.saved_tensors
        with tf32_products(q.dtype, q.device):  # fp32 products of half inputs on CUDA (precision.py)
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


def _half_key_state(k, v, rotation, chunk: int):
    """_key_state from bf16 operands: the rotation moves onto the values, relu(k)^T [v sin a, sin a, v cos a,
    cos a] ([D, 2(Dv+1)] per head), so a step's one operand beside relu(k) is (L, 2(Dv+1)) wide, instead of
    phi(k) (L, 2D) and [v, 1] (L, Dv+1). Rearranged into phi's row order: sin rows, then cos rows."""
    batch, heads, _, dim = k.shape
    width = v.shape[-1] + 1
    state = k.new_zeros((batch, heads, dim, 2, width), dtype=rotation.dtype)  # (B, H, D, 2, Dv+1), fp32
    for rows in chunk_slices(k.shape[-2], chunk):
        rotated = v.new_empty((batch, heads, rows.stop - rows.start, 2, width))  # (B, H, L, 2, Dv+1), bf16
        torch.mul(v[..., rows, :].unsqueeze(-2), rotation[rows], out=rotated[..., :-1])  # fp32 products, rounded once
        rotated[..., -1:] = rotation[rows]
        state += wide_bmm(torch.relu(k[..., rows, :]).transpose(-2, -1), rotated.flatten(-2)).unflatten(-1, (2, width))
    return state.transpose(-3, -2).flatten(-3, -2)  # (B, H, 2D, Dv+1)


def _query_pass(q, state, rotation, chunk: int, eps: float, halves: bool):
    out = q.new_empty((*q.shape[:-1], state.shape[-1] - 1))  # (B, H, Nq, Dv)
    denominator = q.new_empty((*q.shape[:-1], 1), dtype=state.dtype)  # (B, H, Nq, 1)
    operand = state.to(q.dtype) if halves else state  # (B, H, 2D, Dv+1): bf16 keeps fp32's range
    for rows in chunk_slices(q.shape[-2], chunk):
        if halves:
            products = wide_bmm(half_features(torch.relu(q[..., rows, :]), rotation[rows]), operand)  # (B, H, L, Dv+1), fp32
        else:
            products = bmm(features_of(q[..., rows, :], rotation[rows], state.dtype)[1], state)  # (B, H, L, Dv+1): numerators | row sums
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
