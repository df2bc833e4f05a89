"""Device time for the benchmarks: stage seconds with the device synchronised, peak
memory, and the hardware a figure was measured on."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from salip.core.timing import StageTimer

__all__ = ["DeviceTimer", "hardware", "peak_mb", "reset_peak", "rss_mb", "sync", "timed"]


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def reset_peak(device: str) -> None:
    """Start a new peak-memory window on a CUDA device; nothing on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: str) -> float | None:
    """The CUDA device's peak allocated memory since :func:`reset_peak`, in MiB; None on
    CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(device: str, work: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of ``work()``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = work()
    sync(device)
    return time.perf_counter() - start, result


class DeviceTimer(StageTimer):
    """A :class:`~salip.core.timing.StageTimer` that synchronises ``device`` before it
    reads the clock, so a stage's seconds include its queued GPU work."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device

    def add(self, stage: str, start: float) -> float:
        """Add ``now - start`` to ``stage`` once the device is idle; return now."""
        sync(self.device)
        return super().add(stage, start)


def hardware(device: str) -> dict[str, Any]:
    """``hardware`` (the GPU's name, or "CPU (N threads, model)"), ``gpu`` (None on CPU)
    and ``cpu_threads`` (torch's intra-op threads)."""
    threads = torch.get_num_threads()
    if device.startswith("cuda"):
        gpu = torch.cuda.get_device_name(torch.device(device))
        return {"hardware": gpu, "gpu": gpu, "cpu_threads": threads}
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                name = ", " + line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {"hardware": f"CPU ({threads} threads{name})", "gpu": None, "cpu_threads": threads}
