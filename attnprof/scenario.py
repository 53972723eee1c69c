"""Scenario files (TOML) and CLI flags -> a Sweep: the only file-format code.

A scenario's `[sweep]` table uses the sweep options' names with underscores (`head_dim`,
`warmup_ms`); values are strings in the CLI grammar or TOML lists/numbers. CLI flags override it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from attnprof.errors import UsageError
from attnprof.spec import Sweep, parse_causal, parse_devices, parse_dtypes, parse_impls, parse_lengths, parse_modes, parse_sizes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


MAX_SEED = 2**63 - 1  # SQLite's largest INTEGER: every measurement stores its seed


def _number(kind, key: str):
    def parse(value):
        try:
            if isinstance(value, bool) or (kind is int and isinstance(value, float)):  # TOML true is an int; int(1.5) is 1
                raise TypeError
            number = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"bad {key} {value!r}: expected {'a whole number' if kind is int else 'a number'}") from None
        if not math.isfinite(number):  # nan compares false with everything: it passed the checks below
            raise UsageError(f"bad {key} {value!r}: expected a finite number")
        zero_allowed = key in ("seed", "warmup_ms")
        if number < 0 or (number == 0 and not zero_allowed):
            raise UsageError(f"bad {key} {value!r}: must be {'0 or more' if zero_allowed else 'positive'}")
        if key == "seed" and number > MAX_SEED:
            raise UsageError(f"bad seed {value!r}: must be an integer from 0 to {MAX_SEED} (2^63 - 1)")
        return number

    return parse


MAX_TEXT = 200  # characters of a run's name


def _text(key: str):
    def parse(value):
        if isinstance(value, str) and value.strip():
            try:
                value.encode("utf-8")  # bytes the terminal's locale could not decode: the database keeps UTF-8 text
            except UnicodeEncodeError:
                raise UsageError(f"bad {key} {value!r}: not valid UTF-8") from None
            if not value.isprintable():  # a newline or tab broke the `runs` table's columns
                raise UsageError(f"bad {key} {value!r}: control characters (newline, tab) cannot be shown in a table")
            if len(value) > MAX_TEXT:  # a name is a label in tables and the run picker, not a document
                raise UsageError(f"bad {key} {value[:20]!r}...: {len(value)} characters, at most {MAX_TEXT}")
            return value
        raise UsageError(f"bad {key} {value!r}: expected a non-empty string")

    return parse


def _flag(key: str):
    def parse(value):
        if isinstance(value, bool):
            return value
        raise UsageError(f"bad {key} {value!r}: expected true or false")

    return parse


# option name -> (Sweep field, parser); the single table both TOML and the CLI go through
SWEEP_KEYS = {
    "impl": ("impls", parse_impls),
    "lengths": ("lengths", parse_lengths),
    "batch": ("batch", lambda v: parse_sizes(v, "batch")),
    "heads": ("heads", lambda v: parse_sizes(v, "heads")),
    "head_dim": ("head_dim", lambda v: parse_sizes(v, "head_dim")),
    "dtype": ("dtype", parse_dtypes),
    "device": ("device", parse_devices),
    "causal": ("causal", parse_causal),
    "mode": ("mode", parse_modes),
    "warmup_ms": ("warmup_ms", _number(float, "warmup_ms")),
    "rep_ms": ("rep_ms", _number(float, "rep_ms")),
    "timeout": ("timeout", _number(float, "timeout")),
    "seed": ("seed", _number(int, "seed")),
    "name": ("name", _text("name")),
    "accounting": ("accounting", _flag("accounting")),
}
FILE_ONLY_KEYS = ("db",)  # allowed in a scenario's [sweep] table, used by the CLI, not part of the Sweep


def sweep_from_options(options: dict) -> Sweep:
    """Build a Sweep from raw option values keyed by option name (None values are ignored)."""
    fields = {}
    for key, value in options.items():
        if value is None or key in FILE_ONLY_KEYS:
            continue
        if key not in SWEEP_KEYS:
            raise UsageError(f"unknown sweep key {key!r}; known keys: {', '.join([*SWEEP_KEYS, *FILE_ONLY_KEYS])}")
        field, parse = SWEEP_KEYS[key]
        fields[field] = parse(value)
    return Sweep(**fields)


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"scenario file {str(path)!r} not found") from None
    except OSError as error:
        raise UsageError(f"cannot read scenario file {str(path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8 by definition
        raise UsageError(f"scenario file {str(path)!r} is not UTF-8 text (byte {error.start}): TOML must be UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"scenario file {str(path)!r} is not valid TOML: {error}") from None


def scenario_options(path: str | Path, allowed_tables: tuple[str, ...] = ("sweep", "rule")) -> dict:
    """The one `[sweep]` table of a scenario file, with every key checked."""
    tables = scenario_sweeps(path, allowed_tables)
    if len(tables) > 1:
        raise UsageError(f"{str(path)!r} has {len(tables)} [[sweep]] tables; here a scenario takes one [sweep]")
    return tables[0]


def scenario_sweeps(path: str | Path, allowed_tables: tuple[str, ...] = ("sweep", "rule")) -> list[dict]:
    """Every `[sweep]` table of a scenario file (one, or several `[[sweep]]`), with every key checked. A gate's
    rules file is a scenario too (its [[rule]] tables are the gate's): `attnprof sweep rules.toml` measures what a
    first baseline needs, every sweep of it (the shipped rules files have two; it refused them)."""
    tables = sweep_tables(path, allowed_tables)
    if not tables:  # an empty file is more likely a mistake than a request for the default sweep
        raise UsageError(f"scenario file {str(path)!r} has no [sweep] table")
    return tables


def sweep_tables(path: str | Path, allowed_tables: tuple[str, ...] = ("sweep",)) -> list[dict]:
    """Every sweep table of a file: one `[sweep]`, or several `[[sweep]]` (a gate may measure several)."""
    data = read_toml(path)
    for table, value in data.items():
        if table not in allowed_tables and not isinstance(value, (dict, list)):  # `impl = "softmax"` above any table
            raise UsageError(f"key {table!r} in {str(path)!r} is outside any table: sweep options go under [sweep]")
        if table not in allowed_tables:
            raise UsageError(f"unknown table {table!r} in {str(path)!r}; expected {', '.join(allowed_tables)}")
    sweeps = data.get("sweep", [])
    sweeps = [sweeps] if isinstance(sweeps, dict) else sweeps
    if not isinstance(sweeps, list):  # `sweep = 3`: a value where a table belongs
        raise UsageError(f"'sweep' in {str(path)!r} must be a table ([sweep]), not {sweeps!r}")
    for options in sweeps:
        if not isinstance(options, dict):
            raise UsageError(f"'sweep' in {str(path)!r} must be a table")
        for key in options:
            if key not in SWEEP_KEYS and key not in FILE_ONLY_KEYS:
                raise UsageError(
                    f"unknown key {key!r} in [sweep] of {str(path)!r}; known keys: {', '.join([*SWEEP_KEYS, *FILE_ONLY_KEYS])}"
                )
    return sweeps
