"""Rows of the Combiner oracle (reference/combiner.py) at any length: the spot check's row reference.

The whole oracle forms the N x N effective attention matrix, and its plans are Python loops over every query: at
N = 1024, H = 16 one forward check took 1.3 s (Fixed) to 33 s (LogSparse). A row needs only its own plan: its
direct keys, the regions it sees, and each region's summary (local query, key and softmax over the region's
members). So the plan is built for the sampled rows alone, and the summaries of the regions they see are formed
from padded member tables (R, W), never from an (R, N) mask. The arithmetic is the oracle's, in float64:

    p(j | region) = softmax over the members of q_region . k_j / sqrt(d)
    row weights   = one softmax over [q_i . k_j / sqrt(d), direct j] + [q_i . k_region / sqrt(d), regions seen]
    out_i         = sum_j w_j v_j + sum_regions w_region * sum_members p(j | region) v_j
"""

from __future__ import annotations

import functools
import math

import torch

from attnprof.impls.reference.combiner import Plan, _index_table, plan_of

# Regions are summarised in chunks of similar size, at most this many (padded) members a chunk: one padded table of
# all of them made LogSparse's 156 regions at N = 65536 (up to 32768 members each) a 2.6 GB gather per tensor.
CHUNK_MEMBERS = 1 << 18


def combiner_rows(q, k, v, rows, *, causal: bool = False, variant: str = "fixed", block_size: int | None = None, backend: str = "eager"):
    """Rows `rows` of combiner_reference over one head's q, k, v (N, D) -> (R, D), in float64 (q's dtype out)."""
    plan = _rows_plan(variant, q.shape[-2], block_size, causal, tuple(int(r) for r in rows))
    q64, k64, v64 = q.to(torch.float64) / math.sqrt(q.shape[-1]), k.to(torch.float64), v.to(torch.float64)  # (N, D) each
    region_keys, region_values = _summaries(q64, k64, v64, plan)  # (R, D), (R, D)
    direct, direct_valid = _index_table(plan.direct, plan.n, q.device)  # (Q, Wd)
    access, access_valid = _index_table(plan.access, len(plan.regions), q.device)  # (Q, Wa)
    queries = q64[list(plan.queries)]  # (Q, D)
    direct_logits = torch.einsum("qd,qwd->qw", queries, k64[direct]).masked_fill(~direct_valid, float("-inf"))  # (Q, Wd)
    if len(plan.regions):
        region_logits = torch.einsum("qd,qwd->qw", queries, region_keys[access]).masked_fill(~access_valid, float("-inf"))  # (Q, Wa)
    else:  # one block: no region at all
        region_logits = direct_logits.new_full((len(plan.queries), 1), float("-inf"))  # (Q, 1)
    weights = torch.softmax(torch.cat([direct_logits, region_logits], dim=-1), dim=-1)  # (Q, Wd + Wa)
    out = torch.einsum("qw,qwd->qd", weights[:, : direct.shape[1]], v64[direct])  # (Q, D)
    if len(plan.regions):
        out = out + torch.einsum("qw,qwd->qd", weights[:, direct.shape[1] :], region_values[access])
    return out.to(q.dtype)  # (Q, D)


@functools.lru_cache(maxsize=2)
def _rows_plan(variant: str, n: int, block_size: int | None, causal: bool, rows: tuple[int, ...]) -> Plan:
    """The sampled rows' plan, built once for the sampled heads of a case (0.26 s for Mixture at N = 65536)."""
    return plan_of(variant, n, block_size, causal, rows)


def _summaries(q64, k64, v64, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Each region's key and value summary: (R, D), (R, D). Key: the max-pool of its members' keys, or (Axial) their
    local-softmax-weighted sum; value: the local-softmax-weighted sum of its members' values."""
    keys, values, order = [], [], []
    for chunk in _similar_sized_chunks(plan.regions):
        order += chunk
        members, valid = _index_table([plan.regions[r] for r in chunk], plan.n, q64.device)  # (C, W)
        member_keys = k64[members]  # (C, W, D)
        local_query = _local_queries(q64, plan, chunk, members, valid)  # (C, D)
        local_logits = torch.einsum("cd,cwd->cw", local_query, member_keys).masked_fill(~valid, float("-inf"))  # (C, W)
        local = torch.softmax(local_logits, dim=-1)  # (C, W): p(j | region)
        if plan.local_query is not None:
            keys.append(torch.einsum("cw,cwd->cd", local, member_keys))  # (C, D)
        else:
            keys.append(member_keys.masked_fill(~valid[..., None], float("-inf")).amax(dim=1))  # (C, D)
        values.append(torch.einsum("cw,cwd->cd", local, v64[members]))  # (C, D)
    if not keys:
        return q64.new_zeros((0, q64.shape[-1])), q64.new_zeros((0, q64.shape[-1]))
    back = torch.empty(len(order), dtype=torch.long)  # chunk order -> region order
    back[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(keys)[back], torch.cat(values)[back]  # (R, D) each, in the plan's region order


def _similar_sized_chunks(regions) -> list[list[int]]:
    """Region indices in chunks of similar member counts, each padded to at most CHUNK_MEMBERS members."""
    chunks: list[list[int]] = []
    for region in sorted(range(len(regions)), key=lambda r: len(regions[r])):
        if chunks and (len(chunks[-1]) + 1) * len(regions[region]) <= CHUNK_MEMBERS:
            chunks[-1].append(region)
        else:
            chunks.append([region])
    return chunks


def _local_queries(q64, plan: Plan, chunk: list[int], members, valid) -> torch.Tensor:
    """The chunk's local queries: the max-pool of the members' queries, or (Axial) one token's query or zeros."""
    if plan.local_query is None:
        return q64[members].masked_fill(~valid[..., None], float("-inf")).amax(dim=1)  # (C, D)
    tokens = [plan.local_query[r] for r in chunk]
    index = torch.tensor([t if t is not None else 0 for t in tokens], dtype=torch.long, device=q64.device)  # (C,)
    present = torch.tensor([t is not None for t in tokens], dtype=torch.bool, device=q64.device)  # (C,)
    return q64[index] * present[:, None]  # (C, D)
