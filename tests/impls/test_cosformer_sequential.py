"""The causal cosFormer's CPU plan for many heads (sequential.py, sequential_backward.py): one chunk of every head a
step. `sequential_calls` makes every causal call on the CPU take it, whatever B H C."""

from __future__ import annotations

import pytest
import torch
from cosformer_helpers import GOLDEN, GOLDEN_FILES, half_and_float64_grads, load_golden, qkv, randn, rel_error

import attnprof.impls.cosformer.causal as causal_module
import attnprof.impls.cosformer.common as cosformer_common
import attnprof.impls.cosformer.sequential as sequential
import attnprof.impls.cosformer.sequential_backward as sequential_backward
from attnprof import impls
from attnprof.accounting import account_call
from attnprof.impls.base import meta_stands_for
from attnprof.impls.cosformer import cosformer_attention
from attnprof.impls.reference.cosformer import cosformer_reference
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case


@pytest.fixture
def sequential_calls(monkeypatch):
    """Every causal call on the CPU takes the sequential plan (one chunk of every head a step), forward and backward;
    records the chunk size of each forward it makes."""
    calls = []
    real = causal_module.sequential_forward
    monkeypatch.setattr(cosformer_common, "SEQUENTIAL_ROWS", 1)
    monkeypatch.setattr(cosformer_common, "SEQUENTIAL_BACKWARD_ROWS", 1)
    monkeypatch.setattr(causal_module, "sequential_forward", lambda *args, **kwargs: calls.append(args[-1]) or real(*args, **kwargs))
    return calls


@pytest.mark.parametrize("shape", [(1, 1, 1, 4), (2, 3, 37, 8), (1, 2, 129, 16), (2, 1, 64, 5)], ids=str)
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 500])
def test_sequential_plan_matches_dense_reference_values_and_gradients(sequential_calls, shape, chunk_size):
    q, k, v = (t.requires_grad_() for t in qkv(*shape, seed=1))  # seed 1: not an all-zero output at N = 1
    grad = randn(*shape, seed=9)
    out = cosformer_attention(q, k, v, causal=True, chunk_size=chunk_size)
    expected = cosformer_reference(q, k, v, causal=True)
    assert sequential_calls and rel_error(out, expected) < 1e-12
    for ours, theirs in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-14)  # atol: at N = 1, dq is 0 up to rounding


@pytest.mark.skipif(not GOLDEN_FILES, reason=f"no cosformer golden files under {GOLDEN}")
@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["float64", "float32"])
def test_sequential_plan_matches_the_causal_golden_vectors(sequential_calls, dtype, bound):
    causal_files = [load_golden(path) for path in GOLDEN_FILES if load_golden(path)[4]]
    for q, k, v, expected, _, eps in causal_files:
        assert rel_error(cosformer_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True, eps=eps), expected) < bound
    assert causal_files and len(sequential_calls) == len(causal_files)


@pytest.mark.parametrize("dtype, bound", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)], ids=["fp16", "bf16"])
def test_sequential_plan_casts_half_inputs_into_its_fp32_workspace(sequential_calls, dtype, bound):
    """Half q, k, v are rectified and cast into the fp32 buffers, and v (not a view in the compute dtype) is copied."""
    q, k, v = (t.to(dtype) for t in qkv(2, 3, 203, 16, seed=21, dtype=torch.float32))
    out = cosformer_attention(q, k, v, causal=True, chunk_size=32)
    expected = cosformer_reference(q.double(), k.double(), v.double(), causal=True)
    assert sequential_calls and out.dtype == dtype and torch.isfinite(out).all()
    assert rel_error(out, expected) < bound


def test_sequential_plan_reads_inputs_whose_heads_do_not_flatten(sequential_calls):
    """(B, N, H, D) tensors seen as (B, H, N, D): B H does not flatten to a view, so v goes through the workspace copy."""
    q, k, v = (randn(2, 70, 3, 8, seed=31 + i).transpose(1, 2) for i in range(3))  # (B, H, N, D), strides of (B, N, H, D)
    assert not q.is_contiguous() and q.stride(0) != q.shape[1] * q.stride(1)
    out = cosformer_attention(q, k, v, causal=True, chunk_size=16)
    assert sequential_calls and rel_error(out, cosformer_reference(q, k, v, causal=True)) < 1e-12
    assert torch.equal(out, cosformer_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True, chunk_size=16))


def test_sequential_plan_keeps_denominators_only_for_a_backward(sequential_calls):
    """Inputs needing no gradient: no denominators are written, and the output is the one the backward's path gives."""
    q, k, v = qkv(1, 4, 100, 8, seed=11)
    out = cosformer_attention(q, k, v, causal=True, chunk_size=32)
    with_grad = cosformer_attention(q, k, v.clone().requires_grad_(), causal=True, chunk_size=32)
    assert len(sequential_calls) == 2 and torch.equal(out, with_grad.detach()) and with_grad.grad_fn is not None
    assert causal_module.sequential_forward(q, k, v, 1e-6, 32, denominators=False)[1] is None
    assert causal_module.sequential_forward(q, k, v, 1e-6, 32)[1].shape == (1, 4, 100, 1)


def test_the_sequential_plan_gives_the_chunked_plans_outputs_bit_for_bit():
    """The same sums in the same order: at B H = 16 (taken by default) against the same call with the chunks plan."""
    q, k, v = qkv(1, 16, 200, 8, seed=4, dtype=torch.float32)
    assert causal_module.sequential_plan(q, 64)
    sequential = cosformer_attention(q, k, v, causal=True)
    chunked, _ = causal_module._forward(q, k, v, 1e-6, 64)
    assert torch.equal(sequential, chunked)


def test_the_cpu_takes_the_sequential_plan_when_a_chunk_of_every_head_fills_a_step():
    """The forward from B H C = 256 rows, the backward from 1024 (common.SEQUENTIAL_ROWS, SEQUENTIAL_BACKWARD_ROWS)."""
    q = torch.empty(1, 16, 8192, 64, device="meta")  # B H C = 1024 rows at C = 64
    with meta_stands_for("cpu"):
        assert causal_module.sequential_plan(q[:, :4], 64) and not causal_module.sequential_plan(q[:, :3], 64)
        assert causal_module.sequential_plan(q, 64, backward=True) and causal_module.sequential_plan(q[:, :8], 128, backward=True)
        assert not causal_module.sequential_plan(q[:, :8], 64, backward=True)
        assert not causal_module.sequential_plan(q[:, :4, :32], 64) and not causal_module.sequential_plan(
            q[:, :, :32], 64, backward=True
        )  # C <= N
    with meta_stands_for("cuda"):
        assert not causal_module.sequential_plan(q, 64) and not causal_module.sequential_plan(q, 64, backward=True)


@pytest.mark.parametrize("heads", [4, 8])
def test_a_forward_on_the_sequential_plan_feeds_the_chunk_steps_backward(heads):
    """B H C from 256 to below 1024: the sequential forward (which saves what the G-chunk backward reads) and the
    G-chunk backward, against autograd through the dense reference."""
    q, k, v = (t.requires_grad_() for t in qkv(1, heads, 150, 8, seed=47))
    grad = randn(1, heads, 150, 8, seed=49)
    assert causal_module.sequential_plan(q, 64) and not causal_module.sequential_plan(q, 64, backward=True)
    ours = grads(cosformer_attention(q, k, v, causal=True), (q, k, v), grad)
    theirs = grads(cosformer_reference(q, k, v, causal=True), (q, k, v), grad)
    for mine, reference in zip(ours, theirs, strict=True):
        assert rel_error(mine, reference) < 1e-11


def grads(out, inputs, grad):
    return torch.autograd.grad(out, inputs, grad)


def test_sequential_backward_passes_gradcheck(sequential_calls):
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 11, 3, seed=23))
    assert torch.autograd.gradcheck(lambda a, b, c: cosformer_attention(a, b, c, causal=True, chunk_size=4), (q, k, v))
    assert sequential_calls


def test_sequential_backward_drops_the_gradients_of_empty_rows_and_negative_inputs(sequential_calls):
    """Queries with relu(q) = 0 (a denominator below eps: no gradient through its clamp) and negative entries of q
    and k (relu passes none), against autograd through the dense reference."""
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 45, 6, seed=25))
    with torch.no_grad():
        q[0, 1, 3:9] = -q[0, 1, 3:9].abs()  # rows whose every feature is 0
    grad = randn(2, 2, 45, 6, seed=27)
    ours = grads(cosformer_attention(q, k, v, causal=True, chunk_size=8), (q, k, v), grad)
    theirs = grads(cosformer_reference(q, k, v, causal=True), (q, k, v), grad)
    assert sequential_calls and torch.all(ours[0][0, 1, 3:9] == 0)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype, bound", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)], ids=["fp16", "bf16"])
def test_sequential_backward_of_half_inputs_is_close_to_float64(sequential_calls, dtype, bound):
    call = lambda *qkv_: cosformer_attention(*qkv_, causal=True, chunk_size=32)  # noqa: E731
    reference = lambda *qkv_: cosformer_reference(*qkv_, causal=True)  # noqa: E731
    grads_half, grads_wide = half_and_float64_grads((1, 3, 301, 16), dtype, 29, call, reference)
    assert sequential_calls
    for ours, exact in zip(grads_half, grads_wide, strict=True):
        assert ours.dtype == dtype and torch.isfinite(ours).all() and rel_error(ours, exact) < bound


def test_sequential_backward_of_inputs_whose_heads_do_not_flatten(sequential_calls):
    strided = [randn(2, 70, 3, 8, seed=33 + i).transpose(1, 2).requires_grad_() for i in range(3)]  # (B, H, N, D) views
    dense = [t.detach().contiguous().requires_grad_() for t in strided]
    grad = randn(2, 3, 70, 8, seed=37)
    ours = grads(cosformer_attention(*strided, causal=True, chunk_size=16), strided, grad)
    theirs = grads(cosformer_attention(*dense, causal=True, chunk_size=16), dense, grad)
    assert sequential_calls
    for mine, other in zip(ours, theirs, strict=True):
        assert torch.equal(mine, other)


def test_sequential_backward_matches_the_chunk_steps_backward():
    """At B H = 16, C = 64 (the sequential plan by default) against the G-chunk sweeps' gradients, fp32."""
    q, k, v = (t.requires_grad_() for t in qkv(1, 16, 300, 16, seed=41, dtype=torch.float32))
    grad = randn(1, 16, 300, 16, seed=43, dtype=torch.float32)
    assert causal_module.sequential_plan(q, 64)
    ours = grads(cosformer_attention(q, k, v, causal=True), (q, k, v), grad)
    q, k, v = q.detach(), k.detach(), v.detach()
    out, denominator = causal_module._forward(q, k, v, 1e-6, 64)
    steps = causal_module._causal_steps(q, 64, torch.float32)
    grads_of = lambda step: cosformer_common.row_grads(step.view(grad), step.view(out), step.view(denominator), 1e-6, torch.float32)  # noqa: E731
    chunked = (causal_module._causal_query_grads(steps, q, k, v, grads_of), *causal_module._causal_key_grads(steps, q, k, v, grads_of))
    for mine, theirs in zip(ours, chunked, strict=True):
        assert rel_error(mine, theirs) < 1e-6


@pytest.mark.parametrize("batch, n, mode", [(4, 1023, "fwd"), (4, 1023, "fwd_bwd"), (1, 256, "fwd_bwd"), (4, 1024, "fwd_bwd")])
def test_a_call_holds_one_workspace_at_a_time(batch, n, mode):
    """Counted on meta standing for the CPU: the output (and in fwd_bwd dq, dk, dv and the denominators) plus at most
    one step workspace, whatever N mod C, and the backward's two sweeps one between them (a short last chunk's views
    of the full buffers, the dq sweep's workspace not held through the dk sweep: 15 MiB more at B = 4, N = 1024)."""
    case = Case(impl="cosformer", seq_len=n, batch=batch, heads=16, head_dim=64, causal=True, mode=mode, device="cpu")
    with meta_stands_for("cpu"):
        assert causal_module.sequential_plan(torch.empty(batch, 16, n, 64, device="meta"), 64)
        peak = account_call(make_call(impls.get("cosformer").bind(case), make_inputs(case, device="meta"))).peak_bytes
    workspace = (sequential_backward._BackwardWorkspace if mode == "fwd_bwd" else sequential._Workspace)(
        batch, 16, 64, 64, 64, torch.float32, "meta", torch.empty(64, 64, device="meta")
    )
    one_workspace = sum(t.numel() * t.element_size() for t in workspace.buffers.values())
    tensor = batch * 16 * n * 64 * 4  # one (B, H, N, D) fp32 tensor
    kept = tensor if mode == "fwd" else 4 * tensor + tensor // 64  # the output; dq, dk, dv and the denominators
    assert peak <= kept + 1.5 * one_workspace
