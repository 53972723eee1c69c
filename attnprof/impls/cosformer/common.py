"""Pieces shared by the bidirectional and causal cosFormer forms: step sizes, features, products, normalisation.

Step sizes depend on the device, because the two are bound by different things:
- CPU: cache. A step's temporaries must stay in cache, so CPU_STEP_ROWS = 2^12 (batch * heads * positions),
  measured fastest (see the package docstring).
- Any other device (CUDA, and `meta` when it stands in for a GPU): kernel launches. Counted on `meta` at
  N = 65536, B = 1, H = 16, bf16, the CPU's steps issue 3,855 aten ops bidirectional forward, 13,086
  forward + backward, 7,184 causal forward and 26,912 forward + backward: tens of ms of launches on a GPU,
  whose target for the whole call is a few ms. DEVICE_STEP_ROWS = 2^17 cuts that to 135, 438, 240 and 888,
  for ~0.5 GB of fp32 step temporaries at the default causal chunk (more for a large chunk_size: the C x C
  weights grow with C), within the 1.5 GiB forward and 4 GiB forward + backward limits at N = 65536.
  The price: the fp32 scan over a step's many chunk states writes them twice, so causal writes 5.0 GB
  forward against 4.6 GB with the CPU's steps (bidirectional: 2.6 against 2.9). For bf16 inputs the device
  plan also takes bf16 operands (`half_products`): 3.15 GB causal, 1.24 GB bidirectional.
"""

from __future__ import annotations

import math
import numbers

import torch

from attnprof.impls.base import planning_device_type

CAUSAL_CHUNK = 64  # measured fastest causal chunk on the CPU (see the package docstring)
CPU_STEP_ROWS = 1 << 12  # batch*heads*positions per causal step and per automatic bidirectional chunk (measured)
DEVICE_STEP_ROWS = 1 << 17  # the same off the CPU: few launches, bounded temporaries (see above)
# Causal on the CPU: from B H C >= SEQUENTIAL_ROWS, one chunk of every head per step with the sums advanced in place
# (sequential.sequential_forward); below, its 2 N / C small steps cost more than the per-chunk states they save. The
# backward from SEQUENTIAL_BACKWARD_ROWS (sequential_backward). Measured with the step buffers allocated once a call
# (2 cores, fp32, D = 64, C = 64, N = 2^17 / (B H), median of 7 interleaved; ms, G-chunk plan / sequential):
# forward B H = 1: 94.9 / 154.5; 2: 94.1-97.3 / 97.3-100.4; 4: 100.8-102.9 / 77.6-80.2; 8: 76.9 / 61.3; 16: 73.4 / 50.4;
# forward + backward B H = 2: 333.8 / 425.8; 4: 332.9 / 342.8; 8: 279.8 / 293.8; 16: 271.3 / 201.5; 32: 265.0 / 189.8.
SEQUENTIAL_ROWS = 1 << 8
SEQUENTIAL_BACKWARD_ROWS = 1 << 10
COSFORMER_BACKWARD = (  # autograd_guards.refuse_a_graph
    "cosformer's backward is written by hand (cosformer/causal.py, bidirectional.py) and has no derivative of its own"
)
# bmm(half, half, out_dtype=float32): torch >= 2.8, on CUDA (ROCm builds refuse it on some of their backends)
MIXED_BMM = "dtype" in torch.ops.aten.bmm.overloads() and torch.version.hip is None
MAX_STEP_CHUNKS = 128  # chunks per causal step: bf16 sums them by a G x G triangular GEMM (see causal.py)


def step_rows(device) -> int:
    """batch * heads * positions handled per step on `device` (a torch.device, or None for the CPU); on
    meta, as on the device it stands in for (`meta_stands_for`: a GPU unless the accounting says cpu)."""
    return CPU_STEP_ROWS if device is None or planning_device_type(device) == "cpu" else DEVICE_STEP_ROWS


def auto_chunk_size(causal: bool, batch: int = 1, heads: int = 1, device=None) -> int:
    """The chunk used when chunk_size is None. Causal: CAUSAL_CHUNK, the fastest measured on the CPU.
    Bidirectional: step_rows(device) / (batch * heads) positions at a time, at least 256."""
    if causal:
        return CAUSAL_CHUNK
    return max(256, step_rows(device) // max(1, batch * heads))


def chunk_size_problems(chunk_size) -> list[str]:
    """Why `chunk_size` is not acceptable (empty when it is): None or a positive integer."""
    if chunk_size is None:
        return []
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Real) or not float(chunk_size).is_integer() or chunk_size < 1:
        return [f"cosformer chunk_size must be a positive integer or None (automatic), not {chunk_size!r}"]
    return []


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # fp32 accumulators for halves


def half_products(*tensors) -> bool:
    """Whether the products take bf16 operands and return fp32 sums (`wide_bmm`) instead of upcasting every
    operand to fp32 first: for q, k, v all bf16, off the CPU, where torch has a bf16 x bf16 -> fp32 bmm. There
    the call is bound by memory traffic, and bf16 operands halve the bytes of the features, while the GEMM
    still accumulates in fp32 (and runs on the tensor cores instead of at the fp32 rate). Not for fp16: its
    range cannot hold the summed states, which pass through the input dtype on their way to the query
    products. Not on the CPU: it has no mixed kernel, and its fp32 GEMMs are the faster ones there. Not
    without MIXED_BMM: upcasting inside wide_bmm would then cost more bytes than the fp32 plan (counted on
    meta: 5.85 against 5.03 GB written, causal at 64k)."""
    return all(t.dtype == torch.bfloat16 for t in tensors) and half_plan("bfloat16", tensors[0].device)


def half_plan(dtype: str, device) -> bool:
    """half_products for inputs of `dtype` (a name, as a Case has it) on `device`: what cosformer_flops counts by."""
    return dtype == "bfloat16" and MIXED_BMM and planning_device_type(device) != "cpu"


def wide_bmm(a, b):
    """a @ b of half operands, accumulated and returned in fp32 (one cuBLAS call with out_dtype), over equal
    leading dims; called only where half_products holds (so torch has out_dtype). On the CPU, where tests run
    the device plan, the operands are upcast instead: the same sums, since a product of two bf16 values is
    exact in fp32."""
    a_3d, b_3d = a.flatten(0, -3), b.flatten(0, -3)  # (G, M, K), (G, K, N)
    if a.device.type == "cpu":
        product = torch.bmm(a_3d.float(), b_3d.float())  # (G, M, N)
    else:
        product = torch.bmm(a_3d, b_3d, out_dtype=torch.float32)  # (G, M, N): CUDA, and meta standing in for it
    return product.unflatten(0, a.shape[:-2])  # (..., M, N)


def rounded_bmm(a, b):
    """a @ b of half operands in their dtype: summed in fp32 by the GEMM (cuBLAS's compute type for bf16) and
    rounded once. On the CPU the same, spelled out (wide_bmm, then the cast). (With torch's default
    allow_bf16_reduced_precision_reduction, cuBLAS may also reduce split-K partial sums in bf16; the sums
    here are over K = 64 positions or G <= MAX_STEP_CHUNKS chunks, too short for it to matter.)"""
    return wide_bmm(a, b).to(a.dtype) if a.device.type == "cpu" else bmm(a, b)  # (..., M, N)


def position_rotation(n: int, m: int, dtype, device):
    """[sin a_t, cos a_t] for t = 1..n, a_t = pi/2 * t / m, shaped to multiply (..., n, 2, D) features."""
    angle = (math.pi / 2) * torch.arange(1, n + 1, dtype=torch.float64, device=device) / m  # (n,)
    return torch.stack((torch.sin(angle), torch.cos(angle)), dim=-1).to(dtype)[..., None]  # (n, 2, 1)


def causal_reweight(chunk: int, m: int, dtype, device):
    """cos(pi/2 (i - j) / M) for j <= i inside a chunk, 0 above: the same for every chunk."""
    offset = torch.arange(chunk, dtype=torch.float64, device=device)  # (C,)
    return torch.cos((math.pi / 2) * (offset[:, None] - offset[None, :]) / m).tril().to(dtype)  # (C, C)


def chunk_slices(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def features_of(x, rotation, dtype):
    """relu(x) and phi(x) = [relu(x) sin a, relu(x) cos a], in the compute dtype."""
    # rectified before the upcast: relu is exact in any dtype, and a half input then moves half the bytes
    x_f = torch.relu(x).to(dtype)  # (..., L, D)
    return x_f, (x_f.unsqueeze(-2) * rotation).flatten(-2)  # (..., L, D), (..., L, 2D)


def half_features(x_f, rotation):
    """phi(x) from x_f = relu(x), in x_f's (half) dtype: each element the fp32 product x_f * [sin a, cos a]
    (rotation in fp32) rounded once."""
    phi = x_f.new_empty((*x_f.shape[:-1], 2, x_f.shape[-1]))  # (..., L, 2, D)
    torch.mul(x_f.unsqueeze(-2), rotation, out=phi)  # computed in fp32, written in x_f's dtype
    return phi.flatten(-2)  # (..., L, 2D)


def unrotated(grad_phi, rotation):
    """d loss / d relu(x) from d loss / d phi(x)."""
    return (grad_phi.unflatten(-1, (2, -1)) * rotation).sum(-2)  # (..., L, D)


def relu_grad(grad_f, x, into=None):
    """grad_f where x > 0, else 0 (..., L, D), into `into` (cast to its dtype; default: grad_f itself): relu's own
    backward kernel, one pass and no mask tensor. On the CPU (2 threads, 16 x 1024 x 64 fp32 elements, median of 200)
    the mask x <= 0 and masked_fill_ took 2251-2282 us, this 146 us. Half x with fp32 grad_f (the compute dtype): the
    mask, as the kernel wants one dtype."""
    if x.dtype != grad_f.dtype:
        grad_f.masked_fill_(x <= 0, 0)
        return grad_f if into is None else into.copy_(grad_f)
    return torch.ops.aten.threshold_backward.grad_input(grad_f, x, 0, grad_input=grad_f if into is None else into)


def load_relu(x, into) -> None:
    """relu(x) into the buffer `into`, cast to its dtype (the compute dtype). clamp_min(x, 0) is relu with an out= form;
    it writes only its own dtype, so half rows are cast in first and rectified there (exact either way)."""
    if x.dtype == into.dtype:
        torch.clamp_min(x, 0, out=into)
    else:
        into.copy_(x).clamp_min_(0)


def widened(v, dtype):
    """u = [v, 1]: one product then gives the numerator and (last column) the denominator. Written into one
    buffer: a half v is cast on the way in, instead of cast to a copy and then concatenated."""
    u = v.new_empty((*v.shape[:-1], v.shape[-1] + 1), dtype=dtype)  # (..., L, Dv+1)
    u[..., :-1].copy_(v)
    u[..., -1] = 1
    return u


def normalise_into(numerator, row_sums, eps: float, out, denominator) -> None:
    """numerator / clamp_min(row sums, eps) into the output rows, and the raw row sums into the denominators
    (unless None: no backward will read them)."""
    if denominator is not None:
        denominator.copy_(row_sums)  # (..., L, 1)
    torch.div(numerator, row_sums.clamp_min(eps), out=out)  # (..., L, Dv), cast to out's dtype


def row_grads(grad_out, out, denominator, eps: float, dtype):
    """d loss / d (numerator | denominator) rows, from the output (as FlashAttention's backward does)."""
    clamped = denominator.clamp_min(eps)  # (..., L, 1)
    grad_out = grad_out.to(dtype)  # (..., L, Dv)
    grad_den = -(grad_out * out.to(dtype)).sum(-1, keepdim=True) / clamped  # (..., L, 1)
    grad_den = grad_den * (denominator >= eps)  # clamp_min passes no gradient below eps
    return torch.cat((grad_out / clamped, grad_den), dim=-1)  # (..., L, Dv+1)


def empty_state(q, dv: int, dtype):
    return q.new_zeros((*q.shape[:2], 2 * q.shape[-1], dv + 1), dtype=dtype)  # (B, H, 2D, Dv+1)


def bmm(a, b):
    """a @ b over equal leading dims as one torch.bmm: torch.matmul on 4-d/5-d operands with a transposed
    one was measured 1.5x slower on the CPU for the [G, 2d, C] x [G, C, d+1] state products."""
    return torch.bmm(a.flatten(0, -3), b.flatten(0, -3)).unflatten(0, a.shape[:-2])  # (..., M, N)


def add_product_(acc, a, b):
    """acc += a @ b in one GEMM (beta = 1) over the flattened batch dims; acc, a, b contiguous. The out=
    form, not baddbmm_: FlopCounterMode counts aten.baddbmm (any overload) but not aten.baddbmm_."""
    acc_3d = acc.flatten(0, -3)  # (B*H*G, C, X), a view of acc
    torch.baddbmm(acc_3d, a.flatten(0, -3), b.flatten(0, -3), out=acc_3d)
    return acc
