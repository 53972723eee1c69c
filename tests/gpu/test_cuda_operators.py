"""The operators' CUDA plans against float64 on the CPU. Skipped without a GPU."""

import pytest
import torch

import attnprof.impls.cosformer.common as cosformer_common
from attnprof.impls.cosformer import cosformer_attention

pytestmark = pytest.mark.gpu


def rel_error(actual, expected) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm())


def assert_gradients_close(out, expected, tested, leaves, generator, tolerance):
    """Backward through both with one float64 gradient; each input's gradient within `tolerance`."""
    grad = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    expected.backward(grad)
    out.backward(grad.to(out.device, out.dtype))
    for mine, theirs in zip(tested, leaves, strict=True):
        assert rel_error(mine.grad, theirs.grad) < tolerance


def test_this_torch_multiplies_bf16_into_fp32_in_one_call():
    """Else cosFormer's bf16 plan falls back to upcasting its operands: right, but not the fast plan."""
    assert cosformer_common.MIXED_BMM
    a, b = (torch.randn(2, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    product = torch.bmm(a, b, out_dtype=torch.float32)
    assert product.dtype == torch.float32
    assert torch.allclose(product, a.float() @ b.float(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("seq_len", [3000, 65536])
def test_cosformer_bf16_plan_stays_within_bf16_rounding(causal, seq_len):
    """The plan timed in table 3 (bf16 products with fp32 sums, device steps): on the CPU it measured 1.20-1.36
    x the error of rounding the exact output to bf16."""
    generator = torch.Generator().manual_seed(seq_len)
    q, k, v = (torch.randn(1, 16, seq_len, 64, generator=generator).to(torch.bfloat16) for _ in range(3))
    expected = cosformer_attention(q.double(), k.double(), v.double(), causal=causal)  # float64, on the CPU
    out = cosformer_attention(q.cuda(), k.cuda(), v.cuda(), causal=causal)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_error(out, expected) < 1.6 * rel_error(expected.to(torch.bfloat16), expected)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("seq_len", [3000, 65536])
def test_cosformer_triton_bf16_stays_within_bf16_rounding(causal, seq_len):
    """backend=triton compiled for the GPU (the CPU tests run it through Triton's interpreter, which measured
    1.13-1.27 x the error of rounding the exact output to bf16)."""
    generator = torch.Generator().manual_seed(seq_len + 1)
    q, k, v = (torch.randn(1, 16, seq_len, 64, generator=generator).to(torch.bfloat16) for _ in range(3))
    expected = cosformer_attention(q.double(), k.double(), v.double(), causal=causal)  # float64, on the CPU
    out = cosformer_attention(q.cuda(), k.cuda(), v.cuda(), causal=causal, backend="triton")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_error(out, expected) < 1.4 * rel_error(expected.to(torch.bfloat16), expected)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(
    ("dtype", "tolerance", "chunk_size"), [(torch.float32, 1e-5, 16), (torch.float32, 1e-5, 128), (torch.float16, 1e-3, 64)]
)
def test_cosformer_triton_matches_float64_and_its_backward_runs(causal, dtype, tolerance, chunk_size):
    """A ragged length and head dim (1000, 48), the shortest and longest causal chunks; then the eager backward
    from the forward's saved tensors, against float64's gradients. (Few cases: each compiles its kernels.)"""
    generator = torch.Generator().manual_seed(chunk_size)
    q, k, v = (torch.randn(2, 3, 1000, 48, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(3))
    expected = cosformer_attention(q, k, v, causal=causal)
    tested = [t.detach().to("cuda", dtype).requires_grad_() for t in (q, k, v)]
    out = cosformer_attention(*tested, causal=causal, chunk_size=chunk_size, backend="triton")
    assert out.dtype == dtype and rel_error(out, expected) < tolerance
    assert_gradients_close(out, expected, tested, (q, k, v), generator, 5 * tolerance)


@pytest.mark.parametrize("variant", ["fixed", "axial", "logsparse", "mixture"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_combiner_bf16_on_cuda_matches_the_explicit_matrix(variant, causal):
    """With TF32 products (precision.py) inside the call, and the flag as it was after it."""
    from attnprof.impls.combiner import TOLERANCE, combiner_attention
    from attnprof.impls.reference.combiner import combiner_reference

    generator = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 4, 1000, 64, generator=generator).to(torch.bfloat16) for _ in range(3))
    expected = combiner_reference(q.double(), k.double(), v.double(), variant=variant, causal=causal)
    before = torch.backends.cuda.matmul.allow_tf32
    out = combiner_attention(q.cuda(), k.cuda(), v.cuda(), variant=variant, causal=causal)
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert out.dtype == torch.bfloat16 and rel_error(out, expected) < TOLERANCE["bfloat16"]


@pytest.mark.parametrize("variant", ["fixed", "axial", "mixture"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [1000, 1024], ids=["padded", "whole blocks"])
def test_triton_combiner_on_cuda_matches_the_explicit_matrix_with_its_gradients(variant, causal, dtype, n):
    """backend=triton compiled for the GPU (the CPU tests run its kernel through Triton's interpreter); whole blocks
    take softmax_values_qk where a Band is all the masking (Axial's row attention and direct part: forward only)."""
    from attnprof.impls.combiner import TOLERANCE, combiner_attention
    from attnprof.impls.reference.combiner import combiner_reference

    generator = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 4, n, 64, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(3))
    expected = combiner_reference(q, k, v, variant=variant, causal=causal)
    tested = [t.detach().to("cuda", dtype).requires_grad_() for t in (q, k, v)]
    tolerance = TOLERANCE["bfloat16" if dtype == torch.bfloat16 else "float32"]
    with torch.no_grad():
        assert rel_error(combiner_attention(*tested, variant=variant, causal=causal, backend="triton"), expected) < tolerance
    out = combiner_attention(*tested, variant=variant, causal=causal, backend="triton")
    assert out.dtype == dtype and rel_error(out, expected) < tolerance
    assert_gradients_close(out, expected, tested, (q, k, v), generator, 5 * tolerance)


@pytest.mark.parametrize("n", [1000, 8192])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_nystromformer_on_cuda_matches_float64_with_its_gradients(n, dtype):
    """backend=triton compiled for the GPU (the CPU tests run its kernels through Triton's interpreter): the profiled
    options (64 landmarks, 6 iterations, the seeded 33-tap conv), within the registered check's tolerance; at 8192 the
    keys split into 16 parts of 512 a head (triton_plan.MIN_PART_KEYS)."""
    from attnprof.impls.nystromformer import nystrom_attention, seeded_conv_weight
    from attnprof.impls.reference.nystromformer import nystrom_reference

    generator = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(1, 16, n, 64, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(3))
    expected = nystrom_reference(q, k, v, conv_weight=seeded_conv_weight(16, 33, "cpu", torch.float64))
    tested = [t.detach().to("cuda", dtype).requires_grad_() for t in (q, k, v)]
    out = nystrom_attention(*tested, conv_weight=seeded_conv_weight(16, 33, "cuda", dtype), backend="triton")
    tolerance = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4}[dtype]
    assert out.dtype == dtype and rel_error(out, expected) < tolerance
    assert_gradients_close(out, expected, tested, (q, k, v), generator, 5 * tolerance)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_nystromformer_bf16_stays_within_twice_bf16_rounding(backend):
    """Large logits (spread 16): both plans keep them in fp32, so the output is off float64 by about its own rounding
    (the CPU's eager plan: 1.7e-3 against 1.2e-2 with logits rounded to bf16; the interpreter truncates bf16 stores,
    so only a GPU shows the Triton kernels' figure)."""
    from attnprof.impls.nystromformer import nystrom_attention

    generator = torch.Generator().manual_seed(17)
    q, k, v = (torch.randn(1, 16, 8192, 64, generator=generator, dtype=torch.float64) for _ in range(3))
    q, k, v = (4 * q).to(torch.bfloat16), (4 * k).to(torch.bfloat16), v.to(torch.bfloat16)
    expected = nystrom_attention(q.double(), k.double(), v.double())  # float64, on the CPU
    out = nystrom_attention(q.cuda(), k.cuda(), v.cuda(), backend=backend)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_error(out, expected) < 2 * rel_error(expected.to(torch.bfloat16), expected)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_compiled_mixture_on_cuda_matches_the_explicit_matrix(causal):
    """backend=compile on a GPU (Triton kernels): the same function. gpu_session.sh runs it in part 3 (compiling
    takes a while), part 1 leaves it out (-k 'not compiled')."""
    from attnprof.impls.combiner import TOLERANCE, combiner_attention
    from attnprof.impls.reference.combiner import combiner_reference

    generator = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 4, 1000, 64, generator=generator).to(torch.bfloat16) for _ in range(3))
    expected = combiner_reference(q.double(), k.double(), v.double(), variant="mixture", causal=causal)
    out = combiner_attention(q.cuda(), k.cuda(), v.cuda(), variant="mixture", causal=causal, backend="compile")
    assert out.dtype == torch.bfloat16 and rel_error(out, expected) < TOLERANCE["bfloat16"]
