"""The seed operators called from a notebook: a slip in q, k, v or an option is one clear error naming it, never a
silent wrong answer (an operator library audit found NaN, uninitialised memory and rounded-down inputs)."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch

from attnprof.impls.combiner import combiner_attention
from attnprof.impls.cosformer import cosformer_attention
from attnprof.impls.nystromformer import nystrom_attention
from attnprof.impls.sdpa import sdpa_attention
from attnprof.impls.softmax import softmax_attention

OPERATORS = {
    "cosformer": cosformer_attention,
    "nystromformer": functools.partial(nystrom_attention, num_landmarks=4),
    **{f"combiner-{v}": functools.partial(combiner_attention, variant=v) for v in ("fixed", "axial", "logsparse", "mixture")},
    "softmax": softmax_attention,  # the reference: a meta k gave NaN, int64 inputs zeros, causal="no" the causal form
    "sdpa": sdpa_attention,  # PyTorch's: a v shorter than k ran, its CPU kernel leaving the extra keys out
}


def qkv(shape_q=(1, 2, 8, 4), shape_k=None, shape_v=None, dtypes=(torch.float32,) * 3, devices=("cpu",) * 3):
    shapes = (shape_q, shape_k or shape_q, shape_v or shape_k or shape_q)
    gen = torch.Generator().manual_seed(0)
    made = [torch.randn(s, generator=gen, dtype=torch.float64).to(d) for s, d in zip(shapes, dtypes, strict=True)]
    return [x if device == "cpu" else torch.empty_like(x, device=device) for x, device in zip(made, devices, strict=True)]


@pytest.mark.parametrize("name", OPERATORS)
def test_fewer_keys_than_queries_is_refused_naming_the_shapes(name):
    # Nyström averaged empty key segments into an all-NaN output; Combiner failed deep inside unflatten
    q, k, v = qkv((1, 1, 20, 4), (1, 1, 3, 4))
    if name in ("softmax", "sdpa"):  # cross-attention of any lengths, causal top-left aligned as SDPA's
        assert OPERATORS[name](q, k, v).shape == OPERATORS[name](q, k, v, causal=True).shape == (1, 1, 20, 4)
        return
    if name == "cosformer":  # bidirectional cosFormer is defined for other key lengths; causal is not
        with pytest.raises(ValueError, match=r"causal cosformer needs as many queries as keys, not 20 and 3"):
            OPERATORS[name](q, k, v, causal=True)
        return
    with pytest.raises(ValueError, match=rf"{name} shape mismatch: q \(1, 1, 20, 4\), k \(1, 1, 3, 4\)"):
        OPERATORS[name](q, k, v)


@pytest.mark.parametrize("name", OPERATORS)
def test_inputs_on_two_devices_are_refused(name):
    # CPU `@` takes a meta operand: Combiner read uninitialised memory, Nyström returned 5e9
    q, k, v = qkv(devices=("cpu", "meta", "cpu"))
    with pytest.raises(ValueError, match=rf"{name} needs q, k, v on one device, not cpu, meta, cpu"):
        OPERATORS[name](q, k, v)


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("dtypes", [(torch.float16, torch.float32, torch.float32), (torch.float32, torch.float64, torch.float32)])
def test_mixed_dtypes_are_refused_not_rounded_down(name, dtypes):
    q, k, v = qkv(dtypes=dtypes)
    names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
    with pytest.raises(TypeError, match=rf"{name} needs q, k, v of one floating dtype, not {names}"):
        OPERATORS[name](q, k, v)


@pytest.mark.parametrize("name", OPERATORS)
def test_integer_inputs_and_non_tensors_are_refused(name):
    ints = [torch.randint(0, 3, (1, 2, 8, 4)) for _ in range(3)]  # Nyström returned an all-zero int64 tensor
    with pytest.raises(TypeError, match="one floating dtype, not int64, int64, int64"):
        OPERATORS[name](*ints)
    with pytest.raises(TypeError, match="takes torch tensors q, k, v, not list, Tensor, Tensor"):
        OPERATORS[name]([[1.0]], *qkv()[1:])


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("shape", [(1, 2, 0, 4), (1, 2, 8, 0)])
def test_no_token_or_no_channel_is_refused(name, shape):
    with pytest.raises(ValueError, match="needs at least one token and one channel"):
        OPERATORS[name](*qkv(shape))


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("shape", [(0, 2, 8, 4), (1, 0, 8, 4)])
def test_an_empty_batch_gives_an_empty_output(name, shape):
    q, k, v = qkv(shape)
    assert OPERATORS[name](q, k, v).shape == shape


@pytest.mark.parametrize("name", [n for n in OPERATORS if n != "nystromformer"])
def test_an_empty_batch_gives_an_empty_causal_output(name):
    for shape in ((0, 2, 8, 4), (1, 0, 8, 4)):  # causal cosFormer divided by B H while planning its steps
        assert OPERATORS[name](*qkv(shape), causal=True).shape == shape


def strided_views(tensors):
    """The same values, each laid out with its last axis strided: transposed copies, and v expanded from one channel."""
    q, k, v = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in tensors)
    return q, k, v[..., :1].expand(v.shape)


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("causal", [False, True])
def test_strided_views_give_the_values_and_gradients_of_their_contiguous_copies(name, causal):
    """Combiner-Fixed and -Mixture handed such views to PyTorch's CPU flash kernel, which reads the last axis as
    stride 1: outputs off by 2, and reads past the tensor for an expanded v (an operator audit). N = 16 needs no
    padding, which copied the inputs and hid it."""
    if name == "nystromformer" and causal:
        return  # refuses causal
    views = [t.requires_grad_() for t in strided_views(qkv((1, 2, 16, 4), dtypes=(torch.float64,) * 3))]
    copies = [t.detach().contiguous().requires_grad_() for t in views]
    assert any(t.stride(-1) != 1 for t in views)
    options = {} if name == "nystromformer" else {"causal": causal}
    out_views, out_copies = OPERATORS[name](*views, **options), OPERATORS[name](*copies, **options)
    torch.testing.assert_close(out_views, out_copies, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out_copies)
    for got, want in zip(torch.autograd.grad(out_views, views, grad), torch.autograd.grad(out_copies, copies, grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in OPERATORS if n != "nystromformer"])
def test_causal_must_be_a_bool(name):
    with pytest.raises(TypeError, match=rf"{name} causal must be True or False, not 'no'"):
        OPERATORS[name](*qkv(), causal="no")  # any non-empty string ran the causal form


def test_three_dimensional_inputs_are_refused():
    flat = [torch.randn(2, 8, 4) for _ in range(3)]  # Nyström read N as the heads
    for name, operator in OPERATORS.items():
        with pytest.raises(ValueError, match=rf"{name} needs \(B, H, N, D\) q, k, v, not \(2, 8, 4\)"):
            operator(*flat)


def test_a_value_length_other_than_the_keys_is_refused_by_sdpa_too():
    q, k, v = qkv((1, 1, 5, 4), shape_v=(1, 1, 4, 4))  # PyTorch's CPU kernel ran, over the first 4 keys only
    with pytest.raises(ValueError, match=r"sdpa shape mismatch: q \(1, 1, 5, 4\), k \(1, 1, 5, 4\), v \(1, 1, 4, 4\)"):
        sdpa_attention(q, k, v)


@pytest.mark.parametrize("option", ["block_size", "chunk_size"])
def test_numpy_integers_are_integers(option):
    q, k, v = qkv((1, 2, 16, 4))  # np.int64(4), from a notebook's np.arange, was "not a positive integer"
    operator = functools.partial(combiner_attention, variant="fixed") if option == "block_size" else cosformer_attention
    torch.testing.assert_close(operator(q, k, v, causal=True, **{option: np.int64(4)}), operator(q, k, v, causal=True, **{option: 4}))


def test_value_width_is_free_except_where_the_operator_stacks_q_k_v():
    q, k, v = qkv((1, 2, 8, 4), shape_v=(1, 2, 8, 6))
    for name in ("cosformer", "nystromformer", "combiner-fixed", "combiner-axial", "combiner-logsparse", "softmax"):
        assert OPERATORS[name](q, k, v).shape == (1, 2, 8, 6), name
    with pytest.raises(ValueError, match="combiner-mixture shape mismatch"):
        OPERATORS["combiner-mixture"](q, k, v)


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf"), "x", True])
def test_cosformer_eps_must_be_positive_and_finite(eps):
    # eps = 0 gave NaN rows where a query's features are all 0 (the clamp promises 0 there)
    with pytest.raises(ValueError, match=re.escape(f"cosformer eps must be a positive finite number, not {eps!r}")):
        cosformer_attention(*qkv(), eps=eps)


BAD_COUNTS = [("num_landmarks", 2.5), ("num_landmarks", True), ("num_landmarks", "4"), ("num_landmarks", 0)]
BAD_COUNTS += [("pinv_iterations", 2.5), ("pinv_iterations", -1), ("pinv_iterations", None)]


@pytest.mark.parametrize(("option", "value"), BAD_COUNTS)
def test_nystrom_counts_must_be_integers(option, value):
    minimum = 1 if option == "num_landmarks" else 0
    with pytest.raises(ValueError, match=rf"nystromformer {option} must be an integer >= {minimum}, not {value!r}"):
        nystrom_attention(*qkv(), **{option: value})


def test_nystrom_conv_weight_must_be_a_tensor():
    with pytest.raises(TypeError, match="conv_weight must be a tensor .* not list"):
        nystrom_attention(*qkv(), conv_weight=[[1.0]])


def test_numpy_numbers_are_numbers():
    """A notebook's `for m in np.arange(...)`: np.int64 landmarks and an np.float32 eps ran before the checks came."""
    import numpy as np

    q, k, v = qkv((1, 2, 16, 4))
    assert torch.equal(nystrom_attention(q, k, v, num_landmarks=np.int64(4)), nystrom_attention(q, k, v, num_landmarks=4))
    assert torch.equal(cosformer_attention(q, k, v, eps=np.float32(1e-6)), cosformer_attention(q, k, v, eps=float(np.float32(1e-6))))
    with pytest.raises(ValueError, match="num_landmarks must be an integer"):
        nystrom_attention(q, k, v, num_landmarks=np.bool_(True))
