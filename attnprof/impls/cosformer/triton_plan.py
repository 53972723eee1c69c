"""cosFormer's forward through Triton kernels (option backend="triton"), with the eager backward.

Why: the eager forwards are many small PyTorch ops (counted on meta at N = 65536, B = 1, H = 16, bf16:
105 ops moving 2.89 GB bidirectional, 264 ops moving 8.19 GB causal), so on a GPU they are bound by launches
and by features written out and read back. These kernels read q, k, v once and write the output once:
- bidirectional: `key_states_kernel` (one program per part of the keys and head: the part's sums of
  phi(k)^T v and phi(k)), a torch sum over the parts, `bidirectional_out_kernel` (one program per 64 queries);
- causal: `key_states_kernel` per part, a torch cumsum over the parts (each part then starts from the sums
  over the parts before it), `causal_out_kernel` (one program per part and head walks the part's chunks of
  C positions in order, carrying S and z in registers).
A part is `rows_per_part` positions, sized for about TARGET_PROGRAMS programs per launch. Each launch is a
torch custom op with a fake kernel, so on `meta` the accounting sees one op per launch with the bytes it
reads and writes. The backward is the eager one (`BidirectionalCosformer`, `CausalCosformer`): it recomputes
from q, k, v, the output and the denominators, which these forwards save in the same form.

Checked on the CPU through Triton's interpreter against the float64 reference and the eager forward
(tests/impls/test_cosformer_triton.py); on a GPU by tests/gpu. Differences from the eager bf16 plan, all
rounding: the causal chunk states are summed in fp32 without rounding each chunk's to bf16, the key sums z
stay fp32 where the queries read them, and cos(a_i - a_j) is formed as cos a_i cos a_j + sin a_i sin a_j.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnprof.impls import triton_support
from attnprof.impls.cosformer.bidirectional import BidirectionalCosformer
from attnprof.impls.cosformer.causal import CausalCosformer
from attnprof.impls.cosformer.common import CAUSAL_CHUNK, position_rotation

TARGET_PROGRAMS = 1024  # programs per launch: ~8 per SM of an H100 (132), and few parts to sum
KEY_BLOCK = QUERY_BLOCK = 64  # positions per tile of the key-state and bidirectional query kernels
MAX_HEAD_DIM = 128  # S's two [d, dv] halves live in one program's registers
CHUNKS = (16, 32, 64, 128)  # causal chunk lengths: a power of two (tl.arange), >= 16 (tl.dot), C x C fp32 in registers
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# causal_out_kernel holds S's two [d, dv] fp32 halves and a C x C block per program: 8 warps spread them over
# twice the threads of Triton's default 4. A guess until a GPU session times 4 against 8 (benchmarks/kernel_profile.py).
CAUSAL_WARPS = 8


def triton_problems(q, k, v, causal: bool, chunk_size) -> list[str]:
    """Why backend="triton" cannot run these inputs (empty when it can)."""
    reasons = triton_support.call_problems("cosformer", q.device.type)
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        reasons.append(f"cosformer backend=triton takes float32, float16 or bfloat16 inputs, not {q.dtype}, {k.dtype}, {v.dtype}")
    return reasons + chunk_problems(causal, chunk_size) + shape_problems(q.dtype, max(q.shape[-1], v.shape[-1]), causal, chunk_size)


def chunk_problems(causal: bool, chunk_size) -> list[str]:
    if causal and chunk_size is not None and chunk_size not in CHUNKS:
        return [f"cosformer backend=triton takes chunk_size {', '.join(map(str, CHUNKS))} (or None: {CAUSAL_CHUNK}), not {chunk_size!r}"]
    return []


def shape_problems(dtype, head_dim: int, causal: bool, chunk_size) -> list[str]:
    """What the kernels' registers and shared memory refuse: head dims over MAX_HEAD_DIM; causal chunks of 128 with
    fp32 or fp16 inputs and head dims over 64 (fp16: 256 KiB of shared memory a block, over an H100's 227 KiB;
    fp32: 192 KiB, and 256 KiB before a reorder of the same code, too close to rely on:
    benchmarks/triton_resources.py --head-dim 128 --chunk 128)."""
    if head_dim > MAX_HEAD_DIM:
        return [f"cosformer backend=triton handles head dims up to {MAX_HEAD_DIM}, not {head_dim}"]
    if causal and chunk_size == 128 and dtype != torch.bfloat16 and head_dim > 64:
        return [f"cosformer backend=triton takes chunk_size up to 64 for {str(dtype).removeprefix('torch.')} inputs with head dims over 64"]
    return []


class TritonBidirectional(BidirectionalCosformer):
    """BidirectionalCosformer with its forward from the Triton kernels; the same backward."""

    @staticmethod
    def forward(ctx, q, k, v, eps: float, chunk: int):
        out, denominator, state = bidirectional_forward(q, k, v, eps)
        ctx.save_for_backward(q, k, v, out, denominator, state)
        ctx.eps, ctx.chunk = eps, chunk
        return out


class TritonCausal(CausalCosformer):
    """CausalCosformer with its forward from the Triton kernels; the same backward."""

    @staticmethod
    def forward(ctx, q, k, v, eps: float, chunk: int):
        out, denominator = causal_forward(q, k, v, eps, chunk)
        ctx.save_for_backward(q, k, v, out, denominator)
        ctx.eps, ctx.chunk = eps, chunk
        return out


def bidirectional_forward(q, k, v, eps: float, rows_per_part: int | None = None):
    """out (B, H, Nq, Dv) in q's dtype, denominators (B, H, Nq, 1) and the state (B, H, 2D, Dv+1), both fp32."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    m = max(q.shape[-2], k.shape[-2])
    rows = _checked_rows(rows_per_part, 16) or parts_of(k.shape[-2], k.shape[0] * k.shape[1], KEY_BLOCK)
    key_rotation = rotation_table(k.shape[-2], m, k.device)
    query_rotation = key_rotation if q.shape[-2] == k.shape[-2] else rotation_table(q.shape[-2], m, q.device)
    states, sums = torch.ops.attnprof.cosformer_key_states(k, v, key_rotation, rows, False)
    states, sums = states.sum(2), sums.sum(2)  # (B, H, 2, D, Dv), (B, H, 2, D): over all keys
    out, denominator = torch.ops.attnprof.cosformer_bidirectional_out(q, query_rotation, states, sums, eps)
    state = torch.cat((states.flatten(2, 3), sums.flatten(2, 3).unsqueeze(-1)), dim=-1)  # (B, H, 2D, Dv+1), as the eager forward saves it
    return out, denominator, state


def causal_forward(q, k, v, eps: float, chunk: int, rows_per_part: int | None = None):
    """out (B, H, N, Dv) in q's dtype and denominators (B, H, N, 1), fp32."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    n = q.shape[-2]
    rows = _checked_rows(rows_per_part, math.lcm(16, chunk)) or parts_of(n, q.shape[0] * q.shape[1], chunk)
    rotation = rotation_table(n, n, q.device)
    states, sums = torch.ops.attnprof.cosformer_key_states(k, v, rotation, rows, True)  # slot p: the sums of part p - 1
    states, sums = states.cumsum_(2), sums.cumsum_(2)  # (B, H, P, 2, D, Dv), (B, H, P, 2, D): over every part before p
    return torch.ops.attnprof.cosformer_causal_out(q, k, v, rotation, states, sums, eps, chunk, rows)


def _checked_rows(rows_per_part: int | None, multiple: int) -> int | None:
    """A caller's part size: a multiple of the tiles (16 for tl.dot; the causal chunk, or parts would overlap)."""
    if rows_per_part is not None and (rows_per_part < 1 or rows_per_part % multiple):
        raise ValueError(f"rows_per_part must be a positive multiple of {multiple}, not {rows_per_part}")
    return rows_per_part


def parts_of(n: int, heads: int, tile: int) -> int:
    """Positions per part: the largest power-of-two multiple of `tile` up to n * heads / TARGET_PROGRAMS (at
    least one tile, at most the tiles n fills). N = 65536, B H = 16: 1024 (64 parts a head); N = 8192: 128."""
    wanted = max(1, n * heads // TARGET_PROGRAMS) // tile
    return min(tile << max(0, wanted.bit_length() - 1), tile * -(-n // tile))  # never more tiles than n fills


def rotation_table(n: int, m: int, device):
    """[sin a_t, cos a_t] of t = 1..n as (n, 2) fp32: the eager forwards' values (computed in float64)."""
    return position_rotation(n, m, torch.float32, device).reshape(n, 2)


def _key_state_buffers(k, v, rows_per_part: int):
    parts = -(-k.shape[-2] // rows_per_part)
    states = k.new_empty((*k.shape[:2], parts, 2, k.shape[-1], v.shape[-1]), dtype=torch.float32)  # (B, H, P, 2, D, Dv)
    return states, k.new_empty(states.shape[:-1], dtype=torch.float32)  # (B, H, P, 2, D)


def _out_buffers(q, v):
    return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty((*q.shape[:-1], 1), dtype=torch.float32)  # (B, H, N, Dv), (B, H, N, 1)


@torch.library.custom_op("attnprof::cosformer_key_states", mutates_args=())
def key_states(k: Tensor, v: Tensor, rotation: Tensor, rows_per_part: int, exclusive: bool) -> tuple[Tensor, Tensor]:
    """Per part of rows_per_part keys (a multiple of 16; tiles of up to KEY_BLOCK that divide it): sum phi(k)^T v
    as its sin and cos halves, and sum phi(k). exclusive: slot 0 is zero and slot p holds part p - 1 (the last
    part is not summed), ready for an inclusive cumsum."""
    states, sums = _key_state_buffers(k, v, rows_per_part)
    slots = states.shape[2]
    if exclusive:
        states[:, :, 0], sums[:, :, 0] = 0, 0
    if slots > exclusive:
        grid = ((slots - exclusive) * k.shape[0] * k.shape[1],)
        _launch("key_states_kernel", grid, k.dtype, k.shape[-1], v.shape[-1], rows_per_part)(
            k, v, rotation, states, sums, k.shape[-2], k.shape[-1], v.shape[-1], slots, int(exclusive), rows_per_part
        )
    return states, sums


@key_states.register_fake
def _(k, v, rotation, rows_per_part, exclusive):
    return _key_state_buffers(k, v, rows_per_part)


@torch.library.custom_op("attnprof::cosformer_bidirectional_out", mutates_args=())
def bidirectional_out(q: Tensor, rotation: Tensor, states: Tensor, sums: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """out = phi(q) S / clamp_min(phi(q) z, eps) and the row sums, from S (B, H, 2, D, Dv) and z (B, H, 2, D)."""
    out, denominator = _out_buffers(q, states)
    grid = (-(-q.shape[-2] // QUERY_BLOCK) * q.shape[0] * q.shape[1],)
    _launch("bidirectional_out_kernel", grid, q.dtype, q.shape[-1], out.shape[-1])(
        q, rotation, states.contiguous(), sums.contiguous(), out, denominator, q.shape[-2], q.shape[-1], out.shape[-1], eps
    )
    return out, denominator


@bidirectional_out.register_fake
def _(q, rotation, states, sums, eps):
    return _out_buffers(q, states)


@torch.library.custom_op("attnprof::cosformer_causal_out", mutates_args=())
def causal_out(q: Tensor, k: Tensor, v: Tensor, rotation: Tensor, states: Tensor, sums: Tensor, eps: float, chunk: int,
               rows_per_part: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The causal output and row sums, each part starting from S and z summed over the parts before it."""
    out, denominator = _out_buffers(q, v)
    grid = (states.shape[2] * q.shape[0] * q.shape[1],)
    _launch("causal_out_kernel", grid, q.dtype, q.shape[-1], v.shape[-1], rows_per_part, chunk)(
        q, k, v, rotation, states.contiguous(), sums.contiguous(), out, denominator, q.shape[-2], q.shape[-1], v.shape[-1],
        states.shape[2], eps, rows_per_part)  # fmt: skip
    return out, denominator


@causal_out.register_fake
def _(q, k, v, rotation, states, sums, eps, chunk, rows_per_part):
    return _out_buffers(q, v)


def dot_precision(dtype) -> str:
    """Triton's input_precision for the fp32 operands of `dtype` inputs: "tf32x3" for fp32 (three TF32 products
    per product, near-fp32 accuracy on the tensor cores; "ieee" compiled for sm_90 to 32 registers and 6-28 KB of
    local memory per thread, benchmarks/triton_resources.py), "tf32" for fp16 (it rounds no more than the inputs
    were). bf16 operands ignore it."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def launch_constants(kernel: str, dtype, d: int, dv: int, rows_per_part: int = 0, chunk: int = 0, interpreted: bool = False) -> dict:
    """The constexprs and num_warps of a launch of `kernel` (a name in triton_kernels) for `dtype` inputs of head dims
    d and dv: the switches for the dtype (see triton_kernels), the blocks, the tiles. What _launch passes, and what
    benchmarks/triton_resources.py compiles for a GPU on a machine without one."""
    from triton import next_power_of_2

    constants = {"BLOCK_D": max(16, next_power_of_2(d)), "BLOCK_DV": max(16, next_power_of_2(dv)), "ROUND_HALF": dtype == torch.bfloat16,
                 "INTERPRETED": interpreted, "PRECISION": dot_precision(dtype), "num_warps": 4}  # fmt: skip
    static_rows = rows_per_part if interpreted else 0  # a part's size, a runtime int when compiled (triton_kernels)
    if kernel == "key_states_kernel":
        return {**constants, "STATIC_ROWS": static_rows, "BLOCK_N": math.gcd(KEY_BLOCK, rows_per_part)}
    if kernel == "bidirectional_out_kernel":
        return {**constants, "BLOCK_M": QUERY_BLOCK}
    # fp32 and fp16 operands stage S's fp32 halves through shared memory: one pipeline stage keeps the causal kernel
    # within an H100's 227 KiB a block (triton_resources.py; at d = 64, chunk 128, fp32: 294 KiB with Triton's 3)
    stages = {} if dtype == torch.bfloat16 else {"num_stages": 1}
    return {**constants, "STATIC_ROWS": static_rows, "CHUNK": chunk, "num_warps": CAUSAL_WARPS, **stages}


def _launch(name: str, grid, dtype, d: int, dv: int, rows_per_part: int = 0, chunk: int = 0):
    """kernel[grid] with its launch constants bound: call it with the kernel's arguments."""
    from triton.runtime.interpreter import InterpretedFunction

    from attnprof.impls.cosformer import triton_kernels

    kernel = getattr(triton_kernels, name)
    interpreted = isinstance(kernel, InterpretedFunction)  # its bf16 dots and casts differ from the GPU's (triton_kernels)
    constants = launch_constants(name, dtype, d, dv, rows_per_part, chunk, interpreted)

    def launch(*args):
        with triton_support.on_device_of(args[0]):
            kernel[grid](*args, **constants)

    return launch
