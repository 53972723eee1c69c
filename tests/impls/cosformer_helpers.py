"""Inputs, error measures and `meta` counters shared by the cosFormer test files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnprof import impls
from attnprof.accounting import account_call
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case

GOLDEN = Path(__file__).resolve().parents[3] / "shared" / "golden"
GOLDEN_FILES = sorted(GOLDEN.glob("cosformer_*.npz")) if GOLDEN.is_dir() else []


def load_golden(path):
    """q, k, v, the reference code's output, causal and eps of one golden file."""
    data = np.load(path)
    q, k, v, out = (torch.from_numpy(data[key]) for key in ("q", "k", "v", "out"))
    return q, k, v, out, bool(data["causal"]), float(data["eps"])


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


def half_and_float64_grads(shape, dtype, seed: int, call, reference=None):
    """Gradients of `call(q, k, v)` from half inputs, and of `reference` (default: `call`) from the same values in
    float64, under one half upstream gradient: (half grads, float64 grads), for q, k, v each."""
    inputs = [t.to(dtype) for t in qkv(*shape, seed=seed, dtype=torch.float32)]
    grad = randn(*shape, seed=seed + 4, dtype=torch.float32).to(dtype)
    half = [t.clone().requires_grad_() for t in inputs]
    wide = [t.double().requires_grad_() for t in inputs]
    grads_half = torch.autograd.grad(call(*half), half, grad)
    return grads_half, torch.autograd.grad((reference or call)(*wide), wide, grad.double())
