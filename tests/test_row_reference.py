"""The check at the measured length for impls with a reference of their own: approximations too (their reference is
their own algorithm computed the plain way), and at any length through a row reference (cosFormer's)."""

import dataclasses
import re

import pytest
import torch
from small_sweeps import small_sweep

import attnprof.spot_check
from attnprof import impls
from attnprof.api import run_sweep
from attnprof.impls.reference.combiner import combiner_reference
from attnprof.impls.reference.combiner_rows import combiner_rows
from attnprof.impls.reference.cosformer import cosformer_reference, cosformer_rows
from attnprof.impls.reference.nystromformer import nystrom_reference
from attnprof.impls.reference.nystromformer_rows import nystrom_rows
from attnprof.inputs import make_call, make_inputs
from attnprof.records import Status
from attnprof.spec import Case
from attnprof.spot_check import SpotCheck
from attnprof.store import Store


@pytest.mark.parametrize("causal", [False, True])
def test_cosformer_rows_are_the_dense_references_rows_values_and_gradients(causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(700, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))  # (N, D) one head
    rows = [0, 1, 350, 698, 699]
    dense = cosformer_reference(q[None, None], k[None, None], v[None, None], causal=causal)[0, 0, rows]  # (R, D)
    grads = torch.autograd.grad(dense.square().sum(), (q, k, v))
    sampled = cosformer_rows(q, k, v, rows, causal=causal)  # (R, D)
    torch.testing.assert_close(sampled, dense, rtol=1e-12, atol=1e-12)
    for theirs, mine in zip(grads, torch.autograd.grad(sampled.square().sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
    # more queries than keys (cross-attention): the reference's M is max(Nq, Nk); the rows took Nk (0.24 off, an audit)
    short_k, short_v = k[:10].detach(), v[:10].detach()  # (10, D)
    dense = cosformer_reference(q[None, None], short_k[None, None], short_v[None, None], causal=causal)[0, 0, rows]  # (R, D)
    torch.testing.assert_close(cosformer_rows(q, short_k, short_v, rows, causal=causal), dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["fixed", "axial", "logsparse", "mixture"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_combiner_rows_are_the_whole_oracles_rows_values_and_gradients(variant, causal):
    """Built for the sampled rows alone (their plan, the regions they see, summaries from member tables), at lengths
    that pad the last block or row (300, 257 at blocks of 16) and at one block only (5)."""
    torch.manual_seed(1)
    for n, block in ((300, None), (257, 16), (5, None)):
        q, k, v = (torch.randn(n, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))  # (N, D) one head
        rows = sorted({0, 1, n // 2, n - 2, n - 1})
        whole = combiner_reference(q[None, None], k[None, None], v[None, None], causal=causal, variant=variant, block_size=block)
        expected = whole[0, 0, rows]  # (R, D)
        sampled = combiner_rows(q, k, v, rows, causal=causal, variant=variant, block_size=block)  # (R, D)
        torch.testing.assert_close(sampled, expected, rtol=1e-12, atol=1e-12)
        theirs, mine = (torch.autograd.grad(out.square().sum(), (q, k, v)) for out in (expected, sampled))
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pinv_init", ["reference", "per-head"])
def test_nystrom_rows_are_the_whole_references_rows_values_and_gradients(pinv_init):
    """From the whole inputs, as the heads are coupled (pinv_init="reference": one scale over every batch item and head),
    at a length of two segment sizes (700 at m = 32), one of equal segments (640), m itself (exact softmax) and 1."""
    torch.manual_seed(2)
    heads = [(0, 0), (0, 2), (1, 1)]
    for n in (700, 640, 32, 1):
        q, k, v = (torch.randn(2, 3, n, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))  # (B, H, N, D)
        rows = sorted({0, 1, n // 2, n - 1} & set(range(n)))
        for conv_weight in (None, torch.randn(3, 1, 5, 1, dtype=torch.float64)):  # (H, 1, taps, 1)
            options = dict(num_landmarks=32, conv_weight=conv_weight, pinv_init=pinv_init)
            whole = nystrom_reference(q, k, v, **options)  # (B, H, N, D)
            expected = torch.stack([whole[b, h, rows] for b, h in heads])  # (S, R, D)
            sampled = nystrom_rows(q, k, v, heads, rows, **options)  # (S, R, D)
            torch.testing.assert_close(sampled, expected, rtol=1e-12, atol=1e-12)
            theirs, mine = (torch.autograd.grad(out.square().sum(), (q, k, v)) for out in (expected, sampled))
            for a, b in zip(mine, theirs, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the coupling is real here: head (0, 0) alone, its pinv started from its own largest column sum, is another output
    q, k, v = (torch.randn(2, 3, 700, 16, dtype=torch.float64) for _ in range(3))
    alone = nystrom_rows(q[:1, :1], k[:1, :1], v[:1, :1], [(0, 0)], [0, 699], num_landmarks=32, pinv_init=pinv_init)[0]
    coupled = nystrom_rows(q, k, v, [(0, 0)], [0, 699], num_landmarks=32, pinv_init=pinv_init)[0]
    assert torch.equal(alone, coupled) == (pinv_init == "per-head"), (alone - coupled).abs().max()


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_nystromformer_is_checked_by_its_rows_at_its_own_length(mode):
    """It had the finiteness check only past N = 256 (its landmarks pool every query, and its whole reference took 68 s
    for a fwd-bwd case at N = 64k, H 16 here): a Nyström kernel wrong past the check length was timed as ok. Its
    coupled row reference (the rows of the sampled heads from the whole inputs) judges it at its own length."""
    nystrom = impls.get("nystromformer")
    case = Case("nystromformer", 2048, heads=4, head_dim=16, mode=mode)
    failure, spot = spot_failure(nystrom, case)
    assert failure is None and spot.note is None and spot.kept is not None, failure  # compared, and right
    failure, _ = spot_failure(dataclasses.replace(nystrom, fn=last_rows_high(nystrom.fn)), case)
    last_64 = r"query row (198[4-9]|199\d|20[0-4]\d) of batch 0, head 0 has relative error 0.05 > 0.001 against its reference"
    assert failure and re.search(last_64, failure) and "the check at N<=256 passed" in failure, failure
    unchecked = dataclasses.replace(nystrom, fn=last_rows_high(nystrom.fn), coupled_row_reference=None)
    assert spot_failure(unchecked, case)[0] is None  # without the rows: finiteness only, as before


def spot_failure(impl, case):
    """The spot check of one case in this process: the first call's output read, then judged (values, gradients)."""
    inputs = make_inputs(case)
    spot = SpotCheck(impl, case, inputs)
    spot.watching(make_call(impl.bind(case), inputs))()
    return spot.failure(), spot


def last_rows_high(fn):
    """An impl whose last 64 query rows are 5% high: wrong only past the check at N = 256, as a wrong carry is."""

    def wrong(q, k, v, **kwargs):
        out = fn(q, k, v, **kwargs)  # (B, H, N, D)
        return torch.cat([out[..., :-64, :], out[..., -64:, :] * 1.05], dim=-2) if q.shape[-2] > 256 else out

    return wrong


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_cosformer_is_checked_by_its_rows_beyond_the_whole_references_budget(monkeypatch, mode):
    """Beyond REFERENCE_BUDGET the whole reference is not run; an approximation was then checked for finite values
    only, and a kernel wrong past N = 256 was timed as ok. cosFormer's row reference checks it at any length."""
    monkeypatch.setattr(attnprof.spot_check, "REFERENCE_BUDGET", 0)  # N = 3000 is within it; the rows must do it alone
    cosformer = impls.get("cosformer")
    for causal in (False, True):
        case = Case("cosformer", 3000, heads=2, head_dim=16, causal=causal, mode=mode)
        failure, spot = spot_failure(cosformer, case)
        assert failure is None and spot.note is None and spot.kept is not None, failure  # compared, and right
        wrong = dataclasses.replace(cosformer, fn=last_rows_high(cosformer.fn))
        failure, _ = spot_failure(wrong, case)
        rows = r"query row (29[3-9]\d) of batch 0, head 0 has relative error 0.05 > 0.001 against its reference"
        assert failure and re.search(rows, failure) and "the check at N<=256 passed" in failure, failure
        unchecked = dataclasses.replace(wrong, row_reference=None)  # without the rows: finiteness only, as before
        assert spot_failure(unchecked, case)[0] is None


def test_an_approximation_wrong_beyond_the_check_length_is_caught_at_its_own_length(db):
    """An approximation with its own reference got only the finiteness check at its measured length: one wrong from
    N = 512 on was timed as ok. Its row reference now judges it there, as softmax's rows judge an exact impl."""
    sweep = small_sweep("approx,approx:wrong_from=512", lengths=(256, 512), causal=(False, True), mode=("fwd", "fwd_bwd"))
    run_id = run_sweep(sweep, db)
    rows = {(m.case.label, m.case.seq_len, m.case.causal, m.case.mode): m for m in Store.open(db, create=False).measurements(run_id)}
    for (label, n, causal, mode), m in rows.items():
        if label == "approx[wrong_from=512]" and n == 512:
            assert m.status == Status.ERROR and m.times_ms == [], (causal, mode, m.reason)
            assert m.reason.startswith("failed its check at the measured length N=512: query row"), m.reason
            assert "relative error 0.05 > 0.001 against its reference (" in m.reason, m.reason
        else:
            assert m.status == Status.OK, (label, n, causal, mode, m.reason)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_cosformers_gpu_plan_in_bfloat16_passes_its_rows_at_length(monkeypatch, causal):
    """The plan a GPU takes (device-sized steps, bf16 operands with fp32 sums), taken on the CPU: at N = 16384 (two
    causal steps of 8192 at B1 H2) its worst sampled row is 0.3% off its reference (measured at 32k: 0.28%), within
    bf16's 5%, and its gradients pass: the row check must not fail a right kernel where table 3 is measured."""
    import attnprof.impls.cosformer.bidirectional as cosformer_bidirectional
    import attnprof.impls.cosformer.causal as cosformer_causal
    import attnprof.impls.cosformer.common as cosformer_common

    monkeypatch.setattr(cosformer_common, "CPU_STEP_ROWS", cosformer_common.DEVICE_STEP_ROWS)
    for module in (cosformer_bidirectional, cosformer_causal):
        monkeypatch.setattr(module, "half_products", lambda *tensors: tensors[0].dtype == torch.bfloat16)
    case = Case("cosformer", 16384, heads=2, head_dim=64, dtype="bfloat16", causal=causal, mode="fwd_bwd")
    failure, spot = spot_failure(impls.get("cosformer"), case)
    assert failure is None and spot.note is None and spot.kept is not None, failure


@pytest.mark.parametrize("name", ["combiner-fixed", "combiner-mixture"])
def test_combiner_is_checked_by_its_rows_at_its_own_length(monkeypatch, name):
    """The rows alone judge it (the whole oracle's budget set to 0): a Combiner right in the first 256 rows and wrong
    after them was timed as ok. (At N = 2048, B1 H2, forward: the whole oracle 0.19 s Fixed, 1.9 s Mixture; the
    sampled rows of both heads 0.01 and 0.05 s.)"""
    monkeypatch.setattr(attnprof.spot_check, "REFERENCE_BUDGET", 0)
    impl = impls.get(name)
    case = Case(name, 2048, heads=2, head_dim=16, causal=True, mode="fwd_bwd")
    failure, spot = spot_failure(impl, case)
    assert failure is None and spot.note is None and spot.kept is not None, failure
    failure, _ = spot_failure(dataclasses.replace(impl, fn=last_rows_high(impl.fn)), case)
    last_64 = r"query row (198[4-9]|199\d|20[0-4]\d) of batch 0, head 0 has relative error 0.05 > 0.001 against its reference"
    assert failure and re.search(last_64, failure), failure


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_right_combiner_in_16_bit_passes_though_its_tied_maxima_send_gradients_elsewhere(dtype):
    """16-bit inputs tie often, and a max-pool's gradient at tied maxima may go to either key: a right Combiner-Mixture
    read "dk row ... relative error 0.06-0.13 > 0.04-0.1" against its reference's at N = 512 (a review). Its
    gradients are compared in float32 only; its rows, and finite gradients, still in 16-bit."""
    impl = impls.get("combiner-mixture")
    for causal in (False, True):
        case = Case("combiner-mixture", 512, heads=4, head_dim=64, dtype=dtype, causal=causal, mode="fwd_bwd")
        failure, spot = spot_failure(impl, case)
        assert failure is None and spot.kept is not None, failure


@pytest.mark.parametrize("name", ["cosformer", "combiner-fixed", "combiner-logsparse", "softmax"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_token_passes_both_checks_though_dq_and_dk_are_zero(name, dtype):
    """At N = 1 the output is v whatever q and k are: the exact dq and dk are 0 (or 1e-16 of dv), and a kernel's rounding
    read as a relative error of 1e+08 (cosFormer), 5e+293 (Combiner-Fixed's rows), or as no gradient at all (Logsparse):
    the check at N = 1, kept for the configuration, marked every length of a sweep from N = 1 an error."""
    from attnprof.checks import run_check

    impl = impls.get(name)
    for causal in (False, True):
        case = Case(name, 1, heads=2, head_dim=16, dtype=dtype, causal=causal, mode="fwd_bwd")
        assert run_check(impl, case).failure is None
        failure, spot = spot_failure(impl, case)
        assert failure is None and spot.kept is not None, failure


def test_one_token_still_catches_a_missing_value_gradient():
    """The floor is a share of the largest exact gradient (dv at N = 1), so a dv that never arrives still fails."""
    from attnprof.checks import run_check

    case = Case("fault", 1, heads=2, head_dim=16, causal=True, mode="fwd_bwd", options=(("kind", "no_dv"),))
    failure = run_check(impls.get("fault"), case).failure
    assert failure is not None and "dv relative error" in failure, failure


def test_the_check_of_a_one_token_case_runs_at_sixteen():
    """The check is kept for every length of a configuration: at N = 1, where a wrong dq cannot show, it let an impl
    right only at N = 1 pass for all of a sweep from N = 1 (a review). It runs at MIN_CHECK_LENGTH instead."""
    from attnprof.checks import MIN_CHECK_LENGTH, run_check

    case = Case("fault", 1, heads=2, head_dim=16, options=(("at_length", 2), ("kind", "off")))  # right at N = 1 only
    failure = run_check(impls.get("fault"), case).failure
    assert MIN_CHECK_LENGTH == 16 and failure and failure.startswith("failed its check against the reference at N=16"), failure


def test_a_missing_dq_that_is_truly_small_is_still_caught():
    """Logits scaled by 1e-5 make the exact dq about 1e-5 of dv: a floor on the gradients' scale at every length (it is for
    N = 1 only) passed a dq that never arrived (a review)."""
    from fake_impls import SCALED_OPTIONS, scaled_attention, scaled_reference

    from attnprof.checks import run_check
    from attnprof.impls.base import AttentionImpl

    no_dq = AttentionImpl(name="scaled", family="test", fn=lambda q, k, v, **options: scaled_attention(q.detach(), k, v, **options),
                          description="test-only: dq never arrives", options=dict(SCALED_OPTIONS), reference=scaled_reference)  # fmt: skip
    for n in (2, 64):
        case = Case("scaled", n, heads=2, head_dim=16, dtype="bfloat16", causal=True, mode="fwd_bwd", options=(("scale", 1e-5),))
        failure = run_check(no_dq, case).failure
        assert failure and "dq relative error 1 >" in failure and failure.endswith("(no gradient reached it)"), failure
        failure, _ = spot_failure(no_dq, case)
        assert failure and "dq" in failure, failure
