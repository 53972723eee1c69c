"""What the impls' Triton backends (cosformer, nystromformer, combiner-fixed, -axial and -mixture backend=triton) share:
whether Triton is there, whether its interpreter is on, and the reasons a call or a case is refused."""

from __future__ import annotations

import contextlib
import importlib.util
import os


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


# Older Tritons fail to compile some of the kernels for an H100 (sm_90), found compiling them with each, no GPU needed:
# an assertion in Triton's compiler aborted the process on five kernels with triton 3.1 (torch 2.5) and on cosFormer's
# causal output with 3.2 (torch 2.6), and 3.3 (torch 2.7) raised on that one. For sm_80 they compiled. 3.6 compiles them
# all (tests/test_benchmarks.py); the dev extras ask for 3.4 too. Refused below it on any GPU: conservative for an A100.
MIN_TRITON = (3, 4)


def triton_version() -> tuple[int, ...] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(part) for part in version("triton").split(".")[:2] if part.isdigit())
    except PackageNotFoundError:
        return None


def too_old(name: str) -> list[str]:
    """Why the installed Triton cannot compile `name`'s kernels for a GPU (empty when it can, or cannot tell)."""
    found = triton_version()
    if found is None or len(found) < 2 or found >= MIN_TRITON:
        return []
    wanted, have = (".".join(map(str, v)) for v in (MIN_TRITON, found))
    return [f"{name} backend=triton needs Triton {wanted} or later (torch 2.8+ brings one), not {have}: older ones fail to compile it"]


def interpreting() -> bool:
    """Triton's interpreter is on: its kernels run on CPU tensors (the CPU tests; tests/conftest.py)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def missing(name: str) -> str:
    return f"{name} backend=triton needs the triton package (CUDA builds of torch bring it)"


def call_problems(name: str, device_type: str) -> list[str]:
    """Why a call on `device_type` tensors cannot run `name`'s Triton kernels (empty when it can): CUDA, meta
    (the accounting, through the ops' fake kernels), or any device under the interpreter."""
    reasons = [] if triton_installed() else [missing(name)]
    if device_type not in ("cuda", "meta") and not interpreting():
        where = f"CUDA (meta for the accounting), not {device_type}"
        reasons.append(f"{name} backend=triton runs on {where} (TRITON_INTERPRET=1 runs Triton's interpreter)")
    return reasons


def case_problems(name: str, device: str) -> list[str]:
    """Why a sweep does not run `name` backend=triton on `device` (a case's device): never timed on the CPU."""
    kind = device.split(":")[0]
    if kind == "cpu":
        return [f"{name} backend=triton runs on CUDA, not cpu (Triton kernels)"]
    if kind != "cuda":
        return []
    return too_old(name) if triton_installed() else [missing(name)]


def refusals(name: str, case, options: dict, kernel_problems) -> list[str]:
    """An impl's `refuse` for its backend option: backend="triton" runs on CUDA (and meta, counted through its ops' fake
    kernels), never timed on the CPU, and within what its kernels take (kernel_problems(), asked only then)."""
    if options.get("backend") != "triton":
        return []
    return case_problems(name, case.device) + kernel_problems()


def on_device_of(tensor):
    """Inside: Triton launches on `tensor`'s GPU (it launches on the current device, which may be another one)."""
    import torch

    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()
