"""torch's process-wide settings, kept as the worker found them between cases.

Every impl of a device runs in one reused worker, so an impl that changes a global setting (its thread count, grad
mode, the SDPA backends it allows, TF32) changed the cases of every impl after it: in an audit a plugin calling
`torch.set_num_threads(1)` made softmax's next cells read 1.9-2.5x slower with no word on their rows, and one calling
`torch.set_grad_enabled(False)` made softmax's fwd-bwd check "fail". The worker takes a snapshot once it has started,
and after each case puts back what the case changed, saying so on that case's row.
"""

from __future__ import annotations

from collections.abc import Callable


def _settings() -> list[tuple[str, Callable, Callable]]:
    """(name, getter, setter) of each setting an impl may change; the ones this torch lacks are left out."""
    import torch

    backends = torch.backends
    found = []
    for backend, label in ((backends.cuda.matmul, "cuda matmul"), (backends.cudnn, "cudnn")):
        # torch >= 2.9's fp32_precision where it has it: its legacy allow_tf32 (and get_float32_matmul_precision) raise
        # once the new one is set (precision.py); put back first, so the legacy getter below reads again
        attribute = "fp32_precision" if hasattr(backend, "fp32_precision") else "allow_tf32"
        getter, setter = (lambda b=backend, a=attribute: getattr(b, a)), (lambda v, b=backend, a=attribute: setattr(b, a, v))
        found.append((f"{label} {attribute}", getter, setter))
    found += [
        ("threads", torch.get_num_threads, torch.set_num_threads),
        ("grad mode", torch.is_grad_enabled, torch.set_grad_enabled),
        ("default dtype", torch.get_default_dtype, torch.set_default_dtype),
        ("float32 matmul precision", torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
        ("deterministic algorithms", torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms),
        ("cudnn benchmark", lambda: backends.cudnn.benchmark, lambda on: setattr(backends.cudnn, "benchmark", on)),
    ]
    for backend in ("flash", "mem_efficient", "math", "cudnn"):  # what sdpa may choose: an impl pinning one pinned every sdpa
        getter, setter = getattr(backends.cuda, f"{backend}_sdp_enabled", None), getattr(backends.cuda, f"enable_{backend}_sdp", None)
        if getter is not None and setter is not None:
            found.append((f"sdpa {backend} backend", getter, setter))
    return found


def snapshot() -> dict:
    """The current value of every setting this torch lets us read, by name."""
    kept = {}
    for name, getter, _ in _settings():
        try:
            kept[name] = getter()
        except Exception:  # noqa: BLE001  (a legacy getter refusing a mix with torch's new precision API: not kept)
            continue
    return kept


def restore(kept: dict) -> list[str]:
    """Put back every setting that differs from `kept`; returns "name was -> now" for each one the case changed. Never
    raises: a getter or setter that refuses (the legacy TF32 getters once an impl used the new API crashed the worker
    after every case) is said, not raised. Passes again until nothing differs: putting back one setting may move
    another (set_float32_matmul_precision sets cuda matmul fp32_precision to 'ieee' after it was put back to
    'none'), which the next case's row then blamed on that case (a GPU-path review). Only the first pass says."""
    changed = _restore_once(kept)
    for _ in range(3):
        if not _restore_once(kept):
            break
    return changed


def _restore_once(kept: dict) -> list[str]:
    changed = []
    for name, getter, setter in _settings():
        if name not in kept:
            continue
        try:
            now = getter()
            if now != kept[name]:
                setter(kept[name])
                changed.append(f"{name} {kept[name]} -> {now}")
        except Exception as error:  # noqa: BLE001
            changed.append(f"{name} could not be read or put back: {type(error).__name__}")
    return changed


def changed_note(changed: list[str]) -> str:
    """A row's note for the settings its case changed (and the worker put back)."""
    return f"the impl changed torch's global settings ({', '.join(changed)}); put back after this case" if changed else ""
