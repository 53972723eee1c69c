"""Exact attention's values for the spot check (spot_check.py): sampled rows and their gradients in float64 on the
CPU, from softmax directly or from an impl's own reference; and the row errors and finiteness it judges by."""

from __future__ import annotations

import functools

from attnprof.impls.base import AttentionImpl
from attnprof.inputs import CaseInputs
from attnprof.spec import Case


class ExactRows:
    """Exact attention's sampled rows (and their gradients) of the sampled heads, computed when first asked."""

    class Unavailable(Exception):
        """The impl's own reference raised: nothing to compare with (the impl is not to blame)."""

    def __init__(self, impl: AttentionImpl, case: Case, inputs: CaseInputs, rows: list[int], heads: list[tuple[int, int]],
                 with_grads: bool = False):  # fmt: skip
        """with_grads: the gradients will be asked for; then each head's rows and gradients come from one call."""
        self.impl, self.case, self.inputs, self.rows, self.heads, self.with_grads = impl, case, inputs, rows, heads, with_grads
        self._outputs: dict = {}
        self._grads: dict = {}

    def output(self, b: int, h: int):
        """(rows, D)"""
        if (b, h) not in self._outputs:
            self._compute(b, h, with_grads=self.with_grads)
        return self._outputs[(b, h)]

    def gradients(self, b: int, h: int):
        """(dq (rows, D), dk (N, D), dv (N, D)) under the case's output gradient on the sampled rows only."""
        if self._grads.get((b, h)) is None:
            self._compute(b, h, with_grads=True)
        return self._grads[(b, h)]

    def _compute(self, b: int, h: int, with_grads: bool) -> None:
        if self.impl.reference is None:
            softmax = functools.partial(softmax_rows, causal=self.case.causal)
            self._outputs[(b, h)], self._grads[(b, h)] = head_rows(softmax, self.inputs, b, h, self.rows, with_grads)
            return
        try:  # a row reference: these rows of this head; else one call of the reference serves every sampled head
            if self.impl.row_reference is not None:
                row_reference = self.impl.bind_row_reference(self.case)
                self._outputs[(b, h)], self._grads[(b, h)] = head_rows(row_reference, self.inputs, b, h, self.rows, with_grads)
                return
            if self.impl.coupled_row_reference is not None:  # the sampled rows of every sampled head, from the whole inputs
                coupled = self.impl.bind_coupled_row_reference(self.case)
                attend = functools.partial(coupled, heads=self.heads, rows=self.rows)
            else:
                attend = functools.partial(whole_rows, self.impl.bind_reference(self.case), heads=self.heads, rows=self.rows)
            outs, grads = reference_rows(attend, self.inputs, self.heads, self.rows, with_grads)
        except Exception as error:
            from attnprof.failures import classify

            raise ExactRows.Unavailable(f"its reference raised {classify(error)[1]}") from None
        for key in self.heads:
            self._outputs[key], self._grads[key] = outs[key], (grads or {}).get(key)


def softmax_rows(q, k, v, rows: list[int], *, causal: bool):
    """softmax(q_rows k^T / sqrt(D)) v: exact attention's rows `rows`, (R, D) from q, k, v (N, D)."""
    import torch

    scores = q[rows] @ k.T / q.shape[-1] ** 0.5  # (R, N)
    if causal:
        future = torch.arange(k.shape[0])[None, :] > torch.as_tensor(rows)[:, None]  # (R, N)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (R, D)


def head_rows(attend, inputs: CaseInputs, b: int, h: int, rows: list[int], with_grads: bool):
    """attend(q, k, v, rows) of one head in float64 on the CPU, as (rows, D), and with_grads, the gradients of the
    sampled rows' output under the case's output gradient there: (dq (rows, D), dk (N, D), dv (N, D)). Nothing is
    allocated on a GPU the case may have filled (one head's q, k and v, 3 N D values, are copied over at their own
    width, then widened)."""
    import torch

    with torch.enable_grad():
        q, k, v = (t[b, h].detach().cpu().double().requires_grad_(with_grads) for t in (inputs.q, inputs.k, inputs.v))  # (N, D) each
        out = attend(q, k, v, rows)  # (rows, D)
        if not with_grads:
            return out.detach(), None
        out.backward(inputs.grad_out[b, h, rows].detach().cpu().double())
        return out.detach(), (q.grad[rows], k.grad, v.grad)  # dq of the sampled rows: the check compares those


def whole_rows(reference, q, k, v, heads: list[tuple[int, int]], rows: list[int]):
    """The rows `rows` of the heads `heads` of the whole reference's output: (len(heads), R, D)."""
    import torch

    out = reference(q, k, v)  # (B, H, N, D)
    return torch.stack([out[b, h, rows] for b, h in heads])  # (heads, R, D)


def reference_rows(attend, inputs: CaseInputs, heads: list[tuple[int, int]], rows: list[int], with_grads: bool):
    """attend(q, k, v) -> (len(heads), R, D), the reference's rows `rows` of the sampled heads from the whole inputs (a
    reference may depend on the batch, the positions or the other heads), in float64 on the CPU; per (batch, head) in
    `heads`, those rows (rows, D) and, with_grads, the gradients under the case's output gradient on those rows only."""
    import torch

    with torch.enable_grad():
        q, k, v = (t.detach().cpu().double().requires_grad_(with_grads) for t in (inputs.q, inputs.k, inputs.v))  # (B, H, N, D)
        out = attend(q, k, v)  # (heads, R, D)
        outs = {key: out[i].detach() for i, key in enumerate(heads)}
        if not with_grads:
            return outs, None
        out.backward(torch.stack([inputs.grad_out[b, h, rows].detach().cpu().double() for b, h in heads]))  # (heads, R, D)
        return outs, {(b, h): (q.grad[b, h, rows], k.grad[b, h], v.grad[b, h]) for b, h in heads}


def non_finite(tensor) -> str | None:
    """Where a tensor (B, H, N, D) holds NaN or inf, or None."""
    import torch

    bad = ~torch.isfinite(tensor)
    count = int(bad.sum())
    if not count:
        return None
    b, h, row, _ = (int(i) for i in bad.nonzero()[0])
    return f"{count:,} of {tensor.numel():,} values are NaN or inf, the first in query row {row} of batch {b}, head {h}"


def rms_row_norm(rows) -> float:
    import torch

    return torch.linalg.vector_norm(rows, dim=-1).square().mean().sqrt().item()


def row_errors(value, reference, floored: bool = False, floor: float = 0.0) -> list[float]:
    """||value_r - reference_r|| / ||reference_r|| per row; `floored`: over at least the rows' RMS norm, for
    gradients, whose exact rows can be 0 (causal row 0's dq: a softmax over one key has no gradient; a key no
    sampled query sees) where a kernel's rounding is not; and over at least `floor` (every row 0: dq at N = 1)."""
    import torch

    norms = torch.linalg.vector_norm(reference, dim=-1)  # (rows,)
    least = max(rms_row_norm(reference) if floored else 0.0, floor, 1e-300)
    return (torch.linalg.vector_norm(value - reference, dim=-1) / norms.clamp_min(least)).tolist()
