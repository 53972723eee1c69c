"""Correct at the measured length too: an exact impl's output at the case's own length, on a few rows, against
exact softmax attention.

The check against the reference (checks.py) runs at N = min(N, 256). A kernel that takes another path at larger
N (a tile loop, a masked last block, a split reduction) passed it and was timed while wrong. Exact softmax for a
few query rows costs O(rows x N x D) in float64, so it runs at any length: on the output of the case's first,
untimed call (no extra call of the impl), for two heads (the first and the last: a wrong batch or head stride
shows there), on the first, middle and last rows (a masked last block shows there) and rows drawn from the seed.

Only impls that compute softmax attention exactly and check against it (`exact`, no own `reference`) are checked:
an approximation's reference is its own algorithm, which has no cheap per-row form.
"""

from __future__ import annotations

import random

from attnprof.checks import CHECK_LENGTH, wrong_form
from attnprof.impls.base import AttentionImpl
from attnprof.inputs import CaseInputs
from attnprof.spec import Case

SAMPLED_ROWS = 32
# Per row, so a few wrong rows among many right ones cannot hide in a mean: a wrong tile gives errors of order
# 1, while rounding gives about 1% in bfloat16 at 64k (probabilities near 1/N, summed in fp32 by every kernel).
ROW_TOLERANCE = {"float32": 1e-2, "float16": 0.1, "bfloat16": 0.1}


def applies(impl: AttentionImpl, case: Case) -> bool:
    return impl.exact and impl.reference is None and case.device != "meta"


class SpotCheck:
    """Keeps the sampled rows of the first output of `watching(call)`; `failure()` then compares them."""

    def __init__(self, impl: AttentionImpl, case: Case, inputs: CaseInputs):
        self.case, self.inputs = case, inputs
        self.wanted = applies(impl, case)
        self.rows = sampled_rows(case.seq_len, case.seed)
        self.heads = sorted({(0, 0), (case.batch - 1, case.heads - 1)})
        self.kept: list | None = None  # per head, (rows, D) float64 on the CPU
        self.wrong: str | None = None

    def watching(self, call):
        """`call`, keeping the rows of its first output; the rows are copied out of the measured tensors."""

        def first_output_kept():
            out = call()  # (B, H, N, D)
            if self.wanted and self.kept is None and self.wrong is None and out is not None:
                self.wrong = wrong_form(out, self.inputs.q, self.inputs.v)
                if self.wrong is None:
                    self.kept = [out[b, h, self.rows].detach().cpu().double() for b, h in self.heads]  # (rows, D) each
            return out

        return first_output_kept

    def failure(self) -> str | None:
        """Why the kept rows are wrong, or None (also when nothing applies or nothing was kept)."""
        if not self.wanted or (self.kept is None and self.wrong is None):
            return None
        at = f"failed its check at the measured length N={self.case.seq_len}"
        if self.wrong:
            return f"{at}: {self.wrong}"
        tolerance = ROW_TOLERANCE[self.case.dtype]
        for (b, h), kept in zip(self.heads, self.kept, strict=True):
            errors = row_errors(kept, exact_rows(self.inputs, b, h, self.rows, self.case.causal))
            over = [i for i, error in enumerate(errors) if not error <= tolerance]  # NaN is over too
            if over:
                first = over[0]
                return (
                    f"{at}: query row {self.rows[first]} of batch {b}, head {h} has relative error {errors[first]:.3g} > {tolerance:g} "
                    f"against exact softmax ({len(over)} of {len(self.rows)} sampled rows over; the check at N<={CHECK_LENGTH} passed)"
                )
        return None


def sampled_rows(n: int, seed: int) -> list[int]:
    """The first two, the middle and the last two rows, and the rest drawn from `seed`; every row when n is small."""
    if n <= SAMPLED_ROWS:
        return list(range(n))
    fixed = {0, 1, n // 2, n - 2, n - 1}
    return sorted(fixed | set(random.Random(seed).sample(range(n), SAMPLED_ROWS - len(fixed))))


def exact_rows(inputs: CaseInputs, b: int, h: int, rows: list[int], causal: bool):
    """softmax(q_rows k^T / sqrt(D)) v in float64 on the CPU, as (rows, D): nothing is allocated on a GPU the case
    may have filled (one head's k and v, 2 N D values, are copied over at their own width, then widened)."""
    import torch

    with torch.no_grad():
        q = inputs.q[b, h, rows].detach().cpu().double()  # (rows, D)
        k, v = inputs.k[b, h].detach().cpu().double(), inputs.v[b, h].detach().cpu().double()  # (N, D) each
        scores = q @ k.T / q.shape[-1] ** 0.5  # (rows, N)
        if causal:
            future = torch.arange(k.shape[0])[None, :] > torch.as_tensor(rows)[:, None]  # (rows, N)
            scores = scores.masked_fill(future, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v  # (rows, D)


def row_errors(value, reference) -> list[float]:
    """||value_r - reference_r|| / ||reference_r|| per row."""
    import torch

    norms = torch.linalg.vector_norm(reference, dim=-1).clamp_min(1e-300)  # (rows,)
    return (torch.linalg.vector_norm(value - reference, dim=-1) / norms).tolist()
