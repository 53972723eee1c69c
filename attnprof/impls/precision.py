"""TF32 for the fp32 products of half-precision inputs on CUDA.

Several operators upcast fp16/bf16 inputs to fp32 for their softmaxes, pools and running sums, and
then multiply in fp32. By default CUDA runs fp32 matmuls in full IEEE fp32 (torch's allow_tf32 is
False), off the tensor cores: NVIDIA gives an H100 SXM 67 TFLOP/s for that against 495 for dense TF32, and
Combiner-Mixture at N = 65536, B = 1, H = 16 does 421-618 GFLOP of them (counted on `meta`): some 6-9 ms at
the IEEE peak, an estimate until a GPU measures it.
TF32 operands keep 10 mantissa bits (bf16 keeps 7, fp16 10) and the sums stay fp32, so for inputs that
were fp16 or bf16 to begin with TF32 rounds no more than the inputs already were. fp32 and fp64 inputs,
and every device but CUDA, are left alone; the setting is restored on the way out (even on an error).
Backward passes run by autograd after the call (Combiner's) are outside this context, and so stay IEEE fp32;
cosFormer's hand-written backwards enter it themselves, as does Combiner's softmax_values_qk where it forms the
forward's logits again. The setting is process-wide: two calls overlapping
in threads could leave it wrong, which the sweep never does (one call at a time per worker process).
"""

from __future__ import annotations

import contextlib

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def tf32_products(dtype: torch.dtype, device):
    """Inside: fp32 matmuls on CUDA may run as TF32, when `dtype` (the inputs') is fp16 or bf16 and `device` is CUDA."""
    if dtype not in HALF_DTYPES or torch.device(device).type != "cuda":
        yield
        return
    restore = _allow_tf32()
    try:
        yield
    finally:
        restore()


def _allow_tf32():
    """Allow TF32 for CUDA matmuls; returns what puts the previous setting back. torch >= 2.9 has a new API
    (fp32_precision) beside the legacy allow_tf32, and refuses to read the legacy flag once the new one was set
    (RuntimeError: "mix of the legacy and new APIs"), so where the new API exists only it is read and written.
    Before it, the one setting is torch's float32 matmul precision, read and written as such: put back through
    allow_tf32, a user's "medium" came back "high" (found running the tests on torch 2.7); "medium" and "high"
    allow TF32 already and are left as they are."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        before = matmul.fp32_precision
        matmul.fp32_precision = "tf32"
        return lambda: setattr(matmul, "fp32_precision", before)
    before = torch.get_float32_matmul_precision()
    if before != "highest":
        return lambda: None
    torch.set_float32_matmul_precision("high")
    return lambda: torch.set_float32_matmul_precision(before)
