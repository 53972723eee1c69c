"""The CUDA caching allocator's peak during one call, above what was allocated before it.

The primary memory figure on CUDA: `reset_peak_memory_stats`, one call, then
`max_memory_allocated` minus `memory_allocated` before (the inputs' own bytes are excluded).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AllocatorReading:
    peak_alloc_bytes: int | None = None
    peak_reserved_bytes: int | None = None


class AllocatorTracker:
    def __init__(self, device: str):
        self.device = device
        self.reading = AllocatorReading()

    def __enter__(self) -> AllocatorTracker:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._allocated_before = torch.cuda.memory_allocated(self.device)
        self._reserved_before = torch.cuda.memory_reserved(self.device)
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        self.reading = AllocatorReading(
            peak_alloc_bytes=torch.cuda.max_memory_allocated(self.device) - self._allocated_before,
            peak_reserved_bytes=max(0, torch.cuda.max_memory_reserved(self.device) - self._reserved_before),
        )
