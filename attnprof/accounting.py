"""Deterministic accounting: exact FLOPs and the exact peak of live tensor bytes of one call.

Method. FLOPs come from torch.utils.flop_counter.FlopCounterMode (matmul, bmm, einsum, conv and
SDPA formulas). The peak of live bytes comes from a TorchDispatchMode that sees every op's
outputs: each output storage not seen before and not shared with an op input (views, in-place
ops) is added to the live total, and a weakref finaliser on the storage takes it off again when
Python frees it. Both are identical run to run and machine to machine, and both work on the
`meta` device, where nothing is allocated: a CPU machine accounts a 64k case in milliseconds.

Caveats (see ENVIRONMENT.md): fused kernels (SDPA flash/efficient) take the unfused math path on
meta, so their meta figures are not theirs; impls say so with `meta_exact=False`. The tracker sees
Python lifetimes, so a temporary held in a local counts until the local goes away. Inputs made
before the call are not counted: the peak is the call's own bytes above its inputs.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

FUSED_ON_A_GPU = ("scaled_dot_product_attention",)  # torch functions meta runs unfused, a GPU as a fused kernel


@dataclass(frozen=True)
class AccountingReading:
    flops: int
    peak_bytes: int
    fused_calls: tuple[str, ...] = ()  # FUSED_ON_A_GPU functions the call made: its meta peak is not a GPU's


@functools.cache  # one class for the process: a mode's class, built afresh per call, cost a class creation per case
def _live_bytes_mode_class():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LiveBytesMode(TorchDispatchMode):
        """Tracks the bytes of storages created by ops inside the mode; `peak_bytes` is the high-water mark."""

        def __init__(self):
            super().__init__()
            self.live: dict[int, int] = {}
            self.current_bytes = 0
            self.peak_bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self._track(tensor.untyped_storage(), inputs)
            return out

        def _track(self, storage, input_storages: set[int]) -> None:
            key = id(storage)
            if key in self.live or key in input_storages:
                return  # already counted, or a view / in-place result of an op input
            self.live[key] = storage.nbytes()
            self.current_bytes += self.live[key]
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
            weakref.finalize(storage, self._free, key)

        def _free(self, key: int) -> None:
            self.current_bytes -= self.live.pop(key, 0)

    return LiveBytesMode


@functools.cache
def _op_tally_class():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class OpTally(TorchDispatchMode):
        """The aten ops that do work (each a kernel launch on a GPU; views and allocations launch nothing), the
        bytes they write and read, and the overloads seen: on `meta`, a proxy for a GPU's launch count and traffic.
        Reads: each tensor argument's distinct elements (a broadcast dimension is read once), except the tensors an
        op only writes (its schema's out arguments, whatever their name: out=, grad_input=, ...; and the destination of
        copy_, fill_, zero_); in-place ops read what they rewrite.
        gather reads as many elements of its input as it writes. Caches are not modelled: an operand that a GPU
        would hold in L2 between two ops is counted twice."""

        # Besides views (the schema says which), ops that only allocate or reinterpret.
        ALLOCATE_ONLY = {"_unsafe_view", "_reshape_alias", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
        WRITE_ONLY_FIRST = {"copy_", "fill_", "zero_"}  # their first argument is a destination only

        def __init__(self):
            super().__init__()
            self.ops = self.bytes_written = self.bytes_read = 0
            self.overloads: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            self.overloads.add(str(func))
            name = func._schema.name.split("::")[-1]
            if not func.is_view and name not in self.ALLOCATE_ONLY:  # diagonal, unfold, ... too
                self.ops += 1
                outputs = [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]
                self.bytes_written += sum(t.numel() * t.element_size() for t in outputs)
                written_only = {arg.name for arg in func._schema.arguments if arg.is_out}  # out=, grad_input=, ...
                self.bytes_read += self._read(name, args, {k: v for k, v in kwargs.items() if k not in written_only}, outputs)
            return out

        def _read(self, name: str, args, kwargs, outputs) -> int:
            read = args[1:] if name in self.WRITE_ONLY_FIRST else args
            tensors = [t for t in tree_leaves((read, kwargs)) if isinstance(t, torch.Tensor)]
            if name == "gather" and outputs:  # (input, dim, index): the gathered elements and the index
                return outputs[0].numel() * tensors[0].element_size() + _distinct_bytes(tensors[-1])
            return sum(_distinct_bytes(t) for t in tensors)

    def _distinct_bytes(t) -> int:
        count = 1
        for size, stride in zip(t.shape, t.stride(), strict=True):
            count *= size if stride != 0 or size == 0 else 1
        return count * t.element_size()

    return OpTally


def op_tally():
    """A fresh OpTally (a context manager); read `.ops`, `.bytes_written`, `.bytes_read` and `.overloads` after the block."""
    return _op_tally_class()()


def live_bytes_mode():
    """A fresh LiveBytesMode (a context manager); read `.peak_bytes` after the block."""
    return _live_bytes_mode_class()()


def flop_counter():
    """A FlopCounterMode that also counts the mixed-precision bmm (half operands, `out_dtype=torch.float32`) and the
    CPU's fused attention kernel. torch's formula for aten.bmm takes the overload's out_dtype argument for its own
    out_shape keyword and raises TypeError (torch 2.13); this one takes and ignores it: the FLOPs are those of any bmm.
    torch has no formula for `_scaled_dot_product_flash_attention_for_cpu` and its backward (it counts the GPU's
    flash kernels only), so a CPU plan calling it (Combiner-Mixture's) counted 0 for them; they take the GPU
    kernels' formulas: the two products of every query and key, masked or not."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, bmm_flop, sdpa_backward_flop_count, sdpa_flop_count

    def any_bmm_flop(a_shape, b_shape, out_dtype=None, *, out_shape=None, **kwargs) -> int:
        return bmm_flop(a_shape, b_shape)

    def flash_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    def flash_backward_flop(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)

    aten = torch.ops.aten
    mapping = {
        aten.bmm: any_bmm_flop,
        aten._scaled_dot_product_flash_attention_for_cpu: flash_flop,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: flash_backward_flop,
    }
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _fused_sdpa_enabled() -> bool:
    import torch

    cuda = torch.backends.cuda
    return cuda.flash_sdp_enabled() or cuda.mem_efficient_sdp_enabled() or cuda.cudnn_sdp_enabled()


@functools.cache
def _fused_calls_class():
    from torch.overrides import TorchFunctionMode

    class FusedCalls(TorchFunctionMode):
        """Names the FUSED_ON_A_GPU functions called inside it (`names`)."""

        def __init__(self):
            super().__init__()
            self.names: set[str] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in FUSED_ON_A_GPU and _fused_sdpa_enabled():  # not under sdpa_kernel(MATH)
                self.names.add(func.__name__)
            return func(*args, **(kwargs or {}))

    return FusedCalls


def account_call(run) -> AccountingReading:
    """FLOPs and peak live bytes of `run()` (a zero-argument callable doing one fwd or fwd_bwd), and which functions
    it called that a GPU runs fused (a custom impl calling SDPA was accounted its N x N math path without a word)."""
    tracker, counter, fused = live_bytes_mode(), flop_counter(), _fused_calls_class()()
    with counter, tracker, fused:
        run()
    return AccountingReading(int(counter.get_total_flops()), int(tracker.peak_bytes), tuple(sorted(fused.names)))
