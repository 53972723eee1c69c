"""GPU device memory as the driver sees it (NVML), sampled on a thread, and the energy counter.

NVML counts every allocation on the device (other processes, the CUDA context, cuBLAS workspaces),
so it is a secondary view beside the allocator peak. Without a driver `nvmlInit` raises an
NVMLError and the source reads as unavailable (None), never 0.
"""

from __future__ import annotations

from attnprof.trackers.sampling import PeakSampler


class NvmlDevice:
    """Handle on the GPU torch calls `device` ("cuda", "cuda:1"); `available` is False on machines without an
    NVIDIA driver."""

    def __init__(self, device: str):
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(pynvml, device))
            self._pynvml = pynvml
        except Exception:  # pynvml.NVMLError (no driver, no device) or no pynvml at all
            self.handle = None

    @property
    def available(self) -> bool:
        return self.handle is not None

    def used_bytes(self) -> int | None:
        """The device's used memory; None where NVML cannot say (some vGPUs, a GPU lost): a sampled second view, whose
        failure made every CUDA cell an error, the allocator's figure lost with it (a GPU-path review)."""
        if self.handle is None:
            return None
        try:
            return int(self._pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        except self._pynvml.NVMLError:
            return None

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
    """`cuda` -> 0, `cuda:3` -> 3: torch's index, which counts only the GPUs CUDA_VISIBLE_DEVICES lets it see."""
    return int(device.split(":")[1]) if ":" in device else 0


def nvml_index(pynvml, device: str) -> int:
    """NVML's index of torch's `device`. NVML counts every GPU in the machine, whatever CUDA_VISIBLE_DEVICES says
    (with CUDA_VISIBLE_DEVICES=2, torch's cuda:0 is NVML's 2), so the two are matched by UUID; torch's index when
    torch gives no UUID or NVML lists none that matches."""
    import torch

    index = cuda_index(device)
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    listed = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]
    found = matching_uuid(uuid, listed)
    return index if found is None else found


def matching_uuid(torch_uuid, nvml_uuids) -> int | None:
    """Position of torch's device UUID among NVML's: NVML writes "GPU-<uuid>" (bytes in older pynvml), torch
    a bare UUID object (or, in some builds, with the prefix too)."""
    if torch_uuid is None:
        return None
    bare = lambda u: (u.decode() if isinstance(u, bytes) else str(u)).lower().removeprefix("gpu-")  # noqa: E731
    matches = [i for i, u in enumerate(nvml_uuids) if bare(u) == bare(torch_uuid)]
    return matches[0] if len(matches) == 1 else None
