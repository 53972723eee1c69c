"""Correct before fast: an impl is checked against its reference before any time is reported.

The check runs the impl at a small size (the case's head dim, dtype, device, causality, mode and
options; batch 1, 2 heads, N = the case length within MIN_CHECK_LENGTH..CHECK_LENGTH, once a worker for each)
against its registered reference in float64 on the CPU. Forward outputs (and, in fwd_bwd, the input gradients) must agree within the
impl's tolerance for the dtype. Fidelity, reported beside it, is the error against exact softmax.
An exact impl, or one with a row reference, is checked again at the case's own length, batch and heads, on sampled
rows (spot_check.py): the plan that is timed where an impl picks its plan by those (cosFormer's sequential CPU plan
from B H C >= 256 rows; a broken sequential backward gave `error` there while this check passed).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnprof.impls.base import AttentionImpl
from attnprof.inputs import make_inputs
from attnprof.spec import Case

CHECK_LENGTH = 256
# The check is kept for every length of a configuration, so it must say something: at N = 1 the output is v whatever q and
# k are (a wrong dq cannot show), and a sweep from N = 1 let that empty check stand for 64k (a review).
MIN_CHECK_LENGTH = 16
DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
GRADIENT_SLACK = 5.0  # gradients go through one more round of rounding: allow 5x the forward bound


@dataclass(frozen=True)
class CheckResult:
    check_error: float
    fidelity_error: float  # against exact softmax; for approximations with fidelity_options applied
    failure: str | None  # None when the impl passed


def check_key(case: Case) -> tuple:
    """What a check's result is kept for: the configuration and the length the check runs at. With the configuration
    alone, a window impl's N = 512 row stored the fidelity of a check at N = 128, where its window held every key
    (3.4e-7, against 0.63 when 512 came first): a row's figures depended on the sweep's other lengths."""
    return (case.label, case.head_dim, case.dtype, case.device, case.causal, case.mode, check_length(case.seq_len))


def check_length(seq_len: int) -> int:
    """The length a case's check runs at: its own within MIN_CHECK_LENGTH..CHECK_LENGTH."""
    return min(max(seq_len, MIN_CHECK_LENGTH), CHECK_LENGTH)


def run_check(impl: AttentionImpl, case: Case) -> CheckResult:
    import torch

    from attnprof.impls.softmax import softmax_attention

    small = case.resized(batch=1, heads=2, seq_len=check_length(case.seq_len))
    exact = make_inputs(small, device="cpu", dtype="float64")  # (1, 2, n, D) each
    tested = [t.detach().to(case.device, _dtype(case.dtype)).requires_grad_(t.requires_grad) for t in (exact.q, exact.k, exact.v)]
    before = [t.detach().clone() for t in tested]  # (1, 2, n, D) each: what the call must leave as it found it
    out = impl.bind(small)(*tested)  # (1, 2, n, D)
    wrong = changed_inputs(before, tested)
    wrong = wrong or wrong_form(out, tested[0], tested[2])
    if wrong:  # a (H, N, D) output broadcast against the reference and passed; a float64 one for float32 inputs too
        return CheckResult(check_error=float("nan"), fidelity_error=float("nan"), failure=f"failed its check at N={small.seq_len}: {wrong}")
    ref = impl.bind_reference(small)(exact.q, exact.k, exact.v)  # (1, 2, n, D)
    error = relative_error(out, ref)
    with torch.no_grad():
        # against its own reference, an exact impl whose options change what it computes is off from softmax all the
        # same: a tempered softmax (logits x2) stored its 2.5e-7 check error as its fidelity, where it is 0.497 off
        against_softmax = impl.exact and impl.reference is None
        exact_out = None if against_softmax else softmax_attention(exact.q, exact.k, exact.v, causal=case.causal)
        fidelity = error if against_softmax else _fidelity(impl, small, tested, exact_out, out)
    tolerance = impl.check_tolerance.get(case.dtype, DEFAULT_TOLERANCE[case.dtype])
    failure = None
    if not error <= tolerance:  # also catches NaN
        failure = f"failed its check against the reference at N={small.seq_len}: relative error {error:.3g} > {tolerance:g} ({case.dtype})"
    elif case.mode == "fwd_bwd":
        failure = _check_gradients(out, ref, tested, exact, tolerance * GRADIENT_SLACK, small)
    return CheckResult(check_error=error, fidelity_error=fidelity, failure=failure)


def changed_inputs(before, after) -> str | None:
    """Why the call was wrong to its inputs: q, k, v (`after`) differ from their values before it (`before`, copies
    of the same parts), or None. An impl that scaled q in place after computing its output read "query row 0 has
    relative error 0.619 against exact attention" at the measured length, its maths right (a robustness audit): the
    reference reads the inputs as changed, and every timed call sees other inputs than the first."""
    import torch

    if any(t.is_meta for t in (*before, *after)):  # no values to compare (torch.equal has no meta kernel)
        return None
    changed = [name for name, old, new in zip("qkv", before, after, strict=True) if not torch.equal(old, new.detach().to(old.device))]
    if not changed:
        return None
    return f"it changed its inputs in place ({', '.join(changed)}): an impl must leave q, k and v as it found them"


def wrong_form(out, q, v) -> str | None:
    """Why `out` is not what an impl must return for (q, k, v): a tensor shaped [batch, heads, seq_len, v's head dim],
    in q's dtype, on q's device; None when it is."""
    import torch

    if not isinstance(out, torch.Tensor):
        return f"it returned a {type(out).__name__}, not a tensor"
    expected = (*q.shape[:-1], v.shape[-1])
    if tuple(out.shape) != expected:
        return f"it returned shape {tuple(out.shape)} for inputs {tuple(q.shape)}; an impl returns [batch, heads, seq_len, head_dim]"
    if out.dtype != q.dtype:
        returned, given = (str(t.dtype).removeprefix("torch.") for t in (out, q))
        return f"it returned {returned} for {given} inputs; an impl returns its inputs' dtype"
    if out.device != q.device:
        return f"it returned a tensor on {out.device} for inputs on {q.device}"
    return None


def _fidelity(impl: AttentionImpl, small: Case, tested, exact_out, out) -> float:
    """Error against exact softmax, with the impl's fidelity_options applied (e.g. Nyström's conv off)."""
    if impl.fidelity_options:
        options = {**dict(small.options), **impl.fidelity_options}
        out = impl.bind(small.resized(options=tuple(sorted(options.items()))))(*tested)
    return relative_error(out, exact_out)


def _check_gradients(out, ref, tested, exact, tolerance, small) -> str | None:
    import torch

    grad_out = exact.grad_out  # (1, 2, n, D) float64
    out.backward(grad_out.to(out.device, out.dtype))
    ref.backward(grad_out)
    # no path from an input to the output is a zero gradient, judged as one (and said so when it is wrong)
    grad_of = lambda x: torch.zeros_like(x) if x.grad is None else x.grad  # noqa: E731
    for name, mine, theirs in zip("qkv", tested, (exact.q, exact.k, exact.v), strict=False):
        error = relative_error(grad_of(mine), grad_of(theirs))
        if not error <= tolerance:
            unreached = " (no gradient reached it)" if mine.grad is None else ""
            return (
                f"failed its gradient check against the reference at N={small.seq_len}: d{name} relative error {error:.3g} > {tolerance:g}"
                + unreached
            )
    return None


def relative_error(value, reference) -> float:
    """Relative Frobenius error ||value - reference|| / ||reference||, in float64 on the CPU."""
    import torch

    with torch.no_grad():
        value64, ref64 = value.detach().double().cpu(), reference.detach().double().cpu()
        denominator = torch.linalg.vector_norm(ref64).item() or 1.0
        return torch.linalg.vector_norm(value64 - ref64).item() / denominator


def _dtype(name: str):
    from attnprof.inputs import torch_dtype

    return torch_dtype(name)
