"""Correct at the measured length too: an impl's output (and gradients) at the case's own length and inputs.

The check against the reference (checks.py) runs at N = min(N, 256). A kernel that takes another path at larger
N (a tile loop, a masked last block, a split reduction, a backward kernel of its own) passed it and was timed
while wrong. So on the case's own inputs, before any timing:

1. Every impl, exact or not: every value of the first (untimed) output is finite. A NaN in one head or one row
   went unseen by sampled rows; one pass over B H N D values finds it.
2. Sampled query rows of that output in SAMPLED_HEADS heads (the first and the last, where a wrong batch or head
   stride shows, and two drawn from the seed) against the exact values in float64 on the CPU: the first, middle
   and last rows (a masked last block shows there) and rows drawn from the seed.
   - An exact impl checked against softmax gets softmax rows, O(rows x N x D) at any length.
   - An impl with its own reference (an exact one whose option changes what it computes: a scale, a window; or an
     approximation, whose reference is its own algorithm computed the plain way) gets its row reference where it
     declares one: cosFormer's rows (O(rows x N x D) at any length), Combiner's (the rows' own plan and the
     summaries of the regions they see: reference/combiner_rows.py) and Nyströmformer's coupled rows (its landmarks
     pool every query and key, and its default pinv scale is one max over every head, so the sampled heads' rows
     come from the whole inputs: every head's landmarks and pseudo-inverse, O(B H N D), then the sampled heads' rows,
     O(N m D) each: reference/nystromformer_rows.py). The check at N <= 256 (B = 1, H = 2) runs cosFormer's causal
     scan as one step (the carry between steps runs from N = 2049 on there) and Combiner's blocks at their smallest.
   - Else an exact impl gets its reference over the whole inputs (positions, batches and per-head options intact)
     while that costs at most REFERENCE_BUDGET scores: to N = 1448 at B = 1, H = 16. Beyond that, and when the
     reference itself raises (said on the row), only check 1 holds.
   - Else (an approximation without a row reference: a plugin's) check 1 only: a whole reference per case costs too
     much. Measured here for one forward case at H = 16 and N = 1024 (fp32, CPU), before the row references:
     Nystromformer 1.7 s, Combiner-Fixed 1.3 s, -Axial 5.9 s, -Mixture 14 s, -LogSparse 33 s, where the default CPU
     sweep measures all of its 110 cases in about 80 s; Nyströmformer's whole reference in fwd-bwd at N = 64k, H 16:
     68 s, its coupled rows 8.4 s (2 cores shared with other work). With the rows of cosFormer and Combiner, that
     sweep took 82.3 and 87.7 s against 76.7 s without (single runs, quiet machine).
3. In fwd_bwd: one more call, its output gradient zero but on the sampled rows, so the exact gradients need only
   those rows: dq of each sampled row, and dk and dv of every key of the sampled heads, key by key (a wrong last
   key block hid in a norm over the head).

An approximation without a reference of its own gets check 1 only. The exact values are computed in
spot_check_exact.py.
"""

from __future__ import annotations

import random

from attnprof.checks import CHECK_LENGTH, changed_inputs, wrong_form
from attnprof.impls.base import AttentionImpl
from attnprof.inputs import CaseInputs
from attnprof.spec import Case
from attnprof.spot_check_exact import ExactRows, non_finite, rms_row_norm, row_errors

SAMPLED_ROWS = 32
# At N = 1 a gradient row is compared over at least this share of the largest exact gradient's RMS row (dq, dk, dv): the
# exact dq and dk are 0 there (a softmax over one key; cosFormer's weight cancels), and a kernel's rounding, up to 1.6
# fp32 eps of the largest gradient (every impl, fp32/fp16/bf16), read as a relative error of 5.4e+293 on Combiner-Fixed's
# rows. Only there: at every length it hid a missing dq 1e-5 of dv (a review).
GRADIENT_FLOOR = 1e-3
SAMPLED_HEADS = 4
# Per row, so a few wrong rows among many right ones cannot hide in a mean: a wrong tile gives errors of order 1.
# Correct kernels at N = 8k on the CPU (softmax, SDPA; B1 H2 D64; fwd-bwd, both causalities) stayed within 1.5e-2
# in bfloat16, 2.4e-3 in float16 and 1.7e-6 in float32 on every sampled row and gradient (dk, dv key by key); a 5% error in the
# last rows passed the 10% bound 16-bit had. An impl's own looser check bound widens these.
ROW_TOLERANCE = {"float32": 1e-3, "float16": 0.02, "bfloat16": 0.05}
GRADIENT_SLACK = 2.0  # gradients go through one more round of rounding (checks.py allows 5x at N = 256, where it is tighter)
REFERENCE_BUDGET = 2**25  # batch x heads x N^2 scores of an impl's own reference: 256 MiB in float64


def compares(impl: AttentionImpl, case: Case) -> bool:
    """Whether check 2 (and 3) apply: the impl's exact rows are affordable at this length. An exact impl's are
    softmax's rows; an impl with its own reference has them at any length from its row reference. Else an exact
    impl's whole reference while it fits REFERENCE_BUDGET; an approximation's whole reference is its own algorithm
    written the plain way, too slow to run per case (see the module docstring)."""
    if case.device == "meta":
        return False
    if impl.reference is None:
        return impl.exact
    if impl.has_row_reference:
        return True
    return impl.exact and case.batch * case.heads * case.seq_len**2 <= REFERENCE_BUDGET


class SpotCheck:
    """Reads the first output of `watching(call)`; `failure()` then judges it (and the gradients)."""

    def __init__(self, impl: AttentionImpl, case: Case, inputs: CaseInputs):
        self.impl, self.case, self.inputs = impl, case, inputs
        self.wanted = case.device != "meta"
        self.rows = sampled_rows(case.seq_len, case.seed)
        self.heads = sampled_heads(case.batch, case.heads, case.seed)
        self.seen = self.judged = False
        self.wrong: str | None = None  # what the first output's form or finiteness got wrong
        self.kept: list | None = None  # per sampled head, its sampled rows (rows, D) in float64 on the CPU
        self.note: str | None = None  # a check that could not run, said on the row

    def watching(self, call):
        """`call`, reading its first output at once (finiteness, then the sampled rows copied to the CPU) and keeping
        none of it. That first call must be measured by nothing (the CUDA memory pass's warm call, the CPU's priming
        calls): the finiteness test allocates a byte per value, and a kept output took the device's room."""

        def first_output_read():
            before = self._sampled_inputs() if self.wanted and not self.seen else None
            out = call()  # (B, H, N, D)
            if self.wanted and not self.seen and out is not None:
                self.seen = True
                self.wrong = (
                    changed_inputs(before, self._sampled_inputs()) or wrong_form(out, self.inputs.q, self.inputs.v) or non_finite(out)
                )
                if self.wrong is None and compares(self.impl, self.case):
                    self.kept = [out[b, h, self.rows].detach().cpu().double() for b, h in self.heads]  # (rows, D) each
            return out

        return first_output_read

    def _sampled_inputs(self) -> list:
        """q, k and v of the sampled heads, copied to the CPU (S, N, D) each: what a call must leave as it found it."""
        import torch

        return [
            torch.stack([t[b, h].detach().to("cpu", copy=True) for b, h in self.heads])
            for t in (self.inputs.q, self.inputs.k, self.inputs.v)
        ]

    def failure(self) -> str | None:
        """Why the first output or the gradients are wrong, or None (also when nothing applies or nothing was seen)."""
        if not self.seen or self.judged:
            return None
        self.judged = True
        at = f"failed its check at the measured length N={self.case.seq_len}"
        if self.wrong or self.kept is None:
            return f"{at}: {self.wrong}" if self.wrong else None
        compared = self._gradients_compared()  # computed with the rows at once: a row reference's work is not done twice
        expected = ExactRows(self.impl, self.case, self.inputs, self.rows, self.heads, with_grads=compared)
        tolerance = max(ROW_TOLERANCE[self.case.dtype], self.impl.check_tolerance.get(self.case.dtype, 0.0))
        try:
            for (b, h), kept in zip(self.heads, self.kept, strict=True):
                what = f"query row {{row}} of batch {b}, head {h}"
                if wrong := self._over(row_errors(kept, expected.output(b, h)), tolerance, self.rows, what, f"against {self._exact}"):
                    return f"{at}: {wrong}"
            if self.case.mode == "fwd_bwd":
                wrong = self._gradient_failure(expected, tolerance * GRADIENT_SLACK, compared)
                return f"{at}: {wrong}" if wrong else None
        except ExactRows.Unavailable as why:  # the reference raised: the impl is not to blame, and not checked here
            self.note = f"not checked against its reference at N={self.case.seq_len}: {why}"
        return None

    def _gradients_compared(self) -> bool:
        """Whether fwd_bwd compares the gradients with the exact ones: not for an impl that max-pools (Combiner) in
        16-bit inputs, whose many tied maxima the kernel and the reference may each send the gradient of to a
        different tied key, both right (a right Combiner-Mixture read dk off by 6-32% on a few key rows)."""
        return self.case.mode == "fwd_bwd" and not (self.impl.max_pools and self.case.dtype in ("float16", "bfloat16"))

    def _gradient_failure(self, expected: ExactRows, tolerance: float, compared: bool = True) -> str | None:
        """One more fwd+bwd call whose output gradient is the case's on the sampled rows of the sampled heads and
        zero elsewhere; its gradients finite, and (`compared`) against the exact ones of those rows."""
        import torch

        from attnprof.failures import classify
        from attnprof.records import Status

        q, k, v, grad_out = self.inputs.q, self.inputs.k, self.inputs.v, self.inputs.grad_out
        try:
            sparse = torch.zeros_like(grad_out)  # (B, H, N, D)
            for b, h in self.heads:
                sparse[b, h, self.rows] = grad_out[b, h, self.rows]
            self.impl.bind(self.case)(q, k, v).backward(sparse)
        except Exception as error:  # the measured call fit; with one more gradient-sized tensor it may not
            q.grad = k.grad = v.grad = None
            if classify(error)[0] is not Status.OOM:
                raise  # the impl's own failure: its row says so
            self.note = f"gradients not checked at N={self.case.seq_len}: the check's extra call ran out of memory"
            return None
        del sparse
        grads = {"q": q.grad, "k": k.grad, "v": v.grad}
        q.grad = k.grad = v.grad = None
        for name, grad in grads.items():
            # No path from this input to the output: right at N = 1 only, where the output is v whatever q and k are
            # (Combiner-Logsparse's q and k); a zero gradient there, judged against the exact one below.
            if grad is None and self.case.seq_len == 1:
                grads[name] = torch.zeros_like({"q": q, "k": k, "v": v}[name])
            elif wrong := "no gradient reached it" if grad is None else non_finite(grad):
                return f"d{name}: {wrong}"
        if not compared:
            return None
        keys = list(range(self.case.seq_len))
        one_key = self.case.seq_len == 1  # every exact dq and dk row 0 (GRADIENT_FLOOR)
        for b, h in self.heads:
            dq, dk, dv = expected.gradients(b, h)  # (rows, D), (N, D), (N, D)
            where = f"of batch {b}, head {h}"
            floor = GRADIENT_FLOOR * max(rms_row_norm(rows) for rows in (dq, dk, dv)) if one_key else 0.0
            dq_errors = row_errors(grads["q"][b, h, self.rows].cpu().double(), dq, floored=True, floor=floor)
            if wrong := self._over(dq_errors, tolerance, self.rows, f"dq row {{row}} {where}"):
                return wrong
            for name, exact in (("k", dk), ("v", dv)):  # key by key: a masked last key block is a few rows of N
                errors = row_errors(grads[name][b, h].cpu().double(), exact, floored=True, floor=floor)
                if wrong := self._over(errors, tolerance, keys, f"d{name} row {{row}} {where}", counted="key rows"):
                    return wrong
        return None

    @property
    def _exact(self) -> str:
        """What the rows are checked against, as the reason says it."""
        return "exact attention" if self.impl.reference is None else "its reference"

    def _over(self, errors, tolerance, rows, what: str, against: str | None = None, counted="sampled rows") -> str | None:
        """The first row over `tolerance`, said with how many are; None when none is."""
        over = [i for i, error in enumerate(errors) if not error <= tolerance]  # NaN is over too
        if not over:
            return None
        passed = f"; the check at N<={CHECK_LENGTH} passed" if self.case.seq_len > CHECK_LENGTH else ""
        against = against or f"against {self._exact}'s"
        first = over[0]
        return (
            f"{what.format(row=rows[first])} has relative error {_past(errors[first], tolerance)} > {tolerance:g} {against} "
            f"({len(over)} of {len(rows)} {counted} over{passed})"
        )


def _past(error: float, tolerance: float) -> str:
    """The error in as few digits as show it over the tolerance: '0.001 > 0.001' read as a contradiction."""
    for digits in (3, 6):
        text = f"{error:.{digits}g}"
        if not float(text) <= tolerance:
            return text
    return repr(error)


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
