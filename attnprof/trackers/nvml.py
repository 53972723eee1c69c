"""GPU device memory as the driver sees it (NVML), sampled on a thread, and the energy counter.

NVML counts every allocation on the device (other processes, the CUDA context, cuBLAS workspaces),
so it is a secondary view beside the allocator peak. Without a driver `nvmlInit` raises an
NVMLError and the source reads as unavailable (None), never 0.
"""

from __future__ import annotations

from attnprof.trackers.sampling import PeakSampler


class NvmlDevice:
    """Handle on one GPU; `available` is False on machines without an NVIDIA driver."""

    def __init__(self, index: int):
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._pynvml = pynvml
        except Exception:  # pynvml.NVMLError (no driver, no device) or no pynvml at all
            self.handle = None

    @property
    def available(self) -> bool:
        return self.handle is not None

    def used_bytes(self) -> int | None:
        if self.handle is None:
            return None
        return int(self._pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def energy_mj(self) -> int | None:
        """Total energy since driver load in millijoules (Volta and newer); None when unsupported."""
        if self.handle is None:
            return None
        try:
            return int(self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self._pynvml.NVMLError:
            return None

    def memory_tracker(self, interval_s: float = 0.001) -> PeakSampler:
        return PeakSampler(self.used_bytes, interval_s)


def cuda_index(device: str) -> int:
    """`cuda` -> 0, `cuda:3` -> 3 (the torch index; CUDA_VISIBLE_DEVICES remapping is the user's)."""
    return int(device.split(":")[1]) if ":" in device else 0
