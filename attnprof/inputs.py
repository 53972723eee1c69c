"""Seeded inputs for a Case, and the one call that is measured (forward, or forward + backward)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attnprof.spec import Case


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}[name]


@dataclass
class CaseInputs:
    q: object  # (B, H, N, D)
    k: object  # (B, H, N, D)
    v: object  # (B, H, N, D)
    grad_out: object | None  # (B, H, N, D), only in fwd_bwd

    @property
    def nbytes(self) -> int:
        tensors = [t for t in (self.q, self.k, self.v, self.grad_out) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


def make_inputs(case: Case, device: str | None = None, dtype: str | None = None, seq_len: int | None = None) -> CaseInputs:
    """Standard-normal q, k, v (and grad_out) from the case's seed; same seed, same numbers on a device.

    On `meta` nothing is drawn or allocated. Values are drawn on the CPU in float32 and moved, so a
    CPU and a CUDA run of the same case see the same inputs.
    """
    import torch

    device = device or case.device
    dtype_t = torch_dtype(dtype or case.dtype)
    shape = (case.batch, case.heads, seq_len or case.seq_len, case.head_dim)  # (B, H, N, D)
    need_grad = case.mode == "fwd_bwd"
    if device == "meta":
        make = lambda: torch.empty(shape, dtype=dtype_t, device="meta")  # noqa: E731
    else:
        generator = torch.Generator().manual_seed(case.seed)
        make = lambda: torch.randn(shape, generator=generator).to(device=device, dtype=dtype_t)  # noqa: E731
    q, k, v = (make().requires_grad_(need_grad) for _ in range(3))
    grad_out = make() if need_grad else None
    return CaseInputs(q, k, v, grad_out)


def make_call(fn: Callable, inputs: CaseInputs) -> Callable[[], object]:
    """A zero-argument callable doing exactly the measured work: fn(q, k, v), plus backward in fwd_bwd. It returns
    the output (B, H, N, D), which the caller drops at once; the spot check (spot_check.py) reads the first one.

    Gradients are dropped after each call (set to None) so repeated calls do not accumulate memory.
    """
    q, k, v, grad_out = inputs.q, inputs.k, inputs.v, inputs.grad_out
    if grad_out is None:

        def forward():
            return fn(q, k, v)

        return forward

    def forward_backward():
        out = fn(q, k, v)  # (B, H, N, D)
        out.backward(grad_out)
        q.grad = k.grad = v.grad = None
        return out.detach()

    return forward_backward
