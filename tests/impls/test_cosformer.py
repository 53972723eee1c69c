"""cosFormer: the chunked operator against the papers' golden vectors, the dense reference, autograd and
the memory / FLOP accounting it declares."""

from __future__ import annotations

import math

import pytest
import torch
from cosformer_helpers import GOLDEN, GOLDEN_FILES, half_and_float64_grads, load_golden, qkv, randn, rel_error

import attnprof.impls.cosformer.causal as causal_module
import attnprof.impls.cosformer.common as cosformer_common
from attnprof import impls
from attnprof.accounting import account_call
from attnprof.errors import UsageError
from attnprof.impls.base import meta_stands_for
from attnprof.impls.cosformer import chunk_size_problems, cosformer_attention
from attnprof.impls.reference.cosformer import cosformer_reference
from attnprof.inputs import make_call, make_inputs, torch_dtype
from attnprof.spec import Case

MiB = 2**20


# ---- golden vectors from the reference repo -------------------------------------------------------


@pytest.mark.skipif(not GOLDEN_FILES, reason=f"no cosformer golden files under {GOLDEN}")
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_matches_golden_vectors(path, dtype, bound, chunk_size):
    q, k, v, expected, causal, eps = load_golden(path)  # q, k before the ReLU: the operator applies it
    out = cosformer_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=causal, eps=eps, chunk_size=chunk_size)
    assert out.dtype == dtype
    assert rel_error(out, expected) < bound


@pytest.mark.skipif(not GOLDEN_FILES, reason=f"no cosformer golden files under {GOLDEN}")
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_dense_reference_matches_golden_vectors(path):
    q, k, v, expected, causal, eps = load_golden(path)
    assert rel_error(cosformer_reference(q, k, v, causal=causal, eps=eps), expected) < 1e-10


def test_golden_files_cover_both_forms():
    if not GOLDEN_FILES:
        pytest.skip(f"no cosformer golden files under {GOLDEN}")
    assert {load_golden(p)[4] for p in GOLDEN_FILES} == {False, True}


# ---- against the dense reference ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1, 4), (2, 3, 37, 8), (1, 2, 129, 16), (2, 1, 64, 5)], ids=str)
@pytest.mark.parametrize("chunk_size", [None, 1, 8, 16, 50, 500])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_matches_dense_reference(shape, chunk_size, causal):
    q, k, v = qkv(*shape)
    out = cosformer_attention(q, k, v, causal=causal, chunk_size=chunk_size)
    assert out.shape == q.shape
    assert rel_error(out, cosformer_reference(q, k, v, causal=causal)) < 1e-12


def test_bidirectional_takes_other_key_lengths_and_value_widths():
    q, k, v = randn(2, 2, 23, 8, seed=1), randn(2, 2, 41, 8, seed=2), randn(2, 2, 41, 5, seed=3)
    out = cosformer_attention(q, k, v, chunk_size=6)  # M = max(23, 41) sets the angles of both sides
    assert out.shape == (2, 2, 23, 5)
    assert rel_error(out, cosformer_reference(q, k, v)) < 1e-12


@pytest.mark.parametrize("step_rows", [1, 2 * 2 * 64 * 2, 2 * 2 * 64 * 3])  # G = 1, 2, 3 chunks per step
@pytest.mark.parametrize("chunk_size", [1, 3, 4])
def test_causal_state_carries_across_steps(monkeypatch, step_rows, chunk_size):
    monkeypatch.setattr(cosformer_common, "CPU_STEP_ROWS", step_rows)  # a few chunks per step, several steps
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 13, 4, seed=5))
    grad = randn(2, 2, 13, 4, seed=9)
    out = cosformer_attention(q, k, v, causal=True, chunk_size=chunk_size)
    expected = cosformer_reference(q, k, v, causal=True)
    assert rel_error(out, expected) < 1e-12
    for ours, theirs in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad), strict=True):
        assert rel_error(ours, theirs) < 1e-11


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("seq_len", [1, 130, 1000])
@pytest.mark.parametrize("heads", [4, 16], ids=["sequential forward", "sequential forward and backward"])
def test_flop_formula_counts_the_sequential_plan(mode, seq_len, heads):
    impl = impls.get("cosformer")
    case = Case(impl="cosformer", seq_len=seq_len, heads=heads, head_dim=8, causal=True, mode=mode, device="cpu")
    with meta_stands_for("cpu"):
        counted = account_call(make_call(impl.bind(case), make_inputs(case, device="meta"))).flops
    assert impl.flops(case, impl.resolve_options(())) == counted


def test_weights_are_relu_features_times_cosine_of_position_gap():
    # Queries 2 and 0, keys 1 and 3, d = 1, M = 2: W_1j = relu(q_1) relu(k_j) cos(pi/2 (1 - j) / 2); a negative key drops out.
    q = torch.tensor([[[[2.0], [0.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[1.0], [3.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[10.0], [20.0]]]], dtype=torch.float64)
    w1, w2 = 2.0 * 1.0, 2.0 * 3.0 * math.cos(math.pi / 4)
    out = cosformer_attention(q, k, v)
    assert out[0, 0, 0, 0].item() == pytest.approx((10 * w1 + 20 * w2) / (w1 + w2), rel=1e-14)
    assert out[0, 0, 1, 0].item() == 0.0  # relu(q) = 0: every weight is 0, the clamp keeps 0 / eps finite
    k_negative = torch.tensor([[[[1.0], [-3.0]]]], dtype=torch.float64)
    assert cosformer_attention(q, k_negative, v)[0, 0, 0, 0].item() == pytest.approx(10.0, rel=1e-14)


def test_denominator_is_clamped_not_shifted():
    q, k, v = qkv(1, 1, 8, 4, seed=3)
    q, k = q.abs() * 1e-4, k.abs() * 1e-4  # weights ~1e-8: row sums below eps = 1e-6
    i = torch.arange(1, 9, dtype=torch.float64)
    weights = (q[0, 0] @ k[0, 0].T) * torch.cos(math.pi / 2 * (i[:, None] - i[None, :]) / 8)  # (N, N)
    assert weights.sum(-1).max() < 1e-6
    clamped = (weights @ v[0, 0]) / 1e-6  # max(sum, eps) = eps
    shifted = (weights @ v[0, 0]) / (weights.sum(-1, keepdim=True) + 1e-6)
    out = cosformer_attention(q, k, v, eps=1e-6, chunk_size=3)[0, 0]
    assert rel_error(out, clamped) < 1e-12
    assert rel_error(out, shifted) > 1e-3


# ---- causality and gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [4, 5, None])
def test_future_tokens_never_change_earlier_outputs(chunk_size):
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 29, 6, seed=11))
    cut = 13
    changed = [t.detach().clone() for t in (q, k, v)]
    for t in changed:
        t[..., cut:, :] = randn(*t[..., cut:, :].shape, seed=99) * 5
    out = cosformer_attention(q, k, v, causal=True, chunk_size=chunk_size)
    out_changed = cosformer_attention(*changed, causal=True, chunk_size=chunk_size)
    torch.testing.assert_close(out_changed[..., :cut, :], out[..., :cut, :], rtol=1e-13, atol=1e-14)
    assert not torch.allclose(out_changed[..., cut:, :], out[..., cut:, :])
    # and no gradient flows from earlier outputs back to later inputs
    grads = torch.autograd.grad(out[..., :cut, :].sum(), (q, k, v))
    for grad in grads:
        assert torch.all(grad[..., cut:, :] == 0)
        assert torch.any(grad[..., :cut, :] != 0)


@pytest.mark.parametrize("causal, chunk_size", [(False, None), (False, 4), (True, 4), (True, None)])
def test_gradcheck(causal, chunk_size):
    q, k, v = (t.requires_grad_() for t in qkv(1, 1, 9, 3, seed=21))
    assert torch.autograd.gradcheck(lambda a, b, c: cosformer_attention(a, b, c, causal=causal, chunk_size=chunk_size), (q, k, v))


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_gradients_match_dense_reference(causal):
    q, k, v = (t.requires_grad_() for t in qkv(2, 3, 70, 8, seed=31))
    grad = randn(2, 3, 70, 8, seed=32)
    ours = torch.autograd.grad(cosformer_attention(q, k, v, causal=causal, chunk_size=16), (q, k, v), grad)
    theirs = torch.autograd.grad(cosformer_reference(q, k, v, causal=causal), (q, k, v), grad)
    for a, b in zip(ours, theirs, strict=True):
        assert rel_error(a, b) < 1e-11


# ---- half precision at a long length --------------------------------------------------------------


def float64_denominators(q, k, causal: bool):
    """sum_j W_ij in float64 (independent of the operator): phi(q_i) . (sum over j of phi(k_j))."""
    n = q.shape[-2]
    angle = (math.pi / 2) * torch.arange(1, n + 1, dtype=torch.float64) / n  # (N,)
    phi = lambda x: torch.cat((torch.relu(x) * angle.sin()[:, None], torch.relu(x) * angle.cos()[:, None]), dim=-1)
    keys = phi(k.double())  # (B, H, N, 2D)
    sums = keys.cumsum(-2) if causal else keys.sum(-2, keepdim=True)  # (B, H, N or 1, 2D)
    return (phi(q.double()) * sums).sum(-1)  # (B, H, N)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype, bound", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)], ids=["fp16", "bf16"])
def test_half_inputs_stay_finite_past_the_fp16_overflow(causal, dtype, bound):
    n = 16384
    q, k, v = qkv(1, 1, n, 64, seed=41, dtype=torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    assert float64_denominators(q, k, causal).max() > torch.finfo(torch.float16).max  # fp16 accumulators would overflow
    out = cosformer_attention(q, k, v, causal=causal)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    expected = cosformer_attention(q.double(), k.double(), v.double(), causal=causal)
    assert rel_error(out, expected) < bound
    assert rel_error(out[..., -256:, :], expected[..., -256:, :]) < bound  # the rows with the largest sums


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype, bound", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)], ids=["fp16", "bf16"])
def test_half_gradients_are_close_to_float64(causal, dtype, bound):
    call = lambda *qkv_: cosformer_attention(*qkv_, causal=causal, chunk_size=48)  # noqa: E731
    grads_half, grads_wide = half_and_float64_grads((1, 2, 1000, 32), dtype, 51, call)
    for ours, exact in zip(grads_half, grads_wide, strict=True):
        assert ours.dtype == dtype and torch.isfinite(ours).all()
        assert rel_error(ours, exact) < bound


# ---- registration, accounting ---------------------------------------------------------------------


def test_registered_with_its_reference_and_options():
    impl = impls.get("cosformer")
    assert (impl.family, impl.exact, impl.meta_exact) == ("linear", False, True)
    assert impl.options == {"chunk_size": None, "backend": "eager"}
    assert impl.reference is cosformer_reference
    assert set(impl.causal) == {False, True}
    assert impl.resolve_options({"chunk_size": "32"}) == {"chunk_size": 32, "backend": "eager"}
    assert impl.resolve_options({"chunk_size": "auto"}) == {"chunk_size": None, "backend": "eager"}
    assert impl.resolve_options({"backend": "triton", "chunk_size": "128"}) == {"chunk_size": 128, "backend": "triton"}
    with pytest.raises(UsageError, match="chunk_size 16, 32, 64, 128 .* not 48"):
        impl.resolve_options({"backend": "triton", "chunk_size": "48"})  # the eager plan takes any chunk
    with pytest.raises(UsageError, match="backend must be one of eager, triton, not 'compile'"):
        impl.resolve_options({"backend": "compile"})


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_runtime_check_passes_within_declared_tolerance(causal, dtype):
    impl = impls.get("cosformer")
    case = Case(impl="cosformer", seq_len=300, batch=1, heads=2, head_dim=16, dtype=dtype, causal=causal, options=(("chunk_size", "48"),))
    inputs = make_inputs(case)
    out = impl.bind(case)(inputs.q, inputs.k, inputs.v)
    expected = impl.bind_reference(case)(inputs.q.double(), inputs.k.double(), inputs.v.double())
    assert out.dtype == torch_dtype(dtype)
    assert rel_error(out, expected) < impl.check_tolerance[dtype]


@pytest.mark.parametrize("bad", [0, -3, 2.5, float("nan"), "x", True])
def test_bad_chunk_sizes_are_refused(bad):
    assert chunk_size_problems(bad)
    q, k, v = qkv(1, 1, 8, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        cosformer_attention(q, k, v, chunk_size=bad)
    with pytest.raises(UsageError, match="bad option for impl 'cosformer'"):  # before any case: exit 2, not unsupported rows
        impls.get("cosformer").resolve_options({"chunk_size": bad})


def test_causal_needs_equal_lengths():
    with pytest.raises(ValueError, match="as many queries as keys"):
        cosformer_attention(randn(1, 1, 5, 4), randn(1, 1, 7, 4), randn(1, 1, 7, 4), causal=True)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("seq_len, chunk_size", [(1, None), (130, None), (1000, "96"), (256, "64")])
def test_flop_formula_equals_counted_flops(mode, causal, seq_len, chunk_size):
    impl = impls.get("cosformer")
    options = (("chunk_size", chunk_size),) if chunk_size else ()
    case = Case(impl="cosformer", seq_len=seq_len, batch=2, heads=3, head_dim=8, causal=causal, mode=mode, options=options)
    counted = account_call(make_call(impl.bind(case), make_inputs(case, device="meta"))).flops
    assert impl.flops(case, impl.resolve_options(case.options)) == counted


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("seq_len", [1000, 4096])
def test_flop_formula_counts_the_bf16_plans_scan_gemm(mode, seq_len):
    """On meta (standing in for a GPU) bf16 takes the plan that sums chunk states by a triangular GEMM."""
    impl = impls.get("cosformer")
    case = Case(impl="cosformer", seq_len=seq_len, heads=16, head_dim=64, dtype="bfloat16", device="meta", causal=True, mode=mode)
    counted = account_call(make_call(impl.bind(case), make_inputs(case, device="meta"))).flops
    assert impl.flops(case, impl.resolve_options(())) == counted


def test_min_bytes_is_the_io():
    case = Case(impl="cosformer", seq_len=1024, heads=4, head_dim=32, dtype="bfloat16", mode="fwd_bwd")
    assert impls.get("cosformer").min_bytes(case, {"chunk_size": None}) == 12 * 1024 * 4 * 32 * 2


@pytest.mark.parametrize("causal, heads", [(False, 2), (True, 2), (True, 16)], ids=["bidir", "causal", "causal sequential"])
def test_a_second_derivative_is_refused_plainly(causal, heads):
    """The backward is written by hand: create_graph=True raises, where once_differentiable alone would hand back the
    gradient of out.sum() with no graph and a gradient penalty on it would add nothing, silently."""
    q, k, v = (t.requires_grad_() for t in qkv(1, heads, 70, 8, seed=13))
    out = cosformer_attention(q, k, v, causal=causal)
    assert causal_module.sequential_plan(q, 64) == (causal and heads == 16)
    with pytest.raises(RuntimeError, match=r"no derivative of its own: create_graph=True \(a second derivative\) is not supported"):
        torch.autograd.grad(out.sum(), q, create_graph=True)
    assert torch.isfinite(torch.autograd.grad(out.sum(), q)[0]).all()  # the first derivative still works
