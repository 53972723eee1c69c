"""Other processes' CPU use while a block runs (trackers/host_contention.py), with a real busy process."""

import subprocess
import sys
import time

from attnprof.trackers.host_contention import Contention, host_contention


def test_a_busy_process_beside_the_block_is_counted_and_noted():
    """Timings on a shared machine are inflated uniformly, so their spread misses it: the row now says so."""
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)  # its start-up done: it spins
        with host_contention() as found:
            time.sleep(1.0)  # this process idles: what is busy is the other one
    finally:
        busy.kill()
        busy.wait()
    assert found.other_cores >= 0.5 and found.cores >= 1
    assert found.note() == f"timed while other processes kept {found.other_cores:.1f} of {found.cores} cores busy: times may be inflated"


def test_below_half_a_core_says_nothing():
    assert Contention(other_cores=0.49, cores=2).note() == "" and Contention(other_cores=0.5, cores=2).note() != ""
