"""Shared pieces of the Combiner operators: block choice, padding, masked pooling, joint softmax.

Padding: lengths that are not a multiple of the block are right-padded with zeros. Padded keys are
excluded from pooling (masked to -inf before the max, empty pools become 0), from local softmaxes
and from direct logits by explicit masks, so the result equals the unpadded definition. Padded
queries produce rows that are sliced off.

Masks: local softmaxes (summaries) use the compute dtype's most negative finite value, so that a
fully masked row (an empty region, never used) softmaxes to something finite instead of NaN. The
joint softmax uses -inf (exp of -inf is cheap, exp of a huge negative number takes a slow path on
the CPU): every query keeps at least its own key there, so no joint row is fully masked.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F


def default_block(n: int) -> int:
    """The power of two nearest sqrt(n) (the lower one on a tie): 8192 -> 64, 65536 -> 256."""
    low = 1
    while (2 * low) ** 2 <= n:
        low *= 2
    return low if 4 * n <= 9 * low * low else 2 * low  # sqrt(n) - low <= 2 low - sqrt(n)


def resolve_block(block_size: int | None, n: int) -> int:
    """The block (Fixed) or row length (Axial, Mixture) used for n tokens; never more than n."""
    if block_size is None:
        return default_block(n)
    if not is_positive_integer(block_size):
        raise ValueError(f"block_size must be a positive integer or None, not {block_size!r}")
    return max(1, min(int(block_size), n))


def is_positive_integer(value) -> bool:
    """An int of 1 or more, numpy's too (np.int64(4) was refused as "not a positive integer"); never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmaxes and pools run in fp32 for half inputs, in the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def prepare(q, k, v, length: int):
    """q scaled by 1/sqrt(d) (max-pooling commutes with it), all cast to the compute dtype and
    right-padded with zeros to `length` tokens: three (B, H, length, D) tensors."""
    return padded(q.to(compute_dtype(q.dtype)) * (1.0 / math.sqrt(q.shape[-1])), k, v, length)  # cast first: half q scaled in fp32


def padded(q, k, v, length: int):
    """q, k, v cast to the compute dtype and right-padded with zeros to `length` tokens: three (B, H, length, D)
    tensors, the inputs themselves where they need neither."""
    dtype = compute_dtype(q.dtype)
    pad = length - q.shape[-2]
    return tuple(F.pad(x.to(dtype), (0, 0, 0, pad)) if pad else x.to(dtype) for x in (q, k, v))  # 3 x (B, H, L, D)


def to_blocks(q, k, v, block_size: int | None):
    """The shared prologue of Fixed and Axial: q, k, v prepared, padded to whole blocks of the resolved
    size and cut into them -> (3 x (B, H, groups, size, D), padding mask (groups, size) or None)."""
    n = q.shape[-2]
    size = resolve_block(block_size, n)
    groups = -(-n // size)
    padded = prepare(q, k, v, groups * size)  # 3 x (B, H, L, D), L = groups * size
    pad = token_valid(n, groups * size, q.device).view(groups, size) if groups * size > n else None  # (groups, size)
    return tuple(x.unflatten(-2, (groups, size)) for x in padded), pad  # 3 x (B, H, groups, size, D)


def token_valid(n: int, length: int, device) -> torch.Tensor:
    """True for real tokens, False for padding: (length,)."""
    return torch.arange(length, device=device) < n  # (L,)


def mask_value(x: torch.Tensor) -> float:
    """The most negative finite value of x's dtype: the mask of local softmaxes, whose rows may be empty."""
    return torch.finfo(x.dtype).min


def masked_max(x: torch.Tensor, valid: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Max-pool over `dim` ignoring invalid entries; a pool with no valid entry gives 0.
    `valid` broadcasts against x (None: all valid)."""
    if valid is None:
        return x.amax(dim=dim)
    pooled = x.masked_fill(~valid, float("-inf")).amax(dim=dim)
    return pooled.masked_fill(~valid.any(dim=dim), 0.0)


def local_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    """One summary query per group attending to its group: query (..., G, D), keys/values
    (..., G, S, D), drop (G, S) or broadcastable, True where a key is excluded -> (..., G, D)."""
    logits = (query.unsqueeze(-2) @ keys.transpose(-2, -1)).squeeze(-2)  # (..., G, S)
    if drop is not None:
        logits = logits.masked_fill(drop, mask_value(logits))
    weights = torch.softmax(logits, dim=-1)  # (..., G, S)
    return (weights.unsqueeze(-2) @ values).squeeze(-2)  # (..., G, D)


def joint_softmax(parts: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One softmax over the last axes of several logit tensors taken together, without
    concatenating them. Each part is (logits (..., a, b, K), drop mask broadcastable to it, swapped):
    `swapped` parts hold their two query axes as (b, a) instead of (a, b), e.g. column-major
    pieces of a grid. Each logits tensor is masked, shifted and exponentiated in place (the
    callers hand over fresh tensors); returns the unnormalised weights, in each part's own
    layout, and the normaliser in the (..., a, b) layout. The shift is the joint row maximum,
    detached: softmax does not depend on it, so gradients are exact.

    The alternative, each part's own fused softmax merged by log-normalisers as flash attention merges
    blocks, is what Combiner-Mixture takes off the CPU (mixture.plan): there it saves passes over
    the logits, and doing one part at a time, weights applied before the next part's logits are formed, keeps
    the peak. Tried here first for every variant with both parts' logits alive at once, it grew the peak by a
    logits tensor (Fixed 3.3 -> 5.3 GiB, Mixture bidirectional 11.2 -> 17.2 GiB, past its 16 GiB target). On the
    CPU Mixture takes neither: its flash plan fuses each part in one kernel (mixture_flash.py)."""
    for logits, drop, _ in parts:
        if drop is not None:
            logits.masked_fill_(drop, float("-inf"))
    top = None
    for logits, _, swapped in parts:
        part_top = _unswap(logits.detach().amax(dim=-1), swapped)  # (..., a, b)
        top = part_top if top is None else torch.maximum(top, part_top)
    weights, total = [], None
    for logits, _, swapped in parts:
        weight = logits.sub_(_unswap(top, swapped).unsqueeze(-1)).exp_()  # (..., a, b, K) or (..., b, a, K)
        part_total = _unswap(weight.sum(dim=-1), swapped)  # (..., a, b)
        total = part_total if total is None else total + part_total
        weights.append(weight)
    return weights, total


def merge_by_normalisers(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """The softmax over two sets of keys from each set's own softmax output (..., M, D) and log-normaliser (..., M, 1),
    as flash attention merges key blocks. A set with no key (lse -inf) weighs 0; the other must hold one.
    Each set's weight, exp(lse_a - logaddexp(lse_a, lse_b)), is written as sigmoid(lse_a - lse_b): the same value,
    and derivatives of every order stay finite at -inf (logaddexp's second derivative there multiplies 0 by inf:
    NaN Hessian-vector products, causal)."""
    gap = lse_a - lse_b  # (..., M, 1): -inf or +inf where one set has no key
    # Not in place: under torch.compile, where dynamo breaks the graph (the scan's strided out= writes), a graph
    # keeps its outputs for its backward, which eager bmm does not.
    return out_a * torch.sigmoid(gap) + out_b * torch.sigmoid(-gap)


def row_blocks(rows: int, count: int) -> list[tuple[int, int]]:
    """[a, b) ranges of grid rows, `count` of them as equal as possible (fewer when rows < count)."""
    edges = [round(i * rows / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _unswap(x: torch.Tensor, swapped: bool) -> torch.Tensor:
    return x.transpose(-2, -1) if swapped else x


def finish(out: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Drop padded rows and return in the input dtype: (B, H, L, D) -> (B, H, N, D)."""
    return out[..., :n, :].to(dtype)
