"""Batch sizes from free device memory, measured rather than guessed.

A batch size of 0 in the settings means "auto": off CUDA a fixed default; on CUDA the first
call runs a small probe batch, its peak memory per item is measured, and the batch grows to
what fits in the free device memory (with headroom), up to a cap. Out-of-memory errors
later halve it (see :class:`salip.models.sam_runtime.BatchSize`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = [
    "HEADROOM",
    "fit_batch",
    "free_device_bytes",
    "peak_memory",
    "PeakMeter",
]

#: Share of the free device memory an auto-sized batch may plan to use.
HEADROOM = 0.7


def free_device_bytes(device: torch.device) -> int:
    """Bytes a new allocation on ``device`` can get: free on the device plus what PyTorch's
    caching allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached)


def fit_batch(per_item_bytes: int, free_bytes: int, cap: int, headroom: float = HEADROOM) -> int:
    """The largest batch whose items (``per_item_bytes`` each) fit in ``headroom`` of
    ``free_bytes``, between 1 and ``cap``."""
    fits = int(free_bytes * headroom) // max(1, int(per_item_bytes))
    return max(1, min(int(cap), fits))


@dataclass
class PeakMeter:
    """Peak bytes allocated above the starting allocation, inside :func:`peak_memory`."""

    bytes: int = 0


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMeter]:
    """Measure the peak CUDA memory a block allocates beyond what was allocated before.

    Resets the device's peak-memory statistic (a later ``max_memory_allocated`` then counts
    from here, which still includes everything allocated at this point).
    """
    meter = PeakMeter()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield meter
    torch.cuda.synchronize(device)
    meter.bytes = max(0, torch.cuda.max_memory_allocated(device) - base)
