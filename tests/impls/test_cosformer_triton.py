"""cosFormer's backend="triton" on the CPU, through Triton's interpreter (the same kernels a GPU compiles):
against float64, against the eager plan, its backward, its counts on `meta` and its refusals."""

from __future__ import annotations

import pytest
import torch
from cosformer_helpers import qkv, rel_error

from attnprof import impls
from attnprof.accounting import account_call, op_tally
from attnprof.impls.cosformer import cosformer_attention, cosformer_flops, triton_plan
from attnprof.impls.reference.cosformer import cosformer_reference
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case

GiB = 2**30


@pytest.fixture(scope="module")
def interpreted(triton_interpreted):
    from triton.runtime.interpreter import InterpretedFunction

    from attnprof.impls.cosformer import triton_kernels

    assert isinstance(triton_kernels.causal_out_kernel, InterpretedFunction)


def triton_out(q, k, v, causal, **options):
    return cosformer_attention(q, k, v, causal=causal, backend="triton", **options)


# ---- correct first ---------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("shape", [(2, 3, 100, 16, 16), (1, 2, 300, 48, 40), (1, 1, 257, 64, 64), (1, 2, 1, 24, 8)])
def test_float32_matches_the_reference_element_by_element(interpreted, causal, shape):
    """Ragged lengths, head dims that are not powers of two, dv != d, a single position: every element agrees
    (an unwritten one would not)."""
    b, h, n, d, dv = shape
    q, k, v = qkv(b, h, n, d, seed=n)
    v = v[..., :dv].contiguous()
    expected = cosformer_reference(q, k, v, causal=causal)
    out = triton_out(q.float(), k.float(), v.float(), causal)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


def test_bidirectional_takes_more_keys_than_queries(interpreted):
    q, k, v = qkv(1, 2, 70, 32, seed=5)
    k, v = torch.cat((k, k.flip(-2)), dim=-2), torch.cat((v, -v), dim=-2)  # 140 keys
    expected = cosformer_reference(q, k, v)
    torch.testing.assert_close(triton_out(q.float(), k.float(), v.float(), False).double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_float16_stays_within_its_tolerance(interpreted, causal):
    q, k, v = (t.half() for t in qkv(1, 2, 400, 64, seed=3))
    expected = cosformer_reference(q.double(), k.double(), v.double(), causal=causal)
    out = triton_out(q, k, v, causal)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert rel_error(out, expected) < 1e-3


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_bf16_stays_within_bf16_rounding(interpreted, causal):
    """bf16 operands rounded once each, fp32 sums. Measured at N = 1000 and 3000, H = 4, D = 64: 1.13-1.15 x
    (bidirectional) and 1.27 x (causal) the error of rounding the exact output to bf16; the eager bf16 plan
    measured 1.20-1.36 x. (Before the interpreter's bf16 casts were rounded to nearest: 2.9-3.6 x.)"""
    q, k, v = (t.to(torch.bfloat16) for t in qkv(1, 4, 1000, 64, seed=61, dtype=torch.float32))
    expected = cosformer_reference(q.double(), k.double(), v.double(), causal=causal)
    out = triton_out(q, k, v, causal)
    assert out.dtype == torch.bfloat16
    assert rel_error(out, expected) < 1.4 * rel_error(expected.to(torch.bfloat16), expected)


@pytest.mark.parametrize("chunk", triton_plan.CHUNKS)
@pytest.mark.parametrize("rows_per_part", [128, 256, None])
def test_causal_parts_and_chunks_give_the_same_output(interpreted, chunk, rows_per_part):
    """Each part starts from the sums over the parts before it; each chunk carries them on."""
    q, k, v = (t.float() for t in qkv(1, 2, 300, 32, seed=11))
    expected = cosformer_reference(q.double(), k.double(), v.double(), causal=True)
    rows = None if rows_per_part is None else max(rows_per_part, chunk)
    out, denominator = triton_plan.causal_forward(q, k, v, 1e-6, chunk, rows_per_part=rows)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    assert denominator.shape == (1, 2, 300, 1) and denominator.dtype == torch.float32


def test_future_tokens_never_change_earlier_outputs(interpreted):
    q, k, v = (t.float() for t in qkv(1, 2, 200, 32, seed=13))
    before = triton_plan.causal_forward(q, k, v, 1e-6, 32, rows_per_part=64)[0]
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[..., 130:, :] = torch.randn_like(t[..., 130:, :]) * 3
    after = triton_plan.causal_forward(q2, k2, v2, 1e-6, 32, rows_per_part=64)[0]
    assert torch.equal(before[..., :130, :], after[..., :130, :])
    assert not torch.equal(before[..., 130:, :], after[..., 130:, :])


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_saves_what_the_eager_backward_reads(interpreted, causal):
    """Gradients through the eager backward from the Triton forward's saved output and denominators (and, for
    bidirectional, its state): those of the float64 reference."""
    q64, k64, v64 = (t.requires_grad_() for t in qkv(1, 2, 150, 32, seed=17))
    grad_out = torch.randn(1, 2, 150, 32, dtype=torch.float64)
    cosformer_reference(q64, k64, v64, causal=causal).backward(grad_out)
    q, k, v = (t.detach().float().requires_grad_() for t in (q64, k64, v64))
    triton_out(q, k, v, causal, chunk_size=32).backward(grad_out.float())
    for mine, theirs in ((q, q64), (k, k64), (v, v64)):
        assert rel_error(mine.grad, theirs.grad) < 1e-5


# ---- fast: counted on meta (the plan a GPU runs) ------------------------------------------------------


def triton_case(causal: bool, mode: str = "fwd") -> Case:
    return Case(impl="cosformer", seq_len=65536, heads=16, head_dim=64, dtype="bfloat16", causal=causal, mode=mode,
                options=(("backend", "triton"),))  # fmt: skip


def meta_call(case: Case):
    return make_call(impls.get("cosformer").bind(case), make_inputs(case, device="meta"))


@pytest.mark.parametrize(("causal", "max_ops", "max_gb_moved"), [(False, 12, 0.65), (True, 11, 1.0)], ids=["bidir", "causal"])
def test_a_forward_is_a_few_launches_moving_little_more_than_its_inputs(causal, max_ops, max_gb_moved):
    """N = 65536, B = 1, H = 16, bf16. Counted: 12 ops moving 0.62 GB bidirectional, 11 moving 0.96 GB causal
    (the eager plan: 105 ops, 2.89 GB; 264 ops, 8.19 GB). q, k, v and out alone are 0.54 GB."""
    q, k, v = (torch.empty(1, 16, 65536, 64, dtype=torch.bfloat16, device="meta") for _ in range(3))
    with op_tally() as tally:
        cosformer_attention(q, k, v, causal=causal, backend="triton")
    assert tally.ops <= max_ops
    assert (tally.bytes_read + tally.bytes_written) / 1e9 <= max_gb_moved
    assert sum("attnprof.cosformer" in str(op) for op in tally.overloads) == 2  # key states, then the output


@pytest.mark.parametrize(("causal", "max_ops"), [(False, 408 + 12 - 105), (True, 912 + 11 - 264)], ids=["bidir", "causal"])
def test_its_backward_takes_the_eager_backwards_steps(causal, max_ops):
    """Forward and backward at 64k: the eager backward as the eager plan runs it (408 and 912 ops counted with
    the eager forwards, 105 and 264 of them), not in the causal chunks of 64: the bidirectional backward took
    36,891 ops when the Triton forward passed it 64 positions per step."""
    q, k, v = (torch.empty(1, 16, 65536, 64, dtype=torch.bfloat16, device="meta", requires_grad=True) for _ in range(3))
    with op_tally() as tally:
        cosformer_attention(q, k, v, causal=causal, backend="triton").backward(torch.empty_like(q))
    assert tally.ops <= max_ops


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("mode", "limit_gib"), [("fwd", 1.0), ("fwd_bwd", 3.0)])
def test_peaks_stay_within_table_1(causal, mode, limit_gib):
    """Issue 3's table 1 (the tighter, bidirectional limits): the inputs, the output, the denominators and
    O(parts) states, then the eager backward's."""
    assert account_call(meta_call(triton_case(causal, mode))).peak_bytes <= limit_gib * GiB


def test_flops_count_the_forward_dots_and_the_eager_backward():
    case = triton_case(True)
    eager = {mode: cosformer_flops(case.resized(mode=mode), {}) for mode in ("fwd", "fwd_bwd")}
    mine = {mode: cosformer_flops(case.resized(mode=mode), {"backend": "triton"}) for mode in ("fwd", "fwd_bwd")}
    assert mine["fwd"] == 16 * 1024 * (4 * 64**3 + 8 * 64**3)  # 1024 chunks of 64: intra products, states
    assert mine["fwd_bwd"] - mine["fwd"] == eager["fwd_bwd"] - eager["fwd"]


# ---- refusals --------------------------------------------------------------------------------------


def test_refuses_what_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = qkv(1, 1, 64, 16)
    with pytest.raises(ValueError, match="runs on CUDA .* not cpu"):
        cosformer_attention(q.float(), k.float(), v.float(), backend="triton")
    meta = [t.to("meta") for t in (q, k, v)]
    with pytest.raises(ValueError, match="not torch.float64"):
        cosformer_attention(*meta, backend="triton")
    with pytest.raises(ValueError, match="chunk_size 16, 32, 64, 128 .* not 48"):
        cosformer_attention(*(t.float() for t in meta), causal=True, chunk_size=48, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of eager, triton, not 'cuda'"):
        cosformer_attention(q, k, v, backend="cuda")
    wide = torch.empty(1, 1, 64, 256, device="meta")
    with pytest.raises(ValueError, match="head dims up to 128"):
        cosformer_attention(wide, wide, wide, backend="triton")


def test_refuses_the_launches_that_would_not_fit_a_gpu():
    """Causal chunks of 128 with fp32 or fp16 inputs and head dims over 64 take more shared memory than an H100 gives
    a block (tests/test_benchmarks.py compiles them); a part size off the tiles would overlap or under-fill tl.dot."""
    wide = torch.empty(1, 1, 64, 128, device="meta")
    with pytest.raises(ValueError, match="chunk_size up to 64 for float32 inputs with head dims over 64"):
        cosformer_attention(wide, wide, wide, causal=True, chunk_size=128, backend="triton")
    cosformer_attention(
        wide.to(torch.bfloat16), wide.to(torch.bfloat16), wide.to(torch.bfloat16), causal=True, chunk_size=128, backend="triton"
    )
    case = Case(
        impl="cosformer", seq_len=4096, head_dim=128, causal=True, device="cuda", options=(("backend", "triton"), ("chunk_size", 128))
    )
    assert any("chunk_size up to 64" in reason for reason in impls.get("cosformer").not_supported(case))
    narrow = torch.empty(1, 1, 256, 32, device="meta")
    with pytest.raises(ValueError, match="rows_per_part must be a positive multiple of 64, not 96"):
        triton_plan.causal_forward(narrow, narrow, narrow, 1e-6, 64, rows_per_part=96)
    with pytest.raises(ValueError, match="multiple of 16, not 24"):
        triton_plan.bidirectional_forward(narrow, narrow, narrow, 1e-6, rows_per_part=24)


def test_the_sweep_records_a_cpu_case_as_unsupported_and_counts_it_on_meta():
    impl = impls.get("cosformer")
    cpu = Case(impl="cosformer", seq_len=1024, heads=2, head_dim=64, dtype="float32", device="cpu", options=(("backend", "triton"),))
    assert impl.not_supported(cpu) == ["cosformer backend=triton runs on CUDA, not cpu (Triton kernels)"]
    assert impl.not_supported(cpu.resized(device="meta")) == []
    assert impl.not_supported(cpu.resized(device="cuda", head_dim=256))[0].startswith(
        "cosformer backend=triton handles head dims up to 128"
    )
