"""Nyströmformer's forward through Triton kernels (option backend="triton"), with the eager backward by recomputation.

Why: the eager forward is many small PyTorch ops (counted on meta at N = 8192, B = 1, H = 16, d = 64, bf16: 49 ops
moving 0.75 GB), so on a GPU it is bound by launches and dispatch where sdpa-flash takes about a millisecond (its
275 GFLOP at 8k bidirectional; an estimate, not yet timed), and the linear mechanisms are meant to beat it from
8k on. Here, after the segment means and the m x m landmark kernel A (PyTorch: two means, three small ops for A
and three for the scale of the pseudo-inverse's start), three launches (`triton_kernels.py`), each a torch custom
op with a fake kernel, so on `meta` the accounting sees one op per launch with the bytes it reads and writes:
- `landmark_values`: Bk @ V = softmax(Ql K^T / sqrt(d)) V as flash attention with m queries, its keys split into
  parts for about TARGET_PROGRAMS programs, each part's unnormalised sums written out (m x d per part);
- `pinv_values`: one program per head merges the parts, runs the pseudo-inverse's iterations on A and writes
  W = Z @ (Bk @ V): the eager plan's 4 kernels an iteration (24 at the default 6), and its casts, in one launch;
- `nystrom_out`: softmax(Q Kl^T / sqrt(d)) W for blocks of rows, plus the depthwise conv skip as a banded product
  over the block's rows of v: F is never written out, and the skip never added in a pass of its own.
The backward recomputes the eager forward (`eager.py`) under autograd and differentiates it: the gradients are
the eager plan's, at the cost of one more eager forward.

Differences from the eager plan, all rounding: the kernels multiply half q, k and v as they are, into fp32 sums (the
eager plan multiplies fp32 copies), Bk's softmax is normalised after its product with V (flash attention's order),
and the conv skip is summed with F W in fp32 before one rounding (the eager plan adds it to the rounded output).
Checked on the CPU through Triton's interpreter against the float64 reference and the eager plan
(tests/impls/test_nystromformer_triton.py), compiled for sm_90 by benchmarks/triton_resources.py; on a GPU by tests/gpu.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnprof.impls import triton_support
from attnprof.impls.autograd_guards import refuse_a_graph
from attnprof.impls.nystromformer.eager import eager_attention, landmark_kernel, pinv_scale, segment_means, work_dtype

TARGET_PROGRAMS = 1024  # landmark_values programs per launch: ~8 per SM of an H100 (132); a guess until a GPU times it
KEY_BLOCK = 64  # keys per tile of landmark_values
# keys per part at least: pinv_values merges a head's parts one after another, so at short lengths fewer, longer parts
# (8k, 16 heads: 16 parts of 512 where 1024 programs would take 64 of 128) cut that serial loop and the parts' sums
# written and read back, at 2 programs per SM; from 32k on TARGET_PROGRAMS decides
MIN_PART_KEYS = 512
ROW_BLOCK = 64  # query rows per nystrom_out program
# rows of v per banded product of the conv skip: 32 (tl.dot's least is 16) loads the 96 rows a block of 64 needs at 33
# taps in 3 products, where chunks of 64 loaded 128 in 2
CONV_CHUNK = 32
MAX_WIDTH = 128  # head dims: a row block's q, out and v tiles in registers
# pinv_values holds A, Z and three m x m fp32 products of one head on chip: at m = 128 (the tiles padded to 128 from
# m = 65 on) it compiled for sm_90 to 256 KiB of shared memory, over the 227 KiB an H100 gives a block
MAX_LANDMARKS = 64
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
WARPS = 4  # Triton's default, for landmark_values and nystrom_out: untimed until a GPU session
PINV_WARPS = 8  # five m x m fp32 matrices live at once: 8 warps spread them over twice Triton's default threads


def triton_problems(q, k, v, num_landmarks: int, conv_weight) -> list[str]:
    """Why backend="triton" cannot run these inputs (empty when it can)."""
    reasons = triton_support.call_problems("nystromformer", q.device.type)
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        reasons.append(f"nystromformer backend=triton takes float32, float16 or bfloat16 inputs, not {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[:-1] != k.shape[:-1] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        reasons.append(f"nystromformer backend=triton needs q, k, v of one length: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return reasons + shape_problems(q.dtype, max(q.shape[-1], v.shape[-1]), num_landmarks)


def shape_problems(dtype, head_dim: int, num_landmarks: int) -> list[str]:
    reasons = []
    if head_dim > MAX_WIDTH:
        reasons.append(f"nystromformer backend=triton handles head dims up to {MAX_WIDTH}, not {head_dim}")
    if num_landmarks > MAX_LANDMARKS:
        reasons.append(f"nystromformer backend=triton handles up to {MAX_LANDMARKS} landmarks, not {num_landmarks}")
    if dtype not in DTYPES:
        reasons.append(f"nystromformer backend=triton takes float32, float16 or bfloat16, not {str(dtype).removeprefix('torch.')}")
    return reasons


class TritonNystrom(torch.autograd.Function):
    """The Triton forward (N > m); the backward differentiates the eager forward, recomputed."""

    @staticmethod
    def forward(ctx, q, k, v, conv_weight, num_landmarks: int, iterations: int, pinv_init: str):
        ctx.save_for_backward(q, k, v, conv_weight)
        ctx.options = num_landmarks, iterations, pinv_init
        return triton_forward(q, k, v, conv_weight, num_landmarks, iterations, pinv_init)

    @staticmethod
    def backward(ctx, grad_out):
        refuse_a_graph("nystromformer backend=triton's backward recomputes the eager forward and differentiates it once, with no graph")
        num_landmarks, iterations, pinv_init = ctx.options
        needed = ctx.needs_input_grad[:4]
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needed, strict=True)]
            out = eager_attention(*leaves[:3], num_landmarks, iterations, leaves[3], pinv_init)  # (B, H, N, D)
        wanted = [leaf for leaf, need in zip(leaves, needed, strict=True) if need]
        grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
        return (*(next(grads) if need else None for need in needed), None, None, None)


def triton_forward(q, k, v, conv_weight, num_landmarks: int, iterations: int, pinv_init: str) -> Tensor:
    """The forward of N > m: (B, H, N, D) q, k, v -> (B, H, N, Dv) in v's dtype."""
    work = work_dtype(q.dtype)
    q_land, k_land = segment_means(q, num_landmarks, work), segment_means(k, num_landmarks, work)  # (B, H, m, D) each
    a = landmark_kernel(q_land, k_land)  # (B, H, m, m)
    acc, top, total = torch.ops.attnprof.nystrom_landmark_values(q_land, k, v)
    w = torch.ops.attnprof.nystrom_pinv_values(a, pinv_scale(a, pinv_init), acc, top, total, iterations, v.dtype)  # (B, H, m, Dv)
    if conv_weight is None:
        return torch.ops.attnprof.nystrom_out(q, k_land, w, None, None)  # v is not read again
    conv = conv_weight.reshape(conv_weight.shape[0], -1).to(device=v.device, dtype=v.dtype)  # (H, taps), as the eager conv takes it
    return torch.ops.attnprof.nystrom_out(q, k_land, w, v, conv)


def key_parts(keys: int, groups: int) -> tuple[int, int]:
    """(parts, keys per part): the keys split for about TARGET_PROGRAMS programs of landmark_values, a part a power of
    two times KEY_BLOCK (a constexpr: few compiled variants) of at least MIN_PART_KEYS."""
    from triton import cdiv, next_power_of_2

    per_part = max(KEY_BLOCK, MIN_PART_KEYS, next_power_of_2(cdiv(keys, max(1, TARGET_PROGRAMS // groups))))
    return cdiv(keys, per_part), per_part


def launch_constants(kernel: str, dtype, landmarks: int, width: int, width_v: int, keys=0, groups=1, iterations=6, taps=0) -> dict:
    """The constexprs (but INTERPRETED) and num_warps the plan launches `kernel` with when compiled, for inputs of `dtype`
    (also what benchmarks/triton_resources.py compiles)."""
    from triton import cdiv

    blocks = {"BLOCK_M": _block(landmarks), "BLOCK_DV": _block(width_v)}
    if kernel == "pinv_values_kernel":
        return {**blocks, "ITERATIONS": iterations, "STATIC_PARTS": 0, "num_warps": PINV_WARPS}
    blocks |= {"BLOCK_D": _block(width), "EXACT": dtype == torch.float32, "num_warps": WARPS}
    if kernel == "landmark_values_kernel":
        # fp32 tiles staged 3 deep took 256 KiB of shared memory at head dims of 128 (sm_90 gives a block 227 KiB): 2 deep
        stages = {"num_stages": 2} if dtype == torch.float32 else {}
        return {**blocks, "KEYS_PER_PART": key_parts(keys, groups)[1], "BLOCK_K": KEY_BLOCK, **stages}
    chunks = cdiv(ROW_BLOCK + taps - 1, CONV_CHUNK)
    return {**blocks, "HAS_CONV": taps > 0, "CONV_CHUNKS": chunks, "CONV_CHUNK": CONV_CHUNK, "BLOCK_N": ROW_BLOCK}


def _interpreted(kernel) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def _block(size: int) -> int:
    from triton import next_power_of_2

    return max(16, next_power_of_2(size))  # tl.dot takes dims of 16 or more


def _part_buffers(q_land: Tensor, v: Tensor, keys: int):
    groups, landmarks = q_land.shape[0] * q_land.shape[1], q_land.shape[-2]
    parts, _ = key_parts(keys, groups)
    f32 = {"dtype": torch.float32, "device": v.device}
    acc = torch.empty(groups, parts, landmarks, v.shape[-1], **f32)  # (BH, parts, m, Dv)
    return acc, torch.empty(groups, parts, landmarks, **f32), torch.empty(groups, parts, landmarks, **f32)


@torch.library.custom_op("attnprof::nystrom_landmark_values", mutates_args=())
def _landmark_values(q_land: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    from attnprof.impls.nystromformer import triton_kernels

    q_land, k, v = q_land.contiguous(), k.contiguous(), v.contiguous()
    keys, width, landmarks = k.shape[-2], k.shape[-1], q_land.shape[-2]
    acc, top, total = _part_buffers(q_land, v, keys)
    parts, per_part = key_parts(keys, acc.shape[0])
    kernel = triton_kernels.landmark_values_kernel
    constants = launch_constants("landmark_values_kernel", k.dtype, landmarks, width, v.shape[-1], keys=keys, groups=acc.shape[0])
    with triton_support.on_device_of(k):
        kernel[(parts * acc.shape[0],)](q_land, k, v, acc, top, total, keys, landmarks, width, v.shape[-1], parts, width**-0.5,
                                        INTERPRETED=_interpreted(kernel), **constants)  # fmt: skip
    return acc, top, total


@_landmark_values.register_fake
def _(q_land, k, v):
    return _part_buffers(q_land, v, k.shape[-2])


@torch.library.custom_op("attnprof::nystrom_pinv_values", mutates_args=())
def _pinv_values(a: Tensor, scale: Tensor, acc: Tensor, top: Tensor, total: Tensor, iterations: int, dtype: torch.dtype) -> Tensor:
    from attnprof.impls.nystromformer import triton_kernels

    a, acc, top, total = a.contiguous(), acc.contiguous(), top.contiguous(), total.contiguous()
    scale = scale.reshape(-1).contiguous()  # one scalar (the reference init) or one per batch item and head
    w = _w_buffer(a, acc, dtype)
    landmarks, parts = a.shape[-1], acc.shape[1]
    kernel = triton_kernels.pinv_values_kernel
    interpreted = _interpreted(kernel)
    constants = launch_constants("pinv_values_kernel", dtype, landmarks, landmarks, acc.shape[-1], iterations=iterations)
    with triton_support.on_device_of(a):
        kernel[(acc.shape[0],)](a, scale, 0 if scale.numel() == 1 else 1, acc, top, total, w, landmarks, acc.shape[-1], parts,
                                INTERPRETED=interpreted, **constants | {"STATIC_PARTS": parts if interpreted else 0})  # fmt: skip
    return w


def _w_buffer(a: Tensor, acc: Tensor, dtype: torch.dtype) -> Tensor:
    return acc.new_empty((*a.shape[:-1], acc.shape[-1]), dtype=dtype)  # (B, H, m, Dv)


@_pinv_values.register_fake
def _(a, scale, acc, top, total, iterations, dtype):
    return _w_buffer(a, acc, dtype)


@torch.library.custom_op("attnprof::nystrom_out", mutates_args=())
def _nystrom_out(q: Tensor, k_land: Tensor, w: Tensor, v: Tensor | None, conv: Tensor | None) -> Tensor:
    """v and conv: both for the conv skip, or both None (then v is neither read nor counted)."""
    from triton import cdiv

    from attnprof.impls.nystromformer import triton_kernels

    q, k_land, w = q.contiguous(), k_land.contiguous(), w.contiguous()
    out = _out_buffer(q, w)
    length, width, landmarks, width_v = q.shape[-2], q.shape[-1], k_land.shape[-2], w.shape[-1]
    taps = 0 if conv is None else conv.shape[-1]
    skip = (out, out) if conv is None else (v.contiguous(), conv.contiguous())  # without the skip, never loaded
    kernel = triton_kernels.nystrom_out_kernel
    constants = launch_constants("nystrom_out_kernel", q.dtype, landmarks, width, width_v, taps=taps)
    grid = (cdiv(length, ROW_BLOCK) * q.shape[0] * q.shape[1],)
    with triton_support.on_device_of(q):
        kernel[grid](q, k_land, w, *skip, out, length, landmarks, width, width_v, q.shape[1], taps, width**-0.5,
                     INTERPRETED=_interpreted(kernel), **constants)  # fmt: skip
    return out


def _out_buffer(q: Tensor, w: Tensor) -> Tensor:
    return w.new_empty((*q.shape[:-1], w.shape[-1]))  # (B, H, N, Dv) in v's dtype (W's)


@_nystrom_out.register_fake
def _(q, k_land, w, v, conv):
    return _out_buffer(q, w)
