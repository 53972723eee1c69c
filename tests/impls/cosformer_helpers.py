"""Inputs, error measures and `meta` counters shared by the cosFormer test files."""

from __future__ import annotations

import torch

from attnprof import impls
from attnprof.accounting import account_call
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case


def rel_error(actual, expected) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / expected.norm())


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def qkv(b, h, n, d, seed=0, dtype=torch.float64):
    return tuple(randn(b, h, n, d, dtype=dtype, seed=seed + i) for i in range(3))


def meta_case(seq_len: int, causal: bool, mode: str = "fwd", dtype: str = "bfloat16") -> Case:
    return Case(impl="cosformer", seq_len=seq_len, heads=16, head_dim=64, dtype=dtype, causal=causal, mode=mode)


def meta_call(case: Case):
    """One call of the registered impl on `meta` inputs (there standing in for a GPU)."""
    return make_call(impls.get("cosformer").bind(case), make_inputs(case, device="meta"))


def meta_peak(seq_len: int, causal: bool, mode: str, dtype: str = "bfloat16") -> int:
    return account_call(meta_call(meta_case(seq_len, causal, mode, dtype))).peak_bytes
