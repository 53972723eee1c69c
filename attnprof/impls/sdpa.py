"""PyTorch's scaled_dot_product_attention: the dispatcher and each backend pinned on its own.

Which backend accepts a case is decided by PyTorch at call time; the declared support below is the
documented rule, and a "No available kernel" error at run time is still reported as `unsupported`.
"""

from __future__ import annotations

import functools

import torch.nn.functional as F

from attnprof.impls import register
from attnprof.impls.base import AttentionImpl, dense_attention_flops
from attnprof.impls.operator_inputs import check_flag, check_qkv


def sdpa_attention(q, k, v, *, causal: bool = False, backend: str | None = None):
    """F.scaled_dot_product_attention, optionally restricted to one backend; q, k, v checked as every seed operator's
    (a v shorter than k ran, PyTorch's CPU kernel leaving the extra keys out: an operator audit). q may have another
    length than k and v (causal: top-left aligned, PyTorch's rule)."""
    check_qkv("sdpa", q, k, v, cross_length=True)
    check_flag("sdpa", "causal", causal)
    return _sdpa(q, k, v, causal=causal, backend=backend)


def _sdpa(q, k, v, *, causal: bool = False, backend: str | None = None):
    """sdpa_attention unchecked: what a sweep times, PyTorch's own call. The checks cost 3.8 us a call (CPU), a share of
    a launch-bound GPU call at short lengths that PyTorch's kernel does not pay; the sweep's inputs are its own."""
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, N, D)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, backend)):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, N, D)


def _flash_refusals(case, options) -> list[str]:
    if case.device.startswith("cuda"):
        reasons = []
        if case.dtype not in ("float16", "bfloat16"):
            reasons.append("flash backend needs fp16/bf16 on CUDA")
        if case.head_dim > 256 or case.head_dim % 8:
            reasons.append(f"flash backend needs head_dim <= 256 and a multiple of 8, not {case.head_dim}")
        return reasons
    return []


def _efficient_refusals(case, options) -> list[str]:
    # torch's minimum_gemm_alignment on sm_80 and later: 128 bits of the dtype for half types, 4 values for fp32 (a
    # GPU-path review read it in sdp_utils.cpp; fp32 at head dim 6 was an `error` row at run time)
    alignment = 4 if case.dtype == "float32" else 8
    if case.head_dim % alignment:
        return [f"efficient backend needs head_dim a multiple of {alignment} for {case.dtype}, not {case.head_dim}"]
    return []


def fused_memory_model(case, options, *, backend: str | None = None) -> int:
    """Peak bytes above the inputs of a fused (flash / memory-efficient) kernel, by its algorithm.

    Forward: the output (B, H, N, D) in the input dtype plus the fp32 log-sum-exp (B, H, N) saved for
    backward. Forward + backward adds dq, dk, dv in the input dtype, the fp32 row sums of dO * O
    (B, H, N), and flash-attention 2's fp32 dq accumulator (B, H, N, D). The flash backward also copies
    dO: PyTorch's `_flash_attention_backward` makes it contiguous in its (B, N, H, D) layout, which our
    (B, H, N, D) gradient is not ("CUDA code assumes that dout is contiguous"); the dispatcher picks flash
    for half types. Unverified until a GPU run compares it with the allocator peak (tests/gpu).
    """
    from attnprof.impls.base import DTYPE_BYTES

    rows = case.batch * case.heads * case.seq_len
    tensor = rows * case.head_dim * DTYPE_BYTES[case.dtype]
    forward = tensor + rows * 4
    if case.mode == "fwd":
        return forward
    flash = backend == "FLASH_ATTENTION" or (backend is None and case.dtype in ("float16", "bfloat16"))
    return forward + 3 * tensor + rows * 4 + rows * case.head_dim * 4 + (tensor if flash else 0)


def cpu_flash_causal_share(n: int) -> float:
    """The share of the N x N scores PyTorch's CPU flash kernel computes when causal. It walks blocks of 256 query
    rows (64 from N = 192, 32 below) and for each computes whole blocks of 512 keys (all N when fewer) up to the
    block's last query: 0.75 at N = 1024, 0.625 at 2048, 0.5625 at 4096, towards half. Counted at half, causal
    SDPA's FLOPs on the CPU read 1.5x low at 1k, which its times confirmed (causal/bidirectional 0.76, 0.63, 0.57
    at 1k, 2k, 4k, one thread)."""
    q_split = 256 if n >= 768 else 64 if n >= 192 else 32
    kv_split = min(512, n)
    computed = 0
    for start in range(0, n, q_split):
        queries = min(q_split, n - start)
        keys = min(-(-min(start + queries, n) // kv_split) * kv_split, n)  # whole key blocks up to the last query
        computed += queries * keys
    return computed / (n * n)


def _causal_share(case) -> float:
    """Half on a GPU (and on meta, which stands for one); the CPU flash kernel's own block share on the CPU."""
    return cpu_flash_causal_share(case.seq_len) if case.device == "cpu" else 0.5


def _register(name: str, backend: str | None, description: str, devices=("cpu", "cuda"), refuse=None, skip_masked=True):
    register(
        AttentionImpl(
            name=name,
            family="exact",
            fn=functools.partial(_sdpa, backend=backend),
            description=description,
            devices=devices,
            refuse=refuse,
            # only math keeps N x N (no recompute, no masked blocks skipped)
            flops=lambda case, options: dense_attention_flops(case, skip_masked, skip_masked, _causal_share(case)),
            meta_exact=backend == "MATH",  # fused kernels take the unfused path on meta
            memory_model=None if backend == "MATH" else functools.partial(fused_memory_model, backend=backend),
        )
    )


_register("sdpa", None, "torch SDPA, backend chosen by PyTorch's dispatcher")
_register(
    "sdpa-flash", "FLASH_ATTENTION", "torch SDPA pinned to the flash backend (CUDA flash-attn 2; CPU flash kernel)", refuse=_flash_refusals
)
_register(
    "sdpa-efficient",
    "EFFICIENT_ATTENTION",
    "torch SDPA pinned to the memory-efficient (xformers) backend",
    devices=("cuda",),
    refuse=_efficient_refusals,
)
_register("sdpa-math", "MATH", "torch SDPA pinned to the math backend (unfused, N x N)", skip_masked=False)
