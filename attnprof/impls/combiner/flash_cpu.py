"""Masked softmax attention through PyTorch's fused CPU flash kernel (`_scaled_dot_product_flash_attention_for_cpu`),
for the Combiner plans that run on the CPU.

The kernel takes blocks of queries against blocks of keys, adds the mask and keeps a running softmax, so no logits
tensor is ever written to memory; it returns the log-normaliser too, and its backward recomputes the weights from
it. Eager PyTorch writes the logits and then passes over them once per mask fill, the max, the shift, the
exponential and the sum: at N = 8192 (H = 16, fp32, forward) those passes were most of Combiner-Mixture's CPU time.

Two parts seen by the same queries (`merged_attention`) are merged by their log-normalisers, as flash attention
merges key blocks; the backward of each part is the kernel's own backward given the merged output and the merged
log-normaliser: its weights exp(s - lse) are then the joint softmax's, and its correction sum(dO * O) the joint
output's, so each part's gradients are those of the one softmax over both (how ring attention splits its backward).

Conventions: 4-D tensors (G, P, L, D) (the kernel's batch and head axes: groups of queries with their own keys), masks
additive and broadcastable to (G, P, L, S) in q's dtype. Every query keeps a finite mask entry: a query whose keys are
all -inf gets output 0 and log-normaliser 0 from torch 2.4.1 on (NaN before: pytorch#127055), which a merge would
misread as a real normaliser; the callers give such a row finite filler instead (the dtype's minimum: its output is
some average of the values, its log-normaliser about that minimum, weighing 0 in a merge).

Limits, as PyTorch's own CPU flash attention: no second derivative (the kernel's backward has none: a backward with
create_graph=True raises, see _refuse_a_graph), torch.func transforms are not supported,
and in fp32 the gradients of very large logits are coarser than an eager softmax's (the weights are recomputed from
an fp32 log-normaliser: Mixture's dq 2.2e-4 off the float64 oracle with q scaled by 300, 5.2e-3 by 1000, against
3.2e-5 and 1.5e-4 before; outputs about 3e-6 either way).
"""

from __future__ import annotations

import torch

from attnprof.impls.autograd_guards import refuse_a_graph

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale q k^T + mask) v: q (G, P, L, D), k and v (G, P, S, D) -> (G, P, L, D); a row with no key gives 0."""
    return _MaskedAttention.apply(q, k, v, mask, scale)


def merged_attention(first, second, scale: float, *, swapped: bool = True) -> torch.Tensor:
    """One softmax over two key sets, each with its own layout of the same queries: first (q, k, v, mask) with q
    (G, P, Q, D); second the same with q (G, Q, P, D) when `swapped` (the column layout of a grid), else any shape
    holding the queries in the same order (e.g. (G, 1, P Q, D)). Returns (G, P, Q, D) in the first part's layout.
    Every query must keep a finite logit in each part."""
    return _MergedAttention.apply(scale, swapped, *first, *second)


def _refuse_a_graph() -> None:
    """The kernel's backward has no derivative (autograd_guards; Fixed's eager summaries kept the graph alive)."""
    refuse_a_graph(
        "the CPU plans of combiner-fixed and combiner-mixture run PyTorch's fused CPU flash kernel, whose backward has no derivative"
    )


def _unit_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The kernel reads the last axis as if its stride were 1 (public SDPA checks that and takes another path): a
    transposed or expanded v gave outputs off by 2, larger than any value, and reads past the tensor (an operator
    audit; inputs that needed padding were copied by the pad and came out right)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _flash(q, k, v, mask, scale):
    return FLASH(q, k, v, 0.0, False, attn_mask=mask, scale=scale)  # (G, P, L, D), (G, P, L)


def _flash_backward(grad, q, k, v, out, lse, mask, scale):
    return FLASH_BACKWARD(grad.contiguous(), q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale)


class _MaskedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        q, k, v = map(_unit_stride, (q, k, v))  # saved as the kernel read them: its backward reads them the same way
        out, lse = _flash(q, k, v, mask, scale)
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        _refuse_a_graph()
        q, k, v, mask, out, lse = ctx.saved_tensors
        return (*_flash_backward(grad, q, k, v, out, lse, mask, ctx.scale), None, None)


class _MergedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scale, swapped, q_a, k_a, v_a, mask_a, q_b, k_b, v_b, mask_b):
        q_a, k_a, v_a, q_b, k_b, v_b = map(_unit_stride, (q_a, k_a, v_a, q_b, k_b, v_b))
        out_a, lse_a = _flash(q_a, k_a, v_a, mask_a, scale)  # (G, P, Q, D), (G, P, Q)
        out_b, lse_b = _flash(q_b, k_b, v_b, mask_b, scale)  # the second part's layout
        out_b, lse_b = _relaid(out_b, lse_b, out_a.shape, swapped)  # into the first part's
        lse = torch.logaddexp(lse_a, lse_b)  # (G, P, Q): the joint log-normaliser
        out = out_a.mul_(torch.exp(lse_a - lse).unsqueeze(-1)).addcmul_(out_b, torch.exp(lse_b - lse).unsqueeze(-1))  # no temporary
        ctx.save_for_backward(q_a, k_a, v_a, mask_a, q_b, k_b, v_b, mask_b, out, lse)
        ctx.scale, ctx.swapped = scale, swapped
        return out

    @staticmethod
    def backward(ctx, grad):
        _refuse_a_graph()
        q_a, k_a, v_a, mask_a, q_b, k_b, v_b, mask_b, out, lse = ctx.saved_tensors
        first = _flash_backward(grad, q_a, k_a, v_a, out, lse, mask_a, ctx.scale)
        shape_b = (*q_b.shape[:-1], out.shape[-1])
        grad_b, _ = _relaid(grad, None, shape_b, ctx.swapped)
        out_b, lse_b = _relaid(out, lse, shape_b, ctx.swapped)
        second = _flash_backward(grad_b, q_b, k_b, v_b, out_b, lse_b, mask_b, ctx.scale)
        return (None, None, *first, None, *second, None)


def _relaid(out: torch.Tensor, lse: torch.Tensor | None, shape, swapped: bool):
    """An output (G, X, Y, D) and its log-normaliser (G, X, Y) in the other part's layout `shape` (G, X', Y', D):
    the two query axes swapped, or the same queries reshaped (views)."""
    if swapped:
        return out.transpose(-3, -2), None if lse is None else lse.transpose(-2, -1)
    return out.reshape(shape), None if lse is None else lse.reshape(shape[:-1])
