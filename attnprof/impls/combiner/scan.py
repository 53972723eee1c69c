"""Exclusive running max along one axis: for every position t, the max over positions strictly
before t (strictly after when `reverse`), ignoring invalid entries; 0 where there is none.

Two ways, same result (tests check both against each other and a plain loop, values and gradients):
- "cummax": torch.cummax, shifted by one. A parallel O(T) scan on CUDA, used there and on meta
  (so the meta accounting describes the GPU path).
- "steps": T elementwise maxima, one per position, each over a whole slice (all groups, heads and
  features at once), used on the CPU. torch.cummax on the CPU is a scalar loop on one thread, and
  the earlier O(T^2) unfold-window max spent ~20% of Combiner-Mixture's CPU time; T ~ sqrt(N)
  launches of vectorised work cost less than either. Its backward recomputes the cummax path
  (only fwd_bwd pays for cummax's arg-max bookkeeping).
"""

from __future__ import annotations

import torch


def prefix_max(
    x: torch.Tensor, dim: int, *, reverse: bool = False, valid: torch.Tensor | None = None, method: str | None = None
) -> torch.Tensor:
    """x (..., T along `dim`, ...) -> same shape. `valid` broadcasts against x (None: all valid)."""
    method = method or default_method(x.device)
    dim = dim % x.dim()
    if valid is not None:
        x = x.masked_fill(~valid, float("-inf"))
    if method == "steps":
        return _StepsMax.apply(x, dim, reverse, valid is not None)
    if method != "cummax":
        raise ValueError(f"unknown prefix_max method {method!r}: choose 'steps' or 'cummax'")
    return _cummax_prefix(x, dim, reverse)


def _cummax_prefix(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    run = torch.cummax(x.flip(dim) if reverse else x, dim=dim).values
    size = run.shape[dim]
    run = torch.cat([torch.zeros_like(run.narrow(dim, 0, 1)), run.narrow(dim, 0, size - 1)], dim=dim)  # exclusive
    run = run.flip(dim) if reverse else run
    return run.masked_fill(run == float("-inf"), 0.0)  # prefixes holding only padding


def default_method(device: torch.device) -> str:
    """The path prefix_max takes by default: steps on the CPU, cummax elsewhere (CUDA; meta, so
    that the accounting describes the GPU path)."""
    return "steps" if device.type == "cpu" else "cummax"


class _StepsMax(torch.autograd.Function):
    """Forward: out[t] = max(out[t-1], x[t-1]), one vectorised maximum per position.
    Backward: recomputed through the cummax path, whose arg-max bookkeeping torch already does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, reverse: bool, padded: bool) -> torch.Tensor:
        size = x.shape[dim]
        order = list(range(size - 1, -1, -1)) if reverse else list(range(size))
        out = torch.empty_like(x)  # (..., T, ...)
        out.select(dim, order[0]).fill_(float("-inf"))
        for before, t in zip(order, order[1:], strict=False):
            torch.maximum(out.select(dim, before), x.select(dim, before), out=out.select(dim, t))
        ctx.save_for_backward(x)
        ctx.dim, ctx.reverse = dim, reverse
        if padded:  # a prefix of padding only is -inf too, wherever it sits
            return out.masked_fill_(out == float("-inf"), 0.0)
        out.select(dim, order[0]).zero_()  # the empty prefix; without padding the only -inf
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            (grad_x,) = torch.autograd.grad(_cummax_prefix(leaf, ctx.dim, ctx.reverse), leaf, grad)
        return grad_x, None, None, None
