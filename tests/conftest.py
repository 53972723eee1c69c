import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # spawned workers inherit sys.path, so they import fake_impls too
os.environ["ATTNPROF_PLUGINS"] = "fake_impls"
os.environ.pop("ATTNPROF_DB", None)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "test.db"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))  # for CLI subprocesses


def small_sweep(impl: str, lengths=(64, 128, 256), **changes):
    """A sweep small enough for the 2-core CI machine: 2 heads, head dim 16, tiny time budgets."""
    from attnprof.spec import Sweep, parse_impls

    settings = dict(impls=parse_impls(impl), lengths=tuple(lengths), heads=(2,), head_dim=(16,), device=("cpu",), dtype=("float32",),
                    causal=(False,), warmup_ms=1.0, rep_ms=5.0, timeout=60.0)  # fmt: skip
    settings.update(changes)
    return Sweep(**settings)
