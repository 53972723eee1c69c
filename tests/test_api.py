"""A Sweep built in Python is checked by the CLI's own parsers: one UsageError naming the bad value."""

import pytest

from attnprof.api import plan
from attnprof.errors import UsageError
from attnprof.spec import Sweep, parse_impls


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (dict(lengths=(0,)), "bad length '0'"),
        (dict(lengths=(-5,)), "bad length '-5'"),
        (dict(lengths=(256.0,)), "bad length '256.0'"),
        (dict(batch=(0,)), "bad batch '0'"),
        (dict(heads=(True,)), "bad heads 'True'"),
        (dict(head_dim=(-1,)), "bad head_dim '-1'"),
        (dict(rep_ms=0.0), "bad rep_ms 0.0"),
        (dict(timeout=float("nan")), "bad timeout nan"),
        (dict(warmup_ms=-1.0), "bad warmup_ms -1.0"),
        (dict(seed=-1), "bad seed -1"),
        (dict(seed=2**63), f"bad seed {2**63}"),
    ],
)
def test_a_bad_value_in_a_python_sweep_is_one_usage_error_naming_it(changes, fragment):
    sweep = Sweep(**{"impls": parse_impls("softmax"), "lengths": (64,), "device": ("cpu",), **changes})
    with pytest.raises(UsageError, match=fragment):
        plan(sweep)


def test_the_largest_seed_sqlite_stores_is_accepted():
    cases = plan(Sweep(impls=parse_impls("softmax"), lengths=(64,), device=("cpu",), seed=2**63 - 1))
    assert {case.seed for case, _ in cases} == {2**63 - 1}


def test_what_the_readme_calls_from_python_is_there_after_a_plain_import():
    """In a fresh interpreter: `attnprof.analysis` was an AttributeError until something imported the submodule."""
    import subprocess
    import sys

    code = (
        "import attnprof\n"
        "assert attnprof.analysis.analyse is attnprof.analyse\n"
        "assert callable(attnprof.run_budget) and callable(attnprof.impls.register)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
