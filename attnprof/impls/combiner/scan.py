"""Exclusive running max along one axis: for every position t, the max over positions strictly
before t (strictly after when `reverse`), ignoring invalid entries; 0 where there is none.

Two ways, same result (tests check both against each other, values and gradients):
- "cummax": torch.cummax, shifted by one. A parallel O(T) scan on CUDA, used there and on meta
  (so the meta accounting describes the GPU path).
- "window": the max over a window of T positions taken with `unfold` + `amax`, used on the CPU.
  O(T) work per entry instead of O(1), but vectorised and multi-threaded, while torch.cummax on
  the CPU is a scalar loop on one thread (about 3x slower at T ~ sqrt N = 64..128 here). Its
  backward recomputes the cummax path (only fwd_bwd pays for cummax's arg-max bookkeeping).
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
    if method == "window":
        return _WindowMax.apply(x, dim, reverse)
    if method != "cummax":
        raise ValueError(f"unknown prefix_max method {method!r}: choose 'window' or 'cummax'")
    return _cummax_prefix(x, dim, reverse)


def _cummax_prefix(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    run = torch.cummax(x.flip(dim) if reverse else x, dim=dim).values
    size = run.shape[dim]
    run = torch.cat([torch.zeros_like(run.narrow(dim, 0, 1)), run.narrow(dim, 0, size - 1)], dim=dim)  # exclusive
    run = run.flip(dim) if reverse else run
    return run.masked_fill(run == float("-inf"), 0.0)  # prefixes holding only padding


def default_method(device: torch.device) -> str:
    """The path prefix_max takes by default: window on the CPU, cummax elsewhere (CUDA; meta, so
    that the accounting describes the GPU path)."""
    return "window" if device.type == "cpu" else "cummax"


class _WindowMax(torch.autograd.Function):
    """Forward: the max over an unfolded window of T positions (padding at -inf never wins).
    Backward: recomputed through the cummax path, whose arg-max bookkeeping torch already does;
    only fwd_bwd pays for it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
        size = x.shape[dim]
        filler = torch.full_like(x.narrow(dim, 0, 1), float("-inf")).expand_as(x)  # (..., T, ...)
        padded = torch.cat([x, filler] if reverse else [filler, x], dim=dim)  # (..., 2T, ...)
        windows = padded.unfold(dim, size, 1).narrow(dim, 1 if reverse else 0, size)  # (..., T, ..., T)
        ctx.save_for_backward(x)
        ctx.dim, ctx.reverse = dim, reverse
        values = windows.amax(dim=-1)  # (..., T, ...)
        return values.masked_fill_(values == float("-inf"), 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            (grad_x,) = torch.autograd.grad(_cummax_prefix(leaf, ctx.dim, ctx.reverse), leaf, grad)
        return grad_x, None, None
