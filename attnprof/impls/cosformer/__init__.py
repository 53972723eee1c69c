"""cosFormer attention (Qin et al., ICLR 2022): ReLU features re-weighted by cos(pi/2 (i-j)/M), linear in N.

Math (exactly that of OpenNLPLab/cosFormer `cosformer.py`, see ALGORITHMS.md section 1): q' = relu(q),
k' = relu(k), angle a_t = pi/2 * t / M for positions t = 1..N, M = max(Nq, Nk), features
phi(x_t) = [x'_t sin a_t, x'_t cos a_t] (2d wide), so phi(q_i) . phi(k_j) = (q'_i . k'_j) cos(a_i - a_j) >= 0;
out_i = sum_j W_ij v_j / clamp_min(sum_j W_ij, eps), j over all keys (bidirectional) or j <= i (causal).
No 1/sqrt(d) scaling. (Only differences i - j enter the weights, so the position origin is immaterial; M is not.)

How it is computed. Bidirectional: v is widened by a ones column, u_j = [v_j, 1], so one product yields
numerator and denominator; one pass over keys builds the state S = sum_j phi(k_j)^T u_j ([2d, d+1] per
head), one pass over queries gives phi(q_i) S (`bidirectional.py`). Causal (`causal.py`): chunks of C
positions; inside a chunk the masked C x C weights (q' k'^T) * cos(a_i - a_j) [j <= i] multiply v and are
summed for the denominator, and phi(q_i) S_<chunk, phi(q_i) . z_<chunk add every earlier chunk, S_<chunk and
z_<chunk being the carried sums plus an exclusive running sum of the step's chunk sums phi(k)^T v and
phi(k). G = step_rows / (B H max(C, 64)) chunks are batched per step (step_rows by device, see `common.py`),
so only one step's [G, 2d, d] chunk states exist at a time; on the CPU from B H C >= 2^8, one chunk of every
head per step, the carried sums read and then advanced in place, each step writing into buffers allocated once a
call (`sequential.py`). The backward is written by hand (recomputing from q, k, v, the output and the
denominators): dq in a forward sweep, dk and dv in a reverse sweep, taken the same way on the CPU from
B H C >= 2^10 (`sequential_backward.py`). Peak
memory is therefore the output (plus dq, dk, dv in fwd_bwd) plus one step's temporaries; nothing of size N x
d x d is ever formed.

bf16 inputs off the CPU (`common.half_products`): the forwards multiply bf16 operands into fp32 sums
(`torch.bmm(..., out_dtype=torch.float32)`) instead of upcasting every operand first. A GPU call at 64k is
bound by memory traffic, and fp32 GEMMs run at a fraction of the tensor cores' rate. Bidirectional: the
rotation moves onto the values, relu(k)^T [v sin a, sin a, v cos a, cos a]; the queries read the state in bf16.
Causal: features and intra-chunk weights in bf16; the chunk states are summed by one GEMM with a triangular
matrix of ones and rounded to bf16 once, the carried states stay fp32. Counted on `meta` at N = 65536, B = 1,
H = 16: bytes written, forward, 2.58 -> 1.24 GB bidirectional and 5.03 -> 3.15 GB causal. Error, measured on
the CPU against float64 on the same inputs at N = 1000 to 32768, D = 64: 1.20-1.42 x that of rounding the exact
output to bf16 (the fp32 plan: 1.00 x); at tiny head dims, and with very few queries, up to 1.9 x (D = 1),
mostly from rounding v sin a to bf16. The backwards keep fp32 operands. fp16 keeps them everywhere: the states
exceed its range. On CUDA the fp32 products of half inputs (fp16's forwards, every backward) may run as
TF32 (`attnprof.impls.precision`), which rounds no more than the inputs were.

Deviations from the reference code, all with the same math:
- the causal form is chunked instead of materialising the per-position outer products [B*H, N, 2d, d]
  and cumsum-ing them (the reference's "Need to improve speed!" path); sums are reordered by chunk;
- inside a chunk the weight uses cos(a_i - a_j) directly rather than sin a_i sin a_j + cos a_i cos a_j;
- fp16/bf16 inputs are accumulated in fp32 (the reference runs in the input dtype, whose denominators
  overflow fp16 from about N = 8k) and the output is returned in the input dtype; on a GPU, bf16 operands
  are rounded to bf16 on their way into the fp32 sums (above);
- causal with Nq != Nk is refused (the reference's cumsum form assumes equal lengths);
- the backward reads the saved output (in the input dtype, as FlashAttention's backward does) for the
  denominator's gradient; fp16/bf16 gradients stay within the output's rounding of the float64 ones.

Option `backend`: eager (these PyTorch forwards) or triton (the forward as Triton kernels on CUDA, reading
q, k, v once: `triton_plan.py`; the same backward).

Option `chunk_size` (default None = automatic): causal, the chunk length C of the masked C x C products
(per position the forward's intra-chunk work is 4 C d FLOPs against 8 d^2 for the states; results are
equal up to rounding); bidirectional, how many positions are processed at a time (memory and cache use only).
Automatic values, measured on the CPU (AMD EPYC, 2 cores shared with other jobs; N = 8192, B = 1, H = 16,
D = 64, fp32 forward, interleaved repetitions, process CPU time at 1 thread, which the sharing disturbs
least): causal C = 64 (48 and 32 within 2 %, 96 +9 %, 16 and 128 +20 %, 256 +50 %, 512 +130 %), with
CPU_STEP_ROWS = 2^12 (2^11 +5 %, 2^13 +13 %, 2^14 +25 %: a step's temporaries fall out of cache); bidirectional
CPU_STEP_ROWS / (B H) positions per chunk, at least 256 (128 to 256 fastest, 2048 +50 %, 8192 +130 %).
Rechecked after the causal forward kept its denominators apart (wall time, 2 threads, 8 interleaved):
C = 64 still fastest (48 within 1 %, 32 +8 %), CPU_STEP_ROWS 2^12 (2^11 within 1 %, 2^13 +3 %).
"""

from __future__ import annotations

import functools

import torch

from attnprof.impls import register, triton_support
from attnprof.impls.base import AttentionImpl, io_bytes
from attnprof.impls.cosformer import triton_plan
from attnprof.impls.cosformer.bidirectional import BidirectionalCosformer
from attnprof.impls.cosformer.causal import CausalCosformer, step_spans
from attnprof.impls.cosformer.common import CAUSAL_CHUNK, auto_chunk_size, chunk_size_problems, half_plan
from attnprof.impls.cosformer.sequential import sequential_case
from attnprof.impls.operator_inputs import check_positive, check_qkv
from attnprof.impls.precision import tf32_products
from attnprof.impls.reference.cosformer import cosformer_reference, cosformer_rows

__all__ = ["auto_chunk_size", "chunk_size_problems", "cosformer_attention", "cosformer_flops"]

BACKENDS = ("eager", "triton")


def cosformer_attention(
    q, k, v, *, causal: bool = False, eps: float = 1e-6, chunk_size: int | None = None, backend: str = "eager"
) -> torch.Tensor:
    """cosFormer attention of (B, H, N, D) q, k, v (before the ReLU); returns (B, H, Nq, Dv) in q's dtype.

    backend: "eager" (PyTorch operators; the reference the other is tested against) or "triton" (the forward
    as three Triton kernel launches, `triton_plan.py`; the same backward). Triton needs CUDA tensors (or
    meta, for the accounting); float32, float16 or bfloat16; head dims up to 128; a causal chunk_size of
    16, 32, 64 or 128 (at most 64 for float32 and float16 at head dims over 64)."""
    check_qkv("cosformer", q, k, v, causal=causal, cross_length=True)
    check_positive("cosformer", "eps", eps)
    reasons = chunk_size_problems(chunk_size) + backend_problems(backend)
    if not reasons and backend == "triton":
        reasons = triton_plan.triton_problems(q, k, v, causal, chunk_size)
    if reasons:
        raise ValueError(reasons[0])
    # the causal chunk of both forwards; bidirectional, the positions per step of the eager passes (the backward's)
    chunk = auto_chunk_size(causal, q.shape[0], q.shape[1], q.device) if chunk_size is None else int(chunk_size)
    if backend == "triton":
        form = triton_plan.TritonCausal if causal else triton_plan.TritonBidirectional
    else:
        form = CausalCosformer if causal else BidirectionalCosformer
    with tf32_products(q.dtype, q.device):  # the fp32 products of fp16 inputs (see precision.py)
        return form.apply(q, k, v, float(eps), chunk)


def backend_problems(backend) -> list[str]:
    return [] if backend in BACKENDS else [f"cosformer backend must be one of {', '.join(BACKENDS)}, not {backend!r}"]


def cosformer_flops(case, options: dict) -> int:
    """Matmul FLOPs (2 per multiply-add, as FlopCounterMode counts; element-wise work not counted) of
    one call, with d = head_dim (= the value width), e = d + 1 (v widened by the ones column), per batch and head:
    bidirectional: fwd 4 d e (Nq + Nk) [key states, query products], bwd 8 d e (Nq + Nk);
    causal, summed over the chunks of length L (C, and a last one of N mod C): fwd 4 L^2 d + 8 L d^2 + 4 L d
    [intra weights and values, chunk states and query products, query . key sums], bwd 6 L^2 (d + e) + 20 L d e
    (both sweeps recompute their chunk's pieces, with v widened; the CPU's sequential backward, B H C >= 2^10, takes dv
    from products without the ones column: 4 L^2 (e + 2 d) + 4 L d (4 e + d)). The bf16 plan off the CPU (half_products) adds,
    per step of G chunks, the triangular GEMM that sums the chunk states: 2 G^2 (2 d) d (up to 0.7 x the rest at
    N = 65536, B H = 16; uncounted, TFLOP/s read 1.66 x low there)."""
    n, d = case.seq_len, case.head_dim
    e = d + 1
    if not case.causal:
        fwd, bwd = 4 * d * e * 2 * n, 8 * d * e * 2 * n
    else:
        chunk = min(int(options.get("chunk_size") or auto_chunk_size(True, case.batch, case.heads)), n)
        lengths = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
        fwd = sum(4 * length**2 * d + 8 * length * d * d + 4 * length * d for length in lengths)
        if sequential_case(case.batch * case.heads, chunk, n, case.device, backward=True):  # its dv products leave out the ones column
            bwd = sum(4 * length**2 * (e + 2 * d) + 4 * length * d * (4 * e + d) for length in lengths)
        else:
            bwd = sum(6 * length**2 * (d + e) + 20 * length * d * e for length in lengths)
        if half_plan(case.dtype, case.device):
            fwd += sum(2 * count**2 * 2 * d * d for _, count, _ in step_spans(n, chunk, case.batch * case.heads, case.device))
    if options.get("backend") == "triton":
        fwd = _triton_forward_flops(case, options)
    per_head = fwd if case.mode == "fwd" else fwd + bwd
    return case.batch * case.heads * per_head


def _triton_forward_flops(case, options: dict) -> int:
    """backend="triton"'s forward per batch and head (its backward is the eager one): bidirectional
    4 d^2 (Nq + Nk) [key states, query products]; causal, per chunk of C positions (the last one computed
    whole): 4 C^2 d [intra weights and values] + 8 C d^2 [query products, states]."""
    n, d = case.seq_len, case.head_dim
    if not case.causal:
        return 4 * d * d * 2 * n
    chunk = int(options.get("chunk_size") or CAUSAL_CHUNK)
    return -(-n // chunk) * (4 * chunk**2 * d + 8 * chunk * d * d)


def _option_problems(options: dict) -> list[str]:
    backend = options.get("backend", "eager")
    problems = chunk_size_problems(options.get("chunk_size")) + backend_problems(backend)
    if not problems and backend == "triton":
        problems = triton_plan.chunk_problems(True, options.get("chunk_size"))
    return problems


def _refusals(case, options: dict) -> list[str]:
    dtype = getattr(torch, case.dtype)
    shapes = functools.partial(triton_plan.shape_problems, dtype, case.head_dim, case.causal, options.get("chunk_size"))
    return triton_support.refusals("cosformer", case, options, shapes)


register(
    AttentionImpl(
        name="cosformer",
        family="linear",
        fn=cosformer_attention,
        description=(
            "cosFormer (ReLU features, cos(pi/2 (i-j)/M) re-weighting), linear in N; chunked causal form,"
            " fp32 accumulators (bf16 operands on CUDA); backend=triton: the forward as Triton kernels (CUDA)"
        ),
        options={"chunk_size": None, "backend": "eager"},
        reference=cosformer_reference,
        row_reference=cosformer_rows,
        refuse=_refusals,
        check_options=_option_problems,
        flops=cosformer_flops,
        min_bytes=lambda case, options: io_bytes(case),  # the [2d, d+1] state fits on chip; q, k, v, out dominate
        exact=False,
        check_tolerance={"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.5e-2},
    )
)
