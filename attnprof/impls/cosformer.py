"""cosFormer attention (Qin et al., ICLR 2022): ReLU features re-weighted by cos(pi/2 (i-j)/M), linear in N.

Math (exactly that of OpenNLPLab/cosFormer `cosformer.py`, see ALGORITHMS.md section 1): q' = relu(q),
k' = relu(k), angle a_t = pi/2 * t / M for positions t = 1..N, M = max(Nq, Nk), features
phi(x_t) = [x'_t sin a_t, x'_t cos a_t] (2d wide), so phi(q_i) . phi(k_j) = (q'_i . k'_j) cos(a_i - a_j) >= 0;
out_i = sum_j W_ij v_j / clamp_min(sum_j W_ij, eps), j over all keys (bidirectional) or j <= i (causal).
No 1/sqrt(d) scaling. (Only differences i - j enter the weights, so the position origin is immaterial; M is not.)

How it is computed. v is widened by a ones column, u_j = [v_j, 1], so one product yields numerator and
denominator. Bidirectional: one pass over keys builds the state S = sum_j phi(k_j)^T u_j ([2d, d+1] per
head), one pass over queries gives phi(q_i) S. Causal: chunks of C positions; inside a chunk the masked
C x C weights (q' k'^T) * cos(a_i - a_j) [j <= i] multiply u, and phi(q_i) S_<chunk adds every earlier
chunk, S_<chunk being the carried state plus an exclusive running sum of the chunk states phi(k)^T u of
the step. G = STEP_ROWS / (B H max(C, 64)) chunks are batched per step, so only one step's [G, 2d, d+1] chunk
states exist at a time. The backward is written by hand (recomputing from q, k, v, the output and the
denominators): dq in a forward sweep, dk and dv in a reverse sweep. Peak memory is therefore the output
(plus dq, dk, dv in fwd_bwd) plus one step's temporaries; nothing of size N x d x d is ever formed.

Deviations from the reference code, all with the same math:
- the causal form is chunked instead of materialising the per-position outer products [B*H, N, 2d, d]
  and cumsum-ing them (the reference's "Need to improve speed!" path); sums are reordered by chunk;
- inside a chunk the weight uses cos(a_i - a_j) directly rather than sin a_i sin a_j + cos a_i cos a_j;
- fp16/bf16 inputs are accumulated in fp32 (the reference runs in the input dtype, whose denominators
  overflow fp16 from about N = 8k) and the output is returned in the input dtype;
- causal with Nq != Nk is refused (the reference's cumsum form assumes equal lengths);
- the backward reads the saved output (in the input dtype, as FlashAttention's backward does) for the
  denominator's gradient; fp16/bf16 gradients stay within the output's rounding of the float64 ones.

Option `chunk_size` (default None = automatic): causal, the chunk length C of the masked C x C products
(per position the intra-chunk work is 2 C (2d + 1) FLOPs against 8 d (d + 1) for the states; results are
equal up to rounding); bidirectional, how many positions are processed at a time (memory and cache use only).
Automatic values, measured on the CPU (AMD EPYC, 2 cores shared with other jobs; N = 8192, B = 1, H = 16,
D = 64, fp32 forward, interleaved repetitions, process CPU time at 1 thread, which the sharing disturbs
least): causal C = 64 (48 and 32 within 2 %, 96 +9 %, 16 and 128 +20 %, 256 +50 %, 512 +130 %), with
STEP_ROWS = 2^12 (2^11 +5 %, 2^13 +13 %, 2^14 +25 %: a step's temporaries fall out of cache); bidirectional
STEP_ROWS / (B H) positions per chunk, at least 256 (128 to 256 fastest, 2048 +50 %, 8192 +130 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from attnprof.impls import register
from attnprof.impls.base import AttentionImpl, io_bytes
from attnprof.impls.reference.cosformer import cosformer_reference

CAUSAL_CHUNK = 64  # measured fastest causal chunk on the CPU (see module docstring)
STEP_ROWS = 1 << 12  # batch*heads*positions per causal step and per automatic bidirectional chunk (measured)


def cosformer_attention(q, k, v, *, causal: bool = False, eps: float = 1e-6, chunk_size: int | None = None) -> torch.Tensor:
    """cosFormer attention of (B, H, N, D) q, k, v (before the ReLU); returns (B, H, Nq, Dv) in q's dtype."""
    _check_shapes(q, k, v, causal)
    reasons = chunk_size_problems(chunk_size)
    if reasons:
        raise ValueError(reasons[0])
    chunk = auto_chunk_size(causal, q.shape[0], q.shape[1]) if chunk_size is None else int(chunk_size)
    form = _CausalCosformer if causal else _BidirectionalCosformer
    return form.apply(q, k, v, float(eps), chunk)


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


def _check_shapes(q, k, v, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"cosformer needs (B, H, N, D) q, k, v, not {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"cosformer shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-2] < 1 or k.shape[-2] < 1:
        raise ValueError(f"cosformer needs at least one query and one key, not {q.shape[-2]} and {k.shape[-2]}")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal cosformer needs as many queries as keys, not {q.shape[-2]} and {k.shape[-2]}")


# ---- shared pieces -------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # fp32 accumulators for halves


def _rotation(n: int, m: int, dtype, device):
    """[sin a_t, cos a_t] for t = 1..n, a_t = pi/2 * t / m, shaped to multiply (..., n, 2, D) features."""
    angle = (math.pi / 2) * torch.arange(1, n + 1, dtype=torch.float64, device=device) / m  # (n,)
    return torch.stack((torch.sin(angle), torch.cos(angle)), dim=-1).to(dtype)[..., None]  # (n, 2, 1)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _features(x, rotation, dtype):
    """relu(x) and phi(x) = [relu(x) sin a, relu(x) cos a], in the compute dtype."""
    x_f = torch.relu(x.to(dtype))  # (..., L, D)
    return x_f, (x_f.unsqueeze(-2) * rotation).flatten(-2)  # (..., L, D), (..., L, 2D)


def _unrotated(grad_phi, rotation):
    """d loss / d relu(x) from d loss / d phi(x)."""
    return (grad_phi.unflatten(-1, (2, -1)) * rotation).sum(-2)  # (..., L, D)


def _relu_grad(grad_f, x):
    return grad_f.masked_fill_(x <= 0, 0)  # (..., L, D): relu passes gradient where x > 0


def _widened(v, dtype):
    """u = [v, 1]: one product then gives the numerator and (last column) the denominator."""
    return torch.cat((v.to(dtype), v.new_ones((*v.shape[:-1], 1), dtype=dtype)), dim=-1)  # (..., L, Dv+1)


def _normalise_into(rows, eps: float, out, denominator) -> None:
    """(numerator | denominator) rows -> the output rows and the raw denominators, written in place."""
    torch.div(rows[..., :-1], rows[..., -1:].clamp_min(eps), out=out)  # (..., L, Dv), cast to out's dtype
    denominator.copy_(rows[..., -1:])  # (..., L, 1)


def _row_grads(grad_out, out, denominator, eps: float, dtype):
    """d loss / d (numerator | denominator) rows, from the output (as FlashAttention's backward does)."""
    clamped = denominator.clamp_min(eps)  # (..., L, 1)
    grad_out = grad_out.to(dtype)  # (..., L, Dv)
    grad_den = -(grad_out * out.to(dtype)).sum(-1, keepdim=True) / clamped  # (..., L, 1)
    grad_den = grad_den * (denominator >= eps)  # clamp_min passes no gradient below eps
    return torch.cat((grad_out / clamped, grad_den), dim=-1)  # (..., L, Dv+1)


def _empty_state(q, dv: int, dtype):
    return q.new_zeros((*q.shape[:2], 2 * q.shape[-1], dv + 1), dtype=dtype)  # (B, H, 2D, Dv+1)


def _bmm(a, b):
    """a @ b over equal leading dims as one torch.bmm: torch.matmul on 4-d/5-d operands with a transposed
    one was measured 1.5x slower on the CPU for the [G, 2d, C] x [G, C, d+1] state products."""
    return torch.bmm(a.flatten(0, -3), b.flatten(0, -3)).unflatten(0, a.shape[:-2])  # (..., M, N)


def _add_product_(acc, a, b):
    """acc += a @ b in one GEMM (beta = 1) over the flattened batch dims; acc, a, b contiguous. The out=
    form, not baddbmm_: FlopCounterMode counts aten.baddbmm (any overload) but not aten.baddbmm_."""
    acc_3d = acc.flatten(0, -3)  # (B*H*G, C, X), a view of acc
    torch.baddbmm(acc_3d, a.flatten(0, -3), b.flatten(0, -3), out=acc_3d)
    return acc


# ---- bidirectional -------------------------------------------------------------------------------


class _BidirectionalCosformer(torch.autograd.Function):
    """out = phi(q) S / clamp_min(phi(q) S_den, eps), S = sum_j phi(k_j)^T [v_j, 1] over all keys."""

    @staticmethod
    def forward(ctx, q, k, v, eps: float, chunk: int):
        dtype, m = _compute_dtype(q.dtype), max(q.shape[-2], k.shape[-2])
        state = _key_state(k, v, _rotation(k.shape[-2], m, dtype, k.device), chunk)  # (B, H, 2D, Dv+1)
        out, denominator = _query_pass(q, state, _rotation(q.shape[-2], m, dtype, q.device), chunk, eps)
        ctx.save_for_backward(q, k, v, out, denominator, state)
        ctx.eps, ctx.chunk = eps, chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, denominator, state = ctx.saved_tensors
        m, dtype = max(q.shape[-2], k.shape[-2]), state.dtype
        rotation_q, rotation_k = _rotation(q.shape[-2], m, dtype, q.device), _rotation(k.shape[-2], m, dtype, k.device)
        grad_q, grad_state = _query_grads(q, grad_out, out, denominator, state, rotation_q, ctx.chunk, ctx.eps)
        grad_k, grad_v = _key_grads(k, v, grad_state, rotation_k, ctx.chunk)
        return grad_q, grad_k, grad_v, None, None


def _key_state(k, v, rotation, chunk: int):
    state = _empty_state(k, v.shape[-1], rotation.dtype)  # (B, H, 2D, Dv+1)
    for rows in _chunks(k.shape[-2], chunk):
        _, phi_k = _features(k[..., rows, :], rotation[rows], state.dtype)  # (B, H, L, 2D)
        state += _bmm(phi_k.transpose(-2, -1), _widened(v[..., rows, :], state.dtype))
    return state


def _query_pass(q, state, rotation, chunk: int, eps: float):
    out = q.new_empty((*q.shape[:-1], state.shape[-1] - 1))  # (B, H, Nq, Dv)
    denominator = q.new_empty((*q.shape[:-1], 1), dtype=state.dtype)  # (B, H, Nq, 1)
    for rows in _chunks(q.shape[-2], chunk):
        _, phi_q = _features(q[..., rows, :], rotation[rows], state.dtype)  # (B, H, L, 2D)
        _normalise_into(_bmm(phi_q, state), eps, out[..., rows, :], denominator[..., rows, :])
    return out, denominator  # (B, H, Nq, Dv), (B, H, Nq, 1)


def _query_grads(q, grad_out, out, denominator, state, rotation, chunk: int, eps: float):
    """dq, and d loss / d state (the sum over all queries) for the key pass."""
    grad_q, grad_state = torch.empty_like(q), torch.zeros_like(state)  # (B, H, Nq, D), (B, H, 2D, Dv+1)
    for rows in _chunks(q.shape[-2], chunk):
        _, phi_q = _features(q[..., rows, :], rotation[rows], state.dtype)  # (B, H, L, 2D)
        grad_rows = _row_grads(grad_out[..., rows, :], out[..., rows, :], denominator[..., rows, :], eps, state.dtype)  # (B, H, L, Dv+1)
        grad_phi = _bmm(grad_rows, state.transpose(-2, -1))  # (B, H, L, 2D)
        grad_q[..., rows, :] = _relu_grad(_unrotated(grad_phi, rotation[rows]), q[..., rows, :])
        grad_state += _bmm(phi_q.transpose(-2, -1), grad_rows)
    return grad_q, grad_state


def _key_grads(k, v, grad_state, rotation, chunk: int):
    grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)  # (B, H, Nk, D), (B, H, Nk, Dv)
    for rows in _chunks(k.shape[-2], chunk):
        _, phi_k = _features(k[..., rows, :], rotation[rows], grad_state.dtype)  # (B, H, L, 2D)
        u = _widened(v[..., rows, :], grad_state.dtype)  # (B, H, L, Dv+1)
        grad_phi = _bmm(u, grad_state.transpose(-2, -1))  # (B, H, L, 2D)
        grad_k[..., rows, :] = _relu_grad(_unrotated(grad_phi, rotation[rows]), k[..., rows, :])
        grad_v[..., rows, :] = _bmm(phi_k, grad_state)[..., :-1]
    return grad_k, grad_v


# ---- causal --------------------------------------------------------------------------------------


class _CausalCosformer(torch.autograd.Function):
    """Chunks of C positions, G chunks per step: masked C x C weights inside each chunk plus phi(q) S_<chunk,
    the state of all earlier chunks (the carried state plus an exclusive cumsum over the step's chunk states)."""

    @staticmethod
    def forward(ctx, q, k, v, eps: float, chunk: int):
        dtype = _compute_dtype(q.dtype)
        state = _empty_state(q, v.shape[-1], dtype)  # (B, H, 2D, Dv+1): every chunk before the step
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))  # (B, H, N, Dv)
        denominator = q.new_empty((*q.shape[:-1], 1), dtype=dtype)  # (B, H, N, 1)
        for step in _causal_steps(q, chunk, dtype):
            (q_f, phi_q), (k_f, phi_k), u = step.load(q, k, v)  # (B, H, G, C, D | 2D | Dv+1)
            rows = _bmm(step.intra_weights(q_f, k_f), u)  # (B, H, G, C, Dv+1)
            past, state = _exclusive_cumsum(state, _bmm(phi_k.transpose(-2, -1), u))  # (B, H, G, 2D, Dv+1)
            _add_product_(rows, phi_q, past)
            _normalise_into(rows, eps, step.view(out), step.view(denominator))  # (B, H, G, C, Dv), (B, H, G, C, 1)
        ctx.save_for_backward(q, k, v, out, denominator)
        ctx.eps, ctx.chunk = eps, chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, denominator = ctx.saved_tensors
        steps = _causal_steps(q, ctx.chunk, denominator.dtype)
        row_grads = lambda step: _row_grads(step.view(grad_out), step.view(out), step.view(denominator), ctx.eps, step.dtype)
        grad_q = _causal_query_grads(steps, q, k, v, row_grads)
        return grad_q, *_causal_key_grads(steps, q, k, v, row_grads), None, None


@dataclass(frozen=True)
class _Step:
    """`count` consecutive chunks of `size` positions from `start`, processed as one batch of chunks."""

    start: int
    count: int
    size: int
    rotation: torch.Tensor  # (G, C, 2, 1): [sin a, cos a] of each position
    reweight: torch.Tensor  # (C, C): cos(a_i - a_j) for j <= i, else 0
    dtype: torch.dtype

    def view(self, x):
        return x[..., self.start : self.start + self.count * self.size, :].unflatten(-2, (self.count, self.size))  # (B, H, G, C, X)

    def load(self, q, k, v):
        """(relu(q), phi(q)), (relu(k), phi(k)), [v, 1] of the step, in the compute dtype."""
        features = (_features(self.view(x), self.rotation, self.dtype) for x in (q, k))
        return *features, _widened(self.view(v), self.dtype)

    def intra_weights(self, q_f, k_f):
        return _bmm(q_f, k_f.transpose(-2, -1)).mul_(self.reweight)  # (B, H, G, C, C)

    def unrotated(self, grad_phi):
        return _unrotated(grad_phi, self.rotation)  # (B, H, G, C, D)


def _causal_steps(q, chunk: int, dtype) -> list[_Step]:
    """Full chunks G at a time (G from STEP_ROWS), then the remainder N mod C as a step of one short chunk."""
    n, chunk = q.shape[-2], min(chunk, q.shape[-2])
    # max(chunk, CAUSAL_CHUNK): a small chunk_size must not multiply the step's [G, 2D, Dv+1] chunk states
    per_step = max(1, STEP_ROWS // (q.shape[0] * q.shape[1] * max(chunk, CAUSAL_CHUNK)))
    rotation = _rotation(n, n, dtype, q.device)  # (N, 2, 1)
    reweight = _causal_reweight(chunk, n, dtype, q.device)  # (C, C)
    full = n // chunk
    spans = [(first * chunk, min(per_step, full - first), chunk) for first in range(0, full, per_step)]
    spans += [(full * chunk, 1, n - full * chunk)] if n % chunk else []
    return [
        _Step(start, count, size, rotation[start : start + count * size].unflatten(0, (count, size)), reweight[:size, :size], dtype)
        for start, count, size in spans
    ]


def _causal_reweight(chunk: int, m: int, dtype, device):
    """cos(pi/2 (i - j) / M) for j <= i inside a chunk, 0 above: the same for every chunk."""
    offset = torch.arange(chunk, dtype=torch.float64, device=device)  # (C,)
    return torch.cos((math.pi / 2) * (offset[:, None] - offset[None, :]) / m).tril().to(dtype)  # (C, C)


def _exclusive_cumsum(carry, parts, reverse: bool = False):
    """For each of the G chunks: carry + the parts of the chunks before it (after it, when reverse); and the
    total, the next carry. G in-place adds: torch.cumsum over a middle dim is ~5x slower on the CPU, and
    the result is contiguous so the matmul reading it makes no copy."""
    order = list(range(parts.shape[-3]))[:: -1 if reverse else 1]
    sums = torch.empty_like(parts)  # (B, H, G, 2D, Dv+1)
    sums[..., order[0], :, :] = carry
    for before, g in zip(order[:-1], order[1:], strict=True):
        torch.add(sums[..., before, :, :], parts[..., before, :, :], out=sums[..., g, :, :])
    return sums, sums[..., order[-1], :, :] + parts[..., order[-1], :, :]


def _causal_query_grads(steps, q, k, v, row_grads):
    """dq, sweeping forwards: a chunk's queries need the state of the chunks before it."""
    state = _empty_state(q, v.shape[-1], steps[0].dtype)  # (B, H, 2D, Dv+1)
    grad_q = torch.empty_like(q)  # (B, H, N, D)
    for step in steps:
        (_, phi_q), (k_f, phi_k), u = step.load(q, k, v)  # (B, H, G, C, 2D | D, 2D | Dv+1)
        grad_rows = row_grads(step)  # (B, H, G, C, Dv+1)
        grad_w = _bmm(grad_rows, u.transpose(-2, -1)).mul_(step.reweight)  # (B, H, G, C, C)
        past, state = _exclusive_cumsum(state, _bmm(phi_k.transpose(-2, -1), u))  # (B, H, G, 2D, Dv+1)
        grad_qf = _bmm(grad_w, k_f) + step.unrotated(_bmm(grad_rows, past.transpose(-2, -1)))  # (B, H, G, C, D)
        step.view(grad_q).copy_(_relu_grad(grad_qf, step.view(q)))
    return grad_q


def _causal_key_grads(steps, q, k, v, row_grads):
    """dk and dv, sweeping backwards: a chunk's keys feed the state read by every later chunk."""
    later = _empty_state(q, v.shape[-1], steps[0].dtype)  # (B, H, 2D, Dv+1): d loss / d state, later chunks
    grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)  # (B, H, N, D), (B, H, N, Dv)
    for step in reversed(steps):
        (q_f, phi_q), (k_f, phi_k), u = step.load(q, k, v)  # (B, H, G, C, D | 2D | Dv+1)
        grad_rows = row_grads(step)  # (B, H, G, C, Dv+1)
        grad_w = _bmm(grad_rows, u.transpose(-2, -1)).mul_(step.reweight)  # (B, H, G, C, C)
        future, later = _exclusive_cumsum(later, _bmm(phi_q.transpose(-2, -1), grad_rows), reverse=True)  # (B, H, G, 2D, Dv+1)
        grad_kf = _bmm(grad_w.transpose(-2, -1), q_f) + step.unrotated(_bmm(u, future.transpose(-2, -1)))
        grad_u = _add_product_(_bmm(step.intra_weights(q_f, k_f).transpose(-2, -1), grad_rows), phi_k, future)
        step.view(grad_k).copy_(_relu_grad(grad_kf, step.view(k)))  # (B, H, G, C, D)
        step.view(grad_v).copy_(grad_u[..., :-1])  # (B, H, G, C, Dv)
    return grad_k, grad_v


# ---- registration --------------------------------------------------------------------------------


def cosformer_flops(case, options: dict) -> int:
    """Matmul FLOPs (2 per multiply-add, as FlopCounterMode counts; element-wise work not counted) of
    one call, with d = head_dim, e = d + 1 (v widened by the ones column), per batch and head:
    bidirectional: fwd 4 d e (Nq + Nk) [key states, query products], bwd 8 d e (Nq + Nk);
    causal, summed over the chunks of length L (C, and a last one of N mod C):
    fwd 2 L^2 (d + e) + 8 L d e, bwd 6 L^2 (d + e) + 20 L d e (both sweeps recompute their chunk's pieces)."""
    n, d = case.seq_len, case.head_dim
    e = d + 1
    if not case.causal:
        fwd, bwd = 4 * d * e * 2 * n, 8 * d * e * 2 * n
    else:
        chunk = min(int(options.get("chunk_size") or auto_chunk_size(True, case.batch, case.heads)), n)
        lengths = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
        fwd = sum(2 * length**2 * (d + e) + 8 * length * d * e for length in lengths)
        bwd = sum(6 * length**2 * (d + e) + 20 * length * d * e for length in lengths)
    per_head = fwd if case.mode == "fwd" else fwd + bwd
    return case.batch * case.heads * per_head


def _refuse(case, options: dict) -> list[str]:
    return chunk_size_problems(options.get("chunk_size"))


register(
    AttentionImpl(
        name="cosformer",
        family="linear",
        fn=cosformer_attention,
        description="cosFormer (ReLU features, cos(pi/2 (i-j)/M) re-weighting), linear in N; chunked causal form, fp32 accumulators",
        options={"chunk_size": None},
        reference=cosformer_reference,
        refuse=_refuse,
        flops=cosformer_flops,
        min_bytes=lambda case, options: io_bytes(case),  # the [2d, d+1] state fits on chip; q, k, v, out dominate
        exact=False,
        check_tolerance={"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.5e-2},
    )
)
