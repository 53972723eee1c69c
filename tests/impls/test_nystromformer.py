"""Nyströmformer: golden files, the plain reference, batch (in)variance, gradients, half precision, meta accounting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnprof import impls
from attnprof.accounting import account_call
from attnprof.errors import UsageError
from attnprof.impls.nystromformer import nystrom_attention, nystrom_flops, seeded_conv_weight
from attnprof.impls.reference.nystromformer import nystrom_reference, segment_lengths
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case, parse_impls

GOLDEN = Path(__file__).resolve().parents[3] / "shared" / "golden"
GOLDEN_FILES = sorted(GOLDEN.glob("nystrom_*.npz")) if GOLDEN.is_dir() else []
GIB = 2**30


def rel_err(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def qkv(b, h, n, d, seed=0):
    return (randn(b, h, n, d, seed=seed + i) for i in range(3))


@pytest.mark.skipif(not GOLDEN_FILES, reason=f"golden files not found under {GOLDEN}")
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["f64", "f32"])
def test_matches_golden_files(path, dtype, bound):
    data = np.load(path)
    q, k, v = (torch.from_numpy(data[key]).to(dtype) for key in ("q", "k", "v"))
    weight = torch.from_numpy(data["conv_weight"]) if "conv_weight" in data.files else None
    options = dict(num_landmarks=int(data["num_landmarks"]), pinv_iterations=int(data["pinv_iterations"]), conv_weight=weight)
    expected = torch.from_numpy(data["out"])
    out = nystrom_attention(q, k, v, **options)
    assert out.dtype == dtype
    assert rel_err(out, expected) < bound
    assert rel_err(nystrom_reference(q, k, v, **options), expected) < bound


def test_golden_files_are_present():
    if not GOLDEN.is_dir():
        pytest.skip(f"shared golden directory {GOLDEN} is absent")
    assert len(GOLDEN_FILES) == 8 and sum("_conv33_" in p.name for p in GOLDEN_FILES) == 4


def test_segment_lengths_follow_extended_segment_means():
    assert segment_lengths(197, 64) == [3] * 59 + [4] * 5  # ALGORITHMS.md 2.3 example
    assert segment_lengths(256, 64) == [4] * 64
    assert sum(segment_lengths(1000, 7)) == 1000


@pytest.mark.parametrize("n, m", [(197, 64), (100, 7), (65, 64), (1000, 64)])
@pytest.mark.parametrize("pinv_init", ["reference", "per-head"])
def test_indivisible_lengths_match_plain_reference(n, m, pinv_init):
    q, k, v = qkv(2, 3, n, 16, seed=n)
    out = nystrom_attention(q, k, v, num_landmarks=m, pinv_init=pinv_init)
    assert rel_err(out, nystrom_reference(q, k, v, num_landmarks=m, pinv_init=pinv_init)) < 1e-10


@pytest.mark.parametrize("n", [20, 64])
def test_short_sequences_are_exact_softmax_plus_conv(n):
    q, k, v = qkv(2, 3, n, 8, seed=n)
    weight = randn(3, 1, 5, 1, seed=9) * 0.2
    weights = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)  # (B, H, N, N)
    expected = weights @ v + F.conv2d(v, weight, padding=(2, 0), groups=3)
    assert rel_err(nystrom_attention(q, k, v, num_landmarks=64, conv_weight=weight), expected) < 1e-12


def two_batches():
    """Sample 0 shared; sample 1 differs, and in `sharp` its larger logits give A a larger column sum."""
    q, k, v = qkv(2, 2, 128, 16, seed=5)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[1], k2[1], v2[1] = 4 * randn(2, 128, 16, seed=6), 4 * randn(2, 128, 16, seed=7), randn(2, 128, 16, seed=8)
    return (q, k, v), (q2, k2, v2)


def test_per_head_init_differs_from_reference_init():
    _, sharp = two_batches()
    per_head = nystrom_attention(*sharp, num_landmarks=16, pinv_init="per-head")
    reference = nystrom_attention(*sharp, num_landmarks=16, pinv_init="reference")
    assert rel_err(reference[0], per_head[0]) > 1e-4  # sample 0 starts from sample 1's larger max
    assert rel_err(per_head, nystrom_reference(*sharp, num_landmarks=16, pinv_init="per-head")) < 1e-10


def test_per_head_init_is_batch_invariant_and_reference_init_is_not():
    plain, sharp = two_batches()
    options = dict(num_landmarks=16, conv_weight=seeded_conv_weight(2, 33, "cpu", torch.float64))
    per_head = [nystrom_attention(*x, pinv_init="per-head", **options)[0] for x in (plain, sharp)]
    reference = [nystrom_attention(*x, pinv_init="reference", **options)[0] for x in (plain, sharp)]
    assert torch.equal(per_head[0], per_head[1]) or rel_err(per_head[1], per_head[0]) < 1e-13
    assert rel_err(reference[1], reference[0]) > 1e-4


@pytest.mark.parametrize("n, m, kernel, pinv_init", [(10, 4, 3, "reference"), (12, 4, 0, "per-head"), (5, 8, 3, "reference")])
def test_gradcheck_float64(n, m, kernel, pinv_init):
    q, k, v = (x.requires_grad_() for x in qkv(1, 2, n, 4, seed=n))
    weight = randn(2, 1, kernel, 1, seed=3) if kernel else None
    fn = lambda q, k, v: nystrom_attention(q, k, v, num_landmarks=m, conv_weight=weight, pinv_init=pinv_init)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-6, fast_mode=True)


def test_gradients_match_reference():
    inputs = [x.requires_grad_() for x in qkv(2, 2, 150, 8, seed=11)]
    grad_out = randn(2, 2, 150, 8, seed=12)
    weight = seeded_conv_weight(2, 33, "cpu", torch.float64)
    grads = []
    for op in (nystrom_attention, nystrom_reference):
        grads.append(torch.autograd.grad(op(*inputs, num_landmarks=16, conv_weight=weight), inputs, grad_out))
    for fast, plain in zip(*grads, strict=True):
        assert rel_err(fast, plain) < 1e-9


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_inputs_stay_finite_and_close_at_16k(dtype):
    impl = impls.get("nystromformer")
    for kernel in (0, 33):  # without the conv the attention part is the whole output
        case = Case(impl="nystromformer", seq_len=16384, heads=1, head_dim=16, dtype=dtype, options=(("conv_kernel", kernel),), seed=2)
        x = make_inputs(case)
        out = impl.bind(case)(x.q, x.k, x.v)
        ref = impl.bind_reference(case)(x.q.double(), x.k.double(), x.v.double())
        assert out.dtype == x.q.dtype and torch.isfinite(out).all()
        assert rel_err(out, ref) < impl.check_tolerance[dtype] / 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_keep_large_logits_as_exact_as_the_output_rounding(dtype):
    """Logits rounded to the input dtype lost a share of each logit's size: at a logit spread of 16 the bf16 output was
    1.2e-2 off float64 of the same rounded inputs, against 1.7e-3 for the output's own rounding (a numerics audit)."""
    q, k, v = qkv(1, 2, 1024, 64, seed=5)
    q, k, v = (4 * q).to(dtype), (4 * k).to(dtype), v.to(dtype)  # q . k / sqrt(d) spread about 16
    out = nystrom_attention(q, k, v, num_landmarks=64)
    exact = nystrom_attention(q.double(), k.double(), v.double(), num_landmarks=64)
    floor = rel_err(exact.to(dtype), exact)  # the output's rounding alone
    assert rel_err(out, exact) < 2 * floor, (rel_err(out, exact), floor)


def test_half_gradients_stay_finite_under_a_loss_scaled_output_gradient():
    """fp16's backward of Bk @ V formed dBk = dW V^T in fp16, past 65504 under an output gradient scaled by 2^11 (max
    about 9e3, as GradScaler scales) while the true gradients stayed below 15: every dk NaN (a numerics audit)."""
    q, k, v = (x.half().requires_grad_() for x in qkv(1, 2, 2048, 64, seed=6))
    grad_out = randn(1, 2, 2048, 64, seed=9).half() * 2**11
    grads = torch.autograd.grad(nystrom_attention(q, k, v, num_landmarks=64), (q, k, v), grad_out)
    wide = [x.detach().double().requires_grad_() for x in (q, k, v)]
    exact = torch.autograd.grad(nystrom_attention(*wide, num_landmarks=64), wide, grad_out.double())
    for name, grad, truth in zip("qkv", grads, exact, strict=True):
        assert torch.isfinite(grad).all(), f"d{name} not finite"
        assert rel_err(grad, truth) < 1e-2, (name, rel_err(grad, truth))


def test_registered_fn_matches_registered_reference_in_float32():
    impl = impls.get("nystromformer")
    case = Case(impl="nystromformer", seq_len=300, heads=4, head_dim=32, batch=2, options=(("num_landmarks", 32),), seed=4)
    x = make_inputs(case)
    out = impl.bind(case)(x.q, x.k, x.v)
    ref = impl.bind_reference(case)(x.q.double(), x.k.double(), x.v.double())
    assert rel_err(out, ref) < impl.check_tolerance["float32"]
    assert rel_err(out, impl.bind(case.resized(options=(("num_landmarks", 32), ("conv_kernel", 0))))(x.q, x.k, x.v)) > 0.1  # conv is on


def test_seeded_conv_weight_is_deterministic_and_cached():
    weight = seeded_conv_weight(3, 33, "cpu", torch.float32)
    assert weight.shape == (3, 1, 33, 1) and weight.abs().max() <= 33**-0.5
    assert seeded_conv_weight(3, 33, "cpu", torch.float32) is weight
    assert torch.equal(seeded_conv_weight(3, 33, "cpu", torch.float64), weight.double())


def test_refusals_have_reasons():
    impl = impls.get("nystromformer")
    assert impl.family == "low-rank" and not impl.exact
    assert any("causal" in r for r in impl.not_supported(Case(impl="nystromformer", seq_len=256, causal=True)))
    with pytest.raises(UsageError, match="odd"):  # a bad value is refused before any case, not per case
        impl.resolve_options({"conv_kernel": 32})
    with pytest.raises(UsageError, match="pinv_init"):
        impl.resolve_options({"pinv_init": "x"})
    (two_options,) = parse_impls("nystromformer:num_landmarks=32,pinv_iterations=3")
    assert impl.resolve_options(dict(two_options.options)) == {**impl.resolve_options({}), "num_landmarks": 32, "pinv_iterations": 3}
    (colons,) = parse_impls("nystromformer:num_landmarks=32:pinv_iterations=3")  # the guess a user makes
    with pytest.raises(UsageError, match=r"'32:pinv_iterations=3' .* separate an impl's options with ','"):
        impl.resolve_options(dict(colons.options))
    assert impl.not_supported(Case(impl="nystromformer", seq_len=256, options=(("conv_kernel", 0),))) == []
    with pytest.raises(ValueError, match="causal"):
        impl.fn(*qkv(1, 1, 8, 4), causal=True)


@pytest.mark.parametrize(
    "n, mode, options",
    [
        (1000, "fwd", ()),
        (1000, "fwd_bwd", ()),
        (197, "fwd_bwd", (("conv_kernel", 0),)),
        (50, "fwd_bwd", ()),
        (4099, "fwd", (("num_landmarks", 32),)),
    ],
)
def test_flops_formula_matches_flop_counter(n, mode, options):
    impl = impls.get("nystromformer")
    case = Case(impl="nystromformer", seq_len=n, heads=4, head_dim=32, dtype="bfloat16", mode=mode, options=options)
    reading = account_call(make_call(impl.bind(case), make_inputs(case, device="meta")))
    assert reading.flops == nystrom_flops(case, impl.resolve_options(options))


@pytest.mark.parametrize("mode, budget_gib", [("fwd", 2), ("fwd_bwd", 6)])
def test_memory_at_64k_on_meta_has_no_n_by_n_intermediate(mode, budget_gib):
    impl = impls.get("nystromformer")
    case = Case(impl="nystromformer", seq_len=65536, heads=16, head_dim=64, dtype="bfloat16", mode=mode)
    reading = account_call(make_call(impl.bind(case), make_inputs(case, device="meta")))
    assert reading.peak_bytes < budget_gib * GIB  # one N x N bf16 map for one head alone is 8 GiB
    assert impl.min_bytes(case, impl.resolve_options(())) > 0
