"""The checks a sweep gets before any run exists (api.resolve_sweep): every impl importable by the workers, values
parsed as the CLI's and TOML's parsers parse them, inputs that can exist, devices that are there."""

from __future__ import annotations

from dataclasses import replace

from attnprof.errors import UsageError
from attnprof.spec import Sweep


def check_reachable(sweep: Sweep) -> None:
    """An impl registered in an interactive session (a notebook, `python -c`) was accepted, and every one of its
    rows then read "unknown impl": the workers are spawned processes, and do not run the session."""
    from attnprof import impls

    unseen = impls.unreachable(spec.name for spec in sweep.impls)
    if unseen:
        raise UsageError(
            f"impl {unseen[0]!r} is registered in this interactive session, which the sweep's worker processes do not run: "
            "register it in a module (mykernels.py) and import that here (workers import it too), or run a script file; "
            f"attnprof.impls.unregister({unseen[0]!r}) takes this one back"
        )
    hidden = impls.unimportable([spec.name for spec in sweep.impls])
    if hidden:  # workers import it by name: it failed every cell of the sweep ("could not start a worker") seconds later
        name, module = hidden[0]
        where = impls.file_of(name)  # a module loaded by path is in no sys.modules entry: the error said "(?)"
        where = f" ({where})" if where else ""
        raise UsageError(
            f"impl {name!r} comes from module {module!r}{where}, which the sweep's worker processes cannot import by name: "
            "put its folder on sys.path (or PYTHONPATH) before importing it"
        )


def checked_values(sweep: Sweep) -> Sweep:
    """A Sweep built in Python gets the checks the CLI's and TOML's parsers make (scenario.SWEEP_KEYS), and their
    values: one UsageError naming the bad value, instead of rows of N = 0 or a seed SQLite cannot store. The values
    parsed are kept: rep_ms="50" was checked, then stored as text, and every row failed comparing it with a float
    (an API audit)."""
    from attnprof.scenario import SWEEP_KEYS

    changes = {}
    for key in ("lengths", "batch", "heads", "head_dim", "warmup_ms", "rep_ms", "timeout", "seed"):
        field, parse = SWEEP_KEYS[key]
        value = getattr(sweep, field)
        changes[field] = parse(list(value) if isinstance(value, tuple) else value)
    return replace(sweep, **changes)


MAX_INPUT_BYTES = 2**50  # 1 PiB for one of q, k, v: beyond any device; far beyond it, torch's size arithmetic overflows


def check_input_size(sweep: Sweep) -> None:
    """Refuse a grid whose largest q cannot exist, before measuring: it would otherwise be an error row
    ('Storage size calculation overflowed') per cell. Large-but-possible sizes are left to the OOM handling."""
    from attnprof.impls.base import DTYPE_BYTES

    n, b, h, d = max(sweep.lengths), max(sweep.batch), max(sweep.heads), max(sweep.head_dim)
    size = b * h * n * d * max(DTYPE_BYTES[dtype] for dtype in sweep.dtype)
    if size > MAX_INPUT_BYTES:
        raise UsageError(f"bad lengths: N={n} with batch {b}, {h} heads, head dim {d} makes q alone {size / 2**50:.3g} PiB")


def check_device(device: str, accounting: bool) -> None:
    import torch

    if device == "meta" and not accounting:
        raise UsageError("device 'meta' measures nothing; use --accounting for exact FLOPs and bytes without running")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but CUDA is not available here (torch {torch.__version__}); use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
