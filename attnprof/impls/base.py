"""The AttentionImpl record: what every registered attention implementation declares.

An impl is an operator on already-projected q, k, v of shape (B, H, N, D) returning (B, H, N, D).
It says what it supports (`not_supported` returns reasons, never raises), which options it takes
with their defaults, how to compute its own reference (checked before any time is reported), and
optionally its FLOP count and the minimum bytes it must move for a case.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from attnprof.errors import UsageError
from attnprof.spec import DTYPES, MODES, Case

ALL_DEVICES = ("cpu", "cuda")

# What a call on `meta` stands in for, for an impl that sizes its work by device (cosFormer's steps).
# An accounting run (`sweep --accounting`) stands in for a GPU; the CPU's host-memory guard accounts a
# CPU case on meta and must see the CPU's sizes, or it would over-predict the peak.
_META_STANDS_FOR = contextvars.ContextVar("meta_stands_for", default="cuda")


@contextlib.contextmanager
def meta_stands_for(device: str):
    """Inside: calls on `meta` size their work as on `device` (a device name such as cpu, cuda, cuda:1)."""
    token = _META_STANDS_FOR.set(device)
    try:
        yield
    finally:
        _META_STANDS_FOR.reset(token)


_CHECKING_THE_ACCOUNTED_PLAN = contextvars.ContextVar("checking_the_accounted_plan", default=False)


@contextlib.contextmanager
def checking_the_accounted_plan():
    """Inside: an impl runs the plan `meta` accounts wherever it runs (Combiner's backend=compile runs eagerly, as
    on meta), so an accounting run's check against the reference checks what it counts, without compiling first
    (16 s a configuration on the CPU)."""
    token = _CHECKING_THE_ACCOUNTED_PLAN.set(True)
    try:
        yield
    finally:
        _CHECKING_THE_ACCOUNTED_PLAN.reset(token)


def runs_the_accounted_plan(device) -> bool:
    """On meta, or inside `checking_the_accounted_plan`."""
    return str(device).split(":")[0] == "meta" or _CHECKING_THE_ACCOUNTED_PLAN.get()


def planning_device_type(device) -> str:
    """The device type an impl sizes its work for: the device's own, or on meta what it stands in for."""
    kind = str(device).split(":")[0]
    return _META_STANDS_FOR.get().split(":")[0] if kind == "meta" else kind


@dataclass(frozen=True)
class AttentionImpl:
    """One registered implementation.

    fn(q, k, v, *, causal, **options) -> out, all (B, H, N, D).
    reference(q, k, v, *, causal, **options) -> out: the check `fn` must match (float64 on the CPU);
        defaults to exact softmax attention, which is right for every exact impl.
    row_reference(q, k, v, rows, *, causal, **options) -> out_rows: the reference's output rows `rows` (a list of
        query positions) of one head, q, k, v (N, D) -> (R, D), in far less than the whole reference's work (cosFormer:
        R x N x D): with it the check at the measured length (spot_check.py) compares sampled rows at any length, where
        the whole reference would cost N^2.
    coupled_row_reference(q, k, v, heads, rows, *, causal, **options) -> out_rows: the same for an impl whose heads
        are coupled, one head's output depending on the other heads' inputs (Nyströmformer's default pinv scale is one
        max over every batch item and head), which a head's own q, k, v cannot give: from the whole q, k, v (B, H, N, D)
        the rows `rows` of the sampled heads `heads` (a list of (b, h)), as (len(heads), R, D).
    refuse(case, options) -> list of extra reasons beyond the declared device/dtype/causal/mode support.
    check_options(options) -> list of reasons the options' values are invalid whatever the case; a bad
        value is the user's slip, refused before the sweep (exit 2), not an `unsupported` row per case.
    flops(case, options) -> int FLOPs of one call in `case.mode`; None: counted with FlopCounterMode.
    min_bytes(case, options) -> int bytes the call must at least read and write; None: q, k, v, out
        (and their gradients in fwd_bwd).
    meta_exact: the impl runs on the `meta` device with the same tensors it would allocate for real
        (false for fused kernels, whose meta path is the unfused math).
    memory_model(case, options) -> int analytic peak bytes above the inputs, for impls that are not
        meta_exact; accounting marks such rows as modelled and unverified until a GPU checks them.
    """

    name: str
    family: str
    fn: Callable
    description: str = ""
    devices: tuple[str, ...] = ALL_DEVICES
    dtypes: tuple[str, ...] = DTYPES
    causal: tuple[bool, ...] = (False, True)
    modes: tuple[str, ...] = MODES
    options: dict[str, Any] = field(default_factory=dict)
    reference: Callable | None = None
    row_reference: Callable | None = None
    coupled_row_reference: Callable | None = None
    refuse: Callable[[Case, dict], list[str]] | None = None
    check_options: Callable[[dict], list[str]] | None = None
    flops: Callable[[Case, dict], int] | None = None
    min_bytes: Callable[[Case, dict], int] | None = None
    meta_exact: bool = True
    memory_model: Callable[[Case, dict], int] | None = None  # analytic peak bytes where meta cannot run the real kernel
    exact: bool = True  # computes softmax attention exactly (up to rounding); approximations say False
    # fidelity_options: parts of the operator that are not an approximation of softmax (Nyströmformer's
    # conv skip) are switched off when measuring how close it comes to exact softmax attention.
    check_tolerance: dict[str, float] = field(default_factory=dict)  # dtype -> relative error bound
    # max_pools: the impl max-pools queries or keys (Combiner), so a gradient at tied maxima is not unique; the check at
    # the measured length compares its gradients in float32 only (16-bit inputs tie often).
    max_pools: bool = False
    fidelity_options: dict[str, Any] = field(default_factory=dict)  # options for the fidelity-to-softmax figure

    def resolve_options(self, given: dict | tuple) -> dict:
        """Defaults overlaid with the user's options, each coerced to its default's type."""
        given = dict(given)
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(f"{k}={'auto' if v is None else repr(v)}" for k, v in self.options.items()) or "none"  # as `list` shows them
            raise UsageError(f"unknown option {unknown[0]!r} for impl {self.name!r}; its options: {known}")
        resolved = dict(self.options)
        for key, raw in given.items():
            resolved[key] = coerce_option(self.name, key, raw, self.options[key])
        problems = self.check_options(resolved) if self.check_options is not None else []
        if problems:
            raise UsageError(f"bad option for impl {self.name!r}: {problems[0]}")
        return resolved

    def not_supported(self, case: Case) -> list[str]:
        """Every reason this impl refuses `case`; empty when it runs it."""
        reasons = self.declared_unsupported(case)
        if self.refuse is not None and not reasons:
            refused = self.refuse(case, self.resolve_options(case.options))
            reasons.extend([refused] if isinstance(refused, str) else refused or [])  # "too long" read "t; o; o;  ; l; ..."
        return reasons

    def declared_unsupported(self, case: Case) -> list[str]:
        """The reasons its declared devices, dtypes, causality and modes give (data: no code of the impl's runs)."""
        reasons = []
        device_kind = case.device.split(":")[0]
        if device_kind not in self.devices and device_kind != "meta":  # meta: accounting, any impl
            reasons.append(f"{self.name} runs on {'/'.join(self.devices)}, not {device_kind}")
        if case.dtype not in self.dtypes:
            reasons.append(f"{self.name} supports {'/'.join(self.dtypes)}, not {case.dtype}")
        if case.causal not in self.causal:
            reasons.append(f"{self.name} has no {'causal' if case.causal else 'bidirectional'} form")
        if case.mode not in self.modes:
            reasons.append(f"{self.name} does not support mode {case.mode}")
        return reasons

    def bind(self, case: Case) -> Callable:
        """fn(q, k, v) with the case's causality and options fixed."""
        options = self.resolve_options(case.options)
        fn = self.fn

        def call(q, k, v):
            return fn(q, k, v, causal=case.causal, **options)

        return call

    def bind_reference(self, case: Case) -> Callable:
        options = self.resolve_options(case.options) if self.reference is not None else {}
        if self.reference is None:
            from attnprof.impls.softmax import softmax_attention

            return lambda q, k, v: softmax_attention(q, k, v, causal=case.causal)
        reference = self.reference
        return lambda q, k, v: reference(q, k, v, causal=case.causal, **options)

    def bind_row_reference(self, case: Case) -> Callable:
        """row_reference(q, k, v, rows) with the case's causality and options fixed."""
        options, row_reference = self.resolve_options(case.options), self.row_reference
        return lambda q, k, v, rows: row_reference(q, k, v, rows, causal=case.causal, **options)

    def bind_coupled_row_reference(self, case: Case) -> Callable:
        """coupled_row_reference(q, k, v, heads, rows) with the case's causality and options fixed."""
        options, rows_of_heads = self.resolve_options(case.options), self.coupled_row_reference
        return lambda q, k, v, heads, rows: rows_of_heads(q, k, v, heads, rows, causal=case.causal, **options)

    @property
    def has_row_reference(self) -> bool:
        """Whether sampled rows of its reference come cheap at any length (a row reference of either kind)."""
        return self.row_reference is not None or self.coupled_row_reference is not None

    def supports_summary(self) -> str:
        causal = {(False,): "bidir", (True,): "causal", (False, True): "bidir+causal"}[tuple(sorted(self.causal))]
        return f"{'/'.join(self.devices)}; {'/'.join(self.dtypes)}; {causal}; {'/'.join(self.modes)}"


def coerce_option(impl: str, key: str, raw, default):
    """Turn a CLI/TOML string into the type of the option's default (int, float, bool, str)."""
    if not isinstance(raw, str) and (default is None or isinstance(raw, type(default))):
        return raw
    text = str(raw).strip()
    if default is None:  # untyped option (e.g. block_size=None means "choose for me")
        return _guess_type(text)
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError
            return lowered in ("true", "yes", "1")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        # `name:a=1:b=2` reads as a = "1:b=2": say how two options are written
        hint = "; separate an impl's options with ',' (name:a=1,b=2)" if ":" in text and "=" in text else ""
        raise UsageError(f"bad value {text!r} for option {key!r} of impl {impl!r}: expected {type(default).__name__}{hint}") from None
    return text


def option_text(value) -> str:
    """An option's value as labels and stored options write it, one spelling per value: `two_pass=1`, `=true` and
    `=True` were three lines (measured three times, compared and gated apart), as were `chunk=128` and `=0128`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


INTEGER = re.compile(r"[+-]?[0-9]+")


def typed_options(options: dict | None) -> dict | None:
    """Stored options (option_text's spellings) with their values typed as the sweep ran them: `true`/`false` as bools,
    whole numbers as ints, repr(float) as floats, any other text as text; what export and the DataFrame API give.
    Kept as text, `num_landmarks` read "32", so a script filtering an export on `options["num_landmarks"] == 32`
    matched nothing. Read from the text alone, as `show` and `export` import no impl (no torch): every built-in text
    option (backend, pinv_init) takes words, so this is each option's declared type; a plugin's text option written
    as a number comes back a number."""
    return None if options is None else {key: _stored_value(value) for key, value in options.items()}


def _stored_value(value):
    if not isinstance(value, str):
        return value
    if value in ("true", "false"):
        return value == "true"
    if INTEGER.fullmatch(value):
        return int(value)
    try:
        return float(value) if repr(float(value)) == value else value  # option_text writes floats with repr
    except ValueError:
        return value


def _guess_type(text: str):
    if text.lower() in ("none", "auto", ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def io_bytes(case: Case) -> int:
    """Bytes any attention must move at least: read q, k, v and write out (fwd); in fwd_bwd also
    read q, k, v, out and grad_out again and write dq, dk, dv."""
    tensor = case.batch * case.heads * case.seq_len * case.head_dim * DTYPE_BYTES[case.dtype]
    return tensor * (4 if case.mode == "fwd" else 12)


def dense_attention_flops(case: Case, skip_masked: bool, recompute: bool = True, causal_share: float = 0.5) -> int:
    """4 B H N^2 D for q k^T and p v. The backward of a fused kernel recomputes q k^T: five matmuls against the
    forward's two, 2.5x; one that kept the N x N weights (the math path) does four, 2x, as FlopCounterMode counts.
    Kernels that skip fully masked blocks compute `causal_share` of the scores when causal: about half on a GPU,
    whose blocks are small against N; more where whole blocks straddle the diagonal (sdpa.cpu_flash_causal_share)."""
    fwd = 4 * case.batch * case.heads * case.seq_len**2 * case.head_dim
    if case.causal and skip_masked:
        fwd = round(fwd * causal_share)
    return fwd if case.mode == "fwd" else fwd * (7 if recompute else 6) // 2
