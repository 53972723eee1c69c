"""Combiner (Ren et al., NeurIPS 2021): full-support attention in sub-quadratic cost.

Every query sees some keys directly and the rest through region summaries; one softmax over both
(ALGORITHMS.md section 3). Four factorisations, each causal and bidirectional:

    combiner-fixed      blocks of s tokens                      O(N sqrt N) at s ~ sqrt N
    combiner-axial      rows of m tokens, row-major plan        O(N sqrt N) at m ~ sqrt N
    combiner-logsparse  dyadic tree of sibling blocks           O(N log N)
    combiner-mixture    axial-vertical + horizontal, joint      O(N sqrt N) at m ~ sqrt N

Option `block_size`: the block length s (Fixed) or row length m (Axial, Mixture); None picks the
power of two nearest sqrt(N). Logsparse has no block size (its dyadic tree fixes every block):
`combiner-logsparse:block_size=...` is refused as an unknown option. Option `backend`: eager (default),
compile (torch.compile of the same operator; see combiner_attention) or, for Fixed, Axial and Mixture, triton
(each softmax and its values in one Triton kernel, `triton_softmax.py`). Each variant's module docstring states where
it deviates from the reference code. Softmaxes and pools run in fp32 for half inputs; on CUDA their
fp32 products may run as TF32 (`attnprof.impls.precision`: no coarser than the inputs). The check
reference is the explicit N x N effective matrix in `attnprof.impls.reference.combiner`.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from attnprof.impls import register, triton_support
from attnprof.impls.base import AttentionImpl, runs_the_accounted_plan
from attnprof.impls.combiner import triton_softmax
from attnprof.impls.combiner.axial import axial_attention
from attnprof.impls.combiner.common import is_positive_integer
from attnprof.impls.combiner.costs import combiner_flops, combiner_min_bytes
from attnprof.impls.combiner.fixed import fixed_attention
from attnprof.impls.combiner.logsparse import logsparse_attention
from attnprof.impls.combiner.mixture import mixture_attention
from attnprof.impls.operator_inputs import check_qkv
from attnprof.impls.precision import tf32_products
from attnprof.impls.reference.combiner import combiner_reference
from attnprof.impls.reference.combiner_rows import combiner_rows

OPERATORS = {"fixed": fixed_attention, "axial": axial_attention, "logsparse": logsparse_attention, "mixture": mixture_attention}
DESCRIPTIONS = {
    "fixed": "Combiner-Fixed: own block of s tokens direct, other blocks via max-pool summaries (O(N sqrt N))",
    "axial": "Combiner-Axial (row-major): own row direct, other rows via row-attention summaries, wsum keys (O(N sqrt N))",
    "logsparse": "Combiner-Logsparse: self and sibling token direct, dyadic sibling blocks via summaries (O(N log N))",
    "mixture": "Combiner-Mixture: own row and column direct, vertical and horizontal running-max summaries (O(N sqrt N))",
}
TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


BACKENDS = ("eager", "compile", "triton")
TRITON_VARIANTS = ("fixed", "axial", "mixture")  # backend=triton: the variants with a Triton kernel


def combiner_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str = "fixed",
    causal: bool = False,
    block_size: int | None = None,
    backend: str = "eager",
) -> torch.Tensor:
    """Combiner attention on (B, H, N, D) q, k, v -> (B, H, N, D); variant in fixed, axial, logsparse, mixture.

    backend: "eager" (the plain PyTorch operators, the reference the other is tested against) or "compile"
    (the same operator through torch.compile, one graph per shape: on a GPU its masking, shifting and
    exponentiating can fuse into single passes over the logits, which eager PyTorch makes one by one).
    On `meta` (the accounting), and in an accounting run's check, "compile" runs eagerly: the counts are the eager
    plan's. On the CPU Mixture's eager plan is far the faster, Fixed's about as fast: measured on this project's
    2-core CPU (N = 8192, B = 1, H = 16, fp32, forward, medians of 3, heap kept): compiled Mixture 1783 ms against
    246 eager causal, 2347 against 294 bidirectional (at the commit before the CPU's fused-kernel plans, compiled
    causal took 2750 ms); Fixed 51.9 against 51.4 and 51.9 against 56.1. The first call of each shape compiles
    (Mixture, one graph: 8-70 s there). "triton" (Fixed, Axial, Mixture): the eager plan
    with each softmax (the logit parts', Axial's row attention, Mixture's summaries) and its product with the
    values in one Triton kernel (triton_softmax.py), the parts merged by their log-normalisers; Mixture's running
    maxima in a Triton kernel too (triton_scan.py); CUDA tensors, or meta for the accounting. Counted on meta at
    N = 65536, B = 1, H = 16, bf16, forward, bytes moved, eager -> triton, causal and bidirectional: Fixed
    27.7 -> 6.8 and 25.6 -> 6.8 GB; Axial 34.2 -> 8.9 and 32.0 -> 8.9; Mixture 72.2 -> 36.6 and 85.0 -> 41.2 (each
    forms its logits in the kernel where a Band is all the masking: softmax_values_qk)."""
    if variant not in OPERATORS:
        raise ValueError(f"unknown Combiner variant {variant!r}; choose from {', '.join(OPERATORS)}")
    # Mixture stacks q, k and v into one tensor: their widths must agree; the other variants take any value width
    check_qkv(f"combiner-{variant}", q, k, v, causal=causal, value_width=variant != "mixture")
    problems = _option_problems(variant, {"backend": backend, "block_size": block_size})
    if not problems and backend == "triton":
        problems = triton_support.call_problems(f"combiner-{variant}", q.device.type)
        if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            problems.append(f"combiner-{variant} backend=triton takes float32, float16 or bfloat16 inputs, not {q.dtype}")
        problems += _head_dim_problems(variant, v.shape[-1])
    if problems:
        raise ValueError(problems[0])
    compiled = backend == "compile" and not runs_the_accounted_plan(q.device)
    operator = _compiled(variant) if compiled else OPERATORS[variant]
    if backend == "triton":
        operator = functools.partial(operator, fused=True)
    # fp32 products of half inputs on the tensor cores (see precision.py)
    with tf32_products(q.dtype, q.device), _room_for_every_shape() if compiled else contextlib.nullcontext():
        return operator(q, k, v, causal=causal, block_size=block_size)


@functools.cache
def _compiled(variant: str):
    return torch.compile(OPERATORS[variant], dynamic=False)


SHAPES_COMPILED = 256  # graphs kept per operator: a sweep's lengths x causalities x dtypes, and the checks


def _room_for_every_shape():
    """torch.compile keeps 8 graphs per function by default and then silently runs it eagerly: past the 8th
    shape a sweep would time the eager operator under the compiled label. (recompile_limit since torch 2.6;
    cache_size_limit before.)"""
    import torch._dynamo.config as dynamo

    name = "recompile_limit" if "recompile_limit" in dynamo._config else "cache_size_limit"
    return dynamo.patch({name: SHAPES_COMPILED})


def _option_problems(variant: str, options) -> list[str]:
    block = options.get("block_size")
    if block is not None and not is_positive_integer(block):
        return [f"block_size must be a positive integer or None, not {block!r}"]
    backend = options.get("backend", "eager")
    if backend not in BACKENDS:
        return [f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}"]
    if backend == "triton" and variant not in TRITON_VARIANTS:
        *others, last = (f"combiner-{name}" for name in TRITON_VARIANTS)
        having = f"{', '.join(others)} and {last}"
        return [f"backend=triton is for {having} (their softmaxes in one kernel), not combiner-{variant}"]
    return []


def _refusals(variant: str, case, options) -> list[str]:
    shapes = functools.partial(_head_dim_problems, variant, case.head_dim)
    return triton_support.refusals(f"combiner-{variant}", case, options, shapes)


def _head_dim_problems(variant: str, head_dim: int) -> list[str]:
    if head_dim > triton_softmax.MAX_HEAD_DIM:
        return [f"combiner-{variant} backend=triton handles head dims up to {triton_softmax.MAX_HEAD_DIM}, not {head_dim}"]
    return []


for _variant in OPERATORS:
    register(
        AttentionImpl(
            name=f"combiner-{_variant}",
            family="combiner",
            fn=functools.partial(combiner_attention, variant=_variant),
            description=DESCRIPTIONS[_variant],
            options={"backend": "eager"} if _variant == "logsparse" else {"block_size": None, "backend": "eager"},
            reference=functools.partial(combiner_reference, variant=_variant),
            row_reference=functools.partial(combiner_rows, variant=_variant),
            check_options=functools.partial(_option_problems, _variant),
            refuse=functools.partial(_refusals, _variant),
            flops=functools.partial(combiner_flops, _variant),
            min_bytes=functools.partial(combiner_min_bytes, _variant),
            exact=False,
            max_pools=True,
            check_tolerance=dict(TOLERANCE),
        )
    )
