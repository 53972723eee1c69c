"""Combiner operators against the explicit N x N oracle, and the properties the paper promises."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from combiner_helpers import naive_prefix_max

from attnprof import impls
from attnprof.accounting import account_call
from attnprof.errors import UsageError
from attnprof.impls.base import io_bytes, meta_stands_for
from attnprof.impls.combiner import combiner_attention
from attnprof.impls.combiner.common import default_block
from attnprof.impls.combiner.scan import prefix_max
from attnprof.impls.reference.combiner import block_length, combiner_reference, effective_weights
from attnprof.impls.softmax import softmax_attention
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case

VARIANTS = ("fixed", "axial", "logsparse", "mixture")
# (length, block): multiples and non-multiples of the block, one block, the default block, and
# lengths where N - 1 is a power of two (17, 33: the reference code's Logsparse level count is short there).
SHAPES = [(1, None), (2, None), (7, 3), (16, 4), (17, None), (23, 5), (33, 8), (40, 64)]
CASES = list(itertools.product(VARIANTS, (False, True), SHAPES))


def qkv(n, *, batch=2, heads=2, dim=4, dtype=torch.float64, seed=0, grad=False):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, dim, generator=generator, dtype=dtype).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize("variant,causal,shape", CASES)
def test_matches_the_oracle_in_float64(variant, causal, shape):
    n, block = shape
    q, k, v = qkv(n)
    out = combiner_attention(q, k, v, variant=variant, causal=causal, block_size=block)
    expected = combiner_reference(q, k, v, variant=variant, causal=causal, block_size=block)
    assert out.shape == q.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant,causal,shape", CASES)
def test_oracle_rows_are_distributions_with_full_support(variant, causal, shape):
    n, block = shape
    q, k, _ = qkv(n)
    weights = effective_weights(q, k, variant=variant, causal=causal, block_size=block)  # (B, H, N, N)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=torch.float64), rtol=0, atol=1e-12)
    allowed = torch.ones(n, n, dtype=torch.bool).tril() if causal else torch.ones(n, n, dtype=torch.bool)
    assert torch.all(weights[..., ~allowed] == 0), "causal rows must be zero above the diagonal"
    assert torch.all(weights[..., allowed] > 0), "every query must reach every key it may see (full support)"


@pytest.mark.parametrize("variant,causal", list(itertools.product(VARIANTS, (False, True))))
@pytest.mark.parametrize("n,block", [(23, 5), (64, None), (50, 8)])
def test_values_of_ones_give_ones(variant, causal, n, block):
    q, k, _ = qkv(n, seed=1)
    out = combiner_attention(q, k, torch.ones_like(q), variant=variant, causal=causal, block_size=block)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,block,cut", [(29, 4, 13), (64, None, 31), (40, 7, 20)])
def test_causal_outputs_never_see_the_future(variant, n, block, cut):
    q, k, v = qkv(n, seed=2)
    before = combiner_attention(q, k, v, variant=variant, causal=True, block_size=block)
    changed = [x.clone() for x in (q, k, v)]
    for x in changed:
        x[..., cut + 1 :, :] = 100.0 * torch.randn_like(x[..., cut + 1 :, :])
    after = combiner_attention(*changed, variant=variant, causal=True, block_size=block)
    torch.testing.assert_close(after[..., : cut + 1, :], before[..., : cut + 1, :], rtol=0, atol=1e-12)
    assert not torch.allclose(after[..., cut + 1 :, :], before[..., cut + 1 :, :])


@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("n,block", [(10, 10), (10, 64), (33, 40)])
def test_fixed_with_one_block_is_exact_softmax(causal, n, block):
    q, k, v = qkv(n, seed=3)
    out = combiner_attention(q, k, v, variant="fixed", causal=causal, block_size=block)
    torch.testing.assert_close(out, softmax_attention(q, k, v, causal=causal), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant,causal", list(itertools.product(VARIANTS, (False, True))))
def test_gradcheck_in_float64(variant, causal):
    q, k, v = qkv(7, batch=1, heads=1, dim=2, seed=4, grad=True)  # 7 = 2 blocks of 3 + padding
    assert torch.autograd.gradcheck(lambda *t: combiner_attention(*t, variant=variant, causal=causal, block_size=3), (q, k, v))


@pytest.mark.parametrize("variant,causal", list(itertools.product(VARIANTS, (False, True))))
def test_gradients_match_the_oracle(variant, causal):
    fast, slow = qkv(37, seed=5, grad=True), qkv(37, seed=5, grad=True)
    grad_out = torch.randn(2, 2, 37, 4, dtype=torch.float64)
    combiner_attention(*fast, variant=variant, causal=causal, block_size=6).backward(grad_out)
    combiner_reference(*slow, variant=variant, causal=causal, block_size=6).backward(grad_out)
    for mine, theirs in zip(fast, slow, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant,causal", list(itertools.product(VARIANTS, (False, True))))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_half_inputs_stay_finite_at_a_long_length(variant, causal, dtype):
    q, k, v = qkv(4000, batch=1, heads=1, dim=16, dtype=torch.float32, seed=6)
    out = combiner_attention(*(x.to(dtype) for x in (q, k, v)), variant=variant, causal=causal)
    assert out.dtype == dtype and torch.isfinite(out).all()
    full = combiner_attention(q, k, v, variant=variant, causal=causal)  # float32
    assert torch.linalg.vector_norm(out.float() - full) / torch.linalg.vector_norm(full) < 2e-2


@pytest.mark.parametrize("dim,reverse,padded", list(itertools.product((1, 2), (False, True), (False, True))))
@pytest.mark.parametrize("shape", [(2, 9, 11, 3), (1, 16, 2, 2), (1, 2, 17, 2), (1, 1, 1, 2)], ids=["ragged", "16", "17", "1"])
def test_prefix_max_methods_agree_with_a_plain_loop(dim, reverse, padded, shape):
    """The blocked scan's chunks: whole (T = 16, four of four), a short last one (9: 3 + 3 + 3 is whole, 11 and
    17: 4 + 4 + 3, 5 + 5 + 5 + 2), and a single position."""
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    cells = shape[1] * shape[2]
    valid = (torch.arange(cells).view(shape[1], shape[2], 1) < max(1, cells * 4 // 5)) if padded else None  # a padded tail
    expected = naive_prefix_max(x, dim, reverse, valid)
    grad = torch.randn_like(expected)
    expected_grad = torch.autograd.grad(expected, x, grad)[0] if expected.requires_grad else torch.zeros_like(x)  # T = 1: all 0
    for method in ("steps", "blocked", "cummax"):
        out = prefix_max(x, dim, reverse=reverse, valid=valid, method=method)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ("steps", "blocked"))
def test_prefix_max_gradients_stay_differentiable_under_create_graph(method):
    """A gradient taken with create_graph=True is a function of the incoming gradient, as the cummax path's is (the
    steps and blocked scans' first versions returned it detached: a second derivative through them read 0 or failed)."""
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    w, c = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True), torch.randn(2, 9, 3, dtype=torch.float64)
    valid = torch.rand(9, 1) > 0.2
    second = []
    for m in (method, "cummax"):
        (grad_x,) = torch.autograd.grad((prefix_max(x, -2, valid=valid, method=m) * w).sum(), x, create_graph=True)
        second.append(torch.autograd.grad((grad_x * c).sum(), w)[0])
    torch.testing.assert_close(second[0], second[1], rtol=0, atol=1e-12)
    assert second[1].abs().sum() > 0


@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("method,plan", [("blocked", "merged"), ("cummax", "merged"), ("blocked", "flash")])
@pytest.mark.parametrize("n,block", [(23, 5), (24, 3), (9, 9), (7, 3), (2, 1)], ids=["ragged", "whole", "one-row", "short", "tiny"])
def test_mixture_on_the_device_plan_matches_the_oracle(monkeypatch, causal, method, plan, n, block):
    """The CPU runs the steps scan and the fused flash kernel (mixture_flash.py); CUDA and meta run the blocked scan
    and the parts' own eager softmaxes, merged. Check the whole operator on those too: with padding (the last row's keys and regions),
    on a one-row grid (no column key at all) and with causal row blocks (row 0 has no earlier row)."""
    monkeypatch.setattr("attnprof.impls.combiner.scan.default_method", lambda device: method)
    monkeypatch.setattr("attnprof.impls.combiner.mixture.plan", lambda device: plan)
    check_against_the_oracle("mixture", causal, n, block)


@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("method", ("blocked", "cummax"))
def test_mixture_device_plan_second_derivatives_match_the_oracle(monkeypatch, causal, method):
    """Hessian-vector products through the merged plan (the GPU's). A causal row block whose column part has no key
    (log-normaliser -inf) made them NaN: logaddexp's double backward multiplies 0 by inf."""
    monkeypatch.setattr("attnprof.impls.combiner.scan.default_method", lambda device: method)
    monkeypatch.setattr("attnprof.impls.combiner.mixture.plan", lambda device: "merged")
    q, k, v = qkv(23, grad=True)
    grad, direction = qkv(23, seed=7)[:2]
    products = []
    for attention in (combiner_attention, combiner_reference):
        out = attention(q, k, v, variant="mixture", causal=causal, block_size=5)
        (grad_q,) = torch.autograd.grad((out * grad).sum(), q, create_graph=True)
        products.append(torch.autograd.grad((grad_q * direction).sum(), (q, k, v)))
    for ours, theirs in zip(*products, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("n,block", [(23, 5), (24, 3), (9, 9), (1, None)], ids=["ragged", "whole", "one-block", "one-token"])
def test_fixed_on_the_device_plan_matches_the_oracle(monkeypatch, causal, n, block):
    """The CPU runs Fixed's fused-kernel plan; CUDA and meta the eager joint softmax: check that one here too."""
    monkeypatch.setattr("attnprof.impls.combiner.fixed.plan", lambda device: "joint")
    check_against_the_oracle("fixed", causal, n, block)


@pytest.mark.parametrize("variant", ("fixed", "mixture"))
def test_cpu_plans_refuse_a_second_derivative(variant):
    """The CPU plans' fused kernel has no second derivative: a backward with create_graph=True raises a plain error
    rather than give a second derivative that treats the kernel's gradients as constants (Mixture's was silently
    wrong before the fused plan; Fixed's ran eagerly)."""
    q, k, v = qkv(13, grad=True)
    out = combiner_attention(q, k, v, variant=variant, causal=True, block_size=4)
    with pytest.raises(RuntimeError, match="no derivative: create_graph=True"):
        torch.autograd.grad(out.sum(), q, create_graph=True)
    assert torch.isfinite(torch.autograd.grad(out.sum(), q)[0]).all()  # the first derivative still works


@pytest.mark.parametrize("variant,causal,mode", list(itertools.product(("fixed", "mixture"), (False, True), ("fwd", "fwd_bwd"))))
def test_cpu_plan_flops_formula_equals_the_counted_flops(variant, causal, mode):
    """The CPU plans of Fixed and Mixture (fused flash kernel; Mixture's whole summary groups) counted on meta standing for
    the CPU, as the host-memory guard accounts a CPU case: the counter must see the kernel (torch has no formula for it)
    and the formula the plan."""
    impl = impls.get(f"combiner-{variant}")
    for n, block in [(1000, None), (96, 7), (2, None)]:
        options = () if block is None else (("block_size", block),)
        case = Case(impl=impl.name, seq_len=n, heads=2, head_dim=8, dtype="float32", causal=causal, mode=mode, options=options)
        with meta_stands_for("cpu"):
            reading = account_call(make_call(impl.bind(case), make_inputs(case, device="meta")))
        assert impl.flops(case, impl.resolve_options(case.options)) == reading.flops > 0


@pytest.mark.parametrize("variant,causal,mode", list(itertools.product(VARIANTS, (False, True), ("fwd", "fwd_bwd"))))
def test_flops_formula_equals_the_counted_flops(variant, causal, mode):
    impl = impls.get(f"combiner-{variant}")
    for n, block in [(1000, None), (96, 7), (2, None)]:
        options = () if block is None or variant == "logsparse" else (("block_size", block),)
        case = Case(
            impl=impl.name, seq_len=n, heads=2, head_dim=8, dtype="bfloat16", device="cuda", causal=causal, mode=mode, options=options
        )
        reading = account_call(make_call(impl.bind(case), make_inputs(case, device="meta")))  # meta standing for cuda
        assert impl.flops(case, impl.resolve_options(case.options)) == reading.flops
        min_bytes = impl.min_bytes(case, impl.resolve_options(case.options))
        assert (
            min_bytes > io_bytes(case) if n > 2 else min_bytes >= io_bytes(case)
        )  # plus the summaries' traffic (none at n = 2 for logsparse)


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("variant,causal", list(itertools.product(VARIANTS, (False, True))))
def test_no_quadratic_intermediate(variant, causal):
    n = 16384
    case = Case(impl=f"combiner-{variant}", seq_len=n, heads=1, head_dim=8, dtype="bfloat16", causal=causal, mode="fwd_bwd")
    largest = _LargestTensor()
    with largest:
        make_call(impls.get(case.impl).bind(case), make_inputs(case, device="meta"))()
    assert largest.numel < n * n // 16, f"largest intermediate has {largest.numel} elements"


def test_registration_options_and_refusals():
    logsparse = impls.get("combiner-logsparse")
    assert logsparse.options == {"backend": "eager"}  # its dyadic tree fixes every block: no block size
    with pytest.raises(UsageError, match="'block_size'"):
        logsparse.resolve_options({"block_size": "16"})
    for variant in [v for v in VARIANTS if v != "logsparse"]:
        impl = impls.get(f"combiner-{variant}")
        assert impl.family == "combiner" and not impl.exact and impl.options == {"block_size": None, "backend": "eager"}
        assert set(impl.causal) == {False, True} and impl.meta_exact
        assert impl.resolve_options({"block_size": "16"}) == {"block_size": 16, "backend": "eager"}
        with pytest.raises(UsageError, match="backend"):
            impl.resolve_options({"backend": "jit"})
        with pytest.raises(UsageError, match="block_size"):  # a bad value is refused before any case
            impl.resolve_options({"block_size": "0"})
        q, k, v = qkv(20, seed=7)
        small = Case(impl=impl.name, seq_len=20, causal=True, options=(("block_size", 6),))
        torch.testing.assert_close(impl.bind(small)(q, k, v), impl.bind_reference(small)(q, k, v), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="variant"):
        combiner_attention(*qkv(4), variant="routing")


def test_default_block_is_the_power_of_two_nearest_sqrt_n():
    assert [default_block(n) for n in (1, 3, 16, 100, 8192, 65536)] == [1, 2, 4, 8, 64, 256]
    assert all(default_block(n) == block_length(None, n) for n in range(1, 3000))
    assert block_length(100, 10) == 10  # a block longer than the sequence is one block


@pytest.fixture
def compiled_by_aot_autograd(monkeypatch):
    """backend=compile through dynamo and AOTAutograd (graph capture, graph breaks, functionalization, the backward
    graph) without inductor's code generation: on a fresh machine inductor's C++ compiles took 70 s for Mixture's
    forward and backward and 50 s for its device plan, most of CI's compiling. Inductor itself compiles Fixed below,
    and Mixture on a GPU (tests/gpu)."""
    from attnprof.impls import combiner

    compiled = functools.cache(lambda variant: torch.compile(combiner.OPERATORS[variant], dynamic=False, backend="aot_eager"))
    monkeypatch.setattr(combiner, "_compiled", compiled)


@pytest.mark.parametrize("variant, causal, n, block", [("fixed", True, 40, 8), ("mixture", False, 37, 6)])
def test_the_compiled_backend_matches_the_oracle(variant, causal, n, block, request):
    """backend=compile (torch.compile of the same operator; inductor's C++ code here, Triton on a GPU): outputs
    and gradients equal the eager operator's, on lengths that need padding. Inductor compiles Fixed (~15 s on a fresh
    machine); Mixture goes through AOTAutograd only (see compiled_by_aot_autograd)."""
    if variant == "mixture":
        request.getfixturevalue("compiled_by_aot_autograd")
    check_against_the_oracle(variant, causal, n, block, backend="compile")


def check_against_the_oracle(variant, causal, n, block, **options):
    """Outputs (1e-12) and gradients (1e-10) of combiner_attention against the oracle's, in float64."""
    fast, slow = qkv(n, seed=8, grad=True), qkv(n, seed=8, grad=True)
    out = combiner_attention(*fast, variant=variant, causal=causal, block_size=block, **options)
    expected = combiner_reference(*slow, variant=variant, causal=causal, block_size=block)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    expected.backward(grad_out)
    for mine, theirs in zip(fast, slow, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-10)


def test_the_compiled_backend_takes_the_device_plan_too(monkeypatch, compiled_by_aot_autograd):
    """On a GPU backend=compile compiles Mixture's device plan (merged part softmaxes), which the CPU does not take by
    itself: forced here, in one graph. Its first version failed in the backward: dynamo broke the graph at the
    scan's strided out= writes and at the masks' host-side planning, and the merge changed in place an output that
    one graph kept for its backward (AOTAutograd's findings, which need no inductor)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr("attnprof.impls.combiner.mixture.plan", lambda device: "merged")
    counters.clear()
    check_against_the_oracle("mixture", False, 37, 6, backend="compile")
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_the_compiled_backend_is_accounted_as_the_eager_plan():
    """On meta (the accounting) backend=compile runs eagerly: same FLOPs and peak as backend=eager."""
    readings = []
    for backend in ("eager", "compile"):
        case = Case(impl="combiner-mixture", seq_len=4096, heads=4, head_dim=32, causal=True, options=(("backend", backend),))
        readings.append(account_call(make_call(impls.get(case.impl).bind(case), make_inputs(case, device="meta"))))
    assert readings[0] == readings[1]


def test_an_accounting_runs_check_of_the_compiled_backend_checks_the_eager_plan_without_compiling():
    """The check of an accounting run ran backend=compile on the CPU, compiling first (16 s a configuration), to
    check a plan other than the one meta counts."""
    from attnprof.impls import combiner
    from attnprof.impls.base import checking_the_accounted_plan

    q, k, v = (torch.randn(1, 2, 64, 16, dtype=torch.float64) for _ in range(3))  # (B, H, N, D) each
    combiner._compiled.cache_clear()
    with checking_the_accounted_plan():
        out = combiner.combiner_attention(q, k, v, variant="fixed", backend="compile")
    assert combiner._compiled.cache_info().currsize == 0  # torch.compile was never asked for a graph
    assert torch.equal(out, combiner.combiner_attention(q, k, v, variant="fixed", backend="eager"))


def test_the_compiled_backend_compiles_every_shape_of_a_sweep(monkeypatch, compiled_by_aot_autograd):
    """Past torch.compile's limit of graphs per function (8 by default) a function runs eagerly without a word,
    and a sweep would time the eager operator under the compiled label. With the limit here set to 1 and torch
    told to fail rather than fall back, three shapes all compile: the call raises the limit for itself. (The limit is
    dynamo's: AOTAutograd's graphs stand in for inductor's.)"""
    import torch._dynamo.config as dynamo

    limit = "recompile_limit" if "recompile_limit" in dynamo._config else "cache_size_limit"
    monkeypatch.setattr(dynamo, limit, 1)
    monkeypatch.setattr(dynamo, "fail_on_recompile_limit_hit" if limit == "recompile_limit" else "fail_on_cache_limit_hit", True)
    for n in (20, 23, 26):
        q, k, v = qkv(n, batch=1, heads=1, dim=2, seed=n)
        out = combiner_attention(q, k, v, variant="axial", block_size=4, backend="compile")
        torch.testing.assert_close(out, combiner_attention(q, k, v, variant="axial", block_size=4))
