"""Exact accounting: repeatable, equal on meta and on the CPU, and scaling as the algorithms say."""

from dataclasses import replace

import pytest

from attnprof import impls
from attnprof.accounting import account_call
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case


def account(name, n, device="meta", **changes):
    case = Case(impl=name, seq_len=n, heads=4, head_dim=32, **changes)
    return account_call(make_call(impls.get(name).bind(case), make_inputs(case, device=device)))


def test_meta_equals_cpu_and_repeats_exactly():
    for mode in ("fwd", "fwd_bwd"):
        cpu = account("softmax", 256, device="cpu", mode=mode)
        assert account("softmax", 256, mode=mode) == cpu == account("softmax", 256, device="cpu", mode=mode)


def test_an_impls_kept_weights_are_not_counted_in_the_call_that_makes_them():
    """Nyströmformer's seeded conv weights are drawn once a worker and kept, as a layer keeps them: its first accounted
    call counted them (132 bytes more at H 2, bf16), so a line's peak depended on whether another line came first."""
    from attnprof.impls import nystromformer

    nystromformer._conv_weights.clear()
    first = account("nystromformer", 256, dtype="bfloat16")
    assert nystromformer._conv_weights, "the weights are kept for the next calls"
    assert account("nystromformer", 256, dtype="bfloat16") == first


def test_naive_softmax_is_quadratic_in_bytes_and_flops():
    small, large = account("softmax", 4096), account("softmax", 8192)
    assert 3.8 < large.peak_bytes / small.peak_bytes < 4.01
    assert large.flops == 4 * small.flops == 4 * 4 * 4 * 4096 * 4096 * 32 * 4 // 4


def test_sixty_four_k_is_accounted_on_meta_without_allocating():
    reading = account("softmax", 65536, dtype="bfloat16")
    assert reading.peak_bytes > 4 * 65536**2 * 2  # the N x N scores of 4 heads, in bf16 at least


def test_views_and_inputs_are_not_counted():
    import torch

    from attnprof.accounting import live_bytes_mode

    x = torch.empty(1000, device="meta")  # 4000 bytes, made outside the tracker
    with live_bytes_mode() as tracker:
        y = x.view(10, 100).t()  # a view: no new storage
        z = y.contiguous()  # a copy: 4000 new bytes
        del z
        w = torch.empty(500, device="meta")  # 2000 bytes, after z was freed
    assert tracker.peak_bytes == 4000 and tracker.current_bytes == 2000
    del w, y


def test_a_mixed_precision_bmm_is_counted_like_any_bmm():
    """bmm of bf16 operands into fp32 (out_dtype), as cosFormer's GPU plan calls it: torch's own formula
    raises TypeError on that overload (torch 2.13); ours counts 2 * batch * M * K * N."""
    import pytest
    import torch

    if "dtype" not in torch.ops.aten.bmm.overloads():
        pytest.skip("this torch has no bmm with out_dtype (torch < 2.8)")
    a = torch.empty(3, 8, 16, device="meta", dtype=torch.bfloat16)  # (batch, M, K)
    b = torch.empty(3, 16, 4, device="meta", dtype=torch.bfloat16)  # (batch, K, N)
    reading = account_call(lambda: torch.bmm(a, b, out_dtype=torch.float32))
    assert reading.flops == 2 * 3 * 8 * 16 * 4
    assert reading.peak_bytes == 3 * 8 * 4 * 4  # the fp32 product


def test_the_math_paths_formula_equals_its_counted_flops_forward_and_backward():
    """sdpa-math keeps the N x N weights for its backward (four matmuls, 2x the forward) where a fused kernel
    recomputes q k^T (five, 2.5x): the formula used the fused figure for both and overstated the math path 7/6."""
    impl = impls.get("sdpa-math")
    for causal in (False, True):
        for mode in ("fwd", "fwd_bwd"):
            case = Case(impl="sdpa-math", seq_len=256, heads=2, head_dim=16, causal=causal, mode=mode)
            counted = account_call(make_call(impl.bind(case), make_inputs(case, device="meta"))).flops
            assert impl.flops(case, {}) == pytest.approx(counted, rel=1e-9), (causal, mode)
    flash = Case(impl="sdpa-flash", seq_len=256, heads=2, head_dim=16, mode="fwd_bwd")
    assert impls.get("sdpa-flash").flops(flash, {}) * 6 == impl.flops(replace(flash, impl="sdpa-math"), {}) * 7


def test_causal_fused_sdpa_on_the_cpu_counts_the_key_blocks_its_kernel_computes():
    """The CPU flash kernel computes whole 512-key blocks up to each 256-row query block's last query: 0.75 of the
    scores at 1k, not half, which its times showed (causal/bidirectional 0.76, 0.63, 0.57 at 1k, 2k, 4k)."""
    from attnprof.impls.sdpa import cpu_flash_causal_share

    assert [cpu_flash_causal_share(n) for n in (256, 1024, 2048, 4096)] == [1.0, 0.75, 0.625, 0.5625]
    sdpa = impls.get("sdpa")
    for mode in ("fwd", "fwd_bwd"):
        bidir = Case(impl="sdpa", seq_len=1024, heads=16, head_dim=64, device="cpu", mode=mode)
        assert sdpa.flops(replace(bidir, causal=True), {}) == sdpa.flops(bidir, {}) * 3 // 4
        on_a_gpu = replace(bidir, causal=True, device="cuda")  # small blocks against N: half
        assert sdpa.flops(on_a_gpu, {}) == sdpa.flops(replace(bidir, device="cuda"), {}) // 2


def test_op_tally_counts_launches_and_bytes_op_by_op():
    """Reads: distinct elements of the arguments (a broadcast read once), not the tensors an op only writes; views
    launch nothing. x is 4 x 8 fp32, 128 bytes."""
    import torch

    from attnprof.accounting import op_tally

    x, index = torch.randn(4, 8), torch.zeros(4, 2, dtype=torch.int64)
    with op_tally() as tally:
        y = x + 1  # reads 128, writes 128
        x.add_(1)  # in place: reads and writes 128
        y.copy_(x)  # reads x only
        y.fill_(0)  # reads nothing
        x.expand(3, 4, 8).transpose(1, 2).mul(2)  # two views, then reads 128 once and writes 384
        x.gather(1, index)  # reads the 8 gathered floats and the index (64), writes 32
        torch.ops.aten.threshold_backward.grad_input(y, x, 0, grad_input=y)  # an out argument by another name: reads y, x
    assert tally.ops == 7
    assert tally.bytes_read == 4 * 128 + 32 + 64 + 2 * 128
    assert tally.bytes_written == 4 * 128 + 384 + 32 + 128
