"""The CPU heap policy (cpu_heap.py), run in a child process so the test runner's own heap keeps glibc's defaults."""

import json
import subprocess
import sys

import pytest

from attnprof import cpu_heap

CHILD = """
import json, psutil, torch
from attnprof import cpu_heap
rss = lambda: psutil.Process().memory_info().rss
cpu_heap.strict()
base = rss()
x = torch.ones(64 * 2**20 // 4); del x          # 64 MiB, mmapped and returned on free
after_strict = rss() - base
with cpu_heap.retained():
    x = torch.ones(64 * 2**20 // 4); del x      # 64 MiB, kept in the heap after free
    inside_retained = rss() - base
after_exit = rss() - base
print(json.dumps([after_strict, inside_retained, after_exit]))
"""


@pytest.mark.skipif(cpu_heap.policy().startswith("C library"), reason="the heap policy needs glibc's mallopt")
def test_retained_heap_keeps_freed_blocks_until_timing_ends_and_strict_gives_them_back():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    after_strict, inside_retained, after_exit = json.loads(out.stdout)
    mib = 2**20
    assert after_strict < 8 * mib  # strict: the freed block left the process at once
    assert inside_retained > 56 * mib  # retained: the freed 64 MiB is still resident, ready for the next repetition
    assert after_exit < 8 * mib  # leaving timing trims the heap back


def test_the_run_environment_names_the_policy():
    from attnprof.env import capture_env

    assert capture_env()["cpu_heap"] == cpu_heap.policy()
