"""Correct at the measured length too: an impl's output (and gradients) at the case's own length and inputs.

The check against the reference (checks.py) runs at N = min(N, 256). A kernel that takes another path at larger
N (a tile loop, a masked last block, a split reduction, a backward kernel of its own) passed it and was timed
while wrong. So after the memory pass, before any timing, on the case's own inputs:

1. Every impl, exact or not: every value of the first (untimed) output is finite. A NaN in one head or one row
   went unseen by sampled rows; one pass over B H N D values finds it.
2. Exact impls: sampled query rows of that output in SAMPLED_HEADS heads (the first and the last, where a wrong
   batch or head stride shows, and two drawn from the seed) against exact attention in float64 on the CPU: the
   first, middle and last rows (a masked last block shows there) and rows drawn from the seed. An impl checked
   against softmax gets softmax rows, O(rows x N x D) at any length. An impl with its own reference (an option
   changes what it computes: a scale, a window) gets that reference over the whole sequence of the sampled
   heads' batches (positions and per-head options intact) while it costs at most REFERENCE_BUDGET scores: to
   N = 1448 at 16 heads, 4096 at 2; beyond that only checks 1 and 3's finiteness hold.
3. Exact impls in fwd_bwd: one more call, its output gradient zero but on the sampled rows, so the exact
   gradients need only those rows: dq of each sampled row, dk and dv of the sampled heads.

An approximation's reference is its own algorithm at full cost, so it gets check 1 only.
"""

from __future__ import annotations

import random

from attnprof.checks import CHECK_LENGTH, wrong_form
from attnprof.impls.base import AttentionImpl
from attnprof.inputs import CaseInputs
from attnprof.spec import Case

SAMPLED_ROWS = 32
SAMPLED_HEADS = 4
# Per row, so a few wrong rows among many right ones cannot hide in a mean: a wrong tile gives errors of order
# 1, while rounding gives about 1% in bfloat16 at 64k (probabilities near 1/N, summed in fp32 by every kernel), and
# about 1e-5 in float32 (a 0.5% error passed the 1% bound this had). An impl's own looser check bound widens it.
ROW_TOLERANCE = {"float32": 1e-3, "float16": 0.1, "bfloat16": 0.1}
GRADIENT_SLACK = 2.0  # gradients go through one more round of rounding (checks.py allows 5x at N = 256, where it is tighter)
REFERENCE_BUDGET = 2**25  # heads x N^2 scores of an impl's own reference per batch: 256 MiB in float64


def compares(impl: AttentionImpl, case: Case) -> bool:
    """Whether check 2 (and 3) apply: an exact impl whose exact rows are affordable at this length."""
    if not impl.exact or case.device == "meta":
        return False
    return impl.reference is None or case.heads * case.seq_len**2 <= REFERENCE_BUDGET


class SpotCheck:
    """Keeps the first output of `watching(call)`; `failure()` then checks it (and the gradients) and lets it go."""

    def __init__(self, impl: AttentionImpl, case: Case, inputs: CaseInputs):
        self.impl, self.case, self.inputs = impl, case, inputs
        self.wanted = case.device != "meta"
        self.rows = sampled_rows(case.seq_len, case.seed)
        self.heads = sampled_heads(case.batch, case.heads, case.seed)
        self.first = None  # the first output (B, H, N, D), held until failure() has read it
        self.done = False
        self.note: str | None = None  # a check that could not run, said on the row

    def watching(self, call):
        """`call`, keeping its first output: only a reference, so the memory pass around it measures nothing more."""

        def first_output_kept():
            out = call()  # (B, H, N, D)
            if self.wanted and not self.done and self.first is None:
                self.first = out
            return out

        return first_output_kept

    def failure(self) -> str | None:
        """Why the kept output or the gradients are wrong, or None (also when nothing applies or nothing was kept)."""
        if self.done or self.first is None:
            return None
        out, self.first, self.done = self.first, None, True
        at = f"failed its check at the measured length N={self.case.seq_len}"
        wrong = wrong_form(out, self.inputs.q, self.inputs.v) or non_finite(out)
        if wrong or not compares(self.impl, self.case):
            return f"{at}: {wrong}" if wrong else None
        expected = ExactRows(self.impl, self.case, self.inputs, self.rows, self.heads)
        tolerance = max(ROW_TOLERANCE[self.case.dtype], self.impl.check_tolerance.get(self.case.dtype, 0.0))
        for b, h in self.heads:
            kept = out[b, h, self.rows].detach().cpu().double()  # (rows, D)
            errors = row_errors(kept, expected.output(b, h))
            if wrong := _over(errors, tolerance, self.rows, f"query row {{row}} of batch {b}, head {h}", "against exact attention"):
                return f"{at}: {wrong}"
        del out
        if self.case.mode == "fwd_bwd":
            wrong = self._gradient_failure(expected, tolerance * GRADIENT_SLACK)
            return f"{at}: {wrong}" if wrong else None
        return None

    def _gradient_failure(self, expected: ExactRows, tolerance: float) -> str | None:
        """One more fwd+bwd call whose output gradient is the case's on the sampled rows of the sampled heads and
        zero elsewhere; its gradients against the exact ones of those rows."""
        import torch

        q, k, v, grad_out = self.inputs.q, self.inputs.k, self.inputs.v, self.inputs.grad_out
        try:
            sparse = torch.zeros_like(grad_out)  # (B, H, N, D)
            for b, h in self.heads:
                sparse[b, h, self.rows] = grad_out[b, h, self.rows]
            self.impl.bind(self.case)(q, k, v).backward(sparse)
        except torch.OutOfMemoryError:  # the measured call fit, with one more gradient-sized tensor it does not
            q.grad = k.grad = v.grad = None
            self.note = f"gradients not checked at N={self.case.seq_len}: the check's extra call ran out of memory"
            return None
        del sparse
        grads = {"q": q.grad, "k": k.grad, "v": v.grad}
        q.grad = k.grad = v.grad = None
        try:
            for name, grad in grads.items():
                if wrong := "no gradient reached it" if grad is None else non_finite(grad):
                    return f"d{name}: {wrong}"
            for b, h in self.heads:
                dq, dk, dv = expected.gradients(b, h)  # (rows, D), (N, D), (N, D)
                where = f"of batch {b}, head {h}"
                dq_errors = row_errors(grads["q"][b, h, self.rows].cpu().double(), dq, floored=True)
                if wrong := _over(dq_errors, tolerance, self.rows, f"dq row {{row}} {where}"):
                    return wrong
                for name, exact in (("k", dk), ("v", dv)):
                    error = row_errors(grads[name][b, h].cpu().double().flatten()[None], exact.flatten()[None])[0]  # the head's
                    if not error <= tolerance:
                        return f"d{name} {where} has relative error {error:.3g} > {tolerance:g} against exact attention's"
        finally:
            del grads
        return None


def _over(errors: list[float], tolerance: float, rows: list[int], what: str, against: str = "against exact attention's") -> str | None:
    over = [i for i, error in enumerate(errors) if not error <= tolerance]  # NaN is over too
    if not over:
        return None
    first = over[0]
    return (
        f"{what.format(row=rows[first])} has relative error {errors[first]:.3g} > {tolerance:g} {against} "
        f"({len(over)} of {len(rows)} sampled rows over; the check at N<={CHECK_LENGTH} passed)"
    )


class ExactRows:
    """Exact attention's sampled rows (and their gradients) in float64 on the CPU, computed once per batch."""

    def __init__(self, impl: AttentionImpl, case: Case, inputs: CaseInputs, rows: list[int], heads: list[tuple[int, int]]):
        self.impl, self.case, self.inputs, self.rows, self.heads = impl, case, inputs, rows, heads
        self._outputs: dict = {}
        self._grads: dict = {}

    def output(self, b: int, h: int):
        if (b, h) not in self._outputs:
            self._compute(b, h, with_grads=False)
        return self._outputs[(b, h)]

    def gradients(self, b: int, h: int):
        if self._grads.get((b, h)) is None:
            self._compute(b, h, with_grads=True)
        return self._grads[(b, h)]

    def _compute(self, b: int, h: int, with_grads: bool) -> None:
        if self.impl.reference is None:
            self._outputs[(b, h)], self._grads[(b, h)] = softmax_rows(self.inputs, b, h, self.rows, self.case.causal, with_grads)
            return
        heads = [head for batch, head in self.heads if batch == b]  # one reference call serves the batch's heads
        outs, grads = reference_rows(self.impl.bind_reference(self.case), self.inputs, b, heads, self.rows, with_grads)
        for head in heads:
            self._outputs[(b, head)], self._grads[(b, head)] = outs[head], (grads or {}).get(head)


def softmax_rows(inputs: CaseInputs, b: int, h: int, rows: list[int], causal: bool, with_grads: bool):
    """softmax(q_rows k^T / sqrt(D)) v in float64 on the CPU, as (rows, D), and with_grads, the gradients of the
    sampled rows' output under the case's output gradient there: (dq (rows, D), dk (N, D), dv (N, D)). Nothing is
    allocated on a GPU the case may have filled (one head's k and v, 2 N D values, are copied over at their own
    width, then widened)."""
    import torch

    with torch.enable_grad():
        q = inputs.q[b, h, rows].detach().cpu().double().requires_grad_(with_grads)  # (rows, D)
        k = inputs.k[b, h].detach().cpu().double().requires_grad_(with_grads)  # (N, D)
        v = inputs.v[b, h].detach().cpu().double().requires_grad_(with_grads)  # (N, D)
        scores = q @ k.T / q.shape[-1] ** 0.5  # (rows, N)
        if causal:
            future = torch.arange(k.shape[0])[None, :] > torch.as_tensor(rows)[:, None]  # (rows, N)
            scores = scores.masked_fill(future, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # (rows, D)
        if not with_grads:
            return out.detach(), None
        out.backward(inputs.grad_out[b, h, rows].detach().cpu().double())
        return out.detach(), (q.grad, k.grad, v.grad)


def reference_rows(reference, inputs: CaseInputs, b: int, heads: list[int], rows: list[int], with_grads: bool):
    """An impl's own reference over batch b's whole sequence in float64 on the CPU; per head in `heads`, the
    sampled rows (rows, D) and, with_grads, the gradients under the case's output gradient on those rows only."""
    import torch

    with torch.enable_grad():
        q, k, v = (t[b : b + 1].detach().cpu().double().requires_grad_(with_grads) for t in (inputs.q, inputs.k, inputs.v))  # (1, H, N, D)
        out = reference(q, k, v)  # (1, H, N, D)
        outs = {h: out[0, h, rows].detach() for h in heads}
        if not with_grads:
            return outs, None
        sparse = torch.zeros_like(out)  # (1, H, N, D)
        for h in heads:
            sparse[0, h, rows] = inputs.grad_out[b, h, rows].detach().cpu().double()
        out.backward(sparse)
        return outs, {h: (q.grad[0, h, rows], k.grad[0, h], v.grad[0, h]) for h in heads}


def non_finite(tensor) -> str | None:
    """Where a tensor (B, H, N, D) holds NaN or inf, or None."""
    import torch

    bad = ~torch.isfinite(tensor)
    count = int(bad.sum())
    if not count:
        return None
    b, h, row, _ = (int(i) for i in bad.nonzero()[0])
    return f"{count:,} of {tensor.numel():,} values are NaN or inf, the first in query row {row} of batch {b}, head {h}"


def sampled_rows(n: int, seed: int) -> list[int]:
    """The first two, the middle and the last two rows, and the rest drawn from `seed`; every row when n is small."""
    if n <= SAMPLED_ROWS:
        return list(range(n))
    fixed = {0, 1, n // 2, n - 2, n - 1}
    return sorted(fixed | set(random.Random(seed).sample(range(n), SAMPLED_ROWS - len(fixed))))


def sampled_heads(batch: int, heads: int, seed: int) -> list[tuple[int, int]]:
    """(batch, head) pairs: the first and the last, and two drawn from `seed` within those two batches."""
    draw = random.Random(seed + 1)
    chosen = {(0, 0), (batch - 1, heads - 1), (0, draw.randrange(heads)), (batch - 1, draw.randrange(heads))}
    return sorted(chosen)[:SAMPLED_HEADS]


def row_errors(value, reference, floored: bool = False) -> list[float]:
    """||value_r - reference_r|| / ||reference_r|| per row; `floored`: over at least the rows' RMS norm, for
    gradients, whose exact rows can be 0 (causal row 0's dq: a softmax over one key has no gradient) where a
    kernel's rounding is not."""
    import torch

    norms = torch.linalg.vector_norm(reference, dim=-1)  # (rows,)
    floor = norms.square().mean().sqrt() if floored else torch.tensor(0.0, dtype=norms.dtype)
    return (torch.linalg.vector_norm(value - reference, dim=-1) / norms.clamp_min(floor.clamp_min(1e-300))).tolist()
