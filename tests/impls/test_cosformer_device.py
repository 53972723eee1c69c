"""cosFormer's device plan, checked on the CPU: large steps and a scanned chunk-state sum, bf16 operands with
fp32 sums for bf16 inputs (forced onto the CPU, or counted on `meta` where it stands in for a GPU), and the
memory, kernel launches and bytes that plan gives at N = 65536."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from cosformer_helpers import meta_call, meta_case, meta_peak, qkv, randn, rel_error

import attnprof.impls.cosformer.bidirectional as cosformer_bidirectional
import attnprof.impls.cosformer.causal as cosformer_causal
import attnprof.impls.cosformer.common as cosformer_common
from attnprof import impls
from attnprof.accounting import account_call, op_tally
from attnprof.impls.base import meta_stands_for
from attnprof.impls.cosformer import cosformer_attention
from attnprof.impls.reference.cosformer import cosformer_reference
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case

MiB = 2**20


@pytest.fixture
def device_plan(monkeypatch):
    """The plan cosFormer takes on a GPU, taken on the CPU: device-sized steps, and half products for bf16."""
    monkeypatch.setattr(cosformer_common, "CPU_STEP_ROWS", cosformer_common.DEVICE_STEP_ROWS)
    for module in (cosformer_bidirectional, cosformer_causal):
        monkeypatch.setattr(module, "half_products", lambda *tensors: tensors[0].dtype == torch.bfloat16)


# ---- peak memory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_peak_memory_with_cpu_steps_is_small(monkeypatch, causal):
    """The CPU's steps (forced onto `meta`): at 8k, bf16, H=16, D=64 one output is 16 MiB; the reference's
    [B*H, N, 2d, d] cumsum would be 4 GiB."""
    monkeypatch.setattr(cosformer_common, "DEVICE_STEP_ROWS", cosformer_common.CPU_STEP_ROWS)
    peaks = {mode: meta_peak(8192, causal, mode) for mode in ("fwd", "fwd_bwd")}
    # the output (16 MiB) plus one step's temporaries; fwd_bwd adds dq, dk, dv (48 MiB)
    assert peaks["fwd"] < 16 * MiB + 48 * MiB
    assert peaks["fwd_bwd"] < 64 * MiB + 48 * MiB


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_peak_memory_with_device_steps_is_linear(causal, mode):
    """The device steps (`meta` stands in for the GPU): once the sequence fills a step (16k and 32k, H=16,
    are 2 and 4 steps of 2^17 rows), doubling N adds only the outputs and gradients: temporaries are one
    step's, whatever N. Outputs: bf16 out + fp32 denominators, 264 B per row; fwd_bwd adds bf16 dq, dk, dv."""
    rows = lambda n: 16 * n
    io_per_row = 64 * 2 + 4 + (3 * 64 * 2 if mode == "fwd_bwd" else 0)
    small, large = meta_peak(16384, causal, mode), meta_peak(32768, causal, mode)
    assert large - small <= 1.05 * io_per_row * (rows(32768) - rows(16384))
    assert small <= io_per_row * rows(16384) + cosformer_common.DEVICE_STEP_ROWS * 8 * 1024  # < 8 KiB a step row


def test_a_cpu_case_is_accounted_with_the_cpu_steps():
    """The CPU's host-memory guard accounts a CPU case on meta: it must see the CPU's step sizes (the peak
    the CPU will reach, counted live on the CPU itself), while an accounting case sees the GPU's."""
    from attnprof.accounting_runs import account_on_meta

    impl = impls.get("cosformer")
    on = lambda device: Case(impl="cosformer", seq_len=1024, heads=16, head_dim=64, dtype="float32", causal=True, device=device)
    on_cpu = account_call(make_call(impl.bind(on("cpu")), make_inputs(on("cpu"), device="cpu"))).peak_bytes
    assert account_on_meta(impl, on("cpu")).peak_bytes == on_cpu
    assert account_on_meta(impl, on("meta")).peak_bytes == meta_peak(1024, True, "fwd", dtype="float32") > 2 * on_cpu


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("chunks", [1, 3, 8, 9, 40])
def test_exclusive_cumsum_adds_and_scan_agree(reverse, chunks):
    """Both ways of summing the chunk states (in-place adds up to ADDS_UP_TO chunks, torch.cumsum beyond)
    against the plain definition."""
    from attnprof.impls.cosformer.causal import _exclusive_cumsum, _scanned_exclusive_cumsum

    carry, parts = randn(2, 3, 4, 5, seed=1), randn(2, 3, chunks, 4, 5, seed=2)
    order = range(chunks - 1, -1, -1) if reverse else range(chunks)
    expected, running = torch.empty_like(parts), carry.clone()
    for g in order:
        expected[..., g, :, :] = running
        running = running + parts[..., g, :, :]
    for sums, total in (_exclusive_cumsum(carry, parts.clone(), reverse), _scanned_exclusive_cumsum(carry, parts.clone(), reverse)):
        assert torch.allclose(sums, expected, rtol=0, atol=1e-12) and torch.allclose(total, running, rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_device_steps_match_the_reference_on_the_cpu(device_plan, causal):
    """The device plan (few large steps, torch.cumsum over many chunks) run on the CPU: same results."""
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 1000, 4, seed=11))  # 15 full chunks and a short one per step
    out = cosformer_attention(q, k, v, causal=causal)
    expected = cosformer_reference(q, k, v, causal=causal)
    assert rel_error(out, expected) < 1e-12
    grad = randn(2, 2, 1000, 4, seed=12)
    actual = torch.autograd.grad(out, (q, k, v), grad)
    for got, want in zip(actual, torch.autograd.grad(expected, (q, k, v), grad), strict=True):
        assert rel_error(got, want) < 1e-10


# ---- bf16 operands, fp32 sums -------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [1, 3, 40])
def test_rounded_exclusive_sums_against_the_definition(chunks):
    """The triangular-GEMM scan: small integers are exact in bf16, so its sums must equal the definition exactly."""
    from attnprof.impls.cosformer.causal import _rounded_exclusive_sums

    carry = torch.randint(-8, 8, (2, 3, 4, 5)).float()
    parts = torch.randint(-8, 8, (2, 3, chunks, 4, 5)).to(torch.bfloat16)
    expected, running = torch.empty_like(parts, dtype=torch.float32), carry.clone()
    for g in range(chunks):
        expected[..., g, :, :] = running
        running = running + parts[..., g, :, :].float()
    sums, total = _rounded_exclusive_sums(carry, parts)
    assert sums.dtype == torch.bfloat16 and torch.equal(sums.float(), expected)
    assert total.dtype == torch.float32 and torch.equal(total, running)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_half_products_stay_within_bf16_rounding(device_plan, causal):
    """bf16 operands with fp32 sums, against float64 on the same (rounded) inputs. Measured: 1.20-1.36 x the
    error of rounding the exact output to bf16 at N = 1000 to 32768, against 1.00 x for the fp32 plan."""
    q, k, v = (t.to(torch.bfloat16) for t in qkv(1, 4, 3000, 64, seed=61, dtype=torch.float32))
    expected = cosformer_attention(q.double(), k.double(), v.double(), causal=causal)
    out = cosformer_attention(q, k, v, causal=causal)
    assert out.dtype == torch.bfloat16
    assert rel_error(out, expected) < 1.6 * rel_error(expected.to(torch.bfloat16), expected)
    with pytest.MonkeyPatch.context() as undo:  # the fp32 plan gives other roundings: the half plan did run
        for module in (cosformer_bidirectional, cosformer_causal):
            undo.setattr(module, "half_products", lambda *tensors: False)
        assert not torch.equal(out, cosformer_attention(q, k, v, causal=causal))


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_gradients_after_half_products_are_close_to_float64(device_plan, causal):
    inputs = [t.to(torch.bfloat16) for t in qkv(1, 2, 1000, 32, seed=71, dtype=torch.float32)]
    grad = randn(1, 2, 1000, 32, seed=75, dtype=torch.float32).to(torch.bfloat16)
    half = [t.clone().requires_grad_() for t in inputs]
    wide = [t.double().requires_grad_() for t in inputs]
    grads_half = torch.autograd.grad(cosformer_attention(*half, causal=causal), half, grad)
    grads_wide = torch.autograd.grad(cosformer_attention(*wide, causal=causal), wide, grad.double())
    for ours, exact in zip(grads_half, grads_wide, strict=True):
        assert ours.dtype == torch.bfloat16 and rel_error(ours, exact) < 4e-3  # measured 1.8-2.7e-3 (fp32 plan: 1.6-2.3e-3)


def test_half_products_never_let_future_tokens_change_earlier_outputs(device_plan):
    q, k, v = (t.to(torch.bfloat16) for t in qkv(1, 2, 3000, 64, seed=81, dtype=torch.float32))
    before = cosformer_attention(q, k, v, causal=True)
    cut = 1700  # inside the step's chunks, not on a step boundary
    changed = [t.clone() for t in (q, k, v)]
    for t in changed:
        t[..., cut:, :] = torch.randn(t[..., cut:, :].shape).to(torch.bfloat16) * 100
    after = cosformer_attention(*changed, causal=True)
    assert torch.equal(after[..., :cut, :], before[..., :cut, :])
    assert not torch.equal(after[..., cut:, :], before[..., cut:, :])


@pytest.mark.skipif(not cosformer_common.MIXED_BMM, reason="this torch has no bmm with out_dtype (torch < 2.8)")
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_only_bf16_off_the_cpu_takes_half_products(causal):
    """Counted on meta: bf16 standing in for a GPU multiplies bf16 operands into fp32 (aten.bmm.dtype); fp16 (whose
    range cannot hold the states) and a CPU case keep the fp32 plan."""

    def overloads(dtype, device="cuda"):
        with meta_stands_for(device), op_tally() as tally:
            meta_call(meta_case(4096, causal, dtype=dtype))()
        return tally.overloads

    assert "aten.bmm.dtype" in overloads("bfloat16")
    assert "aten.bmm.dtype" not in overloads("float16")
    assert "aten.bmm.dtype" not in overloads("bfloat16", device="cpu")


# ---- launches and bytes at 64k ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "causal, mode, max_ops, max_gb",
    [(False, "fwd", 150, 1.5), (False, "fwd_bwd", 500, 10), (True, "fwd", 300, 3.5), (True, "fwd_bwd", 1000, 23)],
)
def test_device_steps_launch_few_kernels_and_write_little(causal, mode, max_ops, max_gb):
    """At N = 65536, B = 1, H = 16, bf16 on `meta` (the device plan): a few hundred ops, where the CPU's steps
    took 3,855 (bidirectional forward) to 26,912 (causal forward + backward), tens of ms of launches on a GPU;
    and the bytes written (q, k, v and out are 0.54 GB). When this test was written: 1.24 / 8.8 GB
    bidirectional, 3.15 / 21.6 GB causal (fwd / fwd_bwd), with 105, 408, 264 and 912 ops. Before the
    forwards took bf16 operands: 2.6 / 10.2 and 5.0 / 23.5 GB; before relu went ahead of the upcast, v was
    cast into its widened buffer and the chunk-state scan folded its carry in: 3.1 / 11.2 and 5.8 / 26.4."""
    with op_tally() as tally:
        meta_call(meta_case(65536, causal, mode))()
    assert tally.ops <= max_ops
    assert tally.bytes_written <= max_gb * 1e9


@pytest.mark.parametrize("heads", [1, 16])
def test_the_triangular_scan_adds_at_most_two_thirds_to_the_flops(heads):
    """The bf16 plan sums a step's G chunk states by a G x G triangular GEMM, G capped at MAX_STEP_CHUNKS:
    counted at 64k, causal, against the same call without it (the fp32 plan's formula). Uncapped, B * H = 1 took
    G = 1024 and 6.3 x the FLOPs. The formula counts the scan too (it left it out: TFLOP/s read 1.66 x low)."""
    case = Case(impl="cosformer", seq_len=65536, heads=heads, head_dim=64, dtype="bfloat16", device="meta", causal=True)
    counted = account_call(meta_call(case)).flops
    formula = impls.get("cosformer").flops
    assert counted == formula(case, {"chunk_size": None})
    assert counted <= 1.7 * formula(replace(case, dtype="float32"), {"chunk_size": None})


def test_half_products_need_bf16_q_k_v_off_the_cpu():
    bf16 = torch.empty(1, 1, 70, 4, dtype=torch.bfloat16, device="meta")
    fp32 = bf16.float()
    with meta_stands_for("cuda"):
        assert cosformer_common.half_products(bf16, bf16, bf16) == cosformer_common.MIXED_BMM
        assert not cosformer_common.half_products(bf16, fp32, fp32)
        with pytest.raises(TypeError, match="one floating dtype, not bfloat16, float32, float32"):
            cosformer_attention(bf16, fp32, fp32, causal=True)  # the operator takes one dtype (see test_operator_inputs.py)
    with meta_stands_for("cpu"):
        assert not cosformer_common.half_products(bf16, bf16, bf16)
