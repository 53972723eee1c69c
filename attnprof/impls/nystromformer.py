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
- for float16/bfloat16 inputs the landmarks, softmaxes and the pseudo-inverse run in float32 and the
  N-sized products in the input dtype (mlpen runs everything in float32).
No key mask and no causal form (segment means mix future tokens into every landmark).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnprof.impls import register
from attnprof.impls.base import DTYPE_BYTES, AttentionImpl, io_bytes
from attnprof.impls.reference.nystromformer import nystrom_reference

PINV_INITS = ("reference", "per-head")
CONV_SEED = 20210204  # fixed: every profiled run uses the same conv skip weights
_conv_weights: dict[tuple, torch.Tensor] = {}


def nystrom_attention(q, k, v, *, num_landmarks=64, pinv_iterations=6, conv_weight=None, pinv_init="reference"):
    """Nyström attention of q, k, v (B, H, N, D) -> (B, H, N, D) in the input dtype.

    conv_weight: optional (H, 1, k, 1) depthwise filter along N (k odd, zero padding k // 2, no
    bias) applied to v and added. pinv_init: "reference" (one max column sum over the whole
    tensor, mlpen's default; couples batch items) or "per-head" (batch-invariant, see module doc).
    """
    _check_args(num_landmarks, pinv_iterations, conv_weight, pinv_init)
    if q.shape[-2] <= num_landmarks:
        out = _exact_softmax(q, k, v)  # (B, H, N, D)
    else:
        out = _nystrom_core(q, k, v, num_landmarks, pinv_iterations, pinv_init)  # (B, H, N, D)
    if conv_weight is not None:
        out = out.add_(_conv_skip(v, conv_weight))  # (B, H, N, D); matmul's backward does not need its output
    return out


def _check_args(num_landmarks, pinv_iterations, conv_weight, pinv_init) -> None:
    if num_landmarks < 1 or pinv_iterations < 0:
        raise ValueError(f"need num_landmarks >= 1 and pinv_iterations >= 0, not {num_landmarks} and {pinv_iterations}")
    if pinv_init not in PINV_INITS:
        raise ValueError(f"unknown pinv_init {pinv_init!r}: choose one of {', '.join(PINV_INITS)}")
    if conv_weight is not None and conv_weight.shape[2] % 2 == 0:
        raise ValueError(f"conv kernel size must be odd (an even one changes the length), not {conv_weight.shape[2]}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmaxes and the pseudo-inverse run in float32 for half inputs, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _exact_softmax(q, k, v):
    """softmax(q k^T / sqrt(d)) v: Nyström with N <= m landmarks has nothing to approximate."""
    logits = q @ (k * q.shape[-1] ** -0.5).transpose(-2, -1)  # (B, H, N, N), N <= m
    weights = torch.softmax(logits, dim=-1, dtype=_work_dtype(q.dtype)).to(v.dtype)  # (B, H, N, N)
    return weights @ v  # (B, H, N, D)


def _nystrom_core(q, k, v, m, iterations, pinv_init):
    """F @ (Z @ (Bk @ V)) with the d^-1/2 of q . k put on the landmark side of each product.
    No N-sized temporary is bound to a local, so each dies as soon as the next one is made."""
    work, scale = _work_dtype(q.dtype), q.shape[-1] ** -0.5
    q_land, k_land = _segment_means(q, m, work), _segment_means(k, m, work)  # (B, H, m, D) each
    a = torch.softmax(q_land @ (k_land * scale).transpose(-2, -1), dim=-1)  # (B, H, m, m)
    z = _iterative_pinv(a, iterations, pinv_init)  # (B, H, m, m)
    bk_v = _softmax_in(work, v.dtype, (q_land * scale).to(q.dtype) @ k.transpose(-2, -1)) @ v  # (B, H, m, D) via Bk (B, H, m, N)
    w = (z @ bk_v.to(work)).to(v.dtype)  # (B, H, m, D)
    return _softmax_in(work, v.dtype, q @ (k_land * scale).to(q.dtype).transpose(-2, -1)) @ w  # (B, H, N, D) via F (B, H, N, m)


def _softmax_in(work, dtype, logits):
    """Softmax over the last dim computed in `work` precision, returned in `dtype`."""
    return torch.softmax(logits, dim=-1, dtype=work).to(dtype)


def _segment_means(x, m, work):
    """Contiguous segment means in `work` precision: n_short segments of s = N // m tokens, then
    m - n_short of s + 1. Both groups are plain reshapes, so this runs on meta (shapes only)."""
    n, s = x.shape[-2], x.shape[-2] // m
    n_short = (s + 1) * m - n
    lead = x.shape[:-2]
    short = x[..., : n_short * s, :].reshape(*lead, n_short, s, x.shape[-1]).mean(-2, dtype=work)  # (B, H, n_short, D)
    if n_short == m:
        return short  # N % m == 0: all segments have s tokens
    rest = x[..., n_short * s :, :].reshape(*lead, m - n_short, s + 1, x.shape[-1])  # (B, H, m - n_short, s + 1, D)
    return torch.cat([short, rest.mean(-2, dtype=work)], dim=-2)  # (B, H, m, D)


def _iterative_pinv(a, iterations, pinv_init):
    """Z <- Z (13 I - AZ (15 I - AZ (7 I - AZ))) / 4, each bracket one fused baddbmm and the 1/4
    folded into the last one: 5 kernels per iteration, which matters on CPUs where tiny ops cost."""
    m = a.shape[-1]
    eye = torch.eye(m, dtype=a.dtype, device=a.device)  # (m, m)
    eye7, eye15, eye13_4 = 7 * eye, 15 * eye, 3.25 * eye  # (m, m) each, made once, not per iteration
    a3 = a.reshape(-1, m, m)  # (B*H, m, m)
    z = (a.transpose(-2, -1) / _pinv_scale(a, pinv_init)).reshape(-1, m, m)  # (B*H, m, m)
    for _ in range(iterations):
        az = torch.bmm(a3, z)  # (B*H, m, m)
        inner = torch.baddbmm(eye15, az, eye7 - az, alpha=-1)  # (B*H, m, m)
        z = torch.bmm(z, torch.baddbmm(eye13_4, az, inner, alpha=-0.25))  # (B*H, m, m)
    return z.reshape(a.shape)  # (B, H, m, m)


def _pinv_scale(a, pinv_init):
    """A is a row-softmax (non-negative), so its column/row sums are its 1-/inf-norm sums."""
    col_max = a.sum(dim=-2).amax(dim=-1, keepdim=True)  # (B, H, 1) largest column sum per (b, h)
    if pinv_init == "reference":
        return col_max.amax()  # () one scalar over all batch items and heads, as mlpen does
    return (col_max * a.sum(dim=-1).amax(dim=-1, keepdim=True))[..., None]  # (B, H, 1, 1)


def _conv_skip(v, weight):
    """Depthwise conv along N, one filter per head shared by its D channels (mlpen's Conv2d)."""
    pad = weight.shape[2] // 2
    return F.conv2d(v, weight.to(device=v.device, dtype=v.dtype), padding=(pad, 0), groups=v.shape[1])  # (B, H, N, D)


def seeded_conv_weight(heads: int, kernel: int, device, dtype) -> torch.Tensor:
    """The profiled conv skip's weights (H, 1, k, 1): PyTorch's default Conv2d range U(+-1/sqrt(k)),
    drawn on the CPU in float32 from a fixed seed, then moved; cached so timed calls reuse them."""
    key = (heads, kernel, str(device), dtype)
    if key not in _conv_weights:
        generator = torch.Generator().manual_seed(CONV_SEED + 1000 * heads + kernel)
        draw = (torch.rand(heads, 1, kernel, 1, generator=generator) * 2 - 1) * kernel**-0.5  # (H, 1, k, 1)
        _conv_weights[key] = draw.to(device=device, dtype=dtype)
    return _conv_weights[key]


def _options_weight(q, conv_kernel):
    return seeded_conv_weight(q.shape[1], conv_kernel, q.device, q.dtype) if conv_kernel > 0 else None


def _profiled(q, k, v, *, causal=False, num_landmarks=64, pinv_iterations=6, conv_kernel=33, pinv_init="reference"):
    """The registered fn: Nyström attention with the seeded conv skip of `conv_kernel` taps (0: none)."""
    if causal:
        raise ValueError("nystromformer has no causal form: segment-mean landmarks mix in future tokens")
    weight = _options_weight(q, conv_kernel)  # (H, 1, k, 1) or None
    return nystrom_attention(q, k, v, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations, conv_weight=weight, pinv_init=pinv_init)


def _reference(q, k, v, *, causal=False, num_landmarks=64, pinv_iterations=6, conv_kernel=33, pinv_init="reference"):
    """The registered reference: the plain formulation with the very same seeded conv weights."""
    weight = _options_weight(q, conv_kernel)  # float32 draws, widened exactly to q's dtype
    return nystrom_reference(q, k, v, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations, conv_weight=weight, pinv_init=pinv_init)


def nystrom_flops(case, options) -> int:
    """Matmul and conv FLOPs (FlopCounterMode's convention, 2 per multiply-add) of one call.

    Per (b, h), N > m: F and Bk logits 2 N m D each, A logits 2 m^2 D, pinv 4 m x m matmuls per
    iteration (8 m^3 each), Bk @ V 2 m N D, Z @ (Bk V) 2 m^2 D, F @ W 2 N m D; N <= m: 4 N^2 D.
    Conv skip: 2 N D k. Backward: every matmul twice more; the conv once more (input gradient
    only, its weight is fixed). Softmax, means and additions are not counted.
    """
    n, d, m, t = case.seq_len, case.head_dim, options["num_landmarks"], options["pinv_iterations"]
    matmul = 4 * n * n * d if n <= m else 8 * n * m * d + 4 * m * m * d + 8 * t * m**3
    conv = 2 * n * d * options["conv_kernel"]
    per_head = matmul + conv if case.mode == "fwd" else 3 * matmul + 2 * conv
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
    return reasons


register(
    AttentionImpl(
        name="nystromformer",
        family="low-rank",
        fn=_profiled,
        description="Nyströmformer: segment-mean landmarks, iterative pseudo-inverse, depthwise conv skip (bidirectional only)",
        causal=(False,),
        options={"num_landmarks": 64, "pinv_iterations": 6, "conv_kernel": 33, "pinv_init": "reference"},
        reference=_reference,
        check_options=_option_problems,
        flops=nystrom_flops,
        min_bytes=nystrom_min_bytes,
        exact=False,
        check_tolerance={"float32": 1e-4, "float16": 5e-3, "bfloat16": 2e-2},  # ~10x the errors seen up to N=64k
        fidelity_options={"conv_kernel": 0},  # the conv skip is a learned add-on, not part of the softmax approximation
    )
)
