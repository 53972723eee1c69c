"""The timing primitive's sample counts, the derived statistics, and the sampled trackers."""

import time

import pytest

from attnprof.records import quantile, time_stats
from attnprof.timing import bench


def test_bench_respects_min_and_max_reps():
    calls = []
    samples = bench(lambda: calls.append(1), "cpu", warmup_ms=0, rep_ms=1000, min_reps=5, max_reps=50)
    assert len(samples) == 50 and len(calls) >= 52 and all(s >= 0 for s in samples)
    slow = bench(lambda: time.sleep(0.01), "cpu", warmup_ms=0, rep_ms=1, min_reps=4)
    assert len(slow) == 4 and min(slow) >= 9.0
    calls.clear()
    # rep_ms=0: a budget of 1 us (as before) held a 4th call on a fast machine, where 3 appends took under 1 us.
    bench(lambda: calls.append(1), "cpu", warmup_ms=0, rep_ms=0, min_reps=3, warm_ms=50.0)
    assert len(calls) == 3  # already warm and its duration known: only the repetitions
    # A hint 10x the true duration (the memory pass runs under trackers) must not shrink the repetitions: the
    # budget is 40 ms of 2 ms calls, so ~20; a count from the hint gave max(3, 40 // 20) = 3.
    # Stopped by the budget (or at min_reps), not by a count: a CPU quota's stall can make one sample 50 ms (6 samples
    # asserted before); the old count gave 3 samples adding up to about 6 ms.
    hinted = bench(lambda: time.sleep(0.002), "cpu", warmup_ms=0, rep_ms=40, min_reps=3, warm_ms=20.0)
    assert sum(hinted) >= 40 and (len(hinted) == 3 or sum(hinted[:-1]) < 40)


def test_statistics_derive_from_raw_samples():
    stats = time_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats["median_ms"] == 3.0 and stats["p20_ms"] == pytest.approx(1.8) and stats["p80_ms"] == pytest.approx(23.2)
    assert stats["noisy"] is True and time_stats([5.0] * 5)["noisy"] is False
    assert time_stats([])["median_ms"] is None and quantile([], 0.5) is None


def test_rss_tracker_sees_a_large_allocation():
    import mmap

    from attnprof.trackers.host_rss import rss_tracker

    size = 64 * 1024 * 1024
    with rss_tracker() as rss:
        # Fresh pages from the kernel, whatever malloc's policy: np.ones took them from the heap, where an earlier
        # test's cpu_heap.keep() (no mmap) left freed but resident memory, and RSS did not rise (seen once in a full run).
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1  # touched: resident
        time.sleep(0.2)  # the sampler thread gets its turns even on a loaded machine
    block.close()
    assert rss.peak_above_start >= 48 * 1024 * 1024


def test_the_rss_peak_of_a_spike_freed_at_once_is_read_whole():
    """A sampler every millisecond missed a short case's peak: Combiner-Fixed's first case at N = 256 read 0.48 MiB
    against the 3.4 MB of its high-water mark (a memory audit). Where Linux lets the high-water mark be reset, it is
    read instead: a block touched and freed with no pause in between is all there, every time."""
    import mmap

    from attnprof.trackers.host_rss import HighWaterRss, high_water_resettable, rss_tracker

    if not high_water_resettable():
        pytest.skip("this kernel does not let /proc/self/clear_refs reset the high-water mark: the sampler stands in")
    assert isinstance(rss_tracker(), HighWaterRss)
    size = 16 * 1024 * 1024
    for _ in range(5):
        with HighWaterRss() as rss:
            block = mmap.mmap(-1, size)  # fresh pages from the kernel, whatever malloc's policy
            for offset in range(0, size, mmap.PAGESIZE):
                block[offset] = 1
            block.close()  # gone before any sampler's next read
        # within a MiB: the kernel syncs each thread's RSS counts in batches (16.62 MB read for 16.78 here)
        assert size - 2**20 <= rss.peak_above_start < size + 4 * 2**20, rss.peak_above_start


def test_nvml_finds_torchs_gpu_by_uuid_whatever_its_index():
    """With CUDA_VISIBLE_DEVICES=2,0 torch's cuda:0 is NVML's GPU 2: indexes do not match, UUIDs do."""
    import uuid

    from attnprof.trackers.nvml import matching_uuid

    ids = [uuid.UUID(int=i) for i in range(3)]
    nvml_listed = [f"GPU-{u}" for u in ids]
    assert matching_uuid(ids[2], nvml_listed) == 2  # torch's bare UUID object
    assert matching_uuid(f"GPU-{str(ids[1]).upper()}", [s.encode() for s in nvml_listed]) == 1  # prefixed; older pynvml's bytes
    assert matching_uuid(None, nvml_listed) is None  # a torch without UUIDs: its index stands
    assert matching_uuid(uuid.UUID(int=7), nvml_listed) is None


def test_nvml_without_a_driver_reads_as_unavailable():
    import torch

    from attnprof.trackers.nvml import NvmlDevice

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real NVML path is tested in tests/gpu")
    device = NvmlDevice("cuda")
    assert not device.available and device.used_bytes() is None and device.energy_mj() is None
    with device.memory_tracker() as tracker:
        pass
    assert tracker.peak_above_start is None  # unavailable is None, never 0


def test_an_nvml_memory_read_that_fails_is_no_reading_not_an_error():
    """A sampled second view: NVMLError from nvmlDeviceGetMemoryInfo (some vGPUs, a GPU lost) made every CUDA cell an
    error, its allocator figure lost with it (a GPU-path review). pynvml's own error class, raised by a stand-in
    handle: no GPU here to refuse the call."""
    import pynvml

    from attnprof.trackers.nvml import NvmlDevice

    class Refusing:
        NVMLError = pynvml.NVMLError

        def nvmlDeviceGetMemoryInfo(self, handle):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    device = NvmlDevice.__new__(NvmlDevice)
    device._pynvml, device.handle = Refusing(), object()
    assert device.used_bytes() is None
    with device.memory_tracker() as tracker:
        pass
    assert tracker.peak_above_start is None
