"""Combiner's backend="triton" (Fixed, Axial and Mixture) on the CPU, through Triton's interpreter (the kernel a GPU
compiles): the fused softmax-and-values kernel against torch, the variants against the explicit N x N matrix,
outputs and gradients, their counts on `meta` and the refusals."""

from __future__ import annotations

import pytest
import torch
from combiner_helpers import naive_prefix_max

from attnprof import impls
from attnprof.accounting import account_call, op_tally
from attnprof.errors import UsageError
from attnprof.impls.combiner import TOLERANCE, combiner_attention
from attnprof.impls.reference.combiner import combiner_reference
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case

GiB = 2**30


@pytest.fixture(scope="module")
def interpreted(triton_interpreted):
    from triton.runtime.interpreter import InterpretedFunction

    from attnprof.impls.combiner import triton_kernels

    assert isinstance(triton_kernels.softmax_values_kernel, InterpretedFunction)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def expected_softmax_values(logits, values):
    weights = torch.softmax(logits.double(), dim=-1)
    return weights @ values.double(), torch.logsumexp(logits.double(), dim=-1, keepdim=True)


# ---- the kernel ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["row slice", "key slice", "contiguous", "three levels"])
def test_softmax_values_on_the_layouts_mixture_hands_it(interpreted, layout):
    """Values as Mixture slices them: a block of grid rows (its groups no longer one stride apart), a prefix of
    the keys, or whole; keys not a multiple of the tile, a head dim not a power of two, -inf logits, a row
    with one finite logit, logits of large magnitude."""
    from attnprof.impls.combiner.triton_softmax import softmax_values

    if layout == "row slice":
        values = randn(2, 1, 2, 5, 70, 24, seed=1)[1][:, :, 1:4]  # (B, H, 3 rows of 5, K, D)
    elif layout == "key slice":
        values = randn(2, 2, 3, 4, 90, 24, seed=2)[1][..., :51, :]  # (B, H, m, 51 of 90 keys, D)
    elif layout == "three levels":  # no two strides reach every group: copied once
        values = randn(3, 4, 5, 16, 8, seed=9)[:, 1:3, 1:4]
    else:
        values = randn(1, 2, 3, 130, 20, seed=3)
    logits = randn(*values.shape[:-2], 45, values.shape[-2], seed=4) * 8  # (..., M, K)
    logits[..., 3:, -7:] = float("-inf")
    logits[..., 0, 1:] = float("-inf")  # row 0: one finite logit
    out, lse = softmax_values(logits, values, True)
    expected_out, expected_lse = expected_softmax_values(logits, values)
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=1e-6, atol=1e-5)


def test_softmax_values_gradients(interpreted):
    """The backward recomputes the weights from the logits and the log-normaliser; both outputs carry gradient."""
    from attnprof.impls.combiner.triton_softmax import softmax_values

    logits = (randn(2, 3, 20, 37, seed=5) * 4).requires_grad_()
    values = randn(2, 3, 37, 16, seed=6).requires_grad_()
    out, lse = softmax_values(logits, values, True)
    grad_out, grad_lse = randn(2, 3, 20, 16, seed=7), randn(2, 3, 20, 1, seed=8)
    (out * grad_out).sum().add((lse * grad_lse).sum()).backward()
    logits64, values64 = (t.detach().double().requires_grad_() for t in (logits, values))
    expected_out, expected_lse = expected_softmax_values(logits64, values64)
    (expected_out * grad_out.double()).sum().add((expected_lse * grad_lse.double()).sum()).backward()
    torch.testing.assert_close(logits.grad.double(), logits64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values.grad.double(), values64.grad, rtol=1e-5, atol=1e-5)
    logits.grad = logits64.grad = None  # the log-normaliser alone: its gradient is the weights
    (softmax_values(logits, values, True)[1] * grad_lse).sum().backward()
    (expected_softmax_values(logits64, values64)[1] * grad_lse.double()).sum().backward()
    torch.testing.assert_close(logits.grad.double(), logits64.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("band", [None, (1, 1, 70), (0, 1, 3, 1, 2), (0, 0, 60, 1)], ids=["none", "triangle", "own block", "empty"])
def test_softmax_values_from_queries_and_keys(interpreted, band):
    """softmax_values_qk forms the logits in the kernel: against softmax(q k^T) v in float64, a head dim of 24 (padded
    tiles), keys past one tile and not a multiple of it, rows left with no key (band "empty": row r drops keys [0, 60 + r),
    so rows 30..44 keep none: out 0, lse -inf, and the backward zeroes their weights from finite recomputed logits);
    outputs, log-normalisers and the gradients of queries, keys and values (the backward forms the logits again)."""
    from attnprof.impls.combiner.triton_softmax import Band, softmax_values_qk

    queries, keys, values = (randn(2, 3, rows, width, seed=seed) for rows, width, seed in ((45, 24, 31), (90, 24, 32), (90, 20, 33)))
    queries = queries.requires_grad_()
    keys, values = keys.requires_grad_(), values.requires_grad_()
    out, lse = softmax_values_qk(queries, keys, values, True, None if band is None else Band(*band))
    grad_out, grad_lse = randn(2, 3, 45, 20, seed=34), randn(2, 3, 45, 1, seed=35)
    finite = torch.isfinite(lse)
    (out * grad_out).sum().add((lse.masked_fill(~finite, 0.0) * grad_lse).sum()).backward()
    leaves = [t.detach().double().requires_grad_() for t in (queries, keys, values)]
    logits = leaves[0] @ leaves[1].transpose(-2, -1)
    masked, empty = banded(logits, band) if band is not None else (logits, torch.zeros(45, 1, dtype=torch.bool))
    weights = torch.softmax(masked, dim=-1).nan_to_num(0.0)  # a row with no key: out 0
    expected_out, expected_lse = weights @ leaves[2], torch.logsumexp(masked, dim=-1, keepdim=True)
    assert torch.equal(finite, ~empty.expand_as(finite))
    assert int(empty.sum()) == (6 * 15 if band == (0, 0, 60, 1) else 0)  # 15 rows of each of the 6 groups
    (expected_out * grad_out.double()).sum().add((expected_lse.masked_fill(empty, 0.0) * grad_lse.double()).sum()).backward()
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double()[finite], expected_lse[finite], rtol=1e-6, atol=1e-5)
    for mine, theirs in zip((queries, keys, values), leaves, strict=True):  # fp32 sums of 90 keys: up to 1.15e-5 measured
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-5, atol=3e-5)


def test_softmax_values_from_queries_and_keys_reads_views_at_their_strides(interpreted):
    """Queries transposed as Axial's region part hands them ((B, H, m, rows, E) of a (B, H, rows, m, E) tensor: groups at
    two strides), keys shared by the groups of one dim (expanded, stride 0) and narrower than their tensor, values
    contiguous: each with its own two levels of groups, read where they are (counted on meta: the op writes its outputs
    alone, no copy)."""
    from attnprof.accounting import op_tally
    from attnprof.impls.combiner.triton_softmax import Band, softmax_values_qk

    def views(bases):
        queries, keys, values = bases
        # (B, H, 5, 40, E): rows of 40 queries at stride 5 E; (B, H, 5, 70, E) from one head's keys, 24 of 32 channels
        return queries.transpose(-3, -2), keys[..., :24].expand(2, 3, 5, 70, 24), values

    bases = [randn(2, 3, 40, 5, 24, seed=51), randn(2, 1, 1, 70, 32, seed=52), randn(2, 3, 5, 70, 20, seed=53)]
    queries, keys, values = views(bases)
    out, lse = softmax_values_qk(queries, keys, values, True, Band(1, 1, 70))
    logits = queries.double() @ keys.double().transpose(-2, -1)  # (B, H, 5, 40, 70)
    masked, _ = banded(logits, (1, 1, 70))
    expected_out, expected_lse = expected_softmax_values(masked, values)
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=1e-6, atol=1e-5)
    on_meta = views([torch.empty_like(t, device="meta") for t in bases])
    with op_tally() as tally:
        softmax_values_qk(*on_meta, True)
    assert tally.bytes_written == 4 * (out.numel() + lse.numel())  # nothing copied


def test_softmax_values_from_queries_and_keys_refuses_mismatched_shapes():
    """Keys narrower than the queries, or values for another count of keys, would have the kernel read past their rows."""
    from attnprof.impls.combiner.triton_softmax import softmax_values_qk

    queries, keys, values = torch.empty(1, 4, 16), torch.empty(1, 9, 8), torch.empty(1, 9, 8)
    with pytest.raises(ValueError, match=r"not \(1, 4, 16\), \(1, 9, 8\), \(1, 9, 8\)"):
        softmax_values_qk(queries, keys, values, True)
    with pytest.raises(ValueError, match="E <= 128"):
        softmax_values_qk(torch.empty(1, 4, 16), torch.empty(1, 9, 16), torch.empty(1, 7, 8), True)


BANDS = {  # (rows, keys, band): a causal triangle spanning several 64 x 64 tiles, a band that grows by
    # a step of 3 (Mixture's column part), one with a divisor (Combiner's regions over blocks of queries), rows
    # left with no key
    "triangle": (130, 200, (1, 1, 200)),
    "steps of 3": (40, 150, (30, 3, 150)),
    "own block": (150, 19, (0, 1, 1, 1, 8)),
    "empty rows": (100, 90, (0, 0, 1, 1)),
}


def banded(logits, band):
    """The logits with the band's keys at -inf (float64), and the rows that keep no key."""
    from attnprof.impls.combiner.triton_softmax import Band

    start, start_step, end, end_step, divisor = Band(*band).as_ints()
    row = torch.arange(logits.shape[-2])[:, None]
    key = torch.arange(logits.shape[-1])
    dropped = (key >= start + start_step * row // divisor) & (key < end + end_step * row // divisor)
    masked = logits.double().masked_fill(dropped, float("-inf"))
    return masked, torch.isneginf(masked).all(-1, keepdim=True)


@pytest.mark.parametrize("case", list(BANDS))
def test_softmax_values_drops_the_band(interpreted, case):
    """The band's keys weigh nothing, as if their logits were -inf (they hold large values here: read, they would
    dominate); a row with no key left gives out 0 and lse -inf; the backward's weights drop the same keys."""
    from attnprof.impls.combiner.triton_softmax import Band, softmax_values

    rows, keys, band = BANDS[case]
    logits = (randn(2, 3, rows, keys, seed=31) * 4 + 50 * (torch.arange(keys) % 2)).requires_grad_()
    values = randn(2, 3, keys, 24, seed=32).requires_grad_()
    masked, empty = banded(logits.detach(), band)
    assert empty.any() if case == "empty rows" else not empty.any(), "the case covers what it says"
    out, lse = softmax_values(logits, values, True, Band(*band))
    kept = masked.masked_fill(empty, 0.0)  # empty rows: any finite logits, their result is replaced below
    expected_out, expected_lse = expected_softmax_values(kept, values.detach())
    expected_out, expected_lse = expected_out.masked_fill(empty, 0.0), expected_lse.masked_fill(empty, float("-inf"))
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=1e-6, atol=1e-5)
    grad_out, grad_lse = randn(2, 3, rows, 24, seed=33), randn(2, 3, rows, 1, seed=34).masked_fill(empty, 0.0)
    (out * grad_out).sum().add((lse.masked_fill(empty, 0.0) * grad_lse).sum()).backward()
    logits64 = kept.clone().requires_grad_()
    values64 = values.detach().double().requires_grad_()
    reference_out, reference_lse = expected_softmax_values(logits64, values64)
    (reference_out.masked_fill(empty, 0.0) * grad_out.double()).sum().add((reference_lse * grad_lse.double()).sum()).backward()
    expected_grad = torch.nan_to_num(logits64.grad).masked_fill(torch.isneginf(masked), 0.0)  # dropped keys: no gradient
    torch.testing.assert_close(logits.grad.double(), expected_grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values.grad.double(), values64.grad, rtol=1e-5, atol=1e-5)


SCANS = {  # shape, dim, reverse, padded
    "long": ((2, 70, 3, 5), 1, False, False),
    "long, reversed, padded": ((2, 70, 3, 5), 1, True, True),
    "wide": ((1, 33, 2, 150), 1, False, True),
    "wide, reversed": ((1, 33, 2, 150), 1, True, False),
    "inner axis, many groups": ((1, 11, 40, 4), 2, False, True),
    "inner axis, reversed": ((1, 11, 40, 4), 2, True, False),
    "one position": ((1, 1, 1, 2), 1, True, True),
}


@pytest.mark.parametrize("case", list(SCANS))
def test_the_triton_running_max_matches_a_plain_loop(interpreted, case):
    """Mixture's backend=triton scan (scan.prefix_max method "triton"): outer groups past one block of 8 (2 x 70),
    inner widths past one block (2 x 150 = 300 columns), a single position; a padded tail gives -inf prefixes,
    written as 0. Exact, gradients included (recomputed through cummax)."""
    shape, dim, reverse, padded = SCANS[case]
    from attnprof.impls.combiner.scan import prefix_max

    x = randn(*shape, seed=41, dtype=torch.float64).requires_grad_()
    cells = shape[1] * shape[2]
    valid = (torch.arange(cells).view(shape[1], shape[2], 1) < max(1, cells * 4 // 5)) if padded else None
    expected = naive_prefix_max(x, dim, reverse, valid)
    out = prefix_max(x, dim, reverse=reverse, valid=valid, method="triton")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if expected.requires_grad:  # one position: nothing precedes, the result is constant
        grad = randn(*shape, seed=42, dtype=torch.float64)
        expected_grad = torch.autograd.grad(expected, x, grad)[0]
        torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], expected_grad, rtol=1e-12, atol=1e-12)


# ---- the variants ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["fixed", "axial", "mixture"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("n", "block", "dim"), [(50, 8, 16), (37, 16, 16), (100, None, 16), (20, 32, 16), (45, 8, 80), (64, 8, 16)])
def test_variant_matches_the_explicit_matrix_with_its_gradients(interpreted, variant, causal, n, block, dim):
    """Ragged grids, one block or one row (block 32 > n = 20: Fixed's queries then have no region, Axial's no row
    summary, Mixture's no column key), a head dim whose values and keys do not fit one accumulator together (80:
    Axial's row attention in two launches), a grid with no padding (64 = 8 x 8: Fixed's direct part forms its logits
    in the kernel): outputs and gradients of fp32 inputs against the float64 effective matrix. Measured, the largest
    absolute difference of a case, over the cases and both causalities: outputs 2.0-5.9e-7 (Fixed), 2.0-5.4e-7 (Axial),
    2.0e-7-1.0e-6 (Mixture); gradients 4.3e-7-1.8e-6 (Fixed), 3.8e-7-1.2e-6 (Axial), 3.4e-7-1.1e-6 (Mixture)."""
    # one batch of two heads: Triton's interpreter runs the programs one by one (with two batches of two heads this test
    # took 117 s, the file 190 s; the file now 70 s). The forward-only test below takes two batches of one head
    q, k, v = (randn(1, 2, n, dim, seed=seed, dtype=torch.float64) for seed in (11, 12, 13))
    grad = randn(1, 2, n, dim, seed=14, dtype=torch.float64)
    leaves64 = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = combiner_reference(*leaves64, variant=variant, causal=causal, block_size=block)
    expected.backward(grad)
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    out = combiner_attention(*leaves, variant=variant, causal=causal, block_size=block, backend="triton")
    out.backward(grad.float())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(leaves, leaves64, strict=True):
        # fp32 rounding grows with the head dim's sums: 1.3e-6 at d = 80 (Mixture, causal), under 1e-6 at 16
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-6 * dim / 16)


@pytest.mark.parametrize("variant", ["fixed", "axial", "mixture"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("n", "block"), [(64, 8), (45, 8)], ids=["whole grid", "padded"])
def test_variant_without_gradients_matches_the_explicit_matrix(interpreted, variant, causal, n, block):
    """Forward only (as the sweep times it): Axial forms the logits of its row attention and direct part in the kernel
    when no gradient is wanted and no row is padded, and shares one logits tensor otherwise."""
    q, k, v = (randn(2, 1, n, 16, seed=seed, dtype=torch.float64) for seed in (41, 42, 43))  # (B, H, N, D)
    expected = combiner_reference(q, k, v, variant=variant, causal=causal, block_size=block)
    with torch.no_grad():
        out = combiner_attention(q.float(), k.float(), v.float(), variant=variant, causal=causal, block_size=block, backend="triton")
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["fixed", "axial", "mixture"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_bf16_stays_within_its_tolerance(interpreted, variant, causal):
    q, k, v = (randn(1, 1, 300, 32, seed=seed).to(torch.bfloat16) for seed in (21, 22, 23))  # one head: the interpreter is slow
    expected = combiner_reference(q.double(), k.double(), v.double(), variant=variant, causal=causal)
    out = combiner_attention(q, k, v, variant=variant, causal=causal, backend="triton")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert float((out.double() - expected).norm() / expected.norm()) < TOLERANCE["bfloat16"]


# ---- counted on meta (the plan a GPU runs) ------------------------------------------------------------


def case_64k(variant: str, causal: bool, mode: str, backend: str) -> Case:
    return Case(impl=f"combiner-{variant}", seq_len=65536, heads=16, head_dim=64, dtype="bfloat16", causal=causal, mode=mode,
                options=(("backend", backend),))  # fmt: skip


def moved_gb(case: Case) -> float:
    call = make_call(impls.get(case.impl).bind(case), make_inputs(case, device="meta"))
    with op_tally() as tally:
        call()
    return (tally.bytes_read + tally.bytes_written) / 1e9


@pytest.mark.parametrize(("causal", "eager_gb", "max_gb"), [(True, 72.2, 37), (False, 85.0, 41.5)], ids=["causal", "bidir"])
def test_the_fused_softmaxes_move_a_third_fewer_bytes_forward(causal, eager_gb, max_gb):
    """N = 65536, B = 1, H = 16, bf16, forward: 36.6 GB causal and 41.2 GB bidirectional counted, against the eager
    plan's 72.2 and 85.0: the weights of the logit parts and of the summaries are never written, nor read for the
    row maximum and the product (fusing the parts alone: 58.6 and 65.5), the causal triangles are dropped in the
    kernel instead of filled (53.7 and 59.1 with the fills), each running max is one kernel (46.8 and 54.8 with
    the blocked scan), and the summaries' logits are formed in the kernel (41.4 and 47.6 written and read back)."""
    assert moved_gb(case_64k("mixture", causal, "fwd", "eager")) == pytest.approx(eager_gb, abs=0.1)
    assert moved_gb(case_64k("mixture", causal, "fwd", "triton")) <= max_gb


FUSED_PARTS = {  # variant, mode: (eager bidirectional, eager causal, triton at most), GB moved
    ("fixed", "fwd"): (25.6, 27.7, 7.0),
    ("fixed", "fwd_bwd"): (91.3, 95.6, 60),
    ("axial", "fwd"): (32.0, 34.2, 9.0),
    ("axial", "fwd_bwd"): (84.4, 88.7, 87),
}


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("variant", "mode"), list(FUSED_PARTS))
def test_fused_parts_move_under_half_the_bytes_forward(variant, mode, causal):
    """N = 65536, B = 1, H = 16, bf16, counted, backend=triton: Fixed forward 6.81 GB both ways, forward + backward
    57.6 bidirectional and 59.7 causal; Axial 8.93 both ways (its region part's queries and keys read as the
    transposed views they are: 10.0 when copied to one group stride), and 83.6 and 85.7 (with the logits written and read
    back, before softmax_values_qk: Fixed 11.1, 59.4 and 61.6; Axial 14.8, 84.1 and 86.3). The eager joint softmax
    (masked fills, max, shift, exponentiate, sum, in place): the figures in FUSED_PARTS."""
    eager_bidir, eager_causal, most = FUSED_PARTS[variant, mode]
    assert moved_gb(case_64k(variant, causal, mode, "eager")) == pytest.approx(eager_causal if causal else eager_bidir, abs=0.1)
    assert moved_gb(case_64k(variant, causal, mode, "triton")) <= most


TABLE_1 = {("fixed", "fwd"): 8, ("fixed", "fwd_bwd"): 24, ("axial", "fwd"): 16, ("axial", "fwd_bwd"): 48, ("mixture", "fwd"): 16,
           ("mixture", "fwd_bwd"): 48}  # fmt: skip  # GiB at most


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("variant", "mode", "limit_gib"), [(*key, limit) for key, limit in TABLE_1.items()])
def test_peaks_stay_within_table_1(variant, causal, mode, limit_gib):
    """Counted: Mixture forward 5.3 GiB causal and 8.0 GiB bidirectional, forward + backward 19.3 and 24.7 GiB;
    Fixed 2.0 and 4.4 GiB both ways (eager: 3.3 and 8.1); Axial 2.5 and 7.6 both ways (eager: 4.0 and 7.9)."""
    case = case_64k(variant, causal, mode, "triton")
    peak = account_call(make_call(impls.get(case.impl).bind(case), make_inputs(case, device="meta"))).peak_bytes
    assert peak <= limit_gib * GiB


# ---- refusals --------------------------------------------------------------------------------------


def test_refusals(monkeypatch):
    with pytest.raises(UsageError, match="is for combiner-fixed, combiner-axial and combiner-mixture .*, not combiner-logsparse"):
        impls.get("combiner-logsparse").resolve_options({"backend": "triton"})
    mixture = impls.get("combiner-mixture")
    assert mixture.resolve_options({"backend": "triton"}) == {"block_size": None, "backend": "triton"}
    cpu = Case(impl="combiner-mixture", seq_len=1024, device="cpu", options=(("backend", "triton"),))
    assert mixture.not_supported(cpu) == ["combiner-mixture backend=triton runs on CUDA, not cpu (Triton kernels)"]
    assert mixture.not_supported(cpu.resized(device="meta")) == []
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(ValueError, match="runs on CUDA .* not cpu"):
        combiner_attention(q, q, q, variant="mixture", backend="triton")
    wide = Case(impl="combiner-mixture", seq_len=1024, head_dim=256, device="cuda", options=(("backend", "triton"),))
    assert mixture.not_supported(wide) == ["combiner-mixture backend=triton handles head dims up to 128, not 256"]
    with pytest.raises(ValueError, match="head dims up to 128, not 256"):
        combiner_attention(*(torch.empty(1, 1, 16, 256, device="meta") for _ in range(3)), variant="mixture", backend="triton")
    with pytest.raises(ValueError, match="not torch.float64"):
        combiner_attention(*(q.double().to("meta") for _ in range(3)), variant="mixture", backend="triton")


@pytest.mark.parametrize("from_queries", [False, True], ids=["from logits", "from queries and keys"])
def test_softmax_values_refuse_a_second_derivative(interpreted, from_queries):
    """Their backwards are written by hand: create_graph=True raises rather than return gradients with no graph."""
    from attnprof.impls.combiner.triton_softmax import softmax_values, softmax_values_qk

    values = randn(1, 2, 30, 8, seed=6).requires_grad_()
    if from_queries:
        queries, keys = randn(1, 2, 10, 8, seed=3).requires_grad_(), randn(1, 2, 30, 8, seed=4)
        out, _ = softmax_values_qk(queries, keys, values, True)
        wrt = queries
    else:
        wrt = randn(1, 2, 10, 30, seed=5).requires_grad_()
        out, _ = softmax_values(wrt, values, True)
    with pytest.raises(RuntimeError, match=r"no derivative: create_graph=True \(a second derivative\) is not supported"):
        torch.autograd.grad(out.sum(), wrt, create_graph=True)
    assert torch.isfinite(torch.autograd.grad(out.sum(), wrt)[0]).all()
