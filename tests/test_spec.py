"""Length grammar (examples and properties), impl lists with options, case expansion."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnprof.errors import UsageError
from attnprof.spec import Case, ImplSpec, Sweep, parse_causal, parse_dtypes, parse_impls, parse_lengths, parse_modes, parse_size


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("1k..64k", (1024, 2048, 4096, 8192, 16384, 32768, 65536)),
        ("1k..8k:x4", (1024, 4096)),
        ("1k..4k:+1k", (1024, 2048, 3072, 4096)),
        ("512,1k,3000", (512, 1024, 3000)),
        ("3000", (3000,)),
        ("256,1k..4k", (256, 1024, 2048, 4096)),
        ("1M", (1 << 20,)),
        ("4k..4k", (4096,)),
        (" 1K .. 2K ", (1024, 2048)),
        ("1000..5000", (1000, 2000, 4000)),
    ],
)
def test_length_examples(spec, expected):
    assert parse_lengths(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "64k..1k",
        "..",
        "1q",
        "",
        "0",
        "-5",
        "1k..",
        "..4k",
        "1k..4k:x1",
        "1k..4k:y2",
        "1k..4k:+0",
        "1..1M:+1",
        "1k,,2k",
        "1.5k",
        "1k..4k:",
        "1k..4k: ",
    ],
)
def test_bad_lengths_name_the_value(spec):
    with pytest.raises(UsageError) as error:
        parse_lengths(spec)
    assert repr(spec.strip()) in str(error.value)


@given(st.integers(1, 1 << 20), st.integers(0, 12), st.integers(2, 8))
def test_factor_ranges_are_geometric_and_bounded(start, steps, factor):
    stop = start * factor**steps
    lengths = parse_lengths(f"{start}..{stop}:x{factor}")
    assert lengths[0] == start and lengths[-1] == stop and len(lengths) == steps + 1
    assert all(b == a * factor for a, b in zip(lengths, lengths[1:], strict=False))


@given(st.integers(1, 10_000), st.integers(1, 5_000), st.integers(0, 50))
def test_linear_ranges_step_evenly_and_stay_inside(start, step, count):
    stop = start + step * count
    lengths = parse_lengths(f"{start}..{stop}:+{step}")
    assert lengths == tuple(range(start, stop + 1, step))


@given(st.lists(st.integers(1, 1 << 22), min_size=1, max_size=20))
def test_lists_round_trip_sorted_unique(values):
    assert parse_lengths(",".join(map(str, values))) == tuple(sorted(set(values)))


@given(st.integers(1, 4096), st.sampled_from(["", "k", "K", "m", "M"]))
def test_suffixes(n, suffix):
    assert parse_size(f"{n}{suffix}") == n * {"": 1, "k": 1024, "m": 1 << 20}[suffix.lower()]


def test_impl_lists_with_options():
    specs = parse_impls("softmax,nystromformer:num_landmarks=32,conv_kernel=0,combiner-fixed:block_size=128")
    assert specs == (
        ImplSpec("softmax"),
        ImplSpec("nystromformer", (("conv_kernel", "0"), ("num_landmarks", "32"))),
        ImplSpec("combiner-fixed", (("block_size", "128"),)),
    )
    assert specs[1].label == "nystromformer[conv_kernel=0,num_landmarks=32]"
    # a line's label, as the tables show it, is taken too: it read "option 'nystromformer[num_landmarks' before any impl"
    assert parse_impls("softmax,nystromformer[num_landmarks=32,conv_kernel=0],combiner-fixed:block_size=128") == specs
    assert parse_impls(["softmax", "nystromformer[num_landmarks=32,conv_kernel=0]", "combiner-fixed:block_size=128"]) == specs
    with pytest.raises(UsageError, match="fault"):  # a label with more after it: it read kind='wrongx'
        parse_impls("fault[kind=wrong]x")
    for bad in ("=3", "softmax,,sdpa", "nystromformer:num_landmarks", "a:=1"):
        with pytest.raises(UsageError):
            parse_impls(bad)


def test_choices_and_aliases():
    assert parse_dtypes("fp32,bf16,float16") == ("float32", "bfloat16", "float16")
    assert parse_modes("fwd,fwd-bwd") == ("fwd", "fwd_bwd")
    assert parse_causal("both") == (False, True) and parse_causal("yes") == (True,)


def test_cases_expand_the_grid_smallest_length_first_per_configuration():
    sweep = Sweep(impls=parse_impls("a,b"), lengths=(512, 256), batch=(1, 2), device=("cpu",), dtype=("float32",), causal=(False, True))
    cases = sweep.cases()
    assert len(cases) == 2 * 2 * 2 * 2 and len({c.key for c in cases}) == len(cases)
    by_config = {}
    for case in cases:
        by_config.setdefault(case.config_key, []).append(case.seq_len)
    assert all(lengths == [256, 512] for lengths in by_config.values())
    assert Sweep.from_dict(sweep.to_dict()) == sweep
    # the impls of one shape and length run one after the other: a gate's ratio of a to b compares cells timed
    # seconds apart (all of a's lengths ran before b's, and a burst of load fell on one side of the ratio alone)
    pairs = [(cases[i], cases[i + 1]) for i in range(0, len(cases), 2)]
    assert all({x.label, y.label} == {"a", "b"} and x.key.split("|", 1)[1] == y.key.split("|", 1)[1] for x, y in pairs)


def test_case_round_trips_and_keys_are_stable():
    case = Case(impl="x", seq_len=1024, options=(("m", 32),), causal=True, mode="fwd_bwd")
    assert Case.from_dict(case.to_dict()) == case
    assert case.key == "x[m=32]|B1|H16|D64|float32|cpu|causal|fwd_bwd|N1024|seed0"


@pytest.mark.parametrize("step", ["x0", "x1", "x-1", "x1.5", "x", "*1"])
def test_every_bad_factor_gets_the_same_sentence(step):
    """x0 read "bad length step '0': must be positive" and x1 "factor 'x1' must be at least 2": one rule, two wordings."""
    quoted = re.escape(f"'1k..8k:{step}': factor '{step}' must be a whole number of at least 2")
    with pytest.raises(UsageError, match=f"bad lengths {quoted}"):
        parse_lengths(f"1k..8k:{step}")


def test_one_option_value_is_one_label_however_it_is_written():
    """`two_pass=1`, `=true` and `=True` were three lines (measured three times, compared and gated apart), as were
    `num_landmarks=32` and `=032`: labels carry each value as its option's type writes it, and defaults are dropped."""
    from attnprof.api import impl_labels, plan

    assert impl_labels("nystromformer:num_landmarks=032,nystromformer:num_landmarks=+32") == ["nystromformer[num_landmarks=32]"]
    assert impl_labels("nystromformer:num_landmarks=64") == ["nystromformer"]  # its default
    assert impl_labels("cosformer:chunk_size=0128") == ["cosformer[chunk_size=128]"]  # untyped (None default): its guessed type
    sweep = Sweep(impls=parse_impls("nystromformer:num_landmarks=32,nystromformer:num_landmarks=032"), lengths=(256,), causal=(False,))
    assert len(plan(sweep)) == 1
    from attnprof.impls.base import option_text

    assert [option_text(v) for v in (True, False, 2.0, 64, "reference")] == ["true", "false", "2.0", "64", "reference"]
