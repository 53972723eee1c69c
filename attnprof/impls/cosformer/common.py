"""Pieces shared by the bidirectional and causal cosFormer forms: features, products, normalisation."""

from __future__ import annotations

import math

import torch

CAUSAL_CHUNK = 64  # measured fastest causal chunk on the CPU (see module docstring)
STEP_ROWS = 1 << 12  # batch*heads*positions per causal step and per automatic bidirectional chunk (measured)


def auto_chunk_size(causal: bool, batch: int = 1, heads: int = 1) -> int:
    """The chunk used when chunk_size is None. Causal: CAUSAL_CHUNK, the fastest measured on the CPU.
    Bidirectional: STEP_ROWS / (batch * heads) positions at a time, at least 256 (the cache-friendly size)."""
    if causal:
        return CAUSAL_CHUNK
    return max(256, STEP_ROWS // max(1, batch * heads))


def chunk_size_problems(chunk_size) -> list[str]:
    """Why `chunk_size` is not acceptable (empty when it is): None or a positive integer."""
    if chunk_size is None:
        return []
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, float)) or not float(chunk_size).is_integer() or chunk_size < 1:
        return [f"cosformer chunk_size must be a positive integer or None (automatic), not {chunk_size!r}"]
    return []


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # fp32 accumulators for halves


def position_rotation(n: int, m: int, dtype, device):
    """[sin a_t, cos a_t] for t = 1..n, a_t = pi/2 * t / m, shaped to multiply (..., n, 2, D) features."""
    angle = (math.pi / 2) * torch.arange(1, n + 1, dtype=torch.float64, device=device) / m  # (n,)
    return torch.stack((torch.sin(angle), torch.cos(angle)), dim=-1).to(dtype)[..., None]  # (n, 2, 1)


def chunk_slices(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def features_of(x, rotation, dtype):
    """relu(x) and phi(x) = [relu(x) sin a, relu(x) cos a], in the compute dtype."""
    x_f = torch.relu(x.to(dtype))  # (..., L, D)
    return x_f, (x_f.unsqueeze(-2) * rotation).flatten(-2)  # (..., L, D), (..., L, 2D)


def unrotated(grad_phi, rotation):
    """d loss / d relu(x) from d loss / d phi(x)."""
    return (grad_phi.unflatten(-1, (2, -1)) * rotation).sum(-2)  # (..., L, D)


def relu_grad(grad_f, x):
    return grad_f.masked_fill_(x <= 0, 0)  # (..., L, D): relu passes gradient where x > 0


def widened(v, dtype):
    """u = [v, 1]: one product then gives the numerator and (last column) the denominator."""
    return torch.cat((v.to(dtype), v.new_ones((*v.shape[:-1], 1), dtype=dtype)), dim=-1)  # (..., L, Dv+1)


def normalise_into(numerator, row_sums, eps: float, out, denominator) -> None:
    """numerator / clamp_min(row sums, eps) into the output rows, and the raw row sums into the denominators."""
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
