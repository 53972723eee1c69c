"""What to measure: the length grammar, impl specs with options, one Case, a whole Sweep.

Everything here is plain data (frozen, hashable) and pure parsing; no torch import.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, fields, replace

from attnprof.errors import UsageError

DTYPES = ("float32", "float16", "bfloat16")
MODES = ("fwd", "fwd_bwd")
_MULTIPLIERS = {"": 1, "k": 1024, "m": 1024 * 1024}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")
MAX_SIZE = 2**62  # SQLite stores 64-bit integers; a larger size crashed the sweep at its first row
MAX_LENGTHS = 10_000  # a grammar slip like 1..1M:+1 should fail loudly, not enumerate a million cases


def parse_size(text: str, what: str = "size") -> int:
    """`4k` -> 4096, `1M` -> 1048576, `3000` -> 3000. Zero and negatives are refused."""
    match = _SIZE.match(str(text))
    if not match:
        examples = "512, 4k or 1M" if "length" in what else "1, 16 or 64"
        raise UsageError(f"bad {what} {text!r}: expected a positive integer such as {examples}")
    value = int(match.group(1)) * _MULTIPLIERS[match.group(2).lower()]
    if value <= 0:
        raise UsageError(f"bad {what} {text!r}: must be positive")
    if value > MAX_SIZE:
        raise UsageError(f"bad {what} {text!r}: more than 2^62")
    return value


def parse_lengths(spec: str | list) -> tuple[int, ...]:
    """Length grammar: `1k..64k` (powers of two), `1k..8k:x4`, `1k..4k:+1k`, `512,1k,3000`.

    Items may be mixed: `256,1k..4k`. Result is sorted and de-duplicated. A TOML list holds items.
    """
    # any sequence of lengths (a range, a numpy array): its items, not its repr ("bad length 'range(256'", an API audit)
    text = str(spec).strip() if isinstance(spec, (str, int)) or not hasattr(spec, "__iter__") else ",".join(str(item) for item in spec)
    if not text:
        raise UsageError("bad lengths '': give e.g. 1k..64k or 512,1k,3000")
    lengths: set[int] = set()
    for item in text.split(","):
        try:
            lengths.update(_parse_length_item(item.strip(), text))
        except UsageError as error:
            if repr(text) in str(error):
                raise
            raise UsageError(f"bad lengths {text!r}: {error}") from None
    if len(lengths) > MAX_LENGTHS:
        raise UsageError(f"bad lengths {text!r}: {len(lengths)} lengths is more than {MAX_LENGTHS}")
    return tuple(sorted(lengths))


def parse_length(text: str) -> int:
    """One sequence length in the lengths grammar (8k, 65536): a benchmark's --length."""
    lengths = parse_lengths(text)
    if len(lengths) != 1:
        raise UsageError(f"bad length {text!r}: give one length, not {len(lengths)}")
    return lengths[0]


def _parse_length_item(item: str, whole: str) -> list[int]:
    if ".." not in item:
        return [parse_size(item, "length")]
    range_part, colon, step = item.partition(":")
    if colon and not step.strip():  # `1k..4k:` was read as doubling, a step meant and left out (a robustness audit)
        raise UsageError(f"bad lengths {whole!r}: a step after ':' such as x4 or +1k, or no ':'")
    start_text, _, stop_text = range_part.partition("..")
    if not start_text.strip() or not stop_text.strip():
        raise UsageError(f"bad lengths {whole!r}: a range needs both ends, e.g. 1k..64k")
    start, stop = parse_size(start_text, "length"), parse_size(stop_text, "length")
    if start > stop:
        raise UsageError(f"bad lengths {whole!r}: range {item!r} is reversed ({start} > {stop})")
    return _expand_range(start, stop, step.strip() if colon else "x2", whole)


def _expand_range(start: int, stop: int, step: str, whole: str) -> list[int]:
    if step[0] in "x*":
        factor = _factor(step, whole)
        values, n = [], start
        while n <= stop:
            values.append(n)
            n *= factor
        return values
    if step[0] == "+":
        increment = parse_size(step[1:], "length step")
        if (stop - start) // increment + 1 > MAX_LENGTHS:
            raise UsageError(f"bad lengths {whole!r}: step {step!r} gives more than {MAX_LENGTHS} lengths")
        return list(range(start, stop + 1, increment))
    raise UsageError(f"bad lengths {whole!r}: step {step!r} must be xN (factor) or +N (increment)")


def _factor(step: str, whole: str) -> int:
    """The N of `xN`: one sentence for every bad factor (x0 read "bad length step '0': must be positive", x1 "factor
    'x1' must be at least 2")."""
    try:
        factor = parse_size(step[1:], "length step")
    except UsageError:
        factor = 0
    if factor < 2:
        raise UsageError(f"bad lengths {whole!r}: factor {step!r} must be a whole number of at least 2, as in x2 or x4")
    return factor


def parse_sizes(spec: str | int | list, what: str) -> tuple[int, ...]:
    """`1,2,4` or `1k,4k` or a TOML list -> sorted unique positive ints."""
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    if not items or all(str(i).strip() == "" for i in items):
        raise UsageError(f"bad {what} {spec!r}: give at least one value")
    return tuple(sorted({parse_size(str(item), what) for item in items}))


def _parse_items(spec: str | list, what: str, canonical) -> tuple:
    """Comma-separated (or TOML list) items -> unique canonical values in order; `canonical` raises on a bad one."""
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    values = []
    for raw in items:
        value = canonical(str(raw).strip())
        if value not in values:
            values.append(value)
    if not values:
        raise UsageError(f"bad {what} {spec!r}: give at least one value")
    return tuple(values)


def parse_choices(spec: str | list, allowed: tuple[str, ...], what: str, aliases: dict | None = None, shown=None) -> tuple:
    """Each item one of `allowed` (or an alias of one); `shown`: how the choices are spelled to the user."""

    def canonical(raw: str) -> str:
        name = (aliases or {}).get(raw.lower(), raw.lower())
        if name not in allowed:
            raise UsageError(f"unknown {what} {raw!r}; choose from {', '.join(shown or allowed)}")
        return name

    return _parse_items(spec, what, canonical)


def parse_modes(spec: str | list) -> tuple[str, ...]:
    # spelled fwd-bwd on the command line and in scenarios, as --help and the README write it
    return parse_choices(spec, MODES, "mode", aliases={"fwd-bwd": "fwd_bwd", "fwdbwd": "fwd_bwd"}, shown=("fwd", "fwd-bwd"))


def parse_dtypes(spec: str | list) -> tuple[str, ...]:
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
    return parse_choices(spec, DTYPES, "dtype", aliases=aliases)


def parse_causal(spec: str | bool | list) -> tuple[bool, ...]:
    if isinstance(spec, bool):
        return (spec,)
    if isinstance(spec, (list, tuple)):
        return tuple(sorted({b for item in spec for b in parse_causal(item)}))
    word = str(spec).strip().lower()
    table = {"no": (False,), "false": (False,), "yes": (True,), "true": (True,), "both": (False, True)}
    if word not in table:
        raise UsageError(f"bad causal {spec!r}: choose no, yes or both")
    return table[word]


RETRYABLE = ("crashed", "timeout", "oom", "error")  # statuses `--retry` measures again (skipped ones follow them)


def parse_retry(spec: str | list | tuple) -> tuple[str, ...]:
    """`crashed,timeout` -> the statuses a resume measures again: a transient kill was a run's last word on its cells."""
    words = [str(w).strip().lower() for w in (spec if isinstance(spec, (list, tuple)) else str(spec).split(","))]
    bad = next((w for w in words if w not in RETRYABLE), None)
    if bad is not None or not words:
        raise UsageError(
            f"bad retry {spec!r}: choose among {', '.join(RETRYABLE)} (comma separated; the lengths skipped after them follow)"
        )
    return tuple(dict.fromkeys(words))


def parse_devices(spec: str | list) -> tuple[str, ...]:
    def canonical(raw: str) -> str:
        found = re.fullmatch(r"(cpu|meta|cuda)(?::(\d+))?", raw.lower())
        if not found or (found[2] is not None and found[1] != "cuda"):
            raise UsageError(f"unknown device {raw!r}; choose cpu, cuda, cuda:N (or meta, for --accounting)")
        # `cuda:01` is `cuda:1`. (`cuda` and `cuda:0` stay two spellings: runs and baselines store them as given.)
        return found[1] if found[2] is None else f"cuda:{int(found[2])}"

    devices = _parse_items(spec, "device", canonical)
    if "cuda" in devices and "cuda:0" in devices:  # one GPU (a fresh process's current one): two workers on one card
        raise UsageError(f"bad device {spec!r}: cuda and cuda:0 name one GPU; give one of them")
    return devices


@dataclass(frozen=True, order=True)
class ImplSpec:
    """An impl name plus the options it runs with, as given by the user (strings coerced later)."""

    name: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        """The name shown in every table and plot: `nystromformer[num_landmarks=32]`."""
        if not self.options:
            return self.name
        return f"{self.name}[{','.join(f'{k}={v}' for k, v in self.options)}]"


LABEL = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.+-]*)\[([^\[\]]*)\](?=,|$)")  # name[k=v,...], an ImplSpec's label, whole


def parse_impls(spec: str | list) -> tuple[ImplSpec, ...]:
    """`softmax,nystromformer:num_landmarks=32,conv_kernel=33,combiner-fixed` -> ImplSpecs.

    A comma-separated token holding `=` but no `:` continues the previous impl's options.
    Option values stay strings here; the registry coerces them to each option's type.
    `all` stays as the single name `all` and is expanded against the registry. A line's label as tables show it,
    `nystromformer[num_landmarks=32]`, is taken too (it read "option 'nystromformer[num_landmarks' before any impl").
    """
    listed = spec if isinstance(spec, (list, tuple)) else [spec]  # a TOML array holds labels too
    items = [item for entry in listed for item in LABEL.sub(r"\1:\2", str(entry)).split(",")]
    specs: list[tuple[str, list]] = []
    for raw in (str(i).strip() for i in items):
        if not raw:
            raise UsageError(f"bad impl list {spec!r}: empty name")
        if "=" in raw and ":" not in raw:
            if not specs:
                raise UsageError(f"bad impl list {spec!r}: option {raw!r} before any impl name")
            specs[-1][1].append(_parse_option(raw, spec))
            continue
        name, _, opts = raw.partition(":")
        specs.append((name.strip(), [_parse_option(o, spec) for o in opts.split(",") if o.strip()]))
    for name, options in specs:
        if name == "all" and options:  # each impl has its own options: they were dropped silently
            raise UsageError(f"bad impl list {spec!r}: 'all' takes no options; give them to one impl (name:key=value)")
        keys = [key for key, _ in options]
        repeated = next((key for key in keys if keys.count(key) > 1), None)  # the registry would keep one silently
        if repeated:
            raise UsageError(f"bad impl list {spec!r}: option {repeated!r} of {name!r} given {keys.count(repeated)} times")
    parsed = [ImplSpec(n, tuple(sorted(o))) for n, o in specs]
    twice = next((item for item in parsed if parsed.count(item) > 1), None)  # one line would hide the slip
    if twice:
        raise UsageError(f"bad impl list {spec!r}: {twice.label!r} given {parsed.count(twice)} times")
    return tuple(parsed)


def _parse_option(text: str, whole) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise UsageError(f"bad impl option {text.strip()!r} in {whole!r}: expected key=value")
    return key.strip(), value.strip()


@dataclass(frozen=True, order=True)
class Case:
    """One cell of a sweep. Its `key` identifies the cell across runs (resume, compare)."""

    impl: str
    seq_len: int
    batch: int = 1
    heads: int = 16
    head_dim: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    causal: bool = False
    mode: str = "fwd"
    options: tuple[tuple[str, object], ...] = ()
    seed: int = 0

    @property
    def impl_spec(self) -> ImplSpec:
        return ImplSpec(self.impl, self.options)

    @property
    def label(self) -> str:
        return self.impl_spec.label

    @property
    def config_key(self) -> str:
        """Everything but the length: the line a case belongs to in a scaling plot."""
        causal = "causal" if self.causal else "bidir"
        return f"{self.label}|B{self.batch}|H{self.heads}|D{self.head_dim}|{self.dtype}|{self.device}|{causal}|{self.mode}"

    @property
    def key(self) -> str:
        return f"{self.config_key}|N{self.seq_len}|seed{self.seed}"

    def describe(self) -> str:
        causal = "causal" if self.causal else "bidir"
        return (
            f"{self.label} N={self.seq_len} B={self.batch} H={self.heads} D={self.head_dim} {self.dtype} {self.device} {causal} {self.mode}"
        )

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["options"] = dict(self.options)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Case:
        data = dict(data)
        data["options"] = tuple(sorted(dict(data.get("options") or {}).items()))
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def resized(self, **changes) -> Case:
        return replace(self, **changes)


@dataclass(frozen=True)
class Sweep:
    """A grid of cases plus how to measure them. TOML and CLI flags only fill this in."""

    impls: tuple[ImplSpec, ...] = (ImplSpec("all"),)
    lengths: tuple[int, ...] = ()  # empty: the device default (1k..64k on GPU, 256..4k on CPU)
    batch: tuple[int, ...] = (1,)
    heads: tuple[int, ...] = (16,)
    head_dim: tuple[int, ...] = (64,)
    dtype: tuple[str, ...] = ()  # empty: bfloat16 on GPU, float32 on CPU
    device: tuple[str, ...] = ()  # empty: cuda if available, else cpu
    causal: tuple[bool, ...] = (False, True)
    mode: tuple[str, ...] = ("fwd",)
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    timeout: float = 300.0
    seed: int = 0
    name: str = ""
    accounting: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def cases(self) -> list[Case]:
        """The full grid, ordered so that each configuration's lengths run smallest first (a length is skipped after
        an out-of-memory or timeout at a smaller one), with the impls of one shape and length next to each other: a
        ratio between two impls compares cells timed seconds apart, not minutes (all of one impl's lengths ran
        before the other's, and a burst of load on a shared machine fell on one side of a gate's ratio alone)."""
        grid = itertools.product(
            self.impls, self.mode, self.causal, self.dtype, self.device, self.batch, self.heads, self.head_dim, self.lengths
        )
        cases = [
            Case(
                impl=s.name,
                options=s.options,
                mode=m,
                causal=c,
                dtype=dt,
                device=dev,
                batch=b,
                heads=h,
                head_dim=d,
                seq_len=n,
                seed=self.seed,
            )
            for s, m, c, dt, dev, b, h, d, n in grid
        ]
        shape = lambda case: (case.device, case.mode, case.causal, case.dtype, case.batch, case.heads, case.head_dim)  # noqa: E731
        return sorted(cases, key=lambda case: (*shape(case), case.seq_len, case.config_key))

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["impls"] = [s.label for s in self.impls]
        data["impl_specs"] = [[s.name, dict(s.options)] for s in self.impls]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Sweep:
        specs = tuple(ImplSpec(n, tuple(sorted(o.items()))) for n, o in data["impl_specs"])
        skip = {"impls", "impl_specs", "extra"}
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name not in skip}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        return cls(impls=specs, **kwargs)
