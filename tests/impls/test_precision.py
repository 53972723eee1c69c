"""tf32_products: TF32 only for half inputs on CUDA, and the user's setting back as it was however the call
ends, whichever of torch's two APIs the user set it with. Each case runs in a fresh interpreter: these
settings are process-wide, and torch refuses to read the legacy flag once the new API has been used."""

import subprocess
import sys

import pytest
import torch

NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")
STATE = "torch.backends.cuda.matmul.fp32_precision" if NEW_API else "torch.backends.cuda.matmul.allow_tf32"


def run(setup: str, body: str) -> str:
    """stdout of a fresh interpreter that applies `setup`, prints the state, runs `body`, prints it again."""
    script = f"""
import torch
from attnprof.impls.precision import tf32_products
{setup}
print({STATE})
{body}
print({STATE})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


INSIDE = f"""
with tf32_products(torch.bfloat16, "cuda"):
    print({STATE})
"""

SETUPS = {
    "fresh": "",
    "legacy flag on": "torch.backends.cuda.matmul.allow_tf32 = True",
    "medium": 'torch.set_float32_matmul_precision("medium")',
}
if NEW_API:
    SETUPS |= {
        "new API tf32": 'torch.backends.cuda.matmul.fp32_precision = "tf32"',
        "generic tf32": 'torch.backends.fp32_precision = "tf32"',
    }


@pytest.mark.parametrize("setup", SETUPS.values(), ids=SETUPS.keys())
def test_tf32_inside_and_the_setting_back_after(setup):
    before, inside, after = run(setup, INSIDE)
    assert inside in ("tf32", "True") and after == before


def test_an_error_inside_still_restores_and_get_precision_still_works():
    body = """
try:
    with tf32_products(torch.float16, "cuda:0"):
        raise RuntimeError("out of memory")
except RuntimeError:
    pass
print(torch.get_float32_matmul_precision())"""
    before, precision, after = run('torch.set_float32_matmul_precision("medium")', body)
    assert after == before and precision == "medium"


OTHERS = [("torch.float32", "cuda"), ("torch.float64", "cuda"), ("torch.bfloat16", "cpu"), ("torch.bfloat16", "meta")]


def test_other_inputs_are_left_alone():
    """One interpreter for the four (each case is a fresh interpreter's 2.7 s): any of them that set TF32 changes
    what the state reads from then on."""
    body = "".join(
        f"""
with tf32_products({dtype}, "{device}"):
    print({STATE})
print({STATE})"""
        for dtype, device in OTHERS
    )
    states = run("", body)
    assert len(states) == 2 + 2 * len(OTHERS) and len(set(states)) == 1, states
