"""The step buffers of the causal cosFormer's sequential CPU plans (sequential.py, sequential_backward.py).

A step's temporaries are written in place through out= forms into buffers allocated once a call, instead of into fresh
tensors every step: they then stay where the previous step left them in cache, and no allocation is made per step
(the forward at N = 8192, B H = 16: 63.6 -> 50.4 ms, see sequential.py). A shorter step, the last chunk of N mod C,
gets the first positions of the same buffers as views, so a call holds one set of them whatever N mod C.
"""

from __future__ import annotations

import torch


def step_buffers(rows: int, shapes: dict, size: int, dtype, device, full: dict | None = None) -> dict:
    """Buffers (rows, ...) by name, `shapes` giving the dims after the first, "C" standing for the step's positions:
    new ones, or `full`'s narrowed to the first `size` positions along each "C" dim (views)."""
    if full is not None:
        narrow = lambda shape: (slice(None), *(slice(0, size) if dim == "C" else slice(None) for dim in shape))  # noqa: E731
        return {name: full[name][narrow(shape)] for name, shape in shapes.items()}
    sized = lambda shape: (rows, *(size if dim == "C" else dim for dim in shape))  # noqa: E731
    return {name: torch.empty(sized(shape), dtype=dtype, device=device) for name, shape in shapes.items()}


def feature_shapes(d: int) -> dict:
    """The buffers both plans' steps load q and k into (step_buffers' shapes)."""
    return {
        "q_f": ("C", d),  # relu(q): (BH, C, D)
        "k_f": ("C", d),
        "phi_q_parts": ("C", 2, d),  # [relu(q) sin a, relu(q) cos a]: (BH, C, 2, D)
        "phi_k_parts": ("C", 2, d),
    }


class StepWorkspace:
    """One step's buffers for `size` positions of every head (B H rows), in the compute dtype, as attributes named by
    the subclass's `shapes(d, dv)`; `reweight` (C, C) cut to the step. Subclasses add the views their steps read
    (made once: a view costs ~1-2 us of dispatch)."""

    def __init__(self, batch: int, heads: int, size: int, d: int, dv: int, dtype, device, reweight, full=None):
        self.batch, self.heads, self.size, self.dims, self.full_reweight = batch, heads, size, (d, dv, dtype, device), reweight
        self.buffers = step_buffers(batch * heads, self.shapes(d, dv), size, dtype, device, None if full is None else full.buffers)
        vars(self).update(self.buffers)  # each buffer as an attribute of its name
        self.reweight = reweight[:size, :size]  # (C, C)

    @staticmethod
    def shapes(d: int, dv: int) -> dict:
        raise NotImplementedError

    def per_head(self, x):
        return x.view(self.batch, self.heads, *x.shape[1:])  # (BH, C, X) -> (B, H, C, X)

    def sized(self, size: int):
        """This workspace for a step of `size` positions (at most its own): itself, or views of its first positions."""
        return self if size == self.size else type(self)(self.batch, self.heads, size, *self.dims, self.full_reweight, full=self)
