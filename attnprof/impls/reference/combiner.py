"""Combiner written the plain way: the explicit N x N effective attention matrix (ALGORITHMS.md 3.9).

Each variant is first spelled out as a *plan*, built with plain Python loops straight from the
definitions (no reshapes, no cummax, no padding): for every query i, the keys it sees directly and
the regions it sees through a summary. A region has member tokens, a local query (the max-pool of
its members' queries, or for Axial the query of one token) and a key (the max-pool of its members'
keys, or for Axial the local-softmax-weighted sum of them). Then, in float64:

    p(j | region)  = softmax over the region's members of  q_region . k_j / sqrt(d)
    joint softmax  over [q_i . k_j / sqrt(d) for direct j] + [q_i . k_region / sqrt(d) for accessed regions]
    W[i, j]        = direct weight of j + sum over accessed regions of region weight * p(j | region)
    out            = W @ v

Rows of W sum to 1. Quadratic in time and memory: it is the oracle, not an operator to profile.
The variants, and where they deviate from the reference code, are documented in
`attnprof.impls.combiner`; the plans below are the definitions those docstrings describe.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

VARIANTS = ("fixed", "axial", "logsparse", "mixture")


@dataclass(frozen=True)
class Plan:
    """Which tokens each query sees directly and which regions it sees through a summary."""

    n: int
    direct: tuple[tuple[int, ...], ...]  # per query: its direct key tokens
    regions: tuple[tuple[int, ...], ...]  # per region: its member tokens (never empty)
    access: tuple[tuple[int, ...], ...]  # per query: the regions it attends to
    local_query: tuple[int | None, ...] | None = None  # Axial: token whose q is the local query (None: zeros)
    # The queries `direct` and `access` describe, in order: every position, or the rows a row reference was asked
    # for (combiner_rows.py), whose plan holds only the regions those rows see.
    queries: tuple[int, ...] = ()


class _Regions:
    """Region ids by name, so a region shared by many queries is summarised once."""

    def __init__(self):
        self.ids: dict[tuple, int] = {}
        self.members: list[tuple[int, ...]] = []
        self.local_query: list[int | None] = []

    def id(self, name: tuple, members, local_query: int | None = None) -> int:
        if name not in self.ids:
            self.ids[name] = len(self.members)
            self.members.append(tuple(members))
            self.local_query.append(local_query)
        return self.ids[name]


def fixed_plan(n: int, s: int, causal: bool, queries=None) -> Plan:
    """Blocks of s tokens. Direct: the own block (causal: j <= i). Regions: every other block
    (causal: only earlier blocks). The own block is never a region (paper eq. 10)."""
    blocks = [tuple(range(start, min(n, start + s))) for start in range(0, n, s)]
    direct, access = [], []
    queries = tuple(range(n) if queries is None else queries)
    for i in queries:
        own = i // s
        direct.append(tuple(j for j in blocks[own] if j <= i or not causal))
        access.append(tuple(b for b in range(len(blocks)) if (b < own if causal else b != own)))
    return Plan(n, tuple(direct), tuple(blocks), tuple(access), queries=queries)


def logsparse_plan(n: int, causal: bool, queries=None) -> Plan:
    """The dyadic tree over positions: query i sees itself and, at every level l, the sibling of
    its level-l ancestor block (size 2^l). Level 0 siblings are single tokens (direct); levels
    l >= 1 are regions. Causal: only siblings on the left. Levels: bit_length(n - 1)."""
    regions, direct, access = _Regions(), [], []
    queries = tuple(range(n) if queries is None else queries)
    for i in queries:
        sibling = i ^ 1
        direct.append((i, sibling) if sibling < n and (sibling < i or not causal) else (i,))
        seen = []
        for level in range(1, (n - 1).bit_length()):
            block = (i >> level) ^ 1
            start = block << level
            if start >= n or (causal and block > i >> level):
                continue
            seen.append(regions.id((level, block), range(start, min(n, start + (1 << level)))))
        access.append(tuple(seen))
    return Plan(n, tuple(direct), tuple(regions.members), tuple(access), queries=queries)


def axial_plan(n: int, m: int, causal: bool, queries=None) -> Plan:
    """Rows of m tokens. Direct: the own row (causal: j <= i). Regions: every other row r' seen
    from the query's column c (causal: r' < r), with the query at (r', c) as local query (zeros
    when the short last row has no token in column c)."""
    rows = [tuple(range(start, min(n, start + m))) for start in range(0, n, m)]
    regions, direct, access = _Regions(), [], []
    queries = tuple(range(n) if queries is None else queries)
    for i in queries:
        r, c = divmod(i, m)
        direct.append(tuple(j for j in rows[r] if j <= i or not causal))
        others = [row for row in range(len(rows)) if (row < r if causal else row != r)]
        access.append(tuple(regions.id((row, c), rows[row], _token(row, c, m, n)) for row in others))
    return Plan(n, tuple(direct), tuple(regions.members), tuple(access), tuple(regions.local_query), queries)


def mixture_plan(n: int, m: int, causal: bool, queries=None) -> Plan:
    """Grid of rows of m tokens; query (r, c). Direct: own row (causal: c' <= c) and own column
    (causal: r' < r; bidirectional: r' != r, so the query itself is counted once). Regions, all
    max-pooled and dropped when empty: for each other column c', its part above row r (and, when
    bidirectional, below); for each other row r' (causal: r' < r), its part left of column c and
    its part right of column c."""
    regions, direct, access = _Regions(), [], []
    n_rows = -(-n // m)
    queries = tuple(range(n) if queries is None else queries)
    for i in queries:
        r, c = divmod(i, m)
        other_rows = [row for row in range(n_rows) if (row < r if causal else row != r)]
        row_part = [_token(r, col, m, n) for col in range(m) if col <= c or not causal]
        col_part = [_token(row, c, m, n) for row in other_rows]
        direct.append(tuple(j for j in row_part + col_part if j is not None))
        parts = {}
        for col in range(m):
            if col != c:
                parts[("above", r, col)] = [_token(row, col, m, n) for row in range(r)]
                if not causal:
                    parts[("below", r, col)] = [_token(row, col, m, n) for row in range(r + 1, n_rows)]
        for row in other_rows:
            parts[("left", row, c)] = [_token(row, col, m, n) for col in range(c)]
            parts[("right", row, c)] = [_token(row, col, m, n) for col in range(c + 1, m)]
        members = {name: [j for j in tokens if j is not None] for name, tokens in parts.items()}
        access.append(tuple(regions.id(name, tokens) for name, tokens in members.items() if tokens))
    return Plan(n, tuple(direct), tuple(regions.members), tuple(access), queries=queries)


def _token(row: int, col: int, m: int, n: int) -> int | None:
    """Token at grid cell (row, col), None past the end of the sequence."""
    index = row * m + col
    return index if index < n else None


def block_length(block_size: int | None, n: int) -> int:
    """The option's meaning, restated here so the oracle does not import the operator: None is the
    power of two nearest sqrt(n) (the lower one on a tie); anything above n is one block of n."""
    if block_size is None:
        low = 1
        while (2 * low) ** 2 <= n:
            low *= 2
        block_size = low if 4 * n <= 9 * low * low else 2 * low  # sqrt(n) - low <= 2 low - sqrt(n)
    return max(1, min(int(block_size), n))


@functools.lru_cache(maxsize=64)
def build_plan(variant: str, n: int, block_size: int | None, causal: bool) -> Plan:
    """The plan of every query (cached: the oracle of many checks of one shape)."""
    return plan_of(variant, n, block_size, causal)


def plan_of(variant: str, n: int, block_size: int | None, causal: bool, queries=None) -> Plan:
    """The plan of every query, or of `queries` only (then its regions are those they see); not cached."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Combiner variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "logsparse":
        return logsparse_plan(n, causal, queries)
    block = block_length(block_size, n)
    builder = {"fixed": fixed_plan, "axial": axial_plan, "mixture": mixture_plan}[variant]
    return builder(n, block, causal, queries)


def _index_table(lists, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged index lists as a padded (rows, width) table of indices and a validity mask."""
    width = max((len(x) for x in lists), default=0) or 1
    index = torch.zeros(len(lists), width, dtype=torch.long)  # (R, W)
    valid = torch.zeros(len(lists), width, dtype=torch.bool)  # (R, W)
    for row, items in enumerate(lists):
        index[row, : len(items)] = torch.tensor(items, dtype=torch.long)
        valid[row, : len(items)] = True
    return index.to(device), valid.to(device)


def _dense_mask(lists, width: int, device) -> torch.Tensor:
    mask = torch.zeros(len(lists), width, dtype=torch.bool)  # (rows, width)
    for row, items in enumerate(lists):
        mask[row, list(items)] = True
    return mask.to(device)


def _max_pool(x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Element-wise max over each region's members: (B, H, N, D) -> (B, H, R, D)."""
    index, valid = _index_table(plan.regions, plan.n, x.device)  # (R, W)
    gathered = x[:, :, index, :]  # (B, H, R, W, D)
    return gathered.masked_fill(~valid[:, :, None], float("-inf")).amax(dim=-2)  # (B, H, R, D)


def _local_queries(q: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Each region's local query: max-pool of its members, or (Axial) one token's query or zeros."""
    if plan.local_query is None:
        return _max_pool(q, plan)  # (B, H, R, D)
    tokens = torch.tensor([t if t is not None else 0 for t in plan.local_query], dtype=torch.long, device=q.device)  # (R,)
    present = torch.tensor([t is not None for t in plan.local_query], dtype=torch.bool, device=q.device)  # (R,)
    return q[:, :, tokens, :] * present[:, None]  # (B, H, R, D)


def effective_weights(q: torch.Tensor, k: torch.Tensor, *, variant: str, causal: bool, block_size: int | None = None) -> torch.Tensor:
    """The effective attention matrix W (B, H, N, N) in float64: out = W @ v."""
    n = q.shape[-2]
    plan = build_plan(variant, n, block_size, causal)
    q = q.to(torch.float64) / math.sqrt(q.shape[-1])  # (B, H, N, D)
    k = k.to(torch.float64)  # (B, H, N, D)
    members = _dense_mask(plan.regions, n, q.device)  # (R, N)
    local_logits = (_local_queries(q, plan) @ k.transpose(-2, -1)).masked_fill(~members, float("-inf"))  # (B, H, R, N)
    local = torch.softmax(local_logits, dim=-1)  # (B, H, R, N)  p(j | region)
    region_keys = local @ k if plan.local_query is not None else _max_pool(k, plan)  # (B, H, R, D)
    direct_logits = (q @ k.transpose(-2, -1)).masked_fill(~_dense_mask(plan.direct, n, q.device), float("-inf"))  # (B, H, N, N)
    access = _dense_mask(plan.access, len(plan.regions), q.device)  # (N, R)
    region_logits = (q @ region_keys.transpose(-2, -1)).masked_fill(~access, float("-inf"))  # (B, H, N, R)
    weights = torch.softmax(torch.cat([direct_logits, region_logits], dim=-1), dim=-1)  # (B, H, N, N + R)
    return weights[..., :n] + weights[..., n:] @ local  # (B, H, N, N)


def combiner_reference(
    q, k, v, *, causal: bool = False, variant: str = "fixed", block_size: int | None = None, backend: str = "eager"
) -> torch.Tensor:
    """W @ v with W from `effective_weights`, returned in q's dtype. `backend` (the operator's eager or compiled
    path) is taken so that a case's options bind to the reference too; it changes nothing here."""
    weights = effective_weights(q, k, variant=variant, causal=causal, block_size=block_size)  # (B, H, N, N)
    return (weights @ v.to(torch.float64)).to(q.dtype)  # (B, H, N, D)
