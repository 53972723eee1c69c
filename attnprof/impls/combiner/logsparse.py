"""Combiner-Logsparse (Ren et al. 2021; JAX `_SelfAttLogn`): the dyadic tree over positions.

At level l the sequence is cut into aligned blocks of 2^l tokens. Query i sees, at every level, the
sibling of its own level-l block: level 0 siblings are single tokens and are seen directly (with i
itself), levels l >= 1 through a summary (key = max-pool of the block's keys, value = softmax
attention of the block's max-pooled query over the block). One joint softmax over the 2 direct and
L - 1 region logits, L = bit_length(N - 1). Causal: only siblings to the left (bit l of i set), an
exact disjoint cover of [0, i]; bidirectional: siblings on both sides, a disjoint cover of [0, N).

Computation, in tiles of T = 32 tokens so that every product is a small dense matrix product
instead of N tiny ones: a tile's queries share one key set, [the tile's tokens, the summaries of
every block of size < T inside the tile, one sibling summary per level >= log2 T]; a mask keeps,
per query, its self and sibling token and its own sibling block at each level. Per query that is
2T + L keys instead of L + 1 (O(N log N) all the same); the FLOP count includes the masked ones.

Deviations from the reference code:
- Level count: JAX uses ceil(log2(N - 1)), one short when N - 1 is a power of two (the last
  position then sees only itself); here L = bit_length(N - 1), the count that covers every prefix.
- Bidirectional form: not in the reference code (the paper defers MLM to an appendix we could not
  read). This one is the mirror image of the causal tree: the siblings on the right are used too,
  which keeps the cover disjoint and the per-query cost at L + 1 logits.
- `block_size` is accepted for a uniform signature and ignored (the tree has no block parameter).
Any N works: tokens are padded to the next power of two (up to 2x the work just above a power of
two); padded keys are excluded from pools, local softmaxes and direct logits.
"""

from __future__ import annotations

import torch

from attnprof.impls.combiner.common import finish, local_attention, mask_value, prepare, token_valid

TILE_LEVELS = 5  # tiles of 2^5 = 32 tokens (measured on the CPU: 8 and 16 are no faster, 32 allocates least)


def logsparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, block_size: int | None = None
) -> torch.Tensor:
    n = q.shape[-2]
    levels = (n - 1).bit_length()
    length = 1 << levels
    qs, kp, vp = prepare(q, k, v, length)  # (B, H, P, D) each, P = 2^levels
    if levels == 0:
        return finish(vp, n, q.dtype)  # a single token sees only itself
    tile_levels = min(levels, TILE_LEVELS)
    tile = 1 << tile_levels
    valid = token_valid(n, length, q.device) if length > n else None  # (P,)
    pools = _pools(qs, kp, valid, levels)  # level l: (B, H, P / 2^l, D) max-pooled queries and keys
    tiled = [x.unflatten(-2, (length // tile, tile)) for x in (qs, kp, vp)]  # 3 x (B, H, P/T, T, D)
    low = _low_summaries(pools, tiled, valid, tile_levels)  # (B, H, P/T, T - 2, D) keys and values
    high = _high_summaries(pools, kp, vp, valid, tile_levels, levels)  # (B, H, P/T, levels - tile_levels, D) keys and values
    keys, values = (torch.cat([tiled[i + 1]] + [s[i] for s in (low, high) if s is not None], dim=-2) for i in (0, 1))  # (B, H, P/T, K, D)
    logits = tiled[0] @ keys.transpose(-2, -1)  # (B, H, P/T, T, K)
    logits.masked_fill_(_drop(n, length, tile_levels, levels, causal, q.device), float("-inf"))  # every row keeps its self key
    out = torch.softmax(logits, dim=-1) @ values  # (B, H, P/T, T, D)
    return finish(out.flatten(-3, -2), n, q.dtype)  # (B, H, N, D)


def _pools(qs, kp, valid, levels: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Max-pooled (query, key) of every block at levels 1 .. levels-1 (index = level; entry 0 is
    None), each pooled from the level below; padding sits at -inf so it never wins, and a block
    of padding only pools to 0."""
    runs = [x if valid is None else x.masked_fill(~valid[:, None], float("-inf")) for x in (qs, kp)]  # (B, H, P, D) each
    pools = [None]
    for _ in range(1, levels):
        runs = [x.unflatten(-2, (-1, 2)).amax(dim=-2) for x in runs]  # (B, H, P / 2^l, D) each
        pools.append(tuple(x if valid is None else x.masked_fill(x == float("-inf"), 0.0) for x in runs))
    return pools


def _low_summaries(pools, tiled, valid, tile_levels: int):
    """Summaries of the blocks of levels 1 .. tile_levels-1, which lie inside one tile: keys and
    values (B, H, P/T, T - 2, D), levels in order, blocks in order within a level; None if none."""
    if tile_levels < 2:
        return None
    _, keys, values = tiled  # (B, H, P/T, T, D) each
    tiles, tile = keys.shape[-3], keys.shape[-2]
    q_low, k_low = (
        torch.cat([p[i].unflatten(-2, (tiles, -1)) for p in pools[1:tile_levels]], dim=-2) for i in (0, 1)
    )  # (B, H, P/T, T-2, D)
    level, block = _low_rows(tile_levels, keys.device)  # (T - 2,) each
    outside = (torch.arange(tile, device=keys.device)[None, :] >> level[:, None]) != block[:, None]  # (T - 2, T) key not in the block
    if valid is not None:
        outside = outside | ~valid.view(tiles, 1, tile)  # (P/T, T - 2, T)
    logits = (q_low @ keys.transpose(-2, -1)).masked_fill_(outside, mask_value(q_low))  # (B, H, P/T, T - 2, T)
    return k_low, torch.softmax(logits, dim=-1) @ values  # (B, H, P/T, T - 2, D) each


def _low_rows(tile_levels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Level and in-tile block index of each low-level summary, levels 1 .. tile_levels-1 in order: (T - 2,) each."""
    tile = 1 << tile_levels
    levels = [torch.full((tile >> level,), level, device=device) for level in range(1, tile_levels)]
    blocks = [torch.arange(tile >> level, device=device) for level in range(1, tile_levels)]
    return torch.cat(levels), torch.cat(blocks)


def _high_summaries(pools, kp, vp, valid, tile_levels: int, levels: int):
    """For levels >= tile_levels (blocks of whole tiles), the summary of the sibling of each tile's
    block: keys and values (B, H, P/T, levels - tile_levels, D); None if there are none."""
    if tile_levels >= levels:
        return None
    length, tiles = kp.shape[-2], kp.shape[-2] >> tile_levels
    keys, values = [], []
    for level in range(tile_levels, levels):
        q_hat, k_hat = pools[level]  # (B, H, P / 2^l, D)
        blocks, size = length >> level, 1 << level
        drop = None if valid is None else ~valid.view(blocks, size)  # (blocks, size)
        v_hat = local_attention(q_hat, kp.unflatten(-2, (blocks, size)), vp.unflatten(-2, (blocks, size)), drop)  # (B, H, blocks, D)
        sibling = (torch.arange(tiles, device=kp.device) >> (level - tile_levels)) ^ 1  # (P/T,) sibling block of each tile's block
        keys.append(k_hat.index_select(-2, sibling))  # (B, H, P/T, D)
        values.append(v_hat.index_select(-2, sibling))  # (B, H, P/T, D)
    return torch.stack(keys, dim=-2), torch.stack(values, dim=-2)


def _drop(n: int, length: int, tile_levels: int, levels: int, causal: bool, device) -> torch.Tensor:
    """True where query i of a tile must not use a key column: the tile's tokens (keep i itself and
    its sibling i ^ 1), the low-level block summaries (keep the sibling of i's block at each level)
    and the high-level sibling summaries; causal keeps left siblings only, bidirectional keeps
    siblings that start before n: (P/T, T, K)."""
    tile = 1 << tile_levels
    i = torch.arange(length, device=device).view(-1, tile, 1)  # (P/T, T, 1) global query index
    u = torch.arange(length, device=device).view(-1, 1, tile)  # (P/T, 1, T) global token index
    direct = (u == i) | ((u == (i ^ 1)) & (u < n))  # (P/T, T, T) self (padded queries too: no empty row) and sibling token
    keep = [direct & (u <= i) if causal else direct]
    for level in range(1, levels):
        sibling = (i >> level) ^ 1  # (P/T, T, 1) global block index of i's sibling at this level
        usable = (sibling < (i >> level)) if causal else ((sibling << level) < n)  # (P/T, T, 1)
        if level < tile_levels:
            block = torch.arange(length >> level, device=device).view(-1, 1, tile >> level)  # (P/T, 1, T / 2^l)
            keep.append((block == sibling) & usable)  # (P/T, T, T / 2^l)
        else:
            keep.append(usable)  # (P/T, T, 1)
    return ~torch.cat([x.expand(length // tile, tile, -1) for x in keep], dim=-1)  # (P/T, T, K)
