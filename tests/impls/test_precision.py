"""tf32_products: TF32 only for half inputs on CUDA, and the user's setting restored however the call ends."""

import pytest
import torch

from attnprof.impls.precision import tf32_products


@pytest.fixture
def flag():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield lambda: torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_on_cuda_allow_tf32_inside_only(flag, dtype):
    with tf32_products(dtype, torch.device("cuda", 0)):
        assert flag()
    assert not flag()


OTHERS = [(torch.float32, "cuda"), (torch.float64, "cuda"), (torch.bfloat16, "cpu"), (torch.bfloat16, "meta")]


@pytest.mark.parametrize("dtype, device", OTHERS)
def test_other_inputs_are_left_alone(flag, dtype, device):
    with tf32_products(dtype, device):
        assert not flag()
    assert not flag()


def test_the_setting_is_restored_after_an_error_and_a_user_setting_kept(flag):
    with pytest.raises(RuntimeError), tf32_products(torch.bfloat16, "cuda"):
        raise RuntimeError("out of memory")
    assert not flag()
    torch.backends.cuda.matmul.allow_tf32 = True  # the user's own choice
    with tf32_products(torch.bfloat16, "cuda"):
        pass
    assert flag()
