"""What every seed operator checks of its inputs before any arithmetic, so that a notebook's slip is one clear
error naming the bad value. Without these, shapes and devices torch itself would not catch gave silent wrong
answers (an operator library audit): fewer keys than Nyström landmarks averaged empty segments into NaN, a k on
`meta` beside CPU q and v read uninitialised memory (CPU `@` takes a meta operand), and a float16 q beside float32
k, v rounded the wider inputs down without a word."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def check_qkv(name: str, q, k, v, *, causal: bool = False, cross_length: bool = False, value_width: bool = True) -> None:
    """q, k, v must be (B, H, N, D) tensors of one floating dtype on one device, k matching q in B, H and D and v
    matching k in B, H and N, with at least one token and one channel. cross_length: q may have another length
    than k (cosFormer's bidirectional form); value_width: v may have another width than q and k."""
    tensors = (q, k, v)
    if not all(isinstance(x, torch.Tensor) for x in tensors):
        raise TypeError(f"{name} takes torch tensors q, k, v, not {', '.join(type(x).__name__ for x in tensors)}")
    shapes = lambda: ", ".join(str(tuple(x.shape)) for x in tensors)  # noqa: E731  (only for an error: this runs every call)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{name} needs (B, H, N, D) q, k, v, not {shapes()}")
    if not q.device == k.device == v.device:
        raise ValueError(f"{name} needs q, k, v on one device, not {', '.join(str(x.device) for x in tensors)}")
    if not q.dtype == k.dtype == v.dtype or not q.dtype.is_floating_point:
        dtypes = ", ".join(str(x.dtype).removeprefix("torch.") for x in tensors)
        raise TypeError(f"{name} needs q, k, v of one floating dtype, not {dtypes}")
    lengths_differ = q.shape[2] != k.shape[2] and not cross_length
    widths_differ = v.shape[3] != q.shape[3] and not value_width
    if k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3] or v.shape[:3] != k.shape[:3] or lengths_differ or widths_differ:
        raise ValueError(f"{name} shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if min(q.shape[2], k.shape[2]) < 1 or min(q.shape[3], v.shape[3]) < 1:
        raise ValueError(f"{name} needs at least one token and one channel, not q, k, v of {shapes()}")
    check_flag(name, "causal", causal)
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal {name} needs as many queries as keys, not {q.shape[2]} and {k.shape[2]}")


def check_flag(name: str, option: str, value) -> None:
    """A yes/no option is a bool: any non-empty string (causal="no") read as True."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} {option} must be True or False, not {value!r}")


def check_count(name: str, option: str, value, *, minimum: int) -> None:
    """A count option is an integer of at least `minimum` (True is no count, 2.5 no number of landmarks); numpy's
    integers are integers (a notebook's `for m in np.arange(...)`)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} {option} must be an integer >= {minimum}, not {value!r}")


def check_positive(name: str, option: str, value) -> None:
    """A positive finite number (cosFormer's eps: 0 or below gave NaN rows where every query feature is 0)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} {option} must be a positive finite number, not {value!r}")
