"""Nyströmformer's backend="triton" on the CPU, through Triton's interpreter (the kernels a GPU compiles): outputs and
gradients against the float64 reference and the eager plan, half precision, the counts on `meta`, the refusals."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnprof import impls
from attnprof.accounting import account_call, op_tally
from attnprof.errors import UsageError
from attnprof.impls.nystromformer import nystrom_attention, nystrom_flops, seeded_conv_weight, triton_plan
from attnprof.impls.reference.nystromformer import nystrom_reference
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case

GIB = 2**30


@pytest.fixture(scope="module")
def interpreted(triton_interpreted):
    from triton.runtime.interpreter import InterpretedFunction

    from attnprof.impls.nystromformer import triton_kernels

    assert isinstance(triton_kernels.nystrom_out_kernel, InterpretedFunction)


def qkv(b, h, n, d, seed=0, dtype=torch.float64):
    draw = (torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(seed + i), dtype=torch.float64) for i in range(3))
    return [t.to(dtype) for t in draw]


def rel_err(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def conv(heads: int, taps: int, dtype=torch.float64):
    return seeded_conv_weight(heads, taps, "cpu", dtype) if taps else None


# n, landmarks, conv taps, pinv_init, head dim, pinv iterations: landmarks and head dims off the powers of two (padded
# tiles), lengths off the segments (variable-length segments), a conv of two and three banded chunks, no iteration
CASES = [
    (300, 16, 5, "reference", 32, 6),
    (257, 20, 0, "per-head", 24, 6),
    (200, 64, 33, "reference", 64, 6),
    (130, 48, 67, "per-head", 16, 3),
    (150, 16, 3, "reference", 8, 0),
]


@pytest.mark.parametrize(("n", "m", "taps", "init", "d", "iterations"), CASES)
def test_matches_the_reference_and_the_eager_plan(interpreted, n, m, taps, init, d, iterations):
    """fp32 inputs: measured 0.5-3.6e-7 from the float64 reference, as close as the eager plan's own error (0.5-3.8e-7)."""
    q, k, v = qkv(2, 3, n, d, seed=n)
    options = {"num_landmarks": m, "pinv_iterations": iterations, "pinv_init": init}
    expected = nystrom_reference(q, k, v, conv_weight=conv(3, taps), **options)
    q32, k32, v32 = (t.float() for t in (q, k, v))
    out = nystrom_attention(q32, k32, v32, conv_weight=conv(3, taps, torch.float32), backend="triton", **options)
    eager = nystrom_attention(q32, k32, v32, conv_weight=conv(3, taps, torch.float32), **options)
    assert out.dtype == torch.float32 and out.shape == (2, 3, n, d)
    assert rel_err(out, expected) < 2e-6
    assert rel_err(out, eager) < 2e-6


@pytest.mark.parametrize("target", [1, 12, 1024], ids=["one part", "two parts", "a part a tile"])
def test_any_split_of_the_keys_gives_the_same_output(interpreted, monkeypatch, target):
    """Bk @ V's parts merged in the pseudo-inverse's program: one part of 512 keys (the tiles past key 300 empty), two of
    256 (the second mostly empty), or 5 of 64 (the last 44 keys long)."""
    monkeypatch.setattr(triton_plan, "TARGET_PROGRAMS", target)
    monkeypatch.setattr(triton_plan, "MIN_PART_KEYS", 64)  # the plan's 512 would leave 300 keys one part whatever the target
    assert triton_plan.key_parts(300, 6) == {1: (1, 512), 12: (2, 256), 1024: (5, 64)}[target]
    q, k, v = qkv(2, 3, 300, 32, seed=5)
    expected = nystrom_reference(q, k, v, num_landmarks=32)
    assert rel_err(nystrom_attention(*(t.float() for t in (q, k, v)), num_landmarks=32, backend="triton"), expected) < 2e-6


def test_strided_inputs_and_narrower_values(interpreted):
    """q, k, v sliced from a (B, N, H, D) projection as models make them (not contiguous), values 24 wide against
    queries and keys 32 wide: the same output as the eager plan."""
    projected = torch.randn(2, 200, 3, 32 * 2 + 24, generator=torch.Generator().manual_seed(17))  # (B, N, H, 2 D + Dv)
    q, k, v = (part.transpose(1, 2) for part in projected.split([32, 32, 24], dim=-1))  # (B, H, N, D) views
    assert not q.is_contiguous()
    weight = conv(3, 9, torch.float32)
    out = nystrom_attention(q, k, v, num_landmarks=24, conv_weight=weight, backend="triton")
    assert out.shape == (2, 3, 200, 24)
    assert rel_err(out, nystrom_attention(q, k, v, num_landmarks=24, conv_weight=weight)) < 2e-6


def test_gradients_are_the_eager_plans(interpreted):
    """The backward differentiates the recomputed eager forward: q, k, v and a conv filter that wants its gradient too."""
    q, k, v = (t.float().requires_grad_() for t in qkv(1, 2, 160, 16, seed=9))
    weight = conv(2, 7, torch.float32).clone().requires_grad_()
    grad = torch.randn(1, 2, 160, 16, generator=torch.Generator().manual_seed(3))
    grads = {}
    for backend in ("eager", "triton"):
        out = nystrom_attention(q, k, v, num_landmarks=16, conv_weight=weight, backend=backend)
        grads[backend] = torch.autograd.grad(out, (q, k, v, weight), grad)
    for eager, triton in zip(grads["eager"], grads["triton"], strict=True):
        assert rel_err(triton, eager) < 1e-6
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, weight)]
    expected = torch.autograd.grad(nystrom_reference(*leaves[:3], num_landmarks=16, conv_weight=leaves[3]), leaves, grad.double())
    for reference, triton in zip(expected, grads["triton"], strict=True):
        assert rel_err(triton, reference) < 1e-5
    q.grad = None
    nystrom_attention(q, k.detach(), v.detach(), num_landmarks=16, backend="triton").sum().backward()  # only q wants one
    assert q.grad is not None and torch.isfinite(q.grad).all()


# bf16's bound is wide for the interpreter, not the kernel: Triton's interpreter truncates fp32 -> bf16 where a GPU
# rounds to nearest (520 of 1024 stores differ, mean error -1.3e-3; a numerics audit), 1.2-1.5e-2 here against eager's
# 2.6-7e-3. tests/gpu holds the compiled kernel to the check's bound.
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_half_inputs_stay_finite_and_within_the_check_tolerance(interpreted, dtype, tolerance):
    q, k, v = qkv(1, 2, 600, 64, seed=11)
    expected = nystrom_reference(q, k, v, conv_weight=conv(2, 33))
    out = nystrom_attention(*(t.to(dtype) for t in (q, k, v)), conv_weight=conv(2, 33, dtype), backend="triton")
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, expected) < tolerance


def test_up_to_m_tokens_is_the_exact_softmax_of_the_eager_plan(interpreted):
    q, k, v = qkv(1, 2, 40, 16, seed=13, dtype=torch.float32)
    out = nystrom_attention(q, k, v, num_landmarks=64, conv_weight=conv(2, 5, torch.float32), backend="triton")
    assert torch.equal(out, nystrom_attention(q, k, v, num_landmarks=64, conv_weight=conv(2, 5, torch.float32)))


# ---- counted on meta (the plan a GPU runs) ------------------------------------------------------------


def case_at(n: int, mode: str, backend: str) -> Case:
    return Case(impl="nystromformer", seq_len=n, heads=16, head_dim=64, dtype="bfloat16", mode=mode, options=(("backend", backend),))


def tally(case: Case):
    call = make_call(impls.get(case.impl).bind(case), make_inputs(case, device="meta"))
    call()  # the seeded conv filter is drawn once, on the first call
    with op_tally() as counted:
        call()
    return counted.ops, (counted.bytes_read + counted.bytes_written) / 1e9


def test_the_forward_takes_a_quarter_of_the_ops_and_bytes():
    """N = 8192, bf16, forward: 49 ops moving 0.75 GB eager (fp32 copies of q, k and v), 12 moving 0.13 GB (0.16 with
    parts of 128 keys); N = 65536: 5.80 against 0.98 GB, where q, k, v and out alone are 0.54 GB and the landmarks force
    q, k and v to be read twice (min_bytes: 0.94 GB)."""
    assert tally(case_at(8192, "fwd", "eager")) == (49, pytest.approx(0.75, abs=0.01))
    assert tally(case_at(8192, "fwd", "triton")) == (12, pytest.approx(0.13, abs=0.01))
    assert tally(case_at(65536, "fwd", "eager"))[1] == pytest.approx(5.80, abs=0.01)
    case = case_at(65536, "fwd", "triton")
    moved = tally(case)[1]
    assert (
        moved <= 1.0
        and moved >= impls.get("nystromformer").min_bytes(case, dict(case.options) | {"num_landmarks": 64, "conv_kernel": 33}) / 1e9
    )


def test_without_the_conv_v_is_read_once():
    """N = 65536, bf16: the conv skip's read of v (16 x 65536 x 64 x 2 bytes, 0.134 GB) and its filter are all the
    bytes it adds; without it, the forward moves 0.844 GB against min_bytes' 0.805 (v read once): the key parts' partial
    sums (16 heads x 64 parts x 64 x 64 fp32, 16.8 MB) written and read back make the difference."""
    with_conv = tally(case_at(65536, "fwd", "triton"))[1]
    case = case_at(65536, "fwd", "triton").resized(options=(("backend", "triton"), ("conv_kernel", 0)))
    without = tally(case)[1]
    assert with_conv - without == pytest.approx(16 * 65536 * 64 * 2 / 1e9, abs=1e-4)
    floor = impls.get("nystromformer").min_bytes(case, impls.get("nystromformer").resolve_options(case.options)) / 1e9
    assert floor <= without <= floor + 2 * 16 * 64 * 64 * 64 * 4 / 1e9 + 0.005


@pytest.mark.parametrize(("mode", "budget_gib"), [("fwd", 2), ("fwd_bwd", 6)])
def test_peaks_stay_within_table_1(mode, budget_gib):
    case = case_at(65536, mode, "triton")
    assert account_call(make_call(impls.get(case.impl).bind(case), make_inputs(case, device="meta"))).peak_bytes < budget_gib * GIB


def test_flops_count_the_recomputed_forward():
    """FlopCounterMode sees the backward's eager recompute and the landmark kernel's bmm, not inside the custom ops: the
    formula's forward + backward less its forward, plus that one bmm (2 m^2 D a head)."""
    case = Case(
        impl="nystromformer", seq_len=1000, heads=4, head_dim=32, dtype="bfloat16", mode="fwd_bwd", options=(("backend", "triton"),)
    )
    impl = impls.get("nystromformer")
    options = impl.resolve_options(case.options)
    call = make_call(impl.bind(case), make_inputs(case, device="meta"))
    with FlopCounterMode(display=False) as counter:
        call()
    landmark_bmm = 4 * 2 * 64 * 64 * 32
    assert counter.get_total_flops() == nystrom_flops(case, options) - nystrom_flops(case.resized(mode="fwd"), options) + landmark_bmm


# ---- refusals --------------------------------------------------------------------------------------


def test_refusals(monkeypatch):
    impl = impls.get("nystromformer")
    with pytest.raises(UsageError, match="backend must be one of eager, triton, not 'cuda'"):
        impl.resolve_options({"backend": "cuda"})
    cpu = Case(impl="nystromformer", seq_len=1024, device="cpu", options=(("backend", "triton"),))
    assert impl.not_supported(cpu) == ["nystromformer backend=triton runs on CUDA, not cpu (Triton kernels)"]
    assert impl.not_supported(cpu.resized(device="meta")) == []
    wide = Case(impl="nystromformer", seq_len=1024, head_dim=256, device="cuda", options=(("backend", "triton"), ("num_landmarks", 256)))
    assert impl.not_supported(wide) == [
        "nystromformer backend=triton handles head dims up to 128, not 256",
        "nystromformer backend=triton handles up to 64 landmarks, not 256",
    ]
    meta = torch.empty(1, 1, 512, 32, device="meta")
    with pytest.raises(ValueError, match="not torch.float64"):
        nystrom_attention(*(meta.double() for _ in range(3)), backend="triton")
    with pytest.raises(ValueError, match="up to 64 landmarks, not 65"):
        nystrom_attention(meta, meta, meta, num_landmarks=65, backend="triton")
    for backend in ("eager", "triton"):  # one filter a head, shaped as mlpen's Conv2d: else a wrong filter, or reads past it
        for shape in ((2, 1, 5, 1), (1, 1, 5, 2), (1, 2, 5, 1), (1, 5, 1)):
            with pytest.raises(ValueError, match=r"conv_weight must be \(H, 1, k, 1\) = \(1, 1, k, 1\).* not " + re.escape(str(shape))):
                nystrom_attention(meta, meta, meta, conv_weight=torch.empty(shape, device="meta"), backend=backend)
    with pytest.raises(ValueError, match="backend must be one of eager, triton, not 'fast'"):
        nystrom_attention(meta, meta, meta, backend="fast")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 1, 128, 8)
    with pytest.raises(ValueError, match="runs on CUDA .* not cpu"):
        nystrom_attention(q, q, q, backend="triton")


def test_a_second_derivative_is_refused_plainly(interpreted):
    """The backward differentiates the eager forward once, with no graph: create_graph=True raises instead of giving a
    gradient with no graph that a gradient penalty would silently drop."""
    q, k, v = (t.float().requires_grad_() for t in qkv(1, 2, 40, 8, seed=3))
    out = nystrom_attention(q, k, v, num_landmarks=8, backend="triton")
    with pytest.raises(RuntimeError, match=r"no graph: create_graph=True \(a second derivative\) is not supported"):
        torch.autograd.grad(out.sum(), q, create_graph=True)
    assert torch.isfinite(torch.autograd.grad(out.sum(), q)[0]).all()  # the first derivative still works
