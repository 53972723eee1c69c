"""Combiner-Mixture's CPU plan: the terms, layouts and masks of mixture.py, each softmax in PyTorch's fused CPU flash
kernel (flash_cpu.py), which never writes the logits out.

- Running summaries: one masked attention per summary kind (vertical, horizontal), every scan direction's queries
  against the whole T x T of each group (the kernel's cost at these small groups is mostly per block: the kernel's
  own causal skipping saved nothing, 26.8 ms against 26.8 ms masked for the vertical summaries at N = 8192). The
  running maxima scan the layout in which the scanned axis is the outer one (vertical summaries in the row layout,
  horizontal in the column layout), so that each step is one contiguous slab: the horizontal scans took 28.7 ms in
  the column layout against 37.9 ms in the row layout (profiled inside the operator at N = 8192).
- The two logit parts (own row + vertical summaries, own column + horizontal summaries) merged by their
  log-normalisers (flash_cpu.merged_attention), in causal query row blocks as the eager plans (2 of them here:
  mixture_masks.CAUSAL_ROW_BLOCKS).

Same values as the eager plans up to rounding (tests compare each plan with the oracle, values and gradients). Its time
against the eager plan it replaced: mixture.plan.
"""

from __future__ import annotations

import torch

from attnprof.impls.combiner.common import finish, mask_value, padded, row_blocks, token_valid
from attnprof.impls.combiner.flash_cpu import masked_attention, merged_attention
from attnprof.impls.combiner.mixture_masks import CAUSAL_ROW_BLOCKS, MixtureMasks
from attnprof.impls.combiner.scan import prefix_max


def flash_mixture(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, m: int) -> torch.Tensor:
    """Combiner-Mixture on rows of m tokens, (B, H, N, D) -> (B, H, N, D); see mixture.py for the terms.

    Copies are what is left besides the kernel (at N = 8192 they were a quarter of the time), so: q is scaled by the
    kernel (max-pooling commutes with the positive scale), the row layout is the inputs themselves, the column layout
    is written once, and the column keys are laid out block by block of causal query rows, each block's direct keys,
    left and right summaries one contiguous run each (the keys of rows [0, b) still a prefix): copies into runs of
    rows instead of into every third key row. Measured with the merge's in-place
    multiply-add, causal operator at N = 8192, four alternating runs, medians of 5: 244.0-248.3 -> 238.4-244.1 ms
    against the keys interleaved key row by key row.

    The summaries and the column-layout keys and values are freed once copied into the key tensors (_column_keys,
    _row_keys): the host peak the sweep reads at N = 8192 (B = 1, H = 16, fp32, forward) fell from 680 to 480 MiB
    causal and from 820 to 608 MiB bidirectional (the eager joint-softmax plan before it: 624 and 928 MiB)."""
    n = q.shape[-2]
    rows = -(-n // m)
    scale = q.shape[-1] ** -0.5
    valid = token_valid(n, rows * m, q.device).view(rows, m)  # (rows, m)
    pad = valid if rows * m > n else None
    q_row, k_row, v_row = (x.unflatten(-2, (rows, m)) for x in padded(q, k, v, rows * m))  # (B, H, rows, m, D) each
    batch, heads = q_row.shape[:2]
    q_col, k_col, v_col = (x.transpose(-3, -2).contiguous() for x in (q_row, k_row, v_row))  # (B, H, m, rows, D) each
    blocks = row_blocks(rows, CAUSAL_ROW_BLOCKS["flash"] if causal else 1)
    sizes = [b - a for a, b in blocks]
    col_k, col_v = _column_keys((q_col, k_col, v_col), k_row, v_row, None if pad is None else pad.T, sizes, scale)
    row_k, row_v = _row_keys((q_row, k_row, v_row), k_col, v_col, pad, causal, scale)
    del k_col, v_col  # their copies in the key tensors are what the joint part reads (the backward keeps what it needs)
    masks = MixtureMasks(n, m, rows, causal)
    out = []
    row_pieces = [x.split(sizes, dim=2) for x in (q_row, row_k, row_v)]  # (B, H, nb, ...) per block
    col_queries = q_col.split(sizes, dim=-2)  # (B, H, m, nb, D) per block
    for j, (a, b) in enumerate(blocks):
        reach = 3 * (b if causal else rows)  # column keys of the key rows a causal block can see
        row_mask = _additive(masks.mask_row_part, (b - a, m, row_k.shape[-2]), q_row, a, b)  # (1, nb, m, K row)
        col_mask = _additive(masks.mask_column_part, (m, b - a, reach), q_row, a, b)[
            ..., _column_order(blocks, reach // 3)
        ]  # (1, m, nb, reach)
        # (B H, nb, m, D) queries and (B H, nb, K row, D) keys and values; (B H, m, nb, D) and (B H, m, reach, D)
        row_part = (*(pieces_of_x[j].flatten(0, 1) for pieces_of_x in row_pieces), row_mask)
        col_keys = (x if reach == x.shape[-2] else x[..., :reach, :] for x in (col_k, col_v))  # the last block sees them all
        col_part = (col_queries[j].flatten(0, 1), *(x.flatten(0, 1) for x in col_keys), col_mask)
        out.append(merged_attention(row_part, col_part, scale))  # (B H, nb, m, D)
    return finish(torch.cat(out, dim=1).unflatten(0, (batch, heads)).flatten(-3, -2), n, q.dtype)  # (B, H, N, D)


def _column_keys(col, k_row, v_row, valid, sizes: list[int], scale: float):
    """Keys and values of the column part, (B, H, m, 3 rows, D) each, block by block of `sizes` rows (see flash_mixture):
    each block's direct keys, then the horizontal summaries (positions are columns, groups rows), left and right.
    col: q, k, v in the column layout; valid (m, rows) or None. A function of its own so that the summaries are
    freed once copied in (Mixture's host peak at N = 8192: see flash_mixture)."""
    terms = [col[1:], *_summaries(col[:2], k_row, v_row, valid, (False, True), scale)]  # (k, v) of each term
    # Pieces by split, not by slicing: a slice's backward writes a zero tensor of the whole for each piece (counted at
    # N = 8192: 131 ms of zero fills in Mixture's backward)
    pieces = [[x.split(sizes, dim=-2) for x in term] for term in terms]  # term, k | v, block
    return tuple(torch.cat([term[i][j] for j in range(len(sizes)) for term in pieces], dim=-2) for i in (0, 1))


def _row_keys(row, k_col, v_col, valid, causal: bool, scale: float):
    """Keys and values of the row part, (B, H, rows, m (1 + directions), D) each: the own row's, then each scan
    direction's vertical summaries (positions are rows, groups columns). row: q, k, v in the row layout."""
    directions = (False,) if causal else (False, True)  # scan forward (above) and, bidirectional, backward (below)
    vertical = _summaries(row[:2], k_col, v_col, valid, directions, scale)
    return tuple(torch.cat([row[1 + i], *(term[i] for term in vertical)], dim=-2) for i in (0, 1))


def _column_order(blocks, key_rows: int) -> list[int]:
    """Where each column key of the block-by-block layout sits in MixtureMasks' order (key 3 r' + term), for the key
    rows [0, key_rows)."""
    return [3 * r + term for a, b in blocks if b <= key_rows for term in range(3) for r in range(a, b)]


def _summaries(scanned, group_keys, group_values, valid, directions, scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For every group, position t and scan direction (False: the group's tokens strictly before t; True: after t),
    the summary of those tokens: max-pooled key and the softmax attention of the max-pooled query over them, per
    direction (B, H, T, G, D) each. scanned: the queries and keys (B, H, T, G, D) each (positions outer: each step of
    the running max is then one contiguous slab); group_keys and group_values (B, H, G, T, D): the same keys and the
    values by group; valid (T, G) or None. A position with an empty region gets a zero key and an average of the
    group's values (_summary_mask), which MixtureMasks drops from the joint part.

    One kernel call, every direction's queries against the whole group (fewer, larger blocks). Measured in the whole
    operator at N = 8192 (causal, six alternating runs each): 246.9 and 251.1 ms, against 251.4 and 255.5 with
    position blocks reaching only their side of the block's far end as the eager plans form them (3/4 of the logits)."""
    scan_valid = None if valid is None else valid[..., None]
    batch, heads, size = scanned[0].shape[:3]
    pooled = [[prefix_max(x, -3, reverse=reverse, valid=scan_valid) for x in scanned] for reverse in directions]  # (B, H, T, G, D)
    # One direction (causal's vertical summaries): the transposed view itself, which the kernel reads by its strides
    # (same values, same kernel time) where a cat of one copied 67 MB at N = 8192, 7 ms of a 255 ms call
    transposed = [pooled_q.transpose(-3, -2) for pooled_q, _ in pooled]
    queries = transposed[0] if len(transposed) == 1 else torch.cat(transposed, dim=-2)  # (B, H, G, dirs T, D)
    group_valid = None if valid is None else valid.T  # (G, T)
    mask = torch.cat(
        [_summary_mask(size, reverse, group_valid, queries) for reverse in directions], dim=-2
    )  # (dirs T, T) or (1, G, dirs T, T)
    keys, values = group_keys.flatten(0, 1), group_values.flatten(0, 1)  # (B H, G, T, D) each
    summaries = masked_attention(queries.flatten(0, 1), keys, values, mask, scale).unflatten(0, (batch, heads))  # (B, H, G, dirs T, D)
    return [(key, summaries[..., i * size : (i + 1) * size, :].transpose(-3, -2)) for i, (_, key) in enumerate(pooled)]


def _summary_mask(size: int, reverse: bool, valid, like: torch.Tensor) -> torch.Tensor:
    """-inf where key u is not strictly before (after, reversed) query position t, or is padding: (T, T), or (1, G, T, T)
    with valid (G, T) (the kernel takes 2-D and 4-D masks); in like's dtype and on its device. A position with an
    empty region (the first, or last reversed, and those seeing padding only) gets finite filler, as flash_cpu asks:
    its summary is then an average of its group's values, masked out of the joint part."""
    t = torch.arange(size, device=like.device)
    drop = (t[None, :] <= t[:, None]) if reverse else (t[None, :] >= t[:, None])  # (T, T)
    if valid is not None:
        drop = (drop | ~valid[:, None, :]).unsqueeze(0)  # (1, G, T, T)
    mask = like.new_zeros(drop.shape).masked_fill_(drop, float("-inf"))
    return mask.masked_fill_(drop.all(-1, keepdim=True), mask_value(mask))


def _additive(fill, shape: tuple[int, ...], like: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """A MixtureMasks fill of one logit part as an additive mask, (1, *shape) in like's dtype and on its device: 0 where
    a key is seen, -inf where it is dropped, the dtype's minimum for a query with no key in the part (see flash_cpu)."""
    mask = like.new_zeros((1, 1, *shape))
    fill(mask, a=a, b=b)
    return mask[0]
