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


RESERVE_CHILD = """
import json, psutil, resource, torch
from attnprof import cpu_heap
rss = lambda: psutil.Process().memory_info().rss
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt * resource.getpagesize()
cpu_heap.strict()
base = rss()
with cpu_heap.retained():
    reserved = cpu_heap.reserve(128 * 2**20)
    resident = rss() - base
    before = faults()
    x = torch.ones(200 * 2**20 // 4); del x     # 200 MiB of temporaries, written
    faulted = faults() - before
after_exit = rss() - base
print(json.dumps([reserved, resident, faulted, after_exit]))
"""


@pytest.mark.skipif(cpu_heap.policy().startswith("C library"), reason="the heap policy needs glibc's mallopt")
def test_reserve_leaves_resident_memory_that_the_calls_use_without_faulting():
    out = subprocess.run([sys.executable, "-c", RESERVE_CHILD], capture_output=True, text=True, check=True)
    reserved, resident, faulted, after_exit = json.loads(out.stdout)
    mib = 2**20
    assert reserved == 256 * mib and resident >= 250 * mib  # twice the peak given, faulted in and kept after its free
    assert faulted < 16 * mib  # the 200 MiB tensor found resident pages (without reserve: 200 MiB faulted in)
    assert after_exit < 16 * mib  # leaving timing gives it all back


def test_the_run_environment_names_the_policy():
    from attnprof.env import capture_env

    assert capture_env()["cpu_heap"] == cpu_heap.policy()


PRIME_CHILD = """
import json, resource, torch
from attnprof import cpu_heap
faulted = []
def call():  # 64 MiB of temporaries, and how many bytes of new pages each call faulted in
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20 // 4).sum()
    faulted.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * resource.getpagesize())
cpu_heap.strict()
with cpu_heap.retained():
    calls = cpu_heap.prime(call, budget_ms=60_000)
print(json.dumps([calls, faulted]))
"""


@pytest.mark.skipif(cpu_heap.policy().startswith("C library"), reason="the heap policy needs glibc's mallopt")
def test_prime_stops_once_a_call_finds_its_working_set_in_the_retained_heap():
    out = subprocess.run([sys.executable, "-c", PRIME_CHILD], capture_output=True, text=True, check=True)
    calls, faulted = json.loads(out.stdout)
    assert calls == len(faulted) >= 2 and faulted[0] >= 64 * 2**20  # the first call faults its 64 MiB in
    # glibc sometimes faults the block in again on the next calls (seen: 1 to 3 more); prime stops at the first that does not
    assert all(f >= cpu_heap.SETTLED_FAULT_BYTES for f in faulted[:-1]) and faulted[-1] < cpu_heap.SETTLED_FAULT_BYTES


def test_prime_keeps_calling_while_calls_fault_in_new_pages_within_its_budget():
    import mmap

    kept = []

    def growing():  # every call maps 8 MiB of fresh pages and touches each (a heap block could be resident already)
        block = mmap.mmap(-1, 8 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        kept.append(block)

    assert cpu_heap.prime(growing, budget_ms=60_000) == cpu_heap.MAX_PRIME_CALLS
    kept.clear()
    assert cpu_heap.prime(growing, budget_ms=0) == 1  # no budget: the one call it always makes
    kept.clear()
    assert cpu_heap.prime(lambda: None, budget_ms=60_000) == 1  # nothing new to fault in
