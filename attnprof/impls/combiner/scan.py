"""Exclusive running max along one axis: for every position t, the max over positions strictly
before t (strictly after when `reverse`), ignoring invalid entries; 0 where there is none.

Four ways, same result (tests check each against a plain loop, values and gradients):
- "steps": T elementwise maxima, one per position, each over a whole slice (all groups, heads and
  features at once), used on the CPU. torch.cummax on the CPU is a scalar loop on one thread, and
  the earlier O(T^2) unfold-window max spent ~20% of Combiner-Mixture's CPU time; T ~ sqrt(N)
  launches of vectorised work cost less than either.
- "blocked": the same steps inside chunks of ~sqrt(T) positions, all chunks at once, then each chunk
  raised to the max of the chunks before it: ~sqrt(T) + 5 launches and about 5 passes over x. Used
  on CUDA and on meta (so the meta accounting describes the GPU path). Counted on meta, Mixture at
  N = 65536, H = 16, bf16 (T = 256), bytes read and written per scan of q and k together: 2.8 GB
  (2.9 reversed), where "cummax" moved 5.1 GB (7.3 reversed: its int64 arg-max indices, the shift
  by one, the -inf test and fill, and two flips), and "steps" would launch 256 kernels per scan.
- "cummax": torch.cummax, shifted by one: the reference path, and the one the backward recomputes
  (torch keeps the arg-max bookkeeping there; only fwd_bwd pays for it). Also the path under
  torch.compile (backend=compile): the others write into strided views through out=, where dynamo
  breaks the graph, and inductor lowers cummax to a scan of its own.
- "triton": one Triton kernel reading x once and writing the result once (triton_scan.py), taken by
  Combiner-Mixture's backend="triton": CUDA, meta, or Triton's interpreter. Counted on meta, Mixture at
  N = 65536, H = 16, bf16, causal: 1.1 GB per scan of q and k together, one launch.
"""

from __future__ import annotations

import math

import torch

from attnprof.impls.base import planning_device_type

METHODS = ("steps", "blocked", "cummax", "triton")


def prefix_max(
    x: torch.Tensor, dim: int, *, reverse: bool = False, valid: torch.Tensor | None = None, method: str | None = None
) -> torch.Tensor:
    """x (..., T along `dim`, ...) -> same shape. `valid` broadcasts against x (None: all valid)."""
    method = method or default_method(x.device)
    if method not in METHODS:
        raise ValueError(f"unknown prefix_max method {method!r}: choose from {', '.join(METHODS)}")
    dim = dim % x.dim()
    if valid is not None:
        x = x.masked_fill(~valid, float("-inf"))
    if method == "cummax":
        return _cummax_prefix(x, dim, reverse)
    return _ScannedMax.apply(x, dim, reverse, valid is not None, method)


def _cummax_prefix(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    run = torch.cummax(x.flip(dim) if reverse else x, dim=dim).values
    size = run.shape[dim]
    run = torch.cat([torch.zeros_like(run.narrow(dim, 0, 1)), run.narrow(dim, 0, size - 1)], dim=dim)  # exclusive
    run = run.flip(dim) if reverse else run
    return run.masked_fill(run == float("-inf"), 0.0)  # prefixes holding only padding


def default_method(device: torch.device) -> str:
    """The path prefix_max takes by default: steps on the CPU, blocked elsewhere (CUDA; on meta, the path
    of the device it stands in for, so that the accounting describes the GPU path)."""
    if torch.compiler.is_compiling():  # the out= writes into strided views below break dynamo's graph
        return "cummax"
    return "steps" if planning_device_type(device) == "cpu" else "blocked"


class _ScanOrder:
    """Views of positions counted in scan order i (i = t, or T - 1 - t when reversed), as plain strided
    slices in position order: reversed, a run of scan positions is the same run read backwards, and
    every elementwise op below pairs its operands' elements consistently."""

    def __init__(self, dim: int, size: int, reverse: bool):
        self.dim, self.size, self.reverse = dim, size, reverse

    def every(self, t: torch.Tensor, start: int, step: int, count: int) -> torch.Tensor:
        """Scan positions start, start + step, ... (count of them)."""
        first, last = start, start + (count - 1) * step
        if self.reverse:
            first, last = self.size - 1 - last, self.size - 1 - first
        return t[(slice(None),) * self.dim + (slice(first, last + 1, step),)]

    def span(self, t: torch.Tensor, start: int, length: int) -> torch.Tensor:
        """Scan positions [start, start + length)."""
        return t.narrow(self.dim, self.size - start - length if self.reverse else start, length)


def _steps(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """Exclusive running max, -inf where nothing precedes: one maximum per position."""
    size = x.shape[dim]
    at = _ScanOrder(dim, size, reverse)
    out = torch.empty_like(x)  # (..., T along dim, ...)
    at.every(out, 0, 1, 1).fill_(float("-inf"))
    for i in range(1, size):
        torch.maximum(at.every(out, i - 1, 1, 1), at.every(x, i - 1, 1, 1), out=at.every(out, i, 1, 1))
    return out


def _steps_backward(x: torch.Tensor, grad: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """The gradient of _steps (exclusive running max) by a reverse sweep, one position at a time as the forward:
    out[i] = max(out[i - 1], x[i - 1]) in scan order, so the gradient reaching out[i] (its own plus what later
    positions passed back) goes to x[i - 1] where x[i - 1] was the larger (ties: to x, the later element, as cummax
    names the last index of a tie) and on to out[i - 1] otherwise. Scan position 0 and prefixes of padding only are
    constants (0): their gradient goes nowhere; a padded element takes the gradient of the -inf it held, which the
    caller's masked_fill drops. torch.cummax's CPU backward, which this replaces, ran as one thread's scalar loop: at
    N = 8192 it was 1.73 s of Combiner-Mixture's 3.3 s forward and backward."""
    size = x.shape[dim]
    at = _ScanOrder(dim, size, reverse)
    run = _steps(x, dim, reverse)  # (..., T along dim, ...): -inf where nothing precedes
    grad_x = torch.empty_like(x)
    at.every(grad_x, size - 1, 1, 1).zero_()  # the last position precedes no output; the sweep writes every other one
    carry = torch.zeros_like(at.every(x, 0, 1, 1))  # gradient passed back to out[i] by the positions after it
    for i in range(size - 1, 0, -1):
        total = carry.add_(at.every(grad, i, 1, 1))
        took = at.every(x, i - 1, 1, 1) >= at.every(run, i - 1, 1, 1)  # out[i] is x[i - 1]
        at.every(grad_x, i - 1, 1, 1).copy_(total.where(took, 0.0))
        carry = total.masked_fill_(took, 0.0)
    return grad_x


def _blocked(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """Exclusive running max, -inf where nothing precedes, in two levels: chunks of S = ceil(sqrt(T))
    positions scanned position by position, all chunks at once (S - 1 maxima); the chunks' own maxima
    run through torch.cummax (T / S entries, small); one maximum raises each chunk to the chunks before it."""
    size = x.shape[dim]
    step = math.isqrt(size - 1) + 1  # ceil(sqrt(T)) positions per chunk
    chunks = -(-size // step)
    at = _ScanOrder(dim, size, reverse)
    out = torch.empty_like(x)  # (..., T along dim, ...)
    at.every(out, 0, step, chunks).fill_(float("-inf"))  # a chunk's first position: nothing before it in the chunk
    for j in range(1, step):
        count = len(range(j, size, step))
        torch.maximum(at.every(out, j - 1, step, count), at.every(x, j - 1, step, count), out=at.every(out, j, step, count))
    if chunks == 1:
        return out
    totals = torch.maximum(at.every(out, step - 1, step, chunks - 1), at.every(x, step - 1, step, chunks - 1))  # maxima of chunks 0 .. C-2
    totals = totals.flip(dim) if reverse else totals  # (..., C - 1, ...) in scan order
    before = torch.cummax(totals, dim).values  # entry c - 1: the max of chunks 0 .. c - 1, what chunk c must see
    whole, rest = divmod(size - step, step)  # the whole chunks after the first, and the length of a last partial one
    if whole:
        region = at.span(out, step, whole * step).unflatten(dim, (whole, step))  # (..., whole, S, ...)
        raise_to = before.narrow(dim, 0, whole)
        raise_to = (raise_to.flip(dim) if reverse else raise_to).unsqueeze(dim + 1)  # (..., whole, 1, ...) in position order
        torch.maximum(region, raise_to, out=region)
    if rest:
        region = at.span(out, step + whole * step, rest)  # (..., rest, ...)
        torch.maximum(region, before.narrow(dim, whole, 1), out=region)
    return out


class _ScannedMax(torch.autograd.Function):
    """Forward: the steps, blocked or triton scan. Backward: the steps scan's own reverse sweep (_steps_backward) after
    the steps scan; the others, and every method under create_graph=True, recompute through the cummax path, whose
    arg-max bookkeeping torch already does (differentiable again)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, reverse: bool, padded: bool, method: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.dim, ctx.reverse, ctx.method = dim, reverse, method
        if method == "triton":  # the kernel writes the zeros itself
            from attnprof.impls.combiner import triton_scan

            return triton_scan.prefix_max(x, dim, reverse)
        out = (_steps if method == "steps" else _blocked)(x, dim, reverse)
        if padded:  # a prefix of padding only is -inf too, wherever it sits
            return out.masked_fill_(out == float("-inf"), 0.0)
        _ScanOrder(dim, x.shape[dim], reverse).every(out, 0, 1, 1).zero_()  # the empty prefix; without padding the only -inf
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        create_graph = torch.is_grad_enabled()  # a backward runs with grad enabled only under create_graph=True
        if ctx.method == "steps" and not create_graph:  # the sweep's out= writes are not differentiable
            return _steps_backward(x, grad, ctx.dim, ctx.reverse), None, None, None, None
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            # under create_graph, keep grad_x a function of the incoming gradient (the max's selection is locally
            # constant in x, so that is all a second derivative needs); without it grad_x came back detached
            (grad_x,) = torch.autograd.grad(_cummax_prefix(leaf, ctx.dim, ctx.reverse), leaf, grad, create_graph=create_graph)
        return grad_x, None, None, None, None
