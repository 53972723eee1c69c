import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # spawned workers inherit sys.path, so they import fake_impls too
os.environ["ATTNPROF_PLUGINS"] = "fake_impls"
os.environ.pop("ATTNPROF_DB", None)
# The CLI's tables take $COLUMNS as their width (cli/group.py): a shell exporting it, or pytest-xdist (its workers get
# COLUMNS=80), would wrap the tables the tests read. A test wanting a width sets it itself.
for name in ("COLUMNS", "LINES"):
    os.environ.pop(name, None)

import torch  # noqa: E402  (torch does not import triton: the line below still comes first)

if not torch.cuda.is_available():
    # Triton decides at decoration whether its kernels are interpreted, its own library's included: the
    # interpreter must be on before anything imports triton, for the CPU tests of cosFormer's backend=triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")


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


@pytest.fixture(scope="session")
def triton_interpreted():
    """The impls' Triton kernels as Triton's interpreter runs them on CPU tensors (switched on above, without CUDA);
    skipped without the triton package, and on a CUDA machine (tests/gpu runs the compiled kernels there)."""
    pytest.importorskip("triton", reason="backend=triton needs the triton package (a dev extra)")
    from attnprof.impls import triton_support

    if not triton_support.interpreting():
        pytest.skip("Triton's interpreter is off (a CUDA machine): tests/gpu runs these kernels there")
