"""Wall-clock seconds per named stage of a run (the report's ``timings_s``)."""

from __future__ import annotations

import time
from collections import defaultdict

__all__ = [
    "StageTimer",
]


class StageTimer:
    """Accumulates wall-clock seconds per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, stage: str, start: float) -> float:
        """Add ``now - start`` to ``stage``; return now."""
        now = time.perf_counter()
        self.seconds[stage] += now - start
        return now
