"""Gate rules from TOML: `[[rule]]` tables -> typed GateRule records, every key validated.

Five forms, told apart by their bound keys:
- exponent:   max_exponent and/or min_exponent (judged on the 95% interval's far end)
- ratio:      at_length + max_ratio and/or min_ratio + to (another impl in the same run)
- value:      at_length + max_value and/or min_value (ms for time, or text such as "5ms" or "1.5s"; bytes,
              or text such as "1.5GiB", for peak_bytes; a count for flops)
- regression: max_regression (relative, against a baseline file)
- slope:      max_exponent_increase (the fitted exponent against the baseline file's, over the lengths both have)
- frontier:   min_frontier (+ optional budget; default the device's memory)
`at_length` takes the length grammar ("64k", "8k..64k"): the rule is judged at each length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from attnprof.errors import UsageError
from attnprof.spec import parse_causal, parse_devices, parse_dtypes, parse_impls, parse_lengths, parse_modes, parse_size

METRICS = {"time": "median_ms", "peak_bytes": "peak_bytes", "flops": "flops"}
EXPONENT_LIMIT = 4  # the largest exponent bound taken: a percentage written as an exponent (110) is a slip
FILTER_KEYS = ("causal", "mode", "dtype", "device", "batch", "heads", "head_dim")
BOUND_KEYS = (
    "max_exponent",
    "min_exponent",
    "at_length",
    "max_ratio",
    "min_ratio",
    "to",
    "max_value",
    "min_value",
    "max_regression",
    "max_exponent_increase",
    "min_frontier",
    "budget",
)
UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


@dataclass(frozen=True)
class GateRule:
    index: int  # 1-based position in the file, for messages
    impl: str  # an impl label (name, or name[options]) or "all"
    metric: str  # time, peak_bytes or flops
    filters: dict = field(default_factory=dict)  # filter key -> tuple of allowed values
    max_exponent: float | None = None
    min_exponent: float | None = None
    at_length: tuple[int, ...] = ()
    max_ratio: float | None = None
    min_ratio: float | None = None
    to: str | None = None
    max_value: float | None = None
    min_value: float | None = None
    max_regression: float | None = None
    max_exponent_increase: float | None = None
    min_frontier: int | None = None
    budget: int | None = None
    # The impl (and `to`) named with options, even at their defaults (`mylin[variant=good]`): that line only. A bare
    # name is every line of the impl; the label a sweep gives the default options is the bare name, so without this a
    # rule naming the default line judged every option set beside it too (a gate audit).
    impl_exact: bool = False
    to_exact: bool = False

    @property
    def kind(self) -> str:
        if self.max_regression is not None:
            return "regression"
        if self.max_exponent_increase is not None:
            return "slope"
        if self.min_frontier is not None:
            return "frontier"
        if self.to is not None:
            return "ratio"
        if self.max_value is not None or self.min_value is not None:
            return "value"
        return "exponent"

    @property
    def needs_baseline(self) -> bool:
        return self.kind in ("regression", "slope")

    @property
    def title(self) -> str:
        return f"rule {self.index} ({exact_name(self.impl, self.impl_exact)} {self.metric} {self.kind})"


def exact_name(label: str, exact: bool) -> str:
    """A rule's impl as said to a reader: a name with options at their defaults labels as the bare name, which reads
    as every line of the impl; "[default options]" says it is the one line."""
    return f"{label}[default options]" if exact and "[" not in label else label


def parse_rules(tables: list, source: str) -> list[GateRule]:
    if isinstance(tables, dict):  # one [rule] table: TOML reads it as a table, not a list of them
        raise UsageError(f"{source} has a [rule] table: write each rule as [[rule]] (double brackets)")
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{source} has no [[rule]] tables")
    for index, table in enumerate(tables, 1):
        if not isinstance(table, dict):  # `rule = [1]`: values where [[rule]] tables belong
            raise UsageError(f"rule {index} of {source} must be a [[rule]] table, not {table!r}")
    return [_parse_rule(i + 1, table, source) for i, table in enumerate(tables)]


def _parse_rule(index: int, table: dict, source: str) -> GateRule:
    where = f"rule {index} of {source}"
    unknown = sorted(set(table) - {"impl", "metric", *FILTER_KEYS, *BOUND_KEYS})
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in {where}; known: impl, metric, {', '.join(FILTER_KEYS + BOUND_KEYS)}")
    impl, impl_exact = _impl_label(_required_text(table, "impl", where), where)
    metric = str(table.get("metric", "peak_bytes" if "min_frontier" in table else "")).strip()
    if metric not in METRICS:
        raise UsageError(f"bad metric {metric!r} in {where}; choose time, peak_bytes or flops")
    bounds = _bounds(table, where, metric)
    rule = GateRule(index=index, impl=impl, metric=metric, filters=_filters(table, where), impl_exact=impl_exact, **bounds)
    _check_form(rule, where)
    return rule


def _required_text(table: dict, key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f'{where} needs {key} = "..."')
    return value.strip()


def _impl_label(text: str, where: str) -> tuple[str, bool]:
    """A rule names an impl as tables label it (`nystromformer[num_landmarks=32]`) or as --impl takes it
    (`nystromformer:num_landmarks=32`); both become the label the measurements carry: an option at its default
    dropped and each value spelled one way, as a sweep labels it (`chunked:chunk=256`, the default, was "not
    measured" by a run of `chunked`). An impl not registered here (a stored run's plugin) keeps the label as written.
    Returns (label, exact): exact when options were named, even at their defaults (GateRule.impl_exact)."""
    from attnprof.api import impl_labels

    if text == "all":
        return text, False
    specs = parse_impls(text)
    if len(specs) != 1:
        raise UsageError(f"bad impl {text!r} in {where}: one impl per rule")
    if not specs[0].options:  # a bare name is its own label: no registry, so `gate --run` imports no torch (1.3 s)
        return specs[0].label, False
    try:
        return impl_labels(text)[0], True
    except UsageError:
        return specs[0].label, True


def _filters(table: dict, where: str) -> dict:
    parsers = {"causal": parse_causal, "mode": parse_modes, "dtype": parse_dtypes, "device": parse_devices}
    filters = {}
    for key in FILTER_KEYS:
        if key in table:
            value = table[key]
            try:
                filters[key] = parsers[key](value) if key in parsers else tuple(parse_size(v, key) for v in _as_list(value))
            except UsageError as error:
                raise UsageError(f"{error} (key {key!r} in {where})") from None
    return filters


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else str(value).split(",")


def _bounds(table: dict, where: str, metric: str) -> dict:
    bounds = {}
    for key in ("max_exponent", "min_exponent", "max_ratio", "min_ratio", "max_exponent_increase"):
        if key in table:
            bounds[key] = _non_negative(key, table[key], where)
    for key in ("max_exponent", "min_exponent"):
        if bounds.get(key, 0) > EXPONENT_LIMIT:  # `max_exponent = 110` passed a quadratic kernel (a gate audit)
            raise UsageError(
                f"bad {key} {table[key]!r} in {where}: an exponent of N above {EXPONENT_LIMIT} bounds nothing an attention "
                "cost reaches (N^2 is quadratic); a relative change is max_regression"
            )
    if "max_regression" in table:
        bounds["max_regression"] = _relative(table["max_regression"], f"max_regression in {where}")
    if "at_length" in table:  # "64k", "8k..64k", or a TOML list [1024, "64k"]
        bounds["at_length"] = _keyed(parse_lengths, table["at_length"], "at_length", where)
    if "min_frontier" in table:
        frontier = table["min_frontier"]  # 1e6 is a TOML float: taken when it is a whole number
        whole = isinstance(frontier, float) and math.isfinite(frontier) and frontier.is_integer()
        text = str(int(frontier)) if whole else str(frontier)
        bounds["min_frontier"] = _keyed(lambda v: parse_size(v, "min_frontier"), text, "min_frontier", where)
    for key in ("max_value", "min_value"):
        if key in table:
            value = table[key]
            bounds[key] = _value_bound(value, metric, f"{key} in {where}") if isinstance(value, str) else _non_negative(key, value, where)
    if "budget" in table:
        bounds["budget"] = parse_bytes(table["budget"], f"budget in {where}")
    if "to" in table:
        bounds["to"], bounds["to_exact"] = _impl_label(_required_text(table, "to", where), where)
    return bounds


def _relative(value, what: str) -> float:
    """A relative bound: a fraction up to 1 (0.1 is 10%), or a percentage as text ("10%", "250%"). A bare number above
    1 is refused: `max_regression = 10`, meant as 10%, allowed +1000% and passed a 740% growth (a gate audit)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1].strip()
        fraction = _finite_number(number, value, what) / 100 if number and number[0] != "-" else math.nan
        if not 0 <= fraction < math.inf:
            raise UsageError(f'bad {what} {value!r}: expected a percentage such as "10%"')
        return fraction
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise UsageError(f'bad {what} {value!r}: expected a fraction such as 0.1 or a percentage such as "10%"')
    if value > 1:
        percent = f'"{value * 100:g}%"'
        raise UsageError(f"bad {what} {value!r}: a fraction, 0.1 for 10%; a change above 100% is written as a percentage ({percent})")
    return float(value)


def _keyed(parse, value, key: str, where: str):
    """parse(value), its error naming the rule and the key: "bad length '1kk'" did not say where it was."""
    try:
        return parse(value)
    except UsageError as error:
        raise UsageError(f"{error} (key {key!r} in {where})") from None


def _non_negative(key: str, value, where: str) -> float:
    # not NaN (a ratio rule with max_ratio = nan always passed) and not inf (a bound that can never fail)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise UsageError(f"bad {key} {value!r} in {where}: expected a finite non-negative number")
    return float(value)


def _check_form(rule: GateRule, where: str) -> None:
    ratio = rule.max_ratio is not None or rule.min_ratio is not None or rule.to is not None
    value = rule.max_value is not None or rule.min_value is not None
    exponent = rule.max_exponent is not None or rule.min_exponent is not None
    forms = [exponent, ratio, value, rule.max_regression is not None, rule.max_exponent_increase is not None, rule.min_frontier is not None]
    if sum(forms) != 1:
        raise UsageError(
            f"{where} must have exactly one form: max/min_exponent, a ratio (at_length, max/min_ratio, to), "
            "a value (at_length, max/min_value), max_regression, max_exponent_increase or min_frontier"
        )
    no_bound = rule.max_ratio is None and rule.min_ratio is None
    needed = (("at_length", not rule.at_length), ("to", rule.to is None), ("max_ratio or min_ratio", no_bound))
    lacking = [key for key, absent in needed if absent]
    if ratio and lacking:
        raise UsageError(f"{where}: a ratio rule needs at_length, to and max_ratio or min_ratio; it has no {' and no '.join(lacking)}")
    if value and not rule.at_length:
        raise UsageError(f"{where}: a value rule needs at_length")
    if rule.at_length and not (ratio or value):
        raise UsageError(f"{where}: at_length goes with a ratio or a value rule")
    for low, high in (("min_exponent", "max_exponent"), ("min_ratio", "max_ratio"), ("min_value", "max_value")):
        if getattr(rule, low) is not None and getattr(rule, high) is not None and getattr(rule, low) > getattr(rule, high):
            from attnprof.gate import metric_text  # it builds on this module

            shown = metric_text(rule.metric) if low == "min_value" else "{:g}".format  # "2.09715e+06" for "2MiB" (an audit)
            show = telling_apart(shown, getattr(rule, low), getattr(rule, high))  # "1.0 MiB > 1.0 MiB" for 1048600 (a review)
            raise UsageError(f"{where}: {low} {show(getattr(rule, low))} > {high} {show(getattr(rule, high))}, so it can never pass")
    if rule.budget is not None and rule.min_frontier is None:
        raise UsageError(f"{where}: budget only goes with min_frontier")
    if rule.min_frontier is not None and rule.metric != "peak_bytes":  # milliseconds against a budget of bytes passed
        raise UsageError(f"{where}: a frontier rule is for metric peak_bytes (the longest N within a memory budget), not {rule.metric}")
    if rule.to is not None and rule.to == rule.impl:  # `to` copied from `impl`: a ratio of 1 whatever the code does
        raise UsageError(f"{where}: to = {rule.to!r} is the rule's own impl, so the ratio is 1 whatever it measures; name another")


def telling_apart(show, value: float, other: float):
    """`show`, or the first format after it that writes `value` and `other` differently: "2.0 GiB > max 2.0 GiB" hid
    0.4% over (2,155,872,000 bytes), and "ratio to softmax 1 (+0.0%) > max 1" a ratio of 1.000195."""
    for text in (show, "{:,.0f}".format, *(f"{{:.{digits}g}}".format for digits in (6, 9, 17))):
        if text(value) != text(other):
            return text
    return repr


DURATION_MS = {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}


def _value_bound(value: str, metric: str, what: str) -> float:
    """A value bound written as text, in the unit of its metric: "5ms" or "1.5s" for time (in ms), "1.5GiB" for
    peak_bytes, "1e12" for flops."""
    import re

    if metric == "peak_bytes":
        return float(parse_bytes(value, what))
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zµ]*)\s*", value.lower())
    units = DURATION_MS if metric == "time" else {"": 1.0}
    if not match or match.group(2) not in units:
        example = "a duration such as 5ms or 1.5s" if metric == "time" else "a number such as 1e12"
        raise UsageError(f"bad {what} {value!r}: expected {example} for metric {metric!r}")
    return _finite_number(match.group(1), value, what) * units[match.group(2)]


def _finite_number(text: str, value, what: str) -> float:
    """The number `text` of the bound `value`: "1.2.3" raised ValueError (a traceback, exit 4 from the gate) and "1e400"
    was an infinite bound that always passed."""
    import math

    try:
        number = float(text)
    except ValueError:
        raise UsageError(f"bad {what} {value!r}: {text!r} is not a number") from None
    if not math.isfinite(number):
        raise UsageError(f"bad {what} {value!r}: must be a finite number")
    return number


def bytes_or_none(value, what: str):
    """A memory size given by a caller: None, a size text (parse_bytes), or a finite number of bytes above 0; else a
    UsageError naming `what` (a list or "80GiB" as a number were TypeErrors deep in the frontier)."""
    import math
    import numbers

    if value is None or isinstance(value, str):
        return None if value is None else parse_bytes(value, what)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise UsageError(f"bad {what} {value!r}: must be a finite number of bytes above 0")
    return value


def parse_bytes(value, what: str) -> int:
    """`80GiB`, `512 MiB`, `1e9`, 1000000 -> bytes."""
    import math
    import re

    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in UNITS:
        raise UsageError(f"bad {what} {value!r}: expected a size such as 80GiB or 512MiB")
    scaled = _finite_number(match.group(1), value, what) * UNITS[unit]
    if not math.isfinite(scaled):
        raise UsageError(f"bad {what} {value!r}: must be a finite number")
    size = int(scaled)
    if size <= 0:
        raise UsageError(f"bad {what} {value!r}: must be more than 0 bytes")
    return size
