"""Refusing a second derivative where a backward written by hand has none.

torch's `once_differentiable` raises on a second derivative only when the incoming gradient requires grad; when it does
not (the gradient of `out.sum()`, say), the backward's results come back with no graph, and a gradient penalty built
on them adds nothing to the next backward, silently. A backward runs with grad enabled only under create_graph=True,
so the backwards written by hand call refuse_a_graph first, in place of the decorator (which runs its function under
no_grad, where this check could not see the mode).
"""

from __future__ import annotations

import torch


def refuse_a_graph(what: str) -> None:
    """Raise when a backward runs under create_graph=True; `what` names the backward and why it has no derivative."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{what}: create_graph=True (a second derivative) is not supported there")
