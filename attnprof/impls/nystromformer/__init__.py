"""Nyströmformer (Xiong et al., AAAI 2021): softmax attention through m segment-mean landmarks.

out = softmax(Q Kl^T) . pinv(softmax(Ql Kl^T)) . softmax(Ql K^T) . V  (+ depthwise conv of V),
with Q, K scaled by d^-1/4 each and Ql, Kl the segment means of Q, K (ALGORITHMS.md section 2).

Deviations from mlpen's `LRA/code/attention_nystrom.py` (the golden files' source), all
numerically equivalent unless stated:
- the product is taken as F @ (Z @ (Bk @ V)), O(N m d) instead of the paper's (F @ Z) @ (Bk @ V),
  O(N m^2 + N m d);
- the two d^-1/4 factors are folded into the small landmark side of each product, so no scaled
  N x D copy of q or k is made;
- N not divisible by m uses mlpen's variable-length segments (T2T-ViT code; the LRA code needs
  N % m == 0); N <= m is exact softmax attention (plus the conv), as mlpen does for N == m;
- pinv_init="per-head" (not the default) starts each (b, h) from A^T / (max column sum x max row
  sum) of its own A, the paper's rule, so outputs do not depend on the other batch items;
- for float16/bfloat16 inputs the attention runs in float32, as mlpen does, on float32 copies of q, k and v, its
  output rounded once to the input dtype, and the conv skip is added to it in the input dtype (eager.nystrom_core
  says what the input dtype's products cost; backend=triton sums the skip in fp32 before one rounding).
No key mask and no causal form (segment means mix future tokens into every landmark).

Option `backend`: eager (default; PyTorch operators, `eager.py`, the reference the other is tested against) or
triton (`triton_plan.py`: the forward in three Triton launches on CUDA, the eager backward by recomputation).
"""

from __future__ import annotations

import functools

import torch
from torch.utils._python_dispatch import _disable_current_modes

from attnprof.impls import register, triton_support
from attnprof.impls.base import DTYPE_BYTES, AttentionImpl, io_bytes
from attnprof.impls.nystromformer import triton_plan
from attnprof.impls.nystromformer.eager import eager_attention
from attnprof.impls.operator_inputs import check_count, check_qkv
from attnprof.impls.reference.nystromformer import nystrom_reference
from attnprof.impls.reference.nystromformer_rows import nystrom_rows

PINV_INITS = ("reference", "per-head")
BACKENDS = ("eager", "triton")
CONV_SEED = 20210204  # fixed: every profiled run uses the same conv skip weights
_conv_weights: dict[tuple, torch.Tensor] = {}


def nystrom_attention(q, k, v, *, num_landmarks=64, pinv_iterations=6, conv_weight=None, pinv_init="reference", backend="eager"):
    """Nyström attention of q, k, v (B, H, N, D) -> (B, H, N, D) in the input dtype.

    conv_weight: optional (H, 1, k, 1) depthwise filter along N (k odd, zero padding k // 2, no
    bias) applied to v and added. pinv_init: "reference" (one max column sum over the whole
    tensor, mlpen's default; couples batch items) or "per-head" (batch-invariant, see module doc).
    backend: "eager" (PyTorch operators) or "triton" (for N > m: the forward as three Triton launches after the
    landmarks and their m x m kernel, see triton_plan.py; CUDA tensors, or meta for the accounting, or any device
    under Triton's interpreter; float32, float16 or bfloat16; head dims up to 128, m up to 64). Counted on meta at
    N = 8192, B = 1, H = 16, d = 64, bf16, forward: eager 49 ops, triton 12.
    """
    check_qkv("nystromformer", q, k, v)
    _check_args(num_landmarks, pinv_iterations, conv_weight, pinv_init, q.shape[1])
    if backend not in BACKENDS:
        raise ValueError(f"nystromformer backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "triton" and q.shape[-2] > num_landmarks and q.numel():  # an empty batch has nothing to launch
        reasons = triton_plan.triton_problems(q, k, v, num_landmarks, conv_weight)
        if reasons:
            raise ValueError(reasons[0])
        return triton_plan.TritonNystrom.apply(q, k, v, conv_weight, num_landmarks, pinv_iterations, pinv_init)
    return eager_attention(q, k, v, num_landmarks, pinv_iterations, conv_weight, pinv_init)


def _check_args(num_landmarks, pinv_iterations, conv_weight, pinv_init, heads: int) -> None:
    check_count("nystromformer", "num_landmarks", num_landmarks, minimum=1)
    check_count("nystromformer", "pinv_iterations", pinv_iterations, minimum=0)
    if pinv_init not in PINV_INITS:
        raise ValueError(f"unknown pinv_init {pinv_init!r}: choose one of {', '.join(PINV_INITS)}")
    if conv_weight is not None and not isinstance(conv_weight, torch.Tensor):
        raise TypeError(f"conv_weight must be a tensor (H, 1, k, 1) or None, not {type(conv_weight).__name__}")
    if conv_weight is not None and (conv_weight.dim() != 4 or conv_weight.shape[0] != heads or conv_weight.shape[1::2] != (1, 1)):
        raise ValueError(f"conv_weight must be (H, 1, k, 1) = ({heads}, 1, k, 1), one filter a head, not {tuple(conv_weight.shape)}")
    if conv_weight is not None and conv_weight.shape[2] % 2 == 0:
        raise ValueError(f"conv kernel size must be odd (an even one changes the length), not {conv_weight.shape[2]}")


def seeded_conv_weight(heads: int, kernel: int, device, dtype) -> torch.Tensor:
    """The profiled conv skip's weights (H, 1, k, 1): PyTorch's default Conv2d range U(+-1/sqrt(k)),
    drawn on the CPU in float32 from a fixed seed, then moved; cached so timed calls reuse them."""
    key = (heads, kernel, str(device), dtype)
    if key not in _conv_weights:
        # Drawn outside any dispatch mode: the weights are the layer's, kept like its inputs, and the accounting's first
        # call of a worker counted them (132 bytes more at B 1, H 2, bf16 than the same case after another line)
        with _disable_current_modes():
            _conv_weights[key] = _drawn_weight(heads, kernel).to(device=device, dtype=dtype)
    return _conv_weights[key]


def _drawn_weight(heads: int, kernel: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(CONV_SEED + 1000 * heads + kernel)
    return (torch.rand(heads, 1, kernel, 1, generator=generator) * 2 - 1) * kernel**-0.5  # (H, 1, k, 1)


def _options_weight(q, conv_kernel):
    return seeded_conv_weight(q.shape[1], conv_kernel, q.device, q.dtype) if conv_kernel > 0 else None


def _profiled(q, k, v, *, causal=False, num_landmarks=64, pinv_iterations=6, conv_kernel=33, pinv_init="reference", backend="eager"):
    """The registered fn: Nyström attention with the seeded conv skip of `conv_kernel` taps (0: none)."""
    if causal:
        raise ValueError("nystromformer has no causal form: segment-mean landmarks mix in future tokens")
    weight = _options_weight(q, conv_kernel)  # (H, 1, k, 1) or None
    return nystrom_attention(
        q, k, v, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations, conv_weight=weight, pinv_init=pinv_init, backend=backend
    )


def _reference(q, k, v, *, causal=False, num_landmarks=64, pinv_iterations=6, conv_kernel=33, pinv_init="reference", backend="eager"):
    """The registered reference: the plain formulation with the very same seeded conv weights."""
    weight = _options_weight(q, conv_kernel)  # float32 draws, widened exactly to q's dtype
    return nystrom_reference(q, k, v, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations, conv_weight=weight, pinv_init=pinv_init)


def _reference_rows(q, k, v, heads, rows, *, causal=False, num_landmarks=64, pinv_iterations=6, conv_kernel=33, pinv_init="reference",
                    backend="eager"):  # fmt: skip
    """The registered coupled row reference: the plain formulation's rows of the sampled heads, with the same weights."""
    weight = _options_weight(q, conv_kernel)  # (H, 1, k, 1) or None
    return nystrom_rows(
        q, k, v, heads, rows, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations, conv_weight=weight, pinv_init=pinv_init
    )


def nystrom_flops(case, options) -> int:
    """Matmul and conv FLOPs (FlopCounterMode's convention, 2 per multiply-add) of one call.

    Per (b, h), N > m: F and Bk logits 2 N m D each, A logits 2 m^2 D, pinv 4 m x m matmuls per
    iteration (8 m^3 each), Bk @ V 2 m N D, Z @ (Bk V) 2 m^2 D, F @ W 2 N m D; N <= m: 4 N^2 D.
    Conv skip: 2 N D k. Backward: every matmul twice more; the conv once more (input gradient
    only, its weight is fixed). Softmax, means and additions are not counted. backend="triton", N > m: the same
    forward (its conv taken as a banded product counts the taps, not the band's zeros), and its backward
    recomputes the eager forward first: one matmul and one conv more.
    """
    n, d, m, t = case.seq_len, case.head_dim, options["num_landmarks"], options["pinv_iterations"]
    matmul = 4 * n * n * d if n <= m else 8 * n * m * d + 4 * m * m * d + 8 * t * m**3
    conv = 2 * n * d * options["conv_kernel"]
    per_head = matmul + conv if case.mode == "fwd" else 3 * matmul + 2 * conv
    if options.get("backend") == "triton" and case.mode != "fwd" and n > m:
        per_head += matmul + conv
    return case.batch * case.heads * per_head


def nystrom_min_bytes(case, options) -> int:
    """q, k, v, out (and gradients) plus what the data dependencies force in the forward: the
    landmarks need all of q and k before F and Bk can start, so q and k are read twice, and with
    the conv on v is read twice too (once for Bk @ V, once for the skip, after W is known)."""
    tensor = case.batch * case.heads * case.seq_len * case.head_dim * DTYPE_BYTES[case.dtype]
    rereads = 2 + (options["conv_kernel"] > 0) if case.seq_len > options["num_landmarks"] else 0
    return io_bytes(case) + rereads * tensor


def _option_problems(options) -> list[str]:
    reasons = []
    if options["num_landmarks"] < 1:
        reasons.append(f"num_landmarks must be at least 1, not {options['num_landmarks']}")
    if options["pinv_iterations"] < 0:
        reasons.append(f"pinv_iterations must be at least 0, not {options['pinv_iterations']}")
    if options["conv_kernel"] < 0 or (options["conv_kernel"] > 0 and options["conv_kernel"] % 2 == 0):
        reasons.append(f"conv_kernel must be 0 (off) or odd (an even kernel changes the length), not {options['conv_kernel']}")
    if options["pinv_init"] not in PINV_INITS:
        reasons.append(f"pinv_init must be one of {', '.join(PINV_INITS)}, not {options['pinv_init']!r}")
    if options.get("backend", "eager") not in BACKENDS:
        reasons.append(f"backend must be one of {', '.join(BACKENDS)}, not {options['backend']!r}")
    return reasons


def _refusals(case, options) -> list[str]:
    shapes = functools.partial(triton_plan.shape_problems, getattr(torch, case.dtype), case.head_dim, options["num_landmarks"])
    return triton_support.refusals("nystromformer", case, options, shapes)


register(
    AttentionImpl(
        name="nystromformer",
        family="low-rank",
        fn=_profiled,
        description=(
            "Nyströmformer: segment-mean landmarks, iterative pseudo-inverse, depthwise conv skip (bidirectional only);"
            " backend=triton: the forward as Triton kernels (CUDA)"
        ),
        causal=(False,),
        options={"num_landmarks": 64, "pinv_iterations": 6, "conv_kernel": 33, "pinv_init": "reference", "backend": "eager"},
        reference=_reference,
        coupled_row_reference=_reference_rows,
        refuse=_refusals,
        check_options=_option_problems,
        flops=nystrom_flops,
        min_bytes=nystrom_min_bytes,
        exact=False,
        check_tolerance={"float32": 1e-4, "float16": 5e-3, "bfloat16": 2e-2},  # ~10x the errors seen up to N=64k
        fidelity_options={"conv_kernel": 0},  # the conv skip is a learned add-on, not part of the softmax approximation
    )
)
