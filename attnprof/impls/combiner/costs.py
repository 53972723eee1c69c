"""FLOPs and minimum bytes of the Combiner operators, per variant.

FLOPs are the matrix-product FLOPs the operator performs (2 M N K per product, as
torch.utils.flop_counter counts them) on its padded shapes; max-pools, masks, exp and the
normalisation are not counted, as for every other impl. Every product's operands require grad in
fwd_bwd, so the backward does two products of the same size per forward one: fwd_bwd = 3 x fwd (Mixture's CPU
plan, and Fixed's but for its block summaries: 3.5 x fwd, their fused kernel's backward recomputes the logits first).
With G = batch * heads, D = head dim:

    fixed      block s, nb = ceil(N / s), L = nb s:  4 G D L (1 + s + nb)
               (block summaries 4 G D L, own block 4 G D L s, block summaries seen by every query 4 G D L nb)
    axial      row m, n = ceil(N / m), L = n m:      4 G D L (2 m + n)
               (row logits, row attention on values and on keys 6 G D L m, own-row weights times
               values 2 G D L m, row-summary logits and weights times summaries 4 G D L n)
    logsparse  P = 2^L, L = bit_length(N - 1), tiles of T = 2^min(L, 5) (TILE_LEVELS):  4 G D P (3 T - 4 + 2 (L - log2 T))
               (per tile query: T tokens + T - 2 in-tile block summaries + one sibling summary per
               level >= log2 T as keys, 4 G D P (2 T - 2 + L - log2 T); the in-tile summaries'
               local attention 4 G D P (T - 2); the larger blocks' local attention 4 G D P per level)
    mixture    row m, n = ceil(N / m), L = n m, R(T, k) = sum over the k position blocks [a, b) of T of (b - a) b:
               4 G D (d_v m R(n, 2) + 2 n R(m, 2)) + 4 G D L m (1 + d_v) + 12 G D m C,
               d_v = 1 causal, 2 bidirectional; C = R(n, 4) causal, n^2 bidirectional
               (per scan direction, running summaries: each position's attention over its side of the
               region, in SUMMARY_BLOCKS = 2 position blocks that reach only the keys before the block's
               end; then own row + vertical summaries per query, and own column + left + right
               horizontal summaries per query, causal in CAUSAL_ROW_BLOCKS = 4 query row blocks that
               reach only the key rows before the block's end). The CPU plan (mixture_flash.py) forms each
               summary group's whole T x T in its fused kernel, R(n, 1) and R(m, 1) in the summaries' term, and
               takes 2 causal row blocks, C = R(n, 2) (mixture_masks.SUMMARY_BLOCKS, CAUSAL_ROW_BLOCKS).

Minimum bytes: q, k, v in and the output out (`io_bytes`), plus the region summaries (key and value,
D each), which are shared by many queries, so even a fused kernel writes them once and reads them
back once; in fwd_bwd their gradients travel the same way again.
"""

from __future__ import annotations

from attnprof.impls.base import DTYPE_BYTES, io_bytes
from attnprof.impls.combiner.common import resolve_block, row_blocks
from attnprof.impls.combiner.fixed import plan as fixed_plan
from attnprof.impls.combiner.logsparse import TILE_LEVELS
from attnprof.impls.combiner.mixture import plan
from attnprof.impls.combiner.mixture_masks import CAUSAL_ROW_BLOCKS, SUMMARY_BLOCKS
from attnprof.spec import Case


def combiner_flops(variant: str, case: Case, options: dict) -> int:
    g, d, n = case.batch * case.heads, case.head_dim, case.seq_len
    if variant == "logsparse":
        levels = (n - 1).bit_length()
        tile_levels = min(levels, TILE_LEVELS)
        fwd = 4 * g * d * (1 << levels) * (3 * (1 << tile_levels) - 4 + 2 * (levels - tile_levels)) if levels else 0
    else:
        block = resolve_block(options.get("block_size"), n)
        groups = -(-n // block)
        length = groups * block
        fwd = {
            "fixed": 4 * g * d * length * (1 + block + groups),
            "axial": 4 * g * d * length * (2 * block + groups),
            "mixture": _mixture_flops(g, d, block, groups, case.causal, plan(case.device)),
        }[variant]
    if case.mode == "fwd":
        return fwd
    if {"fixed": fixed_plan, "mixture": plan}.get(variant, lambda device: None)(case.device) == "flash":  # fused-kernel CPU plans
        fused = fwd if variant == "mixture" else 4 * g * d * length * (block + groups)  # Fixed: all but the block summaries
        return 3 * fwd + fused // 2
    return 3 * fwd


def _mixture_flops(g: int, d: int, block: int, groups: int, causal: bool, plan_name: str) -> int:
    length = block * groups
    vertical = 1 if causal else 2  # scan directions of the vertical summaries (horizontal: always 2)
    summary_blocks = SUMMARY_BLOCKS[plan_name]
    summaries = vertical * block * _reach(groups, summary_blocks) + 2 * groups * _reach(block, summary_blocks)
    column_reach = _reach(groups, CAUSAL_ROW_BLOCKS[plan_name]) if causal else groups * groups
    return 4 * g * d * (summaries + length * block * (1 + vertical) + 3 * block * column_reach)


def _reach(size: int, count: int) -> int:
    """Query-key pairs formed when `size` positions go in `count` blocks, each reaching the keys before its end."""
    return sum((b - a) * b for a, b in row_blocks(size, count))


def combiner_min_bytes(variant: str, case: Case, options: dict) -> int:
    g, d, n = case.batch * case.heads, case.head_dim, case.seq_len
    if variant == "logsparse":
        summaries = sum(_pow2(n) >> level for level in range(1, (n - 1).bit_length()))  # one per block of each level
    else:
        block = resolve_block(options.get("block_size"), n)
        length = -(-n // block) * block
        summaries = {
            "fixed": length // block,
            "axial": length,  # one summary per (row, column)
            "mixture": length * (3 if case.causal else 4),  # one per grid cell and scan direction
        }[variant]
    traffic = 2 * 2 * summaries * g * d * DTYPE_BYTES[case.dtype]  # key and value, written once, read once
    return io_bytes(case) + traffic * (1 if case.mode == "fwd" else 2)


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()
